"""The sbatch wrapper as users run it: src/scripts/sbatch against a stub real sbatch.

The stub records its argv (NUL-separated) and stdin, and prints a job id (submit_site).
The fuzz test calls sbatch.submit in-process with exec replaced by a recorder. What the
wrapper produces runs on a real Slurm in test_slurm_e2e.py.
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
from submit_site import HEAVY, SCRIPTS, Site, enc, fast_path_modules, wrapper_parts

from vmwrapper import jobpayload, submitcore
from vmwrapper.batch import slurm_submit as slurm
from vmwrapper.cli import sbatch
from vmwrapper.errors import VmWrapperError

SHIM = SCRIPTS / "sbatch"
JOB = b"#!/bin/bash\n#SBATCH -t 10\n#SBATCH --vm vcpus=2\n#SBATCH -o out-%j.txt\necho hello\n"
RAISED = [
    "vm-wrapper: added --cpus-per-task=3: each node needs 3 cores: 1 for the host OS"
    " + 1 VM(s) x 2 vCPU(s)",
    "vm-wrapper: added --mem=3328M: each node needs 3328 MB: 1024 MB for the host OS"
    " + 1 VM(s) x (2048 MB + 256 MB QEMU overhead)",
]


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path, "sbatch")


# -- pass-through ------------------------------------------------------------------------

NASTY: list[str | bytes] = [
    "-J", "x y", "--export=A=a b,B=it's", "-N2", "--mem", "4G", "--comment", 'q"uote $HOME',
    "-vH", "--begin=now+1hour", "-e", b"/tmp/\xff\xfe-not-utf8", "--wrap", "echo `id` $(id)\nls",
]  # fmt: skip


def test_non_vm_job_gets_byte_identical_argv(site: Site) -> None:
    site.write("job.sh", b"#!/bin/sh\n#SBATCH -p short\nhostname\n#SBATCH --vm img=ignored\n")
    args: list[str | bytes] = ["-N", "1", "--mem=1G", "job.sh", "--vm", "vcpus=2", "a b"]
    result = site.run(args, stdin=b"untouched stdin")
    assert result.code == 0 and result.out == "43\n" and result.err == ""
    assert result.argv == enc(args)  # after the script: the script's own arguments
    assert result.stdin == b"untouched stdin"  # a script file given: stdin is not ours
    result = site.run(NASTY, stdin=b"not read")
    assert result.code == 0 and result.argv == enc(NASTY) and result.stdin == b"not read"


def test_stdin_script_is_handed_on_byte_identical(site: Site) -> None:
    script = b"#!/bin/sh\n#SBATCH -J a\necho \xff\xfe raw\n#SBATCH --vm img=late\n" * 30000
    result = site.run(["-p", "batch", "-J", "it's a job"], stdin=script)
    assert result.code == 0 and result.stdin == script  # 1.6 MB: not a pipe buffer
    assert result.argv == enc(["-p", "batch", "-J", "it's a job"])


def test_values_of_other_options_and_torque_habits(site: Site) -> None:
    site.write("job.sh", b"#!/bin/sh\necho\n")
    assert site.run(["-J", "--vm", "job.sh"]).argv == [b"-J", b"--vm", b"job.sh"]
    assert site.run(["-J", "-vm", "job.sh"]).argv == [b"-J", b"-vm", b"job.sh"]


def test_script_from_path_is_read_like_sbatch_does(site: Site) -> None:
    bindir = site.root / "bin"
    bindir.mkdir()
    (bindir / "myjob").write_bytes(b"#!/bin/sh\n#SBATCH --vm vcpus=1\necho\n")
    path = f"{bindir}:/usr/bin:/bin"
    result = site.run(["--vm-dry-run", "myjob"], PATH=path)
    assert result.code == 0 and result.argv is None  # found in PATH: a VM job, dry run
    assert "#%VMW-REQUEST-V1 " in result.out and 'vcpus":"1"' in result.out


def test_disable_switch_passes_everything_unparsed(site: Site) -> None:
    site.configure(DISABLE_VM_WRAPPER="yes")
    args: list[str | bytes] = ["--vm", "vcpus=999", "--vm-dry-run", "--bogus", "job.sh"]
    result = site.run(args)
    assert result.code == 0 and result.argv == enc(args)


def test_never_execs_itself_and_missing_real_sbatch(site: Site, tmp_path: Path) -> None:
    link = tmp_path / "sbatch-link"
    link.symlink_to(SHIM)
    site.configure(REAL_SBATCH=str(link))
    result = site.run(["--wrap", "true"])
    assert result.code != 0 and result.argv is None
    assert "is this sbatch wrapper itself" in result.err and "Traceback" not in result.err
    site.configure(REAL_SBATCH="/nonexistent/sbatch")
    result = site.run(["--wrap", "true"])
    missing = "No such file or directory"
    assert result.err == f"vm-wrapper: cannot run the real sbatch /nonexistent/sbatch: {missing}\n"


def test_fast_path_imports_almost_nothing(site: Site) -> None:
    site.write("job.sh", b"#!/bin/sh\n#SBATCH -J x\n#SBATCH -vm-lookalike\necho\n")
    loaded = fast_path_modules(site, "sbatch", ["-N", "1", "job.sh"])
    assert "vmwrapper.batch.slurm_submit" in loaded and loaded & HEAVY == set()


# -- VM jobs -----------------------------------------------------------------------------


def test_vm_job_is_submitted_with_wrapper_raised_resources_and_tag(site: Site) -> None:
    site.write("job.sh", JOB)
    args = ["-N2", "--vm", "img=debian12,RAM=2G", "-p", "batch", "job.sh", "one", "two words"]
    result = site.run(args)
    assert result.code == 0 and result.out == "43\n"
    assert result.argv == enc(["-N2", "-p", "batch", "--comment=vm-wrapper", "--job-name=job.sh",
                               "--cpus-per-task=3", "--mem=3328M"])  # fmt: skip
    assert result.err.splitlines() == RAISED
    assert result.stdin is not None
    lines = result.stdin.decode().splitlines()
    assert lines[:3] == ["#!/bin/sh", "#SBATCH -t 10", "#SBATCH -o out-%j.txt"]
    block, payload = wrapper_parts(result.stdin)
    assert block.vm == {"img": "debian12", "ram": "2G", "vcpus": "2"}
    assert payload == jobpayload.Payload(
        script=JOB, args=("one", "two words"), shell="", name="job.sh"
    )


def test_directives_in_the_wrapper_are_what_sbatch_reads(site: Site) -> None:
    site.write("job.sh", b"#!/bin/sh\n#SBATCH -J named --vm vcpus=1 -q 'lo ng'\n#PBS -l x\necho\n")
    result = site.run(["job.sh"])
    assert result.code == 0 and result.stdin is not None
    assert not [a for a in result.argv or [] if a.startswith(b"--job-name")]  # the script's -J
    found = slurm.find_directives(submitcore.script_lines(result.stdin))
    assert found.problems == [] and found.words == ["-J", "named", "-q", "lo ng"]
    assert not found.parsed.has(slurm.VM) and found.lines == [1, 2]
    assert wrapper_parts(result.stdin)[1].name == "named"


def test_users_comment_follows_the_tag(site: Site) -> None:
    site.write("job.sh", b"#!/bin/sh\n#SBATCH --comment='from the script'\necho\n")
    result = site.run(["-vm", "vcpus=1", "job.sh"])  # -vm: users coming from Torque
    assert result.argv is not None and b"--comment=vm-wrapper; from the script" in result.argv
    result = site.run(["--comment", "mine", "-vm", "vcpus=1", "job.sh"])
    assert result.argv is not None and b"mine" not in result.argv  # replaced by ours:
    assert b"--comment=vm-wrapper; mine" in result.argv


def test_command_line_wins_and_requests_merge(site: Site) -> None:
    site.write(
        "job.sh", b"#!/bin/sh\n#SBATCH --vm vcpus=2,ram=512M\n#SBATCH -c 8 --mem=64G\necho\n"
    )
    result = site.run(["--vm", "vcpus=1", "--ntasks-per-node=1", "job.sh"])
    assert result.code == 0 and result.stdin is not None and result.err == ""  # fits
    assert wrapper_parts(result.stdin)[0].vm == {"vcpus": "1", "ram": "512M"}
    result = site.run(["--vm", "vcpus=1", "--ntasks-per-node=1", "-c1", "job.sh"])
    assert result.argv is not None and result.argv[-1] == b"--ntasks-per-node=2"
    assert result.err.startswith("vm-wrapper: raised --ntasks-per-node=1 to --ntasks-per-node=2")


def test_sbatch_environment_counts_between_script_and_command_line(site: Site) -> None:
    site.write("job.sh", b"#!/bin/sh\n#SBATCH --mem=1G\necho\n")
    result = site.run(["--vm", "vcpus=1", "job.sh"], SBATCH_MEM_PER_CPU="100", SBATCH_JOB_NAME="e")
    assert result.argv is not None  # the script's --mem beats SBATCH_MEM_PER_CPU
    assert result.argv[-2:] == [b"--cpus-per-task=2", b"--mem=2304M"]
    assert not [a for a in result.argv if a.startswith(b"--job-name")]  # sbatch reads it
    site.write("job.sh", b"#!/bin/sh\necho\n")
    result = site.run(["--vm", "vcpus=1", "job.sh"], SBATCH_MEM_PER_CPU="100")
    assert result.argv is not None and result.argv[-1] == b"--mem-per-cpu=1152M"


def test_wrap_and_stdin_vm_jobs(site: Site) -> None:
    result = site.run(["--vm", "vcpus=1", "--wrap", "hostname; id"])
    assert result.code == 0 and result.stdin is not None and result.argv is not None
    assert b"--job-name=wrap" in result.argv and not [a for a in result.argv if b"wrap " in a]
    assert wrapper_parts(result.stdin)[1].script == slurm.wrap_script("hostname; id")
    result = site.run(["--vm", "vcpus=1"], stdin=JOB)
    assert result.stdin is not None and wrapper_parts(result.stdin)[1].script == JOB
    assert result.argv is not None and b"--job-name=sbatch" in result.argv


def test_dry_run_prints_and_submits_nothing(site: Site) -> None:
    site.write("job.sh", JOB)
    result = site.run(["--vm-dry-run", "-c", "4", "--mem=8G", "job.sh"])
    assert result.code == 0 and result.argv is None and result.err == ""  # nothing raised
    out = result.out.splitlines()
    stub = site.root / "stub-sbatch"
    assert out[1] == f"{stub} -c 4 --mem=8G --comment=vm-wrapper --job-name=job.sh"
    assert out[3] == "#!/bin/sh" and "VMW_PAYLOAD_END" in out[-1]
    plain = site.run(["-p", "x", "--vm-dry-run"], stdin=b"#!/bin/sh\necho plain\n")
    assert plain.out.splitlines()[1:] == [f"{stub} -p x", "# with this job script on its stdin:",
                                          "#!/bin/sh", "echo plain"]  # fmt: skip


# -- every bad input: one line, non-zero, nothing submitted or written ---------------------


def bad_inputs(site: Site) -> list[tuple[list[str], bytes, str]]:
    ok = b"#!/bin/sh\necho\n"
    (site.work / "adir").mkdir()
    return [
        (["--vm", "vcpus=1", "adir"], ok, "job script 'adir': not a readable regular file"),
        (["--vm", f"vm_prologue={site.work}/adir"], ok, "adir': not a regular file"),
        (["--vm", "color=red"], ok, "vm-wrapper: -vm: unknown key 'color' (known: img, distro"),
        (["--vm", "vcpus=65"], ok, "vm-wrapper: vcpus='65': allowed: 1 to 64 (site limit)"),
        (["--vm", "img=centos"], ok, "vm-wrapper: img='centos': no such image in IMAGE_POOL"),
        (["--vm", "vcpus=1", "--bogus"], ok, "vm-wrapper: unknown sbatch option --bogus"),
        (["--vm", "vcpus=1", "--mem-per-gpu=1G"], ok, "--mem-per-gpu: VM jobs size nodes by"),
        (["--vm", "vcpus=1", "-N1", ":", "-N2"], ok, "heterogeneous jobs"),
        (["--vm", "vcpus=1", "--mem=lots"], ok, "--mem=lots: not a size sbatch reads"),
        (["--vm", "vcpus=1"], b"echo no shebang\n", "first line must be #!"),
        (["--vm", "vcpus=1"], b"#!/bin/sh\r\necho\r\n", "DOS line breaks"),
        ([], b"#!/bin/sh\n#PBS -vm vcpus=1\necho\n", "script line 2: '#PBS -vm' is for qsub"),
        ([], b"#!/bin/sh\n#SBATCH --vm vcpus=1 'open\n", "script line 2: unmatched '"),
        (["--vm", "vcpus=1", "--wrap", "x", "job.sh"], ok, "--wrap takes no script"),
        (["--vm", "vcpus=1", "none.sh"], ok, "job script 'none.sh': not a readable regular"),
    ]


def test_each_bad_input_is_one_clear_line_and_nothing_happens(site: Site) -> None:
    for args, stdin, needle in bad_inputs(site):
        before = sorted(site.work.iterdir())
        result = site.run(list(args), stdin=stdin)
        assert result.code != 0 and result.argv is None, args
        assert len(result.err.splitlines()) == 1 and needle in result.err, (args, result.err)
        assert sorted(site.work.iterdir()) == before and list(site.tmp.iterdir()) == []


# -- in-process fuzzing --------------------------------------------------------------------


class Submitted(Exception):
    def __init__(self, args: list[str], stdin: bytes | None) -> None:
        super().__init__("submitted")
        self.argv, self.stdin = args, stdin


def submit_here(monkeypatch: pytest.MonkeyPatch, site: Site, args: list[str], stdin: bytes) -> Any:
    def fake_exec(real: str, argv: list[str], data: bytes | None) -> None:
        raise Submitted(list(argv), data)

    monkeypatch.setattr(sbatch, "exec_sbatch", fake_exec)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    monkeypatch.setenv("VM_WRAPPER_CONF", str(site.conf))
    monkeypatch.chdir(site.work)
    try:
        return sbatch.submit(args, str(SHIM), dict(os.environ))
    except Submitted as done:
        return done


FUZZ_WORDS = ["--vm", "-vm", "--vm-dry-run", "-N", "-N2", "--mem", "--mem=1", "-c", ":", "--",
              "--wrap", "--comment", "job.sh", "vcpus=2", "img=debian12,ram=1T", "-n3",
              "--ntasks-per-node=0", "--mem-per-cpu=x"]  # fmt: skip


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.one_of(st.sampled_from(FUZZ_WORDS), st.text(max_size=15)), max_size=8),
    st.binary(max_size=200),
)
def test_fuzzed_argv_never_gives_a_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: list[str], stdin: bytes
) -> None:
    site_dir = tmp_path / "fuzz"
    if not site_dir.exists():
        site_dir.mkdir()
        Site(site_dir, "sbatch").write("job.sh", JOB)
    site = Site.__new__(Site)
    site.root, site.work, site.conf = site_dir, site_dir / "work", site_dir / "vm-wrapper.conf"
    args = [a.replace("\x00", "") for a in args]
    try:
        outcome = submit_here(monkeypatch, site, args, stdin)
    except VmWrapperError as err:
        assert err.lines() and all(line and "\n" not in line for line in err.lines())
        return
    assert isinstance(outcome, (Submitted, int))
