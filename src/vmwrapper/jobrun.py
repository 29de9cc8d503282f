"""The job wrapper: run the user's script inside the job's first VM, as the same user.

It runs where the batch system runs the job script (the first node), as the job user. The
hooks already booted every VM and left what this needs in STATE_DIR/jobs/<tag>/user/: the
job's SSH key, a known_hosts file with every VM's (derived) host key, and vms.json. Output
streams straight through ssh into the job's output files; the exit status comes back
exactly (128+n when the job died of signal n).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pwd
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from vmwrapper import jobenv, proc
from vmwrapper.config import Config
from vmwrapper.errors import CommandError, NodeError, PermanentJobError
from vmwrapper.plan import job_tag

SSH = "/usr/bin/ssh"
READY_WAIT_SECONDS = 120
BOOT_FINISHED = "/var/lib/cloud/instance/boot-finished"  # cloud-init's last act
EXIT_SETUP_FAILED = 125  # like env(1)/runners: the job itself never started


@dataclass(frozen=True)
class JobFiles:
    key: Path
    known_hosts: Path
    vms: list[dict[str, Any]]
    user_dir: Path


def job_id(env: dict[str, str]) -> str:
    for name in ("PBS_JOBID", "SLURM_JOB_ID", "VMW_JOBID"):
        if env.get(name):
            return env[name]
    raise PermanentJobError("no job id in the environment (PBS_JOBID, SLURM_JOB_ID, VMW_JOBID)")


def job_user_dir(config: Config, jobid: str) -> Path:
    """What the hooks leave for the job user on the first node (state.py's user/)."""
    return Path(config.STATE_DIR) / "jobs" / job_tag(jobid) / "user"


def load_job_files(config: Config, jobid: str) -> JobFiles:
    user_dir = job_user_dir(config, jobid)
    try:
        vms = json.loads((user_dir / "vms.json").read_text())["vms"]
    except (OSError, ValueError, KeyError) as err:
        raise NodeError(
            f"the job's VMs are not set up on this node ({err.__class__.__name__})"
        ) from None
    return JobFiles(user_dir / "id_ed25519", user_dir / "known_hosts", vms, user_dir)


def ssh_argv(files: JobFiles, user: str, address: str, *, tty: bool = False) -> list[str]:
    """ssh into one VM, with host keys verified against the job's known_hosts."""
    return [
        SSH, "-t" if tty else "-T", "-i", str(files.key),
        "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={files.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10",
        "-o", "ServerAliveInterval=30", "-o", "LogLevel=ERROR",
        f"{user}@{address}",
    ]  # fmt: skip


def wait_until_answering(
    files: JobFiles, env: dict[str, str], seconds: float = READY_WAIT_SECONDS
) -> None:
    """Every VM must be ready (bounded), else one clear line naming the VM."""
    deadline = time.monotonic() + seconds
    user = pwd.getpwuid(os.getuid()).pw_name
    for vm in files.vms:
        # Every VM, also those the hooks saw ready: cloud-init may still finish its last
        # stage (and bounce sshd) after the ready line; boot-finished comes after all that.
        while not vm_ready(files, vm, user):
            if time.monotonic() > deadline:
                raise NodeError(f"VM {vm['hostname']} ({vm['address']}) does not answer")
            time.sleep(1)


def _wait_seconds(config: Config, env: dict[str, str]) -> float:
    """On Slurm another node may have just begun a boot that may take TIMEOUT."""
    if "SLURM_JOB_ID" in env:
        return max(READY_WAIT_SECONDS, config.TIMEOUT + 30)
    return READY_WAIT_SECONDS


def vm_ready(files: JobFiles, vm: dict[str, Any], user: str) -> bool:
    """The VM takes our login and has finished cloud-init: its sshd answers early, then
    runcmd restarts it (measured on Slurm: 'Connection refused' from vm0 to vm1 a second
    before vm1's node saw it ready); cloud-init writes boot-finished after runcmd."""
    argv = [*ssh_argv(files, user, vm["address"]), "test", "-e", BOOT_FINISHED]
    try:
        return proc.run(argv, timeout=30, ok_codes=range(256)).returncode == 0
    except CommandError:
        return False


def job_workdir(env: dict[str, str]) -> str:
    """Where the job runs in vm0. Slurm starts the batch script in its working directory
    (--chdir, else the submit directory), which SLURM_SUBMIT_DIR does not follow."""
    if env.get("PBS_O_WORKDIR"):
        return env["PBS_O_WORKDIR"]
    if "SLURM_JOB_ID" in env:
        with contextlib.suppress(OSError):
            return os.getcwd()
    return env.get("SLURM_SUBMIT_DIR", "")


@dataclass
class GuestSide:
    """What the job sees inside vm0: its private directory, node file and environment."""

    workdir: str
    nodefile: str  # the node file's text
    env: dict[str, str]

    @classmethod
    def of(cls, files: JobFiles, env: dict[str, str]) -> GuestSide:
        workdir = f"/tmp/vmw-{job_tag(job_id(env))}"
        hostnames = [vm["hostname"] for vm in files.vms]
        vcpus = [int(vm["vcpus"]) for vm in files.vms]
        guest_env = jobenv.guest_environment(
            env, nodefile=f"{workdir}/nodefile", hostnames=hostnames, vcpus=vcpus
        )
        return cls(workdir, jobenv.nodefile_text(hostnames, vcpus), guest_env)


def runner_script(payload: dict[str, Any], files: JobFiles, env: dict[str, str]) -> str:
    """The sh script that runs the job inside vm0 (rendered from runner.sh.j2)."""
    from vmwrapper.render import render_template  # noqa: PLC0415

    guest = GuestSide.of(files, env)
    script = base64.b64decode(payload["script"])
    shell = payload.get("shell") or ""
    command = '"$d/job"' if script.startswith(b"#!") and not shell else (
        f'{shlex.quote(shell or "/bin/bash")} "$d/job"')  # fmt: skip
    cwd = job_workdir(env) or env.get("HOME", "~")
    values = {
        "workdir_q": shlex.quote(guest.workdir),
        "nodefile_q": shlex.quote(guest.nodefile),
        "script_b64_q": shlex.quote(str(payload["script"])),
        "env_q": sorted((k, shlex.quote(v)) for k, v in guest.env.items()),
        "cwd_q": shlex.quote(cwd),
        "cwd_msg": "".join(c for c in cwd if c.isprintable() and c not in "\"'`$"),
        "command": command,
        "args_q": " ".join(shlex.quote(str(a)) for a in payload.get("args", [])),
    }
    return render_template("runner.sh.j2", values)


def interactive_command(files: JobFiles, env: dict[str, str]) -> str:
    """Remote command for an interactive job: node file, environment, cwd, login shell."""
    guest = GuestSide.of(files, env)
    guest.env["TERM"] = env.get("TERM", "xterm")
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(guest.env.items()))
    cwd = job_workdir(env) or "~"
    nodefile, workdir = shlex.quote(guest.nodefile), guest.workdir
    return (
        f"umask 077; mkdir -p {workdir} && printf %s {nodefile} > {workdir}/nodefile; "
        f"umask 022; cd {shlex.quote(cwd)} 2>/dev/null || cd; export {exports}; "
        'exec "${SHELL:-/bin/bash}" -l'
    )


