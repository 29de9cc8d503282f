"""Helpers for tests that boot real VMs: the hooks' config, and what a job left behind."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vmwrapper import config as config_mod
from vmwrapper import requestblock
from vmwrapper.hypervisor import Hypervisor
from vmwrapper.plan import job_tag

SYSTEM_CONF = config_mod.SYSTEM_CONFIG
# Real hooks start with an empty environment, so they only read the system config file.
BASE_SETTINGS = {"TIMEOUT": "200", "SHUTDOWN_TIMEOUT": "10", "MAX_PROLOGUE_ATTEMPTS": "2"}


@contextmanager
def system_config(**settings: str) -> Iterator[config_mod.Config]:
    """Write /etc/vm-wrapper/vm-wrapper.conf for a test, restoring what was there."""
    saved = SYSTEM_CONF.read_bytes() if SYSTEM_CONF.exists() else None
    values = {**BASE_SETTINGS, **settings}
    SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SYSTEM_CONF.write_text("".join(f'{k}="{v}"\n' for k, v in values.items()))
    try:
        yield config_mod.load([SYSTEM_CONF])
    finally:
        if saved is None:
            SYSTEM_CONF.unlink(missing_ok=True)
        else:
            SYSTEM_CONF.write_bytes(saved)


def request_script(body: str = "echo hi\n", **vm: str) -> str:
    """A job script carrying a request line, as the qsub wrapper would write it."""
    vm = {"img": "debian12", "vcpus": "1", "ram": "1G", **vm}
    line = requestblock.encode(vm, {}, requestblock.new_submission_id())
    return f"#!/bin/sh\n{line}\n{body}"


def request_fields(
    vm: Mapping[str, str], files: Mapping[str, bytes] | None = None, body: str = "echo hi\n"
) -> dict[str, Any]:
    """What qsub -vm hands Torque for one request (harness Job fields): the job script with
    the marked request line, and the same request as the job variable VMW_REQUEST_V1,
    which is all a sister gets. ``vm`` is taken as is: tests forge requests with it."""
    text = requestblock.encode_json(vm, files or {}, requestblock.new_submission_id())
    script = f"#!/bin/sh\n{requestblock.MARKER}{text}\n{body}"
    return {"script": script, "variables": {requestblock.VARIABLE: requestblock.to_variable(text)}}


def vm_fields(**vm: str) -> dict[str, Any]:
    """request_fields of a small valid request, changed by ``vm``."""
    return request_fields({"img": "debian12", "vcpus": "1", "ram": "1G", **vm})


JOB_RUN_DIR = Path("/var/tmp/vmw-test-payloads")


def job_run(script: bytes = b"true\n") -> list[str]:
    """The real job wrapper as the job (what the generated wrapper script execs): it prints
    why the VMs could not start, or runs ``script`` in vm0."""
    JOB_RUN_DIR.mkdir(mode=0o755, exist_ok=True)
    data = {"v": 1, "script": base64.b64encode(script).decode(), "args": [], "shell": "",
            "name": "job"}  # fmt: skip
    path = JOB_RUN_DIR / f"{hashlib.sha256(script).hexdigest()[:16]}.payload"
    path.write_text(base64.b64encode(json.dumps(data).encode()).decode())
    path.chmod(0o644)
    python = config_mod.load([]).NODE_PYTHON
    return [python, "-I", "-m", "vmwrapper", "job-run", "--payload-file", str(path)]


def leftovers(config: config_mod.Config, jobid: str) -> list[str]:
    """Everything of the job that still exists on this host: must be [] after teardown."""
    tag = job_tag(jobid)
    found = [
        f"domain {name}"
        for name, owner in Hypervisor(config.LIBVIRT_URI).our_domains().items()
        if owner == jobid
    ]
    found += [f"path {p}" for p in Path(config.RAMDISK_DIR).glob(f"vm-wrapper-{tag}-*")]
    for path in (
        Path(config.STATE_DIR) / "jobs" / tag,
        Path(config.OVERLAY_DIR) / tag,
        Path(config.STATE_DIR) / "attempts",
    ):
        if path.name == "attempts":
            found += [f"file {p}" for p in path.glob(f"{tag}.*")] if path.is_dir() else []
        elif path.exists():
            found.append(f"path {path}")
    qemu = subprocess.run(
        ["pgrep", "-f", f"guest=vmw-{tag}-"], capture_output=True, text=True, check=False
    )
    found += [f"qemu pid {pid}" for pid in qemu.stdout.split()]
    return found
