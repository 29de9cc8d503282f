"""The local backend end to end with real VMs: `vm-wrapper run` boots, runs the script inside
the guest as the user, returns its exit code, and tears everything down; interactive jobs
through a real pty (tmux); users cannot reach each other's VMs or consoles.
"""

from __future__ import annotations

import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from torque_harness import JobUser, ensure_job_user
from vmtest import leftovers, system_config

VMW = "/opt/vm-wrapper/venv/bin/vm-wrapper"
REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.needs("root", "libvirtd", "vmnet", "guest-image"), pytest.mark.slow]


def user_script(user: JobUser, name: str, body: str) -> Path:
    path = Path(user.home) / name
    path.write_text("#!/bin/bash\n" + body)
    subprocess.run(["chown", f"{user.uid}:{user.gid}", str(path)], check=True)
    path.chmod(0o755)
    return path


def run_job(user: JobUser, script: Path, extra: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VMW, "run", "-vm", "img=debian12,vcpus=1,ram=1G" + extra, "--as", user.name,
         str(script)],
        capture_output=True, text=True, cwd=user.home, timeout=600, check=False,
    )  # fmt: skip


def jobid_of(stderr: str) -> str:
    match = re.search(r"job (\S+\.local):", stderr)
    assert match, stderr
    return match.group(1)


def test_demo_job_runs_inside_the_guest() -> None:
    user = ensure_job_user()
    script = user_script(user, "demo.sh", (REPO / "demo" / "job.sh").read_text())
    with system_config() as config:
        done = run_job(user, script)
        assert done.returncode == 0, done.stderr
        facts = dict(line.split(":", 1) for line in done.stdout.splitlines() if ":" in line)
        host_kernel = subprocess.run(
            ["uname", "-r"], capture_output=True, text=True, check=True
        ).stdout
        assert facts["host name"].strip() == "vm0"
        assert facts["kernel"].strip() != host_kernel.strip()
        assert "Debian GNU/Linux 12" in facts["os"]
        assert facts["user"].strip().startswith(f"{user.name} (uid {user.uid}")
        assert "QEMU" in facts["virtualized"]
        assert "VMs ready after" in done.stderr and "tearing down" in done.stderr
        assert leftovers(config, jobid_of(done.stderr)) == []


def test_exit_codes_come_back_exactly() -> None:
    user = ensure_job_user()
    three = user_script(user, "exit3.sh", "echo before; exit 3\n")
    killed = user_script(user, "exit137.sh", "echo before; kill -KILL $$\n")
    with system_config() as config, ThreadPoolExecutor(2) as pool:
        # Two guests at once cost no more than one on two cores.
        results = list(pool.map(lambda s: run_job(user, s), [three, killed]))
        assert [r.returncode for r in results] == [3, 137], [r.stderr for r in results]
        assert all(r.stdout.strip() == "before" for r in results)
        for result in results:
            assert leftovers(config, jobid_of(result.stderr)) == []


def tmux(*args: str) -> str:
    """Our own tmux server (-L): a server someone started elsewhere (outside the vmw netns)
    would run the session there, where the guests cannot be reached."""
    argv = ["tmux", "-L", "vmw-test", *args]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def wait_for(session: str, text: str, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        screen = tmux("capture-pane", "-t", session, "-p", "-S", "-200")
        if text in screen:
            return screen
        time.sleep(1)
    raise AssertionError(f"{text!r} never appeared:\n{screen}")


@pytest.mark.needs("tmux")
def test_interactive_job_and_other_users_are_kept_out() -> None:
    owner = ensure_job_user()
    other = ensure_job_user("vmwother", 2001)
    session = "vmw-interactive-test"
    subprocess.run(
        ["tmux", "-L", "vmw-test", "kill-session", "-t", session], capture_output=True, check=False
    )
    with system_config() as config:
        tmux(
            "new-session",
            "-d",
            "-s",
            session,
            "-x",
            "160",
            "-y",
            "50",
            "-c",
            owner.home,
            f"{VMW} run -I -vm img=debian12 --as {owner.name}; echo EXIT=$?; sleep 600",
        )
        try:
            screen = wait_for(session, "running the job", 300)
            jobid = jobid_of(screen)
            # Type at the guest's prompt, as a person would: keys typed before ssh has the
            # terminal may go to the host's line discipline instead.
            wait_for(session, f"{owner.name}@vm0", 120)
            tmux("send-keys", "-t", session, 'echo "inside=$(hostname)/$(id -un)"', "Enter")
            wait_for(session, f"inside=vm0/{owner.name}", 60)
            as_other = [
                subprocess.run(["runuser", "-u", other.name, "--", VMW, command, jobid, "vm0"],
                               capture_output=True, text=True, check=False)
                for command in ("ssh", "console")
            ]  # fmt: skip
            for result in as_other:
                assert result.returncode != 0
                assert f"job {jobid} is not yours" in result.stderr
            console = subprocess.run(
                ["runuser", "-u", owner.name, "--", VMW, "console", jobid, "vm0"],
                capture_output=True,
                text=True,
                check=False,
            )
            assert console.returncode == 0, console.stderr
            assert "Linux version" in console.stdout
            tmux("send-keys", "-t", session, "exit 5", "Enter")
            wait_for(session, "EXIT=5", 120)
            assert leftovers(config, jobid) == []
        finally:
            subprocess.run(["tmux", "-L", "vmw-test", "kill-server"], check=False)


def test_vm_prologue_and_epilogue_run_around_the_job() -> None:
    user = ensure_job_user()
    prologue = user_script(user, "pro.sh", "echo from-prologue > /tmp/prologue-ran\n")
    epilogue = user_script(user, "epi.sh", "echo epilogue-ran; exit 6\n")
    job = user_script(user, "job.sh", "cat /tmp/prologue-ran; echo job-ran\n")
    failing = user_script(user, "bad.sh", "echo broken >&2; exit 9\n")
    with system_config() as config, ThreadPoolExecutor(2) as pool:
        good, bad = pool.map(
            lambda extra: run_job(user, job, extra),
            [f",vm_prologue={prologue},vm_epilogue={epilogue}", f",vm_prologue={failing}"],
        )
        assert good.returncode == 0, good.stderr
        assert good.stdout.split() == ["from-prologue", "job-ran", "epilogue-ran"], good.stderr
        assert "vm_epilogue failed (exit 6)" in good.stderr
        assert bad.returncode == 9
        assert "job-ran" not in bad.stdout
        assert "vm_prologue failed (exit 9); the job did not run" in bad.stderr
        for result in (good, bad):
            assert leftovers(config, jobid_of(result.stderr)) == []
