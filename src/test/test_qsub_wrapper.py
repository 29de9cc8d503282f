"""The qsub wrapper as users run it: src/scripts/qsub against a stub real qsub.

The stub records its argv (NUL-separated) and stdin, and prints a job id. Most tests run
the shim itself as a subprocess; the fuzz and golden tests call qsub.submit in-process
with exec replaced by a recorder.

Regenerate the golden wrapper:
``VMW_REGEN_GOLDEN=1 python -m pytest src/test/test_qsub_wrapper.py``.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from submit_site import HEAVY, HOST, SCRIPTS, Site, enc, fast_path_modules, wrapper_parts

from vmwrapper import config, jobpayload, requestblock, submitcore
from vmwrapper.batch import torque
from vmwrapper.cli import qsub
from vmwrapper.errors import VmWrapperError
from vmwrapper.request import validate

SHIM = SCRIPTS / "qsub"
GOLDEN = Path(__file__).parent / "golden" / "qsub"
REGEN = os.environ.get("VMW_REGEN_GOLDEN") == "1"
JOB = b"#!/bin/bash\n#PBS -l walltime=00:10:00\n#PBS -vm vcpus=2\n#PBS -j oe\necho hello\n"


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


# -- pass-through ------------------------------------------------------------------------

NASTY: list[str | bytes] = [
    "-N",
    "x",
    "-l",
    "walltime=1:00:00",
    "-lnodes=2:ppn=4",
    "-v",
    "A=a b,B=it's",
    "-M",
    'q"uote',
    "-W",
    "depend=afterok:$HOME",
    "-F",
    "line1\nline2 `id` $(id)",
    "-hz",
    "-e",
    b"/tmp/\xff\xfe-not-utf8",
    "-o",
    "",
    "job.sh",
]


def test_non_vm_job_gets_byte_identical_argv(site: Site) -> None:
    site.write("job.sh", b"#!/bin/sh\n#PBS -q short\nhostname\n#PBS -vm img=late-ignored\n")
    result = site.run(NASTY, stdin=b"untouched stdin")
    assert result.code == 0 and result.out == "42.server\n" and result.err == ""
    assert result.argv == enc(NASTY)
    assert result.stdin == b"untouched stdin"  # a script file given: stdin is not ours


def test_stdin_script_is_handed_on_byte_identical(site: Site) -> None:
    script = b"#!/bin/sh\r\n#PBS -N a\r\necho \xff\xfe raw\n#PBS -vm img=after-command\n" * 20000
    args = ["-q", "batch", "-N", "it's a job"]
    result = site.run(args, stdin=script)
    assert result.code == 0
    assert result.argv == enc(args) and result.stdin == script  # 1.3 MB: not a pipe buffer


def test_stdin_script_without_newline_and_explicit_dash(site: Site) -> None:
    result = site.run(["-"], stdin=b"echo no newline")
    assert result.argv == [b"-"] and result.stdin == b"echo no newline"


def test_interactive_job_stdin_is_not_read(site: Site) -> None:
    result = site.run(["-I", "-l", "nodes=1"], stdin=b"typed later")
    assert result.argv == [b"-I", b"-l", b"nodes=1"] and result.stdin == b"typed later"


def test_value_of_another_option_is_not_a_vm_request(site: Site) -> None:
    site.write("job.sh", b"echo\n")
    result = site.run(["-N", "-vm", "job.sh"])
    assert result.argv == [b"-N", b"-vm", b"job.sh"]


def test_fifo_script_is_left_to_the_real_qsub(site: Site) -> None:
    fifo = site.work / "fifo"
    os.mkfifo(fifo)
    result = site.run([str(fifo)])  # reading it would hang or consume it
    assert result.argv == [str(fifo).encode()]


def test_disable_switch_passes_everything_unparsed(site: Site) -> None:
    site.configure(DISABLE_VM_WRAPPER="true")
    args: list[str | bytes] = ["-vm", "vcpus=999", "--vm-dry-run", "-Q", "job.sh"]
    result = site.run(args)
    assert result.code == 0 and result.argv == enc(args)


def test_nodes_qsub_used_off_the_server(site: Site) -> None:
    site.configure(SERVER_HOSTNAME="some-other-host")
    result = site.run(["-"], stdin=b"echo\n")
    assert result.out == "7.nodes\n"
    site.configure(SERVER_HOSTNAME=HOST.upper())
    assert site.run(["-"], stdin=b"echo\n").out == "42.server\n"


def test_never_execs_itself(site: Site, tmp_path: Path) -> None:
    link = tmp_path / "qsub-link"
    link.symlink_to(SHIM)
    site.configure(REAL_QSUB_ON_SERVER=str(link))
    result = site.run(["-"], stdin=b"echo\n")
    assert result.code != 0 and result.argv is None
    assert "is this qsub wrapper itself" in result.err and "Traceback" not in result.err


def test_missing_real_qsub_is_one_line(site: Site) -> None:
    site.configure(REAL_QSUB_ON_SERVER="/nonexistent/qsub")
    result = site.run(["-"], stdin=b"echo\n")
    assert result.code != 0
    missing = "No such file or directory"
    assert result.err == f"vm-wrapper: cannot run the real qsub /nonexistent/qsub: {missing}\n"


def test_fast_path_imports_almost_nothing(site: Site) -> None:
    site.write("job.sh", b"#!/bin/sh\n#PBS -N x\n#PBS -vmlookalike\necho\n")
    loaded = fast_path_modules(site, "qsub", ["-l", "nodes=1", "job.sh"])
    assert "vmwrapper.batch.torque" in loaded and loaded & HEAVY == set()


# -- VM jobs -----------------------------------------------------------------------------


def test_vm_job_is_submitted_with_wrapper_and_raised_resources(site: Site) -> None:
    site.write("job.sh", JOB)
    result = site.run(["-l", "nodes=2", "-vm", "img=debian12,RAM=2G", "-q", "batch", "job.sh"])
    assert result.code == 0 and result.out == "42.server\n"
    assert result.argv is not None
    assert result.argv[:-2] == enc(
        [
            "-l",
            "nodes=2",
            "-q",
            "batch",
            "-S",
            "/bin/sh",
            "-N",
            "job.sh",
            "-l",
            "nodes=2:ppn=3,mem=6656mb",
        ]
    )
    # The same request, with the same submission id, as its own last -v: every mom reads it
    # from the job's variables (sisters get no script).
    flag, variable = result.argv[-2:]
    assert flag == b"-v" and variable.startswith(b"VMW_REQUEST_V1=")
    carried = requestblock.from_variable(variable.split(b"=", 1)[1].decode())
    assert result.err.splitlines() == [
        "vm-wrapper: raised -l nodes=2 to nodes=2:ppn=3: each node needs 3 cores: "
        "1 for the host OS + 1 VM(s) x 2 vCPU(s)",
        "vm-wrapper: added -l mem=6656mb: 2 node(s) x 3328 MB: 1024 MB for the host OS "
        "+ 1 VM(s) x (2048 MB + 256 MB QEMU overhead)",
    ]
    assert result.stdin is not None
    lines = result.stdin.decode().splitlines()
    assert lines[:3] == ["#!/bin/sh", "#PBS -l walltime=00:10:00", "#PBS -j oe"]
    block, payload = wrapper_parts(result.stdin)
    assert block.vm == {"img": "debian12", "ram": "2G", "vcpus": "2"}
    assert carried == block
    assert payload == jobpayload.Payload(script=JOB, args=(), shell="", name="job.sh")


def test_directives_in_the_wrapper_are_what_torque_reads(site: Site) -> None:
    site.write(
        "job.sh",
        b"#!/bin/sh\n#PBS -N named -vm vcpus=1 \\\n  -q long\n#PBS -vm img=debian12\necho\n",
    )
    result = site.run(["job.sh"])
    assert result.code == 0 and result.stdin is not None
    assert b"-N" not in b" ".join(result.argv or [])  # the script names the job itself
    found, problems = torque.find_directives(submitcore.script_lines(result.stdin), "#PBS")
    assert problems == [] and [d.words for d in found] == [["-N", "named", "-q", "long"]]
    assert not any(d.parsed.has(torque.VM) for d in found)
    rest = result.stdin.decode().splitlines()[found[-1].last + 1 :]
    assert next(line for line in rest if torque.is_executable(line)).startswith("exec ")


def test_command_line_wins_and_options_reach_the_payload(site: Site) -> None:
    site.write("job.sh", b"#!/bin/sh\n#PBS -vm vcpus=2,ram=512M\n#PBS -S /bin/zsh\necho\n")
    result = site.run(["-vm", "vcpus=1", "-F", "one two", "-N", "mine", "job.sh"])
    assert result.code == 0 and result.stdin is not None
    block, payload = wrapper_parts(result.stdin)
    assert block.vm == {"vcpus": "1", "ram": "512M"}
    assert (payload.args, payload.shell, payload.name) == (("one", "two"), "/bin/zsh", "mine")
    expected = ["-F", "one two", "-N", "mine", "-S", "/bin/sh", "-l", "nodes=1:ppn=2,mem=1792mb"]
    assert result.argv is not None and result.argv[:-2] == enc(expected)
    assert result.argv[-2] == b"-v" and result.argv[-1].startswith(b"VMW_REQUEST_V1=")


def test_stdin_vm_job_is_named_stdin(site: Site) -> None:
    result = site.run(["-vm", "vcpus=1"], stdin=JOB)
    assert result.code == 0 and result.stdin is not None
    assert result.argv is not None and result.argv[-6:-4] == [b"-N", b"STDIN"]
    assert wrapper_parts(result.stdin)[1].script == JOB


def test_later_edits_to_the_script_change_nothing(site: Site) -> None:
    path = site.write("job.sh", JOB)
    result = site.run(["job.sh"])
    path.write_bytes(b"#!/bin/sh\nrm -rf ~\n")
    assert result.stdin is not None and wrapper_parts(result.stdin)[1].script == JOB


def test_embedded_files_travel_in_the_request_line(site: Site) -> None:
    site.write("pro.sh", b"#!/bin/sh\necho pro\n")
    site.write("meta.yaml", b"#cloud-config\npackages: [htop]\n")
    vm = f"vm_prologue={site.work}/pro.sh,metadata={site.work}/meta.yaml"
    result = site.run(["-vm", vm], stdin=b"echo\n")
    assert result.code == 0 and result.stdin is not None
    block, _ = wrapper_parts(result.stdin)
    assert block.files == {
        "vm_prologue": b"#!/bin/sh\necho pro\n",
        "metadata": b"#cloud-config\npackages: [htop]\n",
    }


def test_dry_run_prints_and_submits_nothing(site: Site) -> None:
    site.write("job.sh", JOB)
    result = site.run(["--vm-dry-run", "-l", "nodes=1:ppn=8,mem=64gb", "job.sh"])
    assert result.code == 0 and result.argv is None
    out = result.out.splitlines()
    command = f"{site.root}/stub-qsub -l nodes=1:ppn=8,mem=64gb -S /bin/sh -N job.sh -v "
    assert out[1].startswith(command + "VMW_REQUEST_V1=")
    assert out[3] == "#!/bin/sh" and "VMW_PAYLOAD_END" in out[-1]
    assert result.err == ""  # enough cores and memory: nothing raised


def test_dry_run_of_a_plain_job_shows_it_unchanged(site: Site) -> None:
    result = site.run(["-q", "x", "--vm-dry-run"], stdin=b"echo plain\n")
    assert result.code == 0 and result.argv is None
    assert result.out.splitlines()[1:] == [
        f"{site.root}/stub-qsub -q x",
        "# with this job script on its stdin:",
        "echo plain",
    ]


def test_interactive_vm_job_is_validated_then_runs_the_wrapper_in_the_session(
    site: Site,
) -> None:
    result = site.run(["-I", "-vm", "vcpus=999"])
    assert result.code != 0 and result.argv is None
    assert result.err == "vm-wrapper: vcpus='999': allowed: 1 to 64 (site limit)\n"
    session = site.write("interactive-job", b"#!/bin/sh\n")
    site.configure(INTERACTIVE_SCRIPT=str(session))
    result = site.run(["-I", "-vm", "vcpus=1"], stdin=b"typed by the user\n")
    assert result.code == 0, result.err
    assert result.argv is not None
    # qsub -I -x PATH: Torque ships no script for -I and runs PATH (bash -c) on the
    # session's terminal, on the mother superior; the request goes as a job variable.
    assert result.argv[0] == b"-I" and result.argv[-2:] == [b"-x", str(session).encode()]
    assert result.argv[-4] == b"-v" and result.argv[-3].startswith(b"VMW_REQUEST_V1=")
    block = requestblock.from_variable(result.argv[-3].split(b"=", 1)[1].decode())
    assert block.vm["vcpus"] == "1"
    assert result.stdin == b"typed by the user\n"  # the terminal stays stdin, untouched


def test_interactive_vm_job_needs_the_session_script_here(site: Site) -> None:
    site.configure(INTERACTIVE_SCRIPT="/nonexistent/interactive-job")
    result = site.run(["-I", "-vm", "vcpus=1"])
    assert result.code != 0 and result.argv is None
    assert "INTERACTIVE_SCRIPT /nonexistent/interactive-job is missing" in result.err


def test_disabled_host_refuses_vm_jobs_only(site: Site) -> None:
    site.configure(DISABLED_HOSTS_LIST=f"{HOST[:1]}.*")
    result = site.run(["-vm", "vcpus=1"], stdin=b"echo\n")
    assert result.code != 0 and result.argv is None and "DISABLED_HOSTS_LIST" in result.err
    assert site.run(["-q", "x"], stdin=b"echo\n").argv == [b"-q", b"x"]


# -- every bad input: one line naming the key, non-zero, nothing submitted or written -----


def bad_inputs(site: Site) -> list[tuple[list[str], str]]:
    w = site.work
    (site.root / "outside.qcow2").write_bytes(b"")
    (site.root / "pool" / "escape.qcow2").symlink_to(site.root / "outside.qcow2")
    site.write("big.sh", b"#" * (257 * 1024))
    site.write("pro.sh", b"echo\n")
    (w / "link.sh").symlink_to(w / "pro.sh")
    site.write("list.yaml", b"- a\n- b\n")
    site.write("bad.yaml", b"a: [\n")
    site.write("deep.yaml", b"packages: " + b"[" * 1500 + b"]" * 1500)  # was exit 70
    site.write("runcmd.yaml", b"runcmd: [reboot]\n")
    site.write("disk.img", b"")
    (w / "disk-link.img").symlink_to(w / "disk.img")
    site.write("not-mine.img", b"")
    os.chown(w / "not-mine.img", 65534, 65534)
    return [
        (["-vm", "color=red"], "vm-wrapper: -vm: unknown key 'color' (known: img, distro"),
        (["-vm", "vcpus=65"], "vm-wrapper: vcpus='65': allowed: 1 to 64 (site limit)"),
        (["-vm", "ram=1T"], "vm-wrapper: ram='1T': allowed: 256M to 262144M (site limit)"),
        (["-vm", "vrdma=on"], "vm-wrapper: vrdma='on': this device option is not enabled"),
        (["-vm", "img=centos"], "vm-wrapper: img='centos': no such image in IMAGE_POOL"),
        (["-vm", "img=escape"], "vm-wrapper: img='escape': "),
        (["-vm", f"vm_prologue={w}/big.sh"], "larger than 256 KB (MAX_USER_FILE_KB)"),
        (["-vm", f"vm_epilogue={w}/link.sh"], f"vm_epilogue='{w}/link.sh': is a symlink"),
        (["-vm", f"metadata={w}/list.yaml"], "must be a YAML mapping"),
        (["-vm", f"metadata={w}/bad.yaml"], "not valid YAML at line"),
        (["-vm", f"metadata={w}/deep.yaml"], "nests deeper than 32 levels"),
        (["-vm", f"metadata={w}/runcmd.yaml"], "key 'runcmd' is not allowed (allowed: packages"),
        (["-vm", f"disk={w}/disk-link.img"], "must be a regular file, not a symlink"),
        (["-vm", f"disk={w}/not-mine.img"], "must be a file you own"),
        (["-vm", f"disk={w}/none.img"], "cannot use it (No such file or directory)"),
        (["-vm", "vcpus=1", "-l", "procs=4"], "-l procs=4: VM jobs need node requests"),
        (["-vm", "vcpus=1", "-l", "nodes=1:ppn=x"], "-l nodes=1:ppn=x: cannot read it"),
        (["-vm", "vcpus=1", "-Y"], "unknown qsub option -Y"),
        (["-vm", "vcpus=1", "pro.sh", "b.sh"], "qsub takes one job script"),
        (["-vm", "vcpus=1", "-C", "#%"], "directive prefix '#%' clashes"),
        (["-vm", "vcpus=1", f"{w}/big.sh"], "job script: larger than 256 KB"),
    ]


def test_each_bad_input_is_one_clear_line_and_nothing_happens(site: Site) -> None:
    for args, needle in bad_inputs(site):
        before = sorted(site.work.iterdir())
        result = site.run(args, stdin=b"#!/bin/sh\necho\n")
        assert result.code != 0, args
        assert result.argv is None, args  # nothing submitted
        assert len(result.err.splitlines()) == 1 and needle in result.err, (args, result.err)
        assert "Traceback" not in result.err
        assert sorted(site.work.iterdir()) == before and list(site.tmp.iterdir()) == []


def test_all_problems_are_reported_together(site: Site) -> None:
    site.write("job.sh", b"#!/bin/sh\n#PBS -vm distro=windows\necho\n")
    result = site.run(["-vm", "vcpus=0,ram=lots,fs_type=nfs", "-l", "ncpus=2", "job.sh"])
    assert result.code == 2 and result.argv is None
    keys = sorted(line.split("=")[0] for line in result.err.splitlines())
    assert keys == [
        "vm-wrapper: -l ncpus",
        "vm-wrapper: distro",
        "vm-wrapper: fs_type",
        "vm-wrapper: ram",
        "vm-wrapper: vcpus",
    ]


def test_one_bad_key_hides_no_other_problem(site: Site) -> None:
    result = site.run(["-vm", "img=centos7,vcpus=128,iocm=true,colour=red"], stdin=b"echo\n")
    assert result.code == 2 and result.argv is None
    starts = sorted(line.split("=")[0].split(":")[1].strip() for line in result.err.splitlines())
    assert starts == ["-vm", "img", "iocm", "vcpus"]


def test_broken_site_config_is_reported_not_raised(site: Site) -> None:
    site.conf.write_text(site.conf.read_text() + "TIMEOUT=$(reboot)\n")
    result = site.run(["-vm", "vcpus=1"], stdin=b"echo\n")
    assert result.code != 0 and result.argv is None
    assert "the site configuration is invalid" in result.err and "TIMEOUT" in result.err
    assert site.run(["-q", "x"], stdin=b"echo\n").argv == [b"-q", b"x"]  # plain jobs still go


# -- in-process: golden wrapper, request round trip, fuzzing ------------------------------


class Submitted(Exception):
    def __init__(self, real: str, args: list[str], stdin: bytes | None) -> None:
        super().__init__(real)
        self.real, self.argv, self.stdin = real, args, stdin


def submit_here(
    monkeypatch: pytest.MonkeyPatch, site: Site, args: list[str], stdin: bytes = b""
) -> Any:
    def fake_exec(real: str, argv: list[str], data: bytes | None) -> None:
        raise Submitted(real, list(argv), data)

    monkeypatch.setattr(qsub, "exec_qsub", fake_exec)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    monkeypatch.setenv("VM_WRAPPER_CONF", str(site.conf))
    monkeypatch.chdir(site.work)
    try:
        return qsub.submit(args, str(SHIM), dict(os.environ))
    except Submitted as done:
        return done


def check_golden(name: str, data: bytes) -> None:
    path = GOLDEN / name
    if REGEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    assert path.is_file(), f"no golden file {path}; run with VMW_REGEN_GOLDEN=1"
    assert data == path.read_bytes(), f"{name} differs from its golden file (VMW_REGEN_GOLDEN=1)"


def test_golden_wrapper_and_request_round_trip(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    site = Site(tmp_path)
    site.configure(IMAGE_POOL="/nonexistent-pool", NODE_PYTHON="/opt/vm wrapper/bin/python3")
    script = (
        b"#!/bin/bash\n#PBS -l walltime=1:00:00\n#PBS -vm vcpus=2,ram=2G\n#PBS -N golden\necho hi\n"
    )
    site.write("job.sh", script)
    monkeypatch.setattr(requestblock, "new_submission_id", lambda: "5" * 32)
    done = submit_here(
        monkeypatch, site, ["-vm", "img=debian12,vms_per_node=2", "-q", "b", "job.sh"]
    )
    assert isinstance(done, Submitted) and done.stdin is not None
    check_golden("wrapper.sh", done.stdin)
    block = requestblock.find(done.stdin)
    assert block is not None
    cfg = config.load()
    asked = {"vcpus": "2", "ram": "2G", "img": "debian12", "vms_per_node": "2"}
    assert validate(block.vm, cfg) == validate(asked, cfg)
    assert done.argv[-4:-2] == ["-l", "nodes=1:ppn=5,mem=5632mb"]


FUZZ_WORDS = [
    "-vm",
    "-l",
    "-I",
    "-N",
    "--",
    "-",
    "--vm-dry-run",
    "-C",
    "job.sh",
    "-lnodes=2",
    "nodes=x:ppn=",
    "mem=1",
    "procs=2",
    "-S",
    "-F",
    "vcpus=2",
    "img=debian12,ram=1T",
]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.one_of(st.sampled_from(FUZZ_WORDS), st.text(max_size=15)),
        max_size=8,
    ),
    st.binary(max_size=200),
)
def test_fuzzed_argv_never_gives_a_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: list[str], stdin: bytes
) -> None:
    site_dir = tmp_path / "fuzz"
    if not site_dir.exists():
        site_dir.mkdir()
        Site(site_dir).write("job.sh", JOB)
    site = Site.__new__(Site)
    site.root, site.work, site.conf = site_dir, site_dir / "work", site_dir / "vm-wrapper.conf"
    args = [a.replace("\x00", "") for a in args]
    try:
        outcome = submit_here(monkeypatch, site, args, stdin)
    except VmWrapperError as err:
        assert err.lines() and all(line and "\n" not in line for line in err.lines())
        return
    assert isinstance(outcome, (Submitted, int))


def test_payload_round_trip_and_damage() -> None:
    payload = jobpayload.Payload(script=b"\x00\xff#!", args=("a", "b c"), shell="", name="n")
    assert jobpayload.decode(jobpayload.encode(payload)) == payload
    for bad in ("", "!!", "e30=", jobpayload.encode(payload)[:-8]):
        with pytest.raises(VmWrapperError):
            jobpayload.decode(bad)


def test_template_is_found_in_the_source_tree() -> None:
    from importlib import resources

    template = resources.files("vmwrapper.templates").joinpath("jobwrapper.sh.tmpl")
    assert Path(str(template)) == REPO / "src" / "templates" / "jobwrapper.sh.tmpl"
    assert shutil.which("sh")  # the wrapper is a sh script