def run_interactive(config: Config, env: dict[str, str]) -> int:
    _reattach_terminal()
    files = load_job_files(config, job_id(env))
    wait_until_answering(files, env, _wait_seconds(config, env))
    user = pwd.getpwuid(os.getuid()).pw_name
    argv = [*ssh_argv(files, user, files.vms[0]["address"], tty=True)]
    return proc.spawn([*argv, interactive_command(files, env)]).wait()


def _reattach_terminal() -> None:
    """Under qsub -I the payload arrived on stdin (the wrapper's heredoc): give the session's
    terminal back to ssh. The local backend keeps the terminal on stdin already."""
    if os.isatty(0):
        return
    try:
        tty = os.open("/dev/tty", os.O_RDWR)
    except OSError:
        return  # no controlling terminal: ssh -t will say so
    os.dup2(tty, 0)
    os.close(tty)


def boot_failure(config: Config, jobid: str) -> list[str]:
    """Why the hooks could not start the job's VMs, if they left that for us: Torque
    never delivers a failed prologue's output, so the job starts and says it here."""
    path = job_user_dir(config, jobid) / "failure"
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            return [line.rstrip("\n") for line in handle.readlines()[:50]]
    except OSError:
        return []


def run_in_vm(payload: dict[str, Any], config: Config, env: dict[str, str]) -> int:
    """vm_prologue, the job, vm_epilogue, each through the same runner inside vm0."""
    jobid = job_id(env)
    failure = boot_failure(config, jobid)
    if failure:
        for line in failure:
            print(f"vm-wrapper: job {jobid}: {line}", file=sys.stderr)
        print(f"vm-wrapper: job {jobid}: the job did not run", file=sys.stderr)
        return EXIT_SETUP_FAILED
    if payload.get("interactive"):
        return run_interactive(config, env)
    files = load_job_files(config, job_id(env))
    wait_until_answering(files, env, _wait_seconds(config, env))
    code = _run_user_hook("vm_prologue", files, env)
    if code != 0:
        print(f"vm-wrapper: vm_prologue failed (exit {code}); the job did not run",
              file=sys.stderr)  # fmt: skip
        return code
    code = _run_script(payload, files, env)
    epilogue = _run_user_hook("vm_epilogue", files, env)
    if epilogue != 0:
        print(f"vm-wrapper: vm_epilogue failed (exit {epilogue})", file=sys.stderr)
    return code


