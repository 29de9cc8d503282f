"""Hostile -vm input through the qsub and sbatch wrappers (issue 9, item 7).

A -vm directive that Torque or sbatch would read otherwise than we do is refused in one
line (non-zero, nothing submitted): never a traceback, never a silent host job.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from submit_site import SCRIPTS, Site

from vmwrapper.cli import qsub, sbatch
from vmwrapper.errors import RequestError

MAGIC = {"qsub": "#PBS -vm", "sbatch": "#SBATCH --vm"}


class Submitted(Exception):
    def __init__(self, args: list[str], stdin: bytes | None) -> None:
        super().__init__("submitted")
        self.argv, self.stdin = args, stdin


def submit_here(
    monkeypatch: pytest.MonkeyPatch, site: Site, command: str, args: list[str], stdin: bytes = b""
) -> Any:
    """qsub.submit or sbatch.submit in this process: Submitted, or a dry run's exit code."""

    def fake_exec(real: str, argv: list[str], data: bytes | None) -> None:
        raise Submitted(list(argv), data)

    module: Any = qsub if command == "qsub" else sbatch
    monkeypatch.setattr(module, f"exec_{command}", fake_exec)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    monkeypatch.setenv("VM_WRAPPER_CONF", str(site.conf))
    monkeypatch.chdir(site.work)
    try:
        return module.submit(args, str(SCRIPTS / command), dict(os.environ))
    except Submitted as done:
        return done


def refused(
    monkeypatch: pytest.MonkeyPatch, site: Site, command: str, args: list[str]
) -> list[str]:
    """The lines a refused submission prints (after 'vm-wrapper: ')."""
    with pytest.raises(RequestError) as caught:
        submit_here(monkeypatch, site, command, args, b"#!/bin/sh\necho\n")
    return caught.value.lines()


@pytest.fixture(params=["qsub", "sbatch"])
def command(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def site(tmp_path: Path, command: str) -> Site:
    return Site(tmp_path, command)


# -- 1. what Torque and sbatch would read otherwise in a -vm directive ---------------------


def test_cr_in_a_directive_vm_value_is_refused(site: Site, command: str) -> None:
    """'img=x\\r,vcpus=999' is two words to Torque and sbatch alike: the VM would not get
    999 vCPUs, and qsub would be handed a '#PBS ,vcpus=999' line."""
    site.write("job.sh", f"#!/bin/sh\n{MAGIC[command]} img=debian12\r,vcpus=999\necho\n".encode())
    result = site.run(["job.sh"])
    assert result.code == 2 and result.argv is None and result.out == ""
    assert result.err == (
        "vm-wrapper: script line 2: control character '\\r' in 'img=debian12\\r,vcpus=999'; "
        "a -vm directive takes plain text\n"
    )


def test_nul_or_overlong_line_in_a_torque_vm_job_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Torque reads a directive only up to a NUL, and a line of more than 32766 bytes in
    pieces: either way it would read other directives than we checked."""
    site = Site(tmp_path)
    site.write("job.sh", b"#!/bin/sh\n#PBS -N a\0 -l nodes=9\n#PBS -vm vcpus=1\necho\n")
    lines = refused(monkeypatch, site, "qsub", ["job.sh"])
    assert lines == [
        "script line 2: a NUL byte in a directive (Torque reads the line only up to it)"
    ]
    site.write("job.sh", b"#!/bin/sh\n#PBS -N " + b"a" * 33000 + b"\n#PBS -vm vcpus=1\necho\n")
    lines = refused(monkeypatch, site, "qsub", ["job.sh"])
    assert lines == ["a directive is longer than the 32766 bytes Torque reads as one line"]


def test_stray_word_after_a_directive_vm_value_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    site = Site(tmp_path)
    site.write("job.sh", b"#!/bin/sh\n#PBS -vm img=debian12 ,vcpus=999\necho\n")
    assert refused(monkeypatch, site, "qsub", ["job.sh"]) == [
        "script line 2: stray word ',vcpus=999' in a -vm directive (no blanks in -vm values)"
    ]
