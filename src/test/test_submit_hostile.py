"""Hostile -vm input through the qsub and sbatch wrappers (issue 9, item 7).

Control characters, misspellings of -vm, --vm-dry-run in a directive, floods of problems,
values no batch system or parser expects. Whatever the input, a wrapper either refuses it
in a few short lines (non-zero, nothing submitted) or submits a VM job whose request is
plain ASCII: never a traceback, never a silent host job.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from submit_site import SCRIPTS, Site, enc

from vmwrapper import requestblock, submitcore
from vmwrapper.batch import slurm_submit as slurm
from vmwrapper.batch import torque
from vmwrapper.cli import qsub, sbatch
from vmwrapper.errors import RequestError, VmWrapperError

QSUB_JOB = b"#!/bin/sh\n#PBS -l walltime=00:10:00\necho\n"
SBATCH_JOB = b"#!/bin/sh\n#SBATCH -t 10\necho\n"
MAGIC = {"qsub": "#PBS -vm", "sbatch": "#SBATCH --vm"}
EMPTY = "empty item in -vm (stray comma?)"


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


# -- 2. spellings of -vm -------------------------------------------------------------------


@pytest.mark.parametrize(
    "args", [["-vm=vcpus=1"], ["--vm", "vcpus=1"], ["--vm=vcpus=1"], ["-vm", "vcpus=1"]]
)
def test_every_vm_spelling_submits_a_vm_job(
    monkeypatch: pytest.MonkeyPatch, site: Site, command: str, args: list[str]
) -> None:
    done = submit_here(monkeypatch, site, command, args, b"#!/bin/sh\necho\n")
    assert isinstance(done, Submitted) and done.stdin is not None
    block = requestblock.find(done.stdin)
    assert block is not None and block.vm == {"vcpus": "1"}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-VM", "vcpus=1"], "'-VM': options are case-sensitive; write -vm key=value"),
        (["-Vm", "vcpus=1"], "'-Vm': options are case-sensitive"),
        (["-vM=img=debian12"], "'-vM=img=debian12': options are case-sensitive"),
        (["--VM", "vcpus=1"], "unknown option '--VM': ours are -vm key=value[,...] and"),
        (["--VM=vcpus=1"], "unknown option '--VM=vcpus=1'"),
        (["--vm-dryrun", "-vm", "vcpus=1"], "unknown option '--vm-dryrun'"),
    ],
)
def test_misspelt_vm_is_refused_never_a_host_job(
    site: Site, command: str, args: list[str], needle: str
) -> None:
    site.write("job.sh", QSUB_JOB if command == "qsub" else SBATCH_JOB)
    result = site.run([*args, "job.sh"])
    assert result.code == 2 and result.argv is None, result.err
    assert needle in result.err.splitlines()[0] and "Traceback" not in result.err


def test_misspelt_vm_in_a_directive_is_refused(site: Site, command: str) -> None:
    magic = "#PBS" if command == "qsub" else "#SBATCH"
    site.write("job.sh", f"#!/bin/sh\n{magic} -VM vcpus=2\necho\n".encode())
    result = site.run(["job.sh"])
    assert result.code == 2 and result.argv is None
    assert "'-VM': options are case-sensitive" in result.err


@pytest.mark.parametrize(
    ("command", "args"),
    [("qsub", ["-VM", "alice@example.org"]), ("qsub", ["-Vm", "abe"]), ("qsub", ["-vM"]),
     ("sbatch", ["-vM", "cluster1"])],
)  # fmt: skip
def test_real_options_that_look_alike_pass_through_unchanged(
    site: Site, command: str, args: list[str]
) -> None:
    site.write("job.sh", b"#!/bin/sh\n#PBS -VM bob\n#SBATCH -VM c2\necho\n")
    result = site.run([*args, "job.sh"])
    assert result.code == 0 and result.err == "" and result.argv == enc([*args, "job.sh"])


# -- 3. --vm-dry-run in a directive --------------------------------------------------------


def test_dry_run_directive_in_a_vm_job_submits_nothing(site: Site, command: str) -> None:
    magic = "#PBS" if command == "qsub" else "#SBATCH"
    site.write(
        "job.sh", f"#!/bin/sh\n{magic} --vm-dry-run\n{MAGIC[command]} vcpus=1\necho\n".encode()
    )
    result = site.run(["job.sh"])
    assert result.code == 0 and result.argv is None
    assert result.out.startswith("# vm-wrapper dry run (nothing submitted)")
    assert "#%VMW-REQUEST-V1 " in result.out and "--vm-dry-run" not in result.out


def test_dry_run_directive_in_a_plain_job_submits_nothing(site: Site, command: str) -> None:
    magic = "#PBS" if command == "qsub" else "#SBATCH"
    result = site.run([], stdin=f"#!/bin/sh\n{magic} --vm-dry-run\necho plain\n".encode())
    assert result.code == 0 and result.argv is None
    assert result.out.splitlines()[0] == "# vm-wrapper dry run (nothing submitted). The real "\
        f"{command} would run as:"  # fmt: skip


# -- 4. values no parser expects: one clear line each --------------------------------------


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("vcpus=1\r", "-vm 'vcpus=1\\r': control character '\\r'; use plain ASCII"),
        ("\rvcpus=1", "-vm '\\rvcpus=1': control character '\\r'"),  # key.strip() hid it
        ("vcpus=1,\x0bimg=debian12", "-vm '\\x0bimg=debian12': control character '\\x0b'"),
        ("\x1cvcpus=1", "control character '\\x1c'"),
        ("img=debian12\x7f", "control character '\\x7f'"),
        ("vcpus=1\x85", "control character '\\x85'"),
        ("\u2028vcpus=1", "-vm '\\u2028vcpus=1': non-ASCII character '\\u2028'"),
        ("vcpus=\u00b2", "-vm 'vcpus=\\xb2': non-ASCII character '\\xb2'"),
        ("vcpus=\uff12", "non-ASCII character '\\uff12'"),
        ("ram=1048576\u212a", "-vm 'ram=1048576\\u212a': non-ASCII character '\\u212a'"),
        ("img=\udcff\udcfe", "-vm 'img=\\udcff\\udcfe': byte \\xff that is not UTF-8"),
        ("img=" + "a" * 100_000, "img: value longer than 4096 characters"),
    ],
)
def test_hostile_command_line_values_are_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, site: Site, command: str, value: str, needle: str
) -> None:
    lines = refused(monkeypatch, site, command, ["-vm", value])
    assert len(lines) == 1 and needle in lines[0], lines


def test_undecodable_argv_bytes_are_one_line_without_traceback(site: Site) -> None:
    result = site.run(["-vm", b"img=\xff\xfe"], stdin=b"#!/bin/sh\necho\n")
    assert result.code == 2 and result.argv is None
    assert result.err == "vm-wrapper: -vm 'img=\\udcff\\udcfe': byte \\xff that is not UTF-8; "\
        "use plain ASCII\n"  # fmt: skip


# -- 5. floods of problems -----------------------------------------------------------------


@pytest.mark.parametrize("value", [",", ",,,", ",vcpus=1", "vcpus=1,", "vcpus=1, ,ram=1G"])
def test_empty_items_give_one_line(
    monkeypatch: pytest.MonkeyPatch, site: Site, command: str, value: str
) -> None:
    assert refused(monkeypatch, site, command, ["-vm", value]) == [EMPTY]


def test_a_hundred_thousand_commas_print_one_line(site: Site) -> None:
    result = site.run(["-vm", "," * 100_000], stdin=b"#!/bin/sh\necho\n")
    assert result.code == 2 and result.argv is None
    assert result.err == f"vm-wrapper: {EMPTY}\n"


def test_many_different_problems_are_capped(
    monkeypatch: pytest.MonkeyPatch, site: Site, command: str
) -> None:
    keys = ",".join(f"k{n}=1" for n in range(50))
    lines = refused(monkeypatch, site, command, ["-vm", keys])
    assert len(lines) == 11 and lines[-1] == "... and 40 more problems"
    assert lines[0].startswith("-vm: unknown key 'k0'")
    lines = refused(monkeypatch, site, command, ["-vm", "k" * 100_000 + "=1"])
    assert len(lines) == 1 and len(lines[0]) <= 300 and lines[0].endswith("...")


def test_missing_value_is_one_line(
    monkeypatch: pytest.MonkeyPatch, site: Site, command: str
) -> None:
    assert refused(monkeypatch, site, command, ["-vm"]) == [
        "-vm needs a value: -vm key=value[,key=value...]"
    ]
    assert refused(monkeypatch, site, command, ["--vm="]) == [
        "--vm needs a value: --vm key=value[,key=value...]"
    ]


# -- whatever the value: refused in a few short lines, or a plain-ASCII VM request ---------

TOKENS = ["vcpus=2", "img=debian12", "ram=1G", "=", ",", " ", "\t", "\r", "\v", "\f", "\x1c",
          "\x85", "\u2028", "\u212a", "\u00b2", "\uff12", "\udcff", "'", '"', "\\", "#", "-vm",
          "--vm-dry-run", "a", "9", "-", ":"]  # fmt: skip
VALUES = st.lists(st.sampled_from(TOKENS), max_size=8).map("".join)


def attempt(
    monkeypatch: pytest.MonkeyPatch, site: Site, command: str, args: list[str], value: str
) -> None:
    """Refused in a few short, distinct lines; or a VM job (never a host job) whose value
    was plain text and whose wrapper holds no stray words for the batch system."""
    try:
        outcome = submit_here(monkeypatch, site, command, args, b"")
    except VmWrapperError as err:
        lines = err.lines()
        assert 1 <= len(lines) <= 11 and len(set(lines)) == len(lines), lines
        assert all(line and "\n" not in line and len(line) <= 300 for line in lines)
        return
    assert isinstance(outcome, (Submitted, int)), outcome
    assert all(c == "\t" or " " <= c <= "~" for c in value), value
    if isinstance(outcome, Submitted):
        assert outcome.stdin is not None and requestblock.find(outcome.stdin) is not None
        lines = submitcore.script_lines(outcome.stdin)
        if command == "qsub":
            found, problems = torque.find_directives(lines, "#PBS")
            assert problems == [] and not any(d.parsed.operands() for d in found)
        else:
            assert slurm.find_directives(lines).problems == []


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(VALUES, st.booleans())
def test_any_vm_value_is_refused_briefly_or_a_clean_vm_job(
    monkeypatch: pytest.MonkeyPatch, site: Site, command: str, value: str, in_script: bool
) -> None:
    if in_script:
        script = f"#!/bin/sh\n{MAGIC[command]} {value}\necho\n"
        site.write("job.sh", script.encode("utf-8", "surrogateescape"))
        attempt(monkeypatch, site, command, ["job.sh"], value)
    else:
        site.write("job.sh", b"#!/bin/sh\necho\n")
        attempt(monkeypatch, site, command, ["-vm", value, "job.sh"], value.replace("\t", "~"))


# -- 6. the file and directive prefix Torque itself reads (qsub's pre-scan) ----------------

VM_SCRIPT = b"#!/bin/sh\n#PBS -vm vcpus=1\necho\n"
PLAIN = b"#!/bin/sh\necho plain\n"


@pytest.mark.parametrize(
    ("args", "stdin", "needle"),
    [
        (["--", "plain.sh"], VM_SCRIPT, "qsub would read the job script from stdin;"),
        (["-hN", "vm.sh", "plain.sh"], b"", "qsub would read the job script from 'vm.sh';"),
        (["vm.sh", "-C", "#X"], b"", "qsub would read directives with prefix '#PBS', not '#X'"),
        (["-vm", "vcpus=1", "-C#X", "plain.sh"], b"", "with prefix 'plain.sh', not '#X'"),
        (["-vm", "vcpus=1", "plain.sh", "-hN", "x"], b"", "the job script from 'x';"),
    ],
)
def test_a_vm_request_qsub_would_read_otherwise_is_refused(
    tmp_path: Path, args: list[str], stdin: bytes, needle: str
) -> None:
    """Torque picks the script and the prefix in a scan before getopt: '-- a.sh' reads
    stdin, '-hN b a.sh' reads b, a -C after the script or attached to -C does not count.
    A -vm Torque would read as '-v m' (or a wrapper it would not read) must not pass."""
    site = Site(tmp_path)
    site.write("vm.sh", VM_SCRIPT)
    site.write("plain.sh", PLAIN)
    result = site.run(list(args), stdin=stdin)
    assert result.code == 2 and result.argv is None, result.err
    assert needle in result.err and len(result.err.splitlines()) == 1, result.err


def test_pbs_dprefix_is_ignored_as_by_torque(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.write("vm.sh", VM_SCRIPT)
    result = site.run(["vm.sh"], PBS_DPREFIX="#X")
    assert result.code == 0 and result.stdin is not None
    block = requestblock.find(result.stdin)
    assert block is not None and block.vm == {"vcpus": "1"}


def test_plain_jobs_torque_reads_its_own_way_still_pass_through(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.write("plain.sh", PLAIN)
    site.write("other.sh", PLAIN)
    site.write("vm.sh", VM_SCRIPT)
    for args in (
        ["-hN", "other.sh", "plain.sh"],
        ["--", "plain.sh"],
        ["plain.sh", "-C", "#X"],
        ["plain.sh", "-hN", "vm.sh"],  # Torque reads plain.sh; vm.sh is only the job name
    ):
        result = site.run(list(args), stdin=b"echo from stdin\n")
        assert result.code == 0 and result.argv == enc(list(args)), (args, result.err)
