"""The Slurm hooks on a REAL Slurm 22.05: slurmctld, two slurmd (n1, n2) and munge on this
host, all inside netns 'vmw' (tools/slurm-cluster), with slurm.conf's Prolog/Epilog set
to our shims in slurm/. Jobs are submitted as the unprivileged user vmwtest.

Nothing here boots a VM: these tests cover what must hold for every job (non-VM jobs run
untouched) and the failure path of a bad request (the job fails readably, no node drains).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from torque_harness import ensure_job_user

from vmwrapper import requestblock

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "tools" / "slurm-cluster"
NS = ["ip", "netns", "exec", "vmw"]
STATE_JOBS = Path("/var/lib/vm-wrapper/state/jobs")  # STATE_DIR's default
MARKERS = Path("/run/vm-wrapper/slurm")
LOGS = Path("/var/log/vm-wrapper")
FINAL = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}

pytestmark = pytest.mark.needs("slurmctld", "slurmd", "sbatch", "munged", "root")


def ctl(*argv: str, timeout: float = 30) -> str:
    """A Slurm client as root, inside the netns where slurmctld listens."""
    done = subprocess.run(
        [*NS, *argv], check=False, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{argv}: {done.stderr}"
    return done.stdout


@pytest.fixture(scope="session")
def cluster() -> Iterator[None]:
    """The two-node cluster; started (and later stopped) here only if it was not up."""
    up = subprocess.run([str(CLUSTER), "status"], check=False, capture_output=True).returncode == 0
    if not up:
        subprocess.run([str(CLUSTER), "start"], check=True, capture_output=True, timeout=900)
    yield
    if not up:
        subprocess.run([str(CLUSTER), "stop"], check=True, capture_output=True)


class Submitter:
    """sbatch as vmwtest from a directory vmwtest owns; cancels what it submitted."""

    def __init__(self) -> None:
        self.user = ensure_job_user("vmwtest", 2000)
        self.dir = Path(tempfile.mkdtemp(prefix="vmw-slurm-", dir="/tmp"))
        os.chmod(self.dir, 0o755)
        os.chown(self.dir, self.user.uid, self.user.gid)
        self.jobs: list[str] = []

    def sbatch(self, script: str, *options: str) -> str:
        path = self.dir / f"job{len(self.jobs)}.sh"
        path.write_text(script)
        argv = ["runuser", "-u", self.user.name, "--", "sbatch", "--parsable"]
        argv += ["-D", str(self.dir), "-o", f"{self.dir}/out-%j.txt", *options, str(path)]
        jobid = ctl(*argv).strip().split(";")[0]
        self.jobs.append(jobid)
        return jobid

    def output(self, jobid: str) -> str | None:
        """The job's output, lines sorted (srun -l tasks print in any order)."""
        out = self.dir / f"out-{jobid}.txt"
        return "".join(sorted(out.read_text().splitlines(True))) if out.exists() else None

    def cleanup(self) -> None:
        for jobid in self.jobs:
            subprocess.run([*NS, "scancel", jobid], check=False, capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def submit(cluster: None) -> Iterator[Submitter]:
    submitter = Submitter()
    yield submitter
    submitter.cleanup()
    assert not drained(), "a test left a node drained"


def job_fields(jobid: str) -> dict[str, str]:
    """A few fields of `scontrol show job` (the Comment may hold '=': it comes from squeue)."""
    text = ctl("scontrol", "show", "job", "-o", jobid)
    fields = {
        key: re.search(rf"\b{key}=(\S*)", text).group(1)  # type: ignore[union-attr]
        for key in ("JobState", "Reason", "Restarts", "ExitCode", "NodeList")
    }
    fields["Comment"] = ctl("squeue", "-h", "-t", "all", "-j", jobid, "-o", "%k").strip()
    return fields


def wait_final(jobid: str, timeout: float = 60) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fields = job_fields(jobid)
        if fields["JobState"] in FINAL:
            return fields
        time.sleep(0.2)
    raise AssertionError(f"job {jobid} not finished after {timeout} s: {fields}")


def node_states() -> dict[str, str]:
    lines = ctl("sinfo", "-h", "-N", "-o", "%N %t").split("\n")
    return dict(line.split() for line in lines if line.strip())


def drained() -> dict[str, str]:
    """Nodes that are drained, draining or down (other jobs may keep them busy: allowed)."""
    bad = ("drain", "drng", "down", "fail")
    return {n: s for n, s in node_states().items() if s.rstrip("*~#!%$@^-") in bad}


def no_trace_of(jobid: str) -> None:
    assert not (STATE_JOBS / jobid).exists(), "a state dir was created"
    assert not list(MARKERS.glob(f"{jobid}.*")), "the Prolog's marker or script copy is left"


LIST_NODES = (
    "#!/bin/bash\necho nodes=$SLURM_JOB_NODELIST\nsrun -l -N2 -n2 printenv SLURMD_NODENAME\n"
)
LISTED = "0: n1\n1: n2\nnodes=n[1-2]\n"


def log_size(jobid: str) -> int:
    """Job ids restart at 1 with a fresh slurmctld state: an old log may carry this id."""
    path = LOGS / f"{jobid}.log"
    return path.stat().st_size if path.exists() else 0


def test_non_vm_job_runs_untouched_on_two_nodes(submit: Submitter) -> None:
    prolog = REPO / "slurm" / "prolog"
    assert f"Prolog={prolog}" in ctl("scontrol", "show", "config").replace(" ", "")
    # relatime updates atime only when it is older than a day: back-date it, and any read
    # of the shim from now on (slurmd running it) moves it forward
    os.utime(prolog, (time.time() - 3 * 86400, prolog.stat().st_mtime))
    before = prolog.stat().st_atime
    jobid = submit.sbatch(LIST_NODES, "-N2", "--hold")
    logged = log_size(jobid)
    ctl("scontrol", "release", jobid)
    fields = wait_final(jobid)
    assert (fields["JobState"], fields["ExitCode"], fields["Restarts"]) == ("COMPLETED", "0:0", "0")
    assert submit.output(jobid) == LISTED
    assert prolog.stat().st_atime > before, "slurmd did not run our Prolog shim"
    assert log_size(jobid) == logged, "an untagged job must not reach Python"
    no_trace_of(jobid)


def test_tagged_job_without_request_runs_untouched(submit: Submitter) -> None:
    """--comment=vm-wrapper alone takes the full hook path: it fetches Slurm's copy of
    the script, finds no request, and lets the job run as it is."""
    jobid = submit.sbatch(LIST_NODES, "-N2", "--comment=vm-wrapper", "--hold")
    logged = log_size(jobid)
    ctl("scontrol", "release", jobid)
    fields = wait_final(jobid)
    assert (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0")
    assert submit.output(jobid) == LISTED
    log = (LOGS / f"{jobid}.log").read_text()[logged:]
    assert log.count("job script fetched in") == 2, log  # the Prolog of each node
    assert "VM request: no" in log
    no_trace_of(jobid)


def test_missing_image_fails_the_job_readably_and_keeps_the_nodes(submit: Submitter) -> None:
    request = requestblock.encode(
        {"img": "no-such-image-vmwtest"}, {}, requestblock.new_submission_id()
    )
    script = f"#!/bin/bash\n{request}\necho the script must not run\n"
    jobid = submit.sbatch(script, "-N2", "-c2", "--comment=vm-wrapper")
    fields = wait_final(jobid)
    assert (fields["JobState"], fields["Reason"], fields["Restarts"]) == (
        "CANCELLED",
        "Prolog",
        "0",
    )
    assert fields["Comment"] == (
        "vm-wrapper: img='no-such-image-vmwtest': no such image in the image pool "
        "/var/lib/vm-wrapper/images"
    )
    assert submit.output(jobid) is None, "the job script ran"
    time.sleep(1)  # the Epilog runs after the cancel; the nodes must come back, not drain
    assert set(node_states()) == {"n1", "n2"}
    assert not drained()
    no_trace_of(jobid)
