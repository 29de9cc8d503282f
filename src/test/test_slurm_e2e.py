"""VM jobs on a REAL Slurm 22.05 (tools/slurm-cluster: slurmctld, slurmd n1 and n2, munge),
submitted as the unprivileged user vmwtest through OUR src/scripts/sbatch, booting real
guests from slurm/prolog and removing them from slurm/epilog.

The job directory is in vmwtest's home: the admin shares /home into the guests, so the
job's working directory exists in vm0 too. The two-node test prints the wall time from
sbatch to the job's first output line next to the guest boot time from node0's timeline.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_slurm_cluster import (  # noqa: F401  (cluster: a fixture, used by name)
    FINAL,
    LIST_NODES,
    LISTED,
    NS,
    cluster,
    ctl,
    drained,
    job_fields,
    log_size,
    no_trace_of,
    node_states,
    wait_final,
)
from torque_harness import ensure_job_user
from vmtest import leftovers, system_config

from vmwrapper import config as config_mod

REPO = Path(__file__).resolve().parents[2]
SBATCH = REPO / "src" / "scripts" / "sbatch"
STATE_JOBS = Path("/var/lib/vm-wrapper/state/jobs")
pytestmark = [
    pytest.mark.needs("root", "slurmctld", "slurmd", "sbatch", "munged", "libvirtd", "vmnet",
                      "guest-image"),
    pytest.mark.slow,
]  # fmt: skip
VM = ["--vm", "img=debian12,vcpus=1,ram=1G"]


class WrapperUser:
    """vmwtest, submitting through src/scripts/sbatch from a directory in its home."""

    def __init__(self) -> None:
        self.user = ensure_job_user("vmwtest", 2000)
        home = Path(pwd.getpwnam(self.user.name).pw_dir)
        self.dir = Path(tempfile.mkdtemp(prefix="vmw-e2e-", dir=home))
        os.chmod(self.dir, 0o755)
        os.chown(self.dir, self.user.uid, self.user.gid)
        self.jobs: list[str] = []

    def write(self, name: str, text: str) -> Path:
        path = self.dir / name
        path.write_text(text)
        os.chown(path, self.user.uid, self.user.gid)
        return path

    def sbatch(self, script: str, *options: str, args: tuple[str, ...] = ()) -> tuple[str, str]:
        """(job id, the wrapper's stderr). Output goes to out-<jobid>.txt in self.dir."""
        path = self.write(f"job{len(self.jobs)}.sh", script)
        argv = [*NS, "runuser", "-u", self.user.name, "--", str(SBATCH), "--parsable",
                "-o", f"{self.dir}/out-%j.txt", *options, str(path), *args]  # fmt: skip
        done = subprocess.run(argv, cwd=self.dir, capture_output=True, text=True, timeout=60,
                              check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        jobid = done.stdout.strip().split(";")[0]
        self.jobs.append(jobid)
        return jobid, done.stderr

    def output(self, jobid: str) -> Path:
        return self.dir / f"out-{jobid}.txt"

    def cleanup(self) -> None:
        for jobid in self.jobs:
            subprocess.run([*NS, "scancel", jobid], check=False, capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def user(cluster: None) -> Iterator[WrapperUser]:  # noqa: F811
    submitter = WrapperUser()
    yield submitter
    submitter.cleanup()


@pytest.fixture
def site() -> Iterator[config_mod.Config]:
    with system_config() as config:
        yield config


def timeline(jobid: str, rank: int) -> dict[str, float]:
    """A node's boot timeline while the job runs (epilog removes it); {} if not there yet."""
    try:
        data = json.loads((STATE_JOBS / jobid / f"node{rank}" / "timeline.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def watch(user: WrapperUser, jobid: str, started: float, timeout: float = 400) -> dict[str, float]:
    """Poll until the job ends: the moment of its first output line ('first_output', on
    the monotonic clock of ``started``) and the last timeline seen of each node."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for rank in (0, 1):
            seen.update(timeline(jobid, rank))
        out = user.output(jobid)
        if "first_output" not in seen and out.exists() and "\n" in out.read_text():
            seen["first_output"] = time.monotonic() - started
        if job_fields(jobid)["JobState"] in FINAL:
            return seen
        time.sleep(0.2)
    raise AssertionError(f"job {jobid} did not end within {timeout} s: {job_fields(jobid)}")


def wait_clean(config: config_mod.Config, jobid: str, timeout: float = 180) -> None:
    """Both Epilogs done: nodes idle, nothing of the job left on this host (both nodes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node_states() == {"n1": "idle", "n2": "idle"} and not leftovers(config, jobid):
            break
        time.sleep(0.5)
    assert leftovers(config, jobid) == []
    assert node_states() == {"n1": "idle", "n2": "idle"}
    no_trace_of(jobid)


VM_JOB = """#!/bin/bash
#SBATCH --comment=e2e
echo "first line on $(hostname)"
echo "nodelist=$SLURM_JOB_NODELIST"
echo "nodefile=$(tr '\\n' ' ' < "$PBS_NODEFILE")"
echo "vm1 says: $(ssh -o BatchMode=yes vm1 hostname)"
echo "cwd=$PWD args=$#:$1:$2"
echo "to stderr" >&2
exit 7
"""


def test_two_node_vm_job_runs_in_vm0_reaches_vm1_and_cleans_up(
    user: WrapperUser, site: config_mod.Config, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = user.dir / "run"
    workdir.mkdir()
    os.chown(workdir, user.user.uid, user.user.gid)
    started = time.monotonic()
    jobid, said = user.sbatch(VM_JOB, *VM, "-N2", "-D", str(workdir), args=("one", "two words"))
    assert "added --cpus-per-task=2" in said and "added --mem=2304M" in said
    assert job_fields(jobid)["Comment"] == "vm-wrapper; e2e"
    seen = watch(user, jobid, started)
    fields = job_fields(jobid)
    text = user.output(jobid).read_text()
    assert (fields["JobState"], fields["ExitCode"], fields["NodeList"]) == (
        "FAILED",
        "7:0",
        "n[1-2]",
    )
    assert text.splitlines() == [
        "first line on vm0", "nodelist=vm0,vm1", "nodefile=vm0 vm1 ", "vm1 says: vm1",
        f"cwd={workdir} args=2:one:two words", "to stderr",
    ]  # fmt: skip
    boot = {n: seen[f"vmw-{jobid}-{n}:ready"] - seen[f"vmw-{jobid}-{n}:define"] for n in (0, 1)}
    wait_clean(site, jobid)
    report = (
        f"\n[slurm e2e] job {jobid}: sbatch -> first output line {seen['first_output']:.1f} s;"
        f" guest boot (define -> ready) vm0 {boot[0]:.1f} s, vm1 {boot[1]:.1f} s"
    )
    with capsys.disabled():
        print(report)


def test_non_vm_job_through_the_wrapper_runs_as_without_it(
    user: WrapperUser, site: config_mod.Config, capsys: pytest.CaptureFixture[str]
) -> None:
    jobid, said = user.sbatch(LIST_NODES, "-N2", "--hold", "--comment=plain")
    logged = log_size(jobid)
    ctl("scontrol", "release", jobid)
    fields = wait_final(jobid)
    assert said == "" and (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0")
    assert fields["Comment"] == "plain"  # untouched: no tag
    assert "".join(sorted(user.output(jobid).read_text().splitlines(True))) == LISTED
    assert log_size(jobid) == logged, "a job without --vm must not reach Python on the nodes"
    no_trace_of(jobid)
    assert not drained()


def test_image_removed_before_start_fails_the_job_readably_and_keeps_the_nodes(
    user: WrapperUser, site: config_mod.Config
) -> None:
    pool = Path(site.IMAGE_POOL)
    copy = pool / "bench-x.qcow2"
    os.link(pool / "debian12.qcow2", copy)  # a copy by name, instantly
    try:
        jobid, _ = user.sbatch("#!/bin/sh\necho must not run\n", "--hold", "-N2",
                               "--comment=mine", "--vm", "img=bench-x,vcpus=1,ram=1G")  # fmt: skip
    finally:
        copy.unlink()
    assert job_fields(jobid)["JobState"] == "PENDING"
    ctl("scontrol", "release", jobid)
    fields = wait_final(jobid, timeout=120)
    assert (fields["JobState"], fields["Reason"]) == ("CANCELLED", "Prolog")
    assert fields["Comment"] == (
        f"vm-wrapper: img='bench-x': no such image in the image pool {pool} [your comment: mine]"
    )
    assert not user.output(jobid).exists() or "must not run" not in user.output(jobid).read_text()
    wait_clean(site, jobid, timeout=60)
    assert not drained()


def test_scancel_during_boot_leaves_nothing_on_either_node(
    user: WrapperUser, site: config_mod.Config
) -> None:
    jobid, _ = user.sbatch("#!/bin/sh\necho must not run\n", *VM, "-N2")
    deadline = time.monotonic() + 120
    while not all(f"vmw-{jobid}-{n}:define" in timeline(jobid, n) for n in (0, 1)):
        assert time.monotonic() < deadline, f"no VM defined after 120 s: {job_fields(jobid)}"
        time.sleep(0.2)
    assert not any(f"vmw-{jobid}-{n}:ready" in timeline(jobid, n) for n in (0, 1))
    ctl("scancel", jobid)
    fields = wait_final(jobid, timeout=120)
    assert fields["JobState"] == "CANCELLED"
    wait_clean(site, jobid, timeout=300)
    assert not drained()
