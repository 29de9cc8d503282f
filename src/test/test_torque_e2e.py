"""The whole Torque path with real parts: the user's `qsub -vm` (our shim) writes the job
wrapper, the pbs_mom harness runs the real mom_priv hooks on two simulated nodes (real VMs
under libvirt), the wrapper runs the script inside vm0, output lands in the job's output
file, the exit status comes back, and teardown leaves nothing.
"""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import pytest
from torque_harness import Job, JobUser, TorqueSite, ensure_job_user, site_root
from vmtest import leftovers, system_config

REPO = Path(__file__).resolve().parents[2]
QSUB = REPO / "src" / "scripts" / "qsub"
pytestmark = [pytest.mark.needs("root", "libvirtd", "vmnet", "guest-image"), pytest.mark.slow]

USER_SCRIPT = """#!/bin/bash
#PBS -N e2e
#PBS -vm img=debian12,vcpus=1,ram=1G
echo "job on $(hostname) as $(id -un)"
echo "nodefile: $(tr '\\n' ' ' < "$PBS_NODEFILE")"
echo "np=$PBS_NP nodes=$PBS_NUM_NODES"
echo "vm1 says: $(ssh -o BatchMode=yes vm1 hostname)"
echo "to stderr" >&2
exit 7
"""


def submit_as_user(user: JobUser, base: Path) -> tuple[str, dict[str, str]]:
    """Run our qsub shim as the user against a stub real qsub; return the job wrapper and
    the job variables (-v) it passed, which is all a Torque sister gets."""
    stub = base / "stub-qsub"
    captured, argv = base / "submitted.sh", base / "submitted.argv"
    stub.write_text(f"#!/bin/sh\ncat > {captured}\nprintf '%s\\0' \"$@\" > {argv}\necho 720.vm\n")
    stub.chmod(0o755)
    conf = base / "vm-wrapper.conf"
    conf.write_text(f"REAL_QSUB_ON_SERVER={stub}\nREAL_QSUB_ON_NODES={stub}\n")
    conf.chmod(0o644)
    job = base / "job.sh"
    job.write_text(USER_SCRIPT)
    job.chmod(0o755)
    base.chmod(0o777)  # the stub, running as the user, writes the captured script here
    done = subprocess.run(
        ["/usr/sbin/runuser", "-u", user.name, "--", "env", f"VM_WRAPPER_CONF={conf}",
         str(QSUB), "-l", "nodes=2:ppn=1", str(job)],
        capture_output=True, text=True, check=True, cwd=base,
    )  # fmt: skip
    assert done.stdout.strip() == "720.vm"
    assert "raised -l nodes=2:ppn=1 to nodes=2:ppn=2" in done.stderr
    words = argv.read_bytes().decode().split("\0")[:-1]
    pairs = itertools.pairwise(words)
    variables = dict(word.split("=", 1) for flag, word in pairs if flag == "-v")
    return captured.read_text(), variables


def test_two_node_vm_job_runs_in_vm0_reaches_vm1_and_cleans_up() -> None:
    user = ensure_job_user()
    with site_root() as base, system_config() as config:
        wrapper, variables = submit_as_user(user, base)
        assert "#%VMW-REQUEST-V1 " in wrapper and "#PBS -vm" not in wrapper
        assert list(variables) == ["VMW_REQUEST_V1"]
        site = TorqueSite(base / "pbs", ["n0", "n1"], prologalarm=300)
        for mom in site.moms:
            for hook in ("prologue", "prologue.parallel", "epilogue", "epilogue.parallel"):
                subprocess.run(["install", "-o", "root", "-g", "root", "-m", "0700",
                                str(REPO / "mom_priv" / hook), str(mom.hook(hook))],
                               check=True)  # fmt: skip
        job = Job(user=user, script=wrapper, jobid="720.vm", name="e2e", nodes=2, ppn=2,
                  workdir=base, variables=variables)  # fmt: skip
        out = site.run(job, max_starts=1)
        stdout = out.stdout_path.read_text()
        stderr = out.stderr_path.read_text()
        assert out.state == "completed", stderr
        assert out.exit_status == 7, stderr
        assert f"job on vm0 as {user.name}" in stdout
        assert "nodefile: vm0 vm1" in stdout
        assert "np=2 nodes=2" in stdout
        assert "vm1 says: vm1" in stdout
        assert "to stderr" in stderr
        assert leftovers(config, job.jobid) == []
