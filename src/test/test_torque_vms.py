"""The real mom_priv hooks, run exactly as pbs_mom runs them, boot and tear down real VMs.

Every fault ends with nothing left: no domain, no state, no overlay, no attempt counter, no
QEMU process. Guests boot under TCG here (~60 s each), so the tests that boot are few.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from torque_harness import Job, JobUser, Outcome, TorqueSite
from vmtest import job_run, leftovers, request_fields, system_config, vm_fields

from vmwrapper.node import node_state

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.needs("root", "libvirtd", "vmnet", "guest-image")


EXIT_SETUP_FAILED = 125  # job-run: the VMs could not start, the job itself never ran


def refused(out: Outcome, starts: int = 1) -> str:
    """Torque never delivers a failed prologue's output, so a job whose VMs cannot start
    starts anyway: the job wrapper prints why into the job's error file and exits 125."""
    text = out.last.stderr_text
    assert (out.state, out.exit_status, out.start_count) == (
        "completed", EXIT_SETUP_FAILED, starts
    ), text  # fmt: skip
    assert "the job did not run" in text and "Traceback" not in text, text
    return text


def make_site(base: Path, nodes: int, **kwargs: object) -> TorqueSite:
    """A site with the repo's shims installed the way the README tells admins."""
    site = TorqueSite(base / "pbs", nodes, prologalarm=300, **kwargs)  # type: ignore[arg-type]
    for mom in site.moms:
        for hook in ("prologue", "prologue.parallel", "epilogue", "epilogue.parallel"):
            subprocess.run(
                [
                    "install",
                    "-o",
                    "root",
                    "-g",
                    "root",
                    "-m",
                    "0700",
                    str(REPO / "mom_priv" / hook),
                    str(mom.hook(hook)),
                ],
                check=True,
            )
        subprocess.run(
            [
                "install",
                "-o",
                "root",
                "-g",
                "root",
                "-m",
                "0755",
                str(REPO / "mom_priv" / "epilogue.precancel"),
                str(mom.hook("epilogue.precancel")),
            ],
            check=True,
        )
    return site


def test_missing_image_aborts_at_once_and_says_why(user: JobUser, site_base: Path) -> None:
    with system_config() as config:
        site = make_site(site_base, 1)
        job = Job(
            user=user,
            **vm_fields(img="no-such-image"),
            jobid="701.vm",
            ppn=2,
            payload=job_run(),
        )
        out = site.run(job, max_starts=5)
        assert "img='no-such-image': no such image" in refused(out)
        assert leftovers(config, job.jobid) == []


def test_too_small_allocation_aborts_with_the_ppn_to_ask_for(
    user: JobUser, site_base: Path
) -> None:
    with system_config() as config:
        site = make_site(site_base, 1)
        job = Job(
            user=user,
            **vm_fields(vcpus="3"),
            jobid="702.vm",
            ppn=2,
            payload=job_run(),
        )
        out = site.run(job)
        assert "ask for ppn=4" in refused(out)
        assert leftovers(config, job.jobid) == []


@pytest.mark.parametrize(
    ("vm", "message"),
    [
        ({"img": "../../etc/passwd"}, "expected an image name"),
        ({"img": "<x>&'\""}, "expected an image name"),
        ({"disk": "/home/../etc/shadow"}, "no '..'"),
        ({"vcpus": "99999999"}, "vcpus"),
        ({"ram": "9999T"}, "ram"),
        ({"vms_per_node": "1000"}, "vms_per_node"),
        ({"vrdma": "true"}, "not enabled on this site"),
        ({"ram": "200G"}, "MB of RAM; the job's VMs need"),
    ],
)
def test_hostile_requests_are_refused_before_anything_exists(
    user: JobUser, site_base: Path, vm: dict[str, str], message: str
) -> None:
    with system_config() as config:
        site = make_site(site_base, 1)
        job = Job(user=user, **vm_fields(**vm), jobid="703.vm", ppn=2, payload=job_run())
        out = site.run(job)
        assert message in refused(out)
        assert leftovers(config, job.jobid) == []