def _run_user_hook(name: str, files: JobFiles, env: dict[str, str]) -> int:
    path = files.user_dir / name
    try:
        script = path.read_bytes()
    except FileNotFoundError:
        return 0
    payload = {"script": base64.b64encode(script).decode(), "args": [], "shell": ""}
    return _run_script(payload, files, env)


def _run_script(payload: dict[str, Any], files: JobFiles, env: dict[str, str]) -> int:
    jobid = job_id(env)
    user = pwd.getpwuid(os.getuid()).pw_name  # who we are, not what $USER claims
    first = files.vms[0]["address"]
    script = runner_script(payload, files, env)
    child = proc.spawn([*ssh_argv(files, user, first), "/bin/sh", "-s"], stdin_pipe=True)
    _forward_termination(child, files, user, first, job_tag(jobid))
    assert child.stdin is not None
    try:
        child.stdin.write(script.encode())
        child.stdin.close()
    except BrokenPipeError:
        pass
    code = child.wait()
    if code == 255:
        print(f"vm-wrapper: lost the connection to {files.vms[0]['hostname']}", file=sys.stderr)
    return code


def stop_remote(config: Config, jobid: str, user: str) -> bool:
    """Ask vm0 to SIGTERM the job's process group (qdel). False if this is no VM job here."""
    try:
        files = load_job_files(config, jobid)
    except NodeError:
        return False
    _kill_remote_job(files, user, files.vms[0]["address"], job_tag(jobid))
    return True


def _kill_remote_job(files: JobFiles, user: str, address: str, tag: str) -> None:
    """SIGTERM the job's process group inside the VM (the runner recorded its pid)."""
    kill = f'kill -TERM -- -"$(cat /tmp/vmw-{tag}/pid)" 2>/dev/null'
    with contextlib.suppress(CommandError):
        proc.run([*ssh_argv(files, user, address), kill], timeout=15, ok_codes=range(256))


def _forward_termination(
    child: subprocess.Popen[bytes], files: JobFiles, user: str, address: str, tag: str
) -> None:
    """qdel/scancel send SIGTERM here: stop the job's process group inside the VM too."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        _kill_remote_job(files, user, address, tag)
        child.send_signal(signal.SIGTERM)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, handler)


def read_payload(text: str) -> dict[str, Any]:
    try:
        data = json.loads(base64.b64decode("".join(text.split())))
    except ValueError:
        raise PermanentJobError("the job wrapper's payload is damaged") from None
    if not isinstance(data, dict) or data.get("v") != 1 or "script" not in data:
        raise PermanentJobError("the job wrapper's payload has an unknown format")
    return data


def main_job_run(stdin_text: str, config: Config) -> int:
    payload = read_payload(stdin_text)
    if not payload.get("interactive"):
        # The payload came on stdin (a heredoc); a batch job reads /dev/null, as usual.
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
    return run_in_vm(payload, config, dict(os.environ))
