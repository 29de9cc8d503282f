"""A private submit site for the qsub and sbatch wrapper tests: stub real commands that
record their argv (NUL-separated) and stdin and print a job id, an image pool, a config
file and a TMPDIR. ``Site.run`` runs src/scripts/<command> as users do."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from conftest import REPO

from vmwrapper import jobpayload, requestblock

SCRIPTS = REPO / "src" / "scripts"
PYTHON = "/opt/vm-wrapper/venv/bin/python3"
HOST = os.uname().nodename.partition(".")[0]
STUB = """#!/bin/sh
printf '%s\\0' "$@" > "$STUB_RECORD/argv"
cat > "$STUB_RECORD/stdin"
for last; do :; done
case "$last" in /dev/fd/*) cat "$last" > "$STUB_RECORD/script" ;; esac
echo "{jobid}"
"""
STUBS = {"stub-qsub": "42.server", "stub-qsub-nodes": "7.nodes", "stub-sbatch": "43"}


@dataclass
class Result:
    code: int
    out: str
    err: str
    argv: list[bytes] | None  # what the stub got, None if it never ran
    stdin: bytes | None


class Site:
    """A private site: stub qsubs and sbatch, an image pool, a config file, a TMPDIR."""

    def __init__(self, root: Path, command: str = "qsub") -> None:
        self.root, self.shim = root, SCRIPTS / command
        self.record, self.work, self.tmp = root / "record", root / "work", root / "tmp"
        for path in (self.record, self.work, self.tmp, root / "pool"):
            path.mkdir()
        (root / "pool" / "debian12.qcow2").write_bytes(b"")
        for name, jobid in STUBS.items():
            (root / name).write_text(STUB.format(jobid=jobid))
            (root / name).chmod(0o755)
        self.conf = root / "vm-wrapper.conf"
        self.configure()

    def configure(self, **extra: str) -> None:
        settings = {
            "REAL_QSUB_ON_SERVER": str(self.root / "stub-qsub"),
            "REAL_QSUB_ON_NODES": str(self.root / "stub-qsub-nodes"),
            "REAL_SBATCH": str(self.root / "stub-sbatch"),
            "IMAGE_POOL": str(self.root / "pool"),
            **extra,
        }
        self.conf.write_text("".join(f"{k}='{v}'\n" for k, v in settings.items()))

    def env(self, **extra: str) -> dict[str, str]:
        drop = ("PBS_DPREFIX", "POSIXLY_CORRECT")
        env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SBATCH_")}
        return {
            **env,
            "VM_WRAPPER_CONF": str(self.conf),
            "VM_WRAPPER_PYTHON": PYTHON,
            "STUB_RECORD": str(self.record),
            "TMPDIR": str(self.tmp),
            **extra,
        }

    def write(self, name: str, data: bytes, mode: int = 0o644) -> Path:
        path = self.work / name
        path.write_bytes(data)
        path.chmod(mode)
        return path

    def run(self, args: list[str | bytes], stdin: bytes = b"", **env: str) -> Result:
        for old in self.record.iterdir():
            old.unlink()
        done = subprocess.run(
            [str(self.shim), *args],
            input=stdin,
            capture_output=True,
            cwd=self.work,
            env=self.env(**env),
            check=False,
        )
        argv_file, stdin_file = self.record / "argv", self.record / "stdin"
        argv = argv_file.read_bytes().split(b"\0")[:-1] if argv_file.exists() else None
        got = stdin_file.read_bytes() if stdin_file.exists() else None
        return Result(done.returncode, done.stdout.decode(), done.stderr.decode(), argv, got)


def enc(args: list[str | bytes]) -> list[bytes]:
    return [a if isinstance(a, bytes) else a.encode() for a in args]


def wrapper_parts(wrapper: bytes) -> tuple[requestblock.RequestBlock, jobpayload.Payload]:
    block = requestblock.find(wrapper)
    assert block is not None
    text = wrapper.decode()
    body = text.split("<<'VMW_PAYLOAD_END'\n", 1)[1].split("\nVMW_PAYLOAD_END\n", 1)[0]
    return block, jobpayload.decode(body)


# What the pass-through path must never import (DESIGN.md: each costs 5-80 ms).
HEAVY = {"jinja2", "yaml", "json", "ipaddress", "re", "typing", "dataclasses", "subprocess",
         "vmwrapper.config", "vmwrapper.batch.slurm_hooks", "pathlib", "site"}  # fmt: skip


def fast_path_modules(site: Site, command: str, args: list[str]) -> set[str]:
    """The modules loaded when src/scripts/<command> is about to exec the real command."""
    code = (
        f"import sys; sys.path.insert(0, sys.argv[1]); from vmwrapper.cli import {command} as m\n"
        "def stop(*a): print(' '.join(sorted(sys.modules))); sys.exit(0)\n"
        f"m.exec_{command} = stop\n"
        f"m.submit({args!r}, sys.argv[2], __import__('os').environ)"
    )
    done = subprocess.run(
        [PYTHON, "-I", "-S", "-c", code, str(SCRIPTS.parent), str(SCRIPTS / command)],
        cwd=site.work, env=site.env(), capture_output=True, text=True, check=True,
    )  # fmt: skip
    return set(done.stdout.split())