def test_symlinked_or_foreign_persistent_disk_is_refused(
    user: JobUser, site_base: Path, tmp_path: Path
) -> None:
    home = Path(user.home)
    real = home / "vmw-disk.raw"
    real.write_bytes(b"\0" * 4096)
    os.chown(real, user.uid, user.gid)
    link = home / "vmw-disk-link.raw"
    link.unlink(missing_ok=True)
    link.symlink_to("/etc/shadow")
    foreign = home / "vmw-root-disk.raw"
    foreign.write_bytes(b"\0" * 4096)  # owned by root, not by the job user
    try:
        with system_config() as config:
            site = make_site(site_base, 1)
            for number, (disk, message) in enumerate(
                [(link, "symbolic link"), (foreign, "not owned by the job's user")]
            ):
                job = Job(
                    user=user,
                    **vm_fields(disk=str(disk)),
                    jobid=f"71{number}.vm",
                    ppn=2,
                    payload=job_run(),
                )
                out = site.run(job)
                assert message in refused(out)
                assert leftovers(config, job.jobid) == []
    finally:
        for path in (real, link, foreign):
            path.unlink(missing_ok=True)


def test_epilogue_without_prologue_and_twice_is_harmless(user: JobUser, site_base: Path) -> None:
    with system_config() as config:
        site = make_site(site_base, 2)
        job = Job(user=user, **vm_fields(), jobid="704.vm", nodes=2, ppn=2)
        site.moms[0].create()
        for _ in range(2):
            for nodenum, hook in ((1, "epilogue.parallel"), (0, "epilogue")):
                run = site.run_hook(hook, job, nodenum, ("4242", "cput=0", "0"))
                assert run.ran and run.rc == 0
        assert leftovers(config, job.jobid) == []


@pytest.mark.slow
def test_guest_that_never_gets_ready_is_retried_then_reported(
    user: JobUser, site_base: Path
) -> None:
    # TIMEOUT=5 s: no guest can boot that fast under TCG, so every start times out.
    with system_config(TIMEOUT="5", SHUTDOWN_TIMEOUT="1") as config:
        site = make_site(site_base, 1)
        job = Job(user=user, **vm_fields(), jobid="705.vm", ppn=2, payload=job_run())
        out = site.run(job, max_starts=6)
        # Requeued once (exit 2), then started to say why when the attempts ran out: the
        # pbs_sched loop is bounded by our own counter, not by the harness.
        assert [s.exit_status for s in out.starts] == [-14, EXIT_SETUP_FAILED]
        text = refused(out, starts=2)
        assert "attempt 1: VM(s) vm0 not ready within" in text
        assert "giving up after 2 attempts" in text
        assert leftovers(config, job.jobid) == []


@pytest.mark.slow
def test_libvirtd_down_requeues_then_aborts_and_leaves_nothing(
    user: JobUser, site_base: Path
) -> None:
    subprocess.run([str(REPO / "tools" / "libvirt-ctl"), "stop"], check=True, capture_output=True)
    try:
        with system_config() as config:
            site = make_site(site_base, 1)
            job = Job(user=user, **vm_fields(), jobid="706.vm", ppn=2, payload=job_run())
            out = site.run(job, max_starts=6)
            assert [s.exit_status for s in out.starts] == [-14, EXIT_SETUP_FAILED]
            text = refused(out, starts=2)
            assert "attempt 1: libvirt is not reachable" in text
    finally:
        subprocess.run(
            [str(REPO / "tools" / "libvirt-ctl"), "start"], check=True, capture_output=True
        )
    assert leftovers(config, job.jobid) == []


@pytest.mark.slow
def test_a_sister_that_boots_nothing_fails_the_job_within_the_deadline(
    user: JobUser, site_base: Path
) -> None:
    # The sister reads its (forged, refused) request from its .JB and boots nothing; the
    # mother superior boots vm0, then finds vm1 silent at the deadline and says so.
    with system_config(TIMEOUT="90", MAX_PROLOGUE_ATTEMPTS="1") as config:
        site = make_site(site_base, 2)
        fields = vm_fields()
        fields["variables"] = request_fields({"img": "debian12", "vcpus": "999"})["variables"]
        job = Job(user=user, jobid="707.vm", nodes=2, ppn=2, payload=job_run(), **fields)
        out = site.run(job)
        text = refused(out)
        assert "VM vm1" in text and "did not answer in time" in text
        assert leftovers(config, job.jobid) == []


@pytest.mark.slow
def test_crash_mid_boot_is_cleaned_up_by_reap(user: JobUser, site_base: Path) -> None:
    site = make_site(site_base, 1)
    # reap asks this mom's mom_priv/jobs whether the job is still here.
    with system_config(TORQUE_HOME=str(site.moms[0].home)) as config:
        job = Job(user=user, **vm_fields(), jobid="708.vm", ppn=2)
        site.moms[0].create()
        script = site.moms[0].script(job.jobid)
        script.write_text(job.script)
        script.chmod(0o700)
        hook = subprocess.Popen(
            [
                "env",
                "-i",
                "PATH=/bin:/usr/bin",
                "PBS_NODENUM=0",
                "PBS_NUM_NODES=1",
                "PBS_NUM_PPN=2",
                str(REPO / "mom_priv" / "prologue"),
                job.jobid,
                user.name,
                user.name,
                "job",
                "nodes=1:ppn=2",
                "batch",
                "",
                str(script),
            ],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        state = node_state(config, job.jobid, 0)
        deadline = time.monotonic() + 120
        while not any(e["kind"] == "domain" for e in state.entries()):
            assert time.monotonic() < deadline and hook.poll() is None
            time.sleep(0.2)
        time.sleep(1)  # the domain is starting or running now
        os.killpg(hook.pid, signal.SIGKILL)  # as pbs_mom does at $prologalarm
        hook.wait()
        assert leftovers(config, job.jobid) != []
        still_here = subprocess.run(
            ["/opt/vm-wrapper/venv/bin/vm-wrapper", "reap"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "708.vm" not in still_here.stderr  # pbs_mom still has the job: hands off
        script.unlink()  # pbs_mom is done with the job
        reap = subprocess.run(
            ["/opt/vm-wrapper/venv/bin/vm-wrapper", "reap"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "reaped 708.vm" in reap.stderr
        assert leftovers(config, job.jobid) == []


def test_a_prologue_reaps_leftovers_of_jobs_that_are_gone(user: JobUser, site_base: Path) -> None:
    with system_config() as config:
        stale = node_state(config, "99.local", 0)  # a local job whose process is long gone
        stale.create()
        stale.record("jobid", "99.local")
        stale.record("file", str(stale.node_dir / "vm.console.log"))
        (stale.node_dir / "vm.console.log").write_text("old")
        site = make_site(site_base, 1)
        job = Job(
            user=user,
            **vm_fields(img="no-such-image"),
            jobid="709.vm",
            ppn=2,
            payload=job_run(),
        )
        refused(site.run(job))
        assert leftovers(config, "99.local") == []
        assert leftovers(config, job.jobid) == []


def test_admin_image_with_a_backing_file_is_refused_clearly(user: JobUser, site_base: Path) -> None:
    pool = Path("/var/lib/vm-wrapper/images")
    layered = pool / "vmwtest-layered.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    str(pool / "debian12.qcow2"), str(layered)], check=True)  # fmt: skip
    try:
        with system_config() as config:
            site = make_site(site_base, 1)
            job = Job(user=user, **vm_fields(img="vmwtest-layered"), jobid="710.vm",
                      ppn=2, payload=job_run())  # fmt: skip
            out = site.run(job)
            assert "has a backing file; flatten it" in refused(out)
            assert leftovers(config, job.jobid) == []
    finally:
        layered.unlink(missing_ok=True)
