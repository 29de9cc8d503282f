"""``vm-wrapper run [-vm K=V,...]... [--as USER] SCRIPT [ARGS...]``: the local backend.

The whole lifecycle on this machine, no batch system: plan, boot, run the script inside the
first VM as USER, stream its output, return its exit code, tear everything down. Runs as
root (it plays the batch system and the root hooks); the job itself runs as USER.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from vmwrapper import config as config_mod
from vmwrapper import proc, requestblock
from vmwrapper.batch import local
from vmwrapper.errors import RequestError, VmWrapperError
from vmwrapper.plan import job_tag
from vmwrapper.request import FILE_KEYS, parse_vm_option, validate
from vmwrapper.state import write_file

USAGE = "usage: vm-wrapper run [-I] [-vm key=value[,...]]... [--as USER] [SCRIPT [ARGS...]]"


def parse_args(args: list[str]) -> tuple[dict[str, str], str, bool, list[str]]:
    """(-vm keys, user, interactive, [script, args...])."""
    vm: dict[str, str] = {}
    user = os.environ.get("SUDO_USER", "")
    interactive = False
    rest = list(args)
    while rest and rest[0].startswith("-"):
        option = rest.pop(0)
        if option in ("-vm", "--vm") and rest:
            vm.update(parse_vm_option(rest.pop(0)))
        elif option == "--as" and rest:
            user = rest.pop(0)
        elif option == "-I":
            interactive = True
        elif option == "--":
            break
        else:
            raise RequestError([f"unknown option {option!r}; {USAGE}"])
    if not rest and not interactive:
        raise RequestError([USAGE])
    if not user:
        raise RequestError(["say which user the job runs as: --as USER"])
    return vm, user, interactive, rest


def directive_vm_options(script: bytes) -> dict[str, str]:
    """`#PBS -vm ...` lines before the first command (command-line -vm wins)."""
    found: dict[str, str] = {}
    for number, line in enumerate(script.decode("utf-8", "replace").splitlines()):
        stripped = line.strip()
        if number == 0 and stripped.startswith("#!"):
            continue
        if stripped and not stripped.startswith("#"):
            break
        words = stripped.split()
        if len(words) >= 3 and words[0] == "#PBS" and words[1] in ("-vm", "--vm"):
            found.update(parse_vm_option(words[2]))
    return found


def run(args: list[str]) -> int:
    if os.geteuid() != 0:
        raise RequestError(["vm-wrapper run boots VMs for you and must run as root (sudo)"])
    cli_vm, user, interactive, command = parse_args(args)
    config = config_mod.load()
    limit = config.MAX_USER_FILE_KB * 1024
    script_path = command[0] if command else "INTERACTIVE"
    script = local.read_as_user(user, script_path, limit) if command else b""
    raw = {**directive_vm_options(script), **cli_vm}
    request = validate(raw, config)
    files = {k: local.read_as_user(user, getattr(request, k), limit)
             for k in FILE_KEYS if getattr(request, k)}  # fmt: skip
    jobid = local.next_jobid(config.STATE_DIR)
    copy = local.store_script_copy(
        config.STATE_DIR,
        jobid,
        requestblock.encode(request.to_raw(), files, requestblock.new_submission_id()) + "\n",
    )
    payload = {"v": 1, "script": base64.b64encode(script).decode(), "args": command[1:],
               "shell": "", "name": Path(script_path).name,
               "interactive": interactive}  # fmt: skip
    return _lifecycle(config, jobid, user, copy, payload)


def _lifecycle(
    config: config_mod.Config, jobid: str, user: str, copy: Path, payload: dict[str, object]
) -> int:
    from vmwrapper import boot, node  # noqa: PLC0415

    pid_file = local.local_dir(config.STATE_DIR) / f"{jobid}.pid"
    pid_file.write_text(str(os.getpid()))
    signal.signal(signal.SIGTERM, _interrupt)
    status = -1
    started = time.monotonic()
    try:
        ctx = local.context("prologue", jobid, user, copy)
        _say(f"job {jobid}: booting VMs (this takes a while under TCG)")
        with _progress(config, jobid, started):
            block = node.load_request(ctx, config)
            until = time.monotonic() + config.TIMEOUT
            node.prologue(ctx, config, boot.boot_node, block, until=until)
        _say(f"job {jobid}: VMs ready after {time.monotonic() - started:.0f} s; running the job")
        status = _run_job(config, jobid, user, payload)
        return status
    finally:
        _say(f"job {jobid}: tearing down")
        try:
            node.epilogue(local.context("epilogue", jobid, user, copy, status=status), config)
        except VmWrapperError as err:
            _say(f"teardown problem: {err.message} (run `vm-wrapper reap`)")
        copy.unlink(missing_ok=True)
        pid_file.unlink(missing_ok=True)


def _run_job(config: config_mod.Config, jobid: str, user: str, payload: dict[str, object]) -> int:
    home = pwd.getpwnam(user).pw_dir
    env = {"USER": user, "LOGNAME": user, "HOME": home, "PATH": "/usr/bin:/bin",
           "LANG": "C.UTF-8", "VMW_JOBID": jobid, "PBS_JOBID": jobid,
           "PBS_JOBNAME": str(payload["name"]), "PBS_O_WORKDIR": os.getcwd()}  # fmt: skip
    command = [local.RUNUSER, "-u", user, "--", config.NODE_PYTHON, "-I", "-m", "vmwrapper",
               "job-run"]  # fmt: skip
    encoded = base64.b64encode(json.dumps(payload).encode())
    if payload.get("interactive"):
        # The terminal stays the job's stdin: the payload goes in a file only the user reads.
        env["TERM"] = os.environ.get("TERM", "xterm")
        owner = (pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
        path = Path(config.STATE_DIR) / "jobs" / job_tag(jobid) / "user" / "payload"
        write_file(path, encoded, 0o600, owner)
        return proc.spawn([*command, "--payload-file", str(path)], env=env).wait()
    child = proc.spawn(command, env=env, stdin_pipe=True)
    assert child.stdin is not None
    child.stdin.write(encoded)
    child.stdin.close()
    try:
        return child.wait()
    except KeyboardInterrupt:
        child.terminate()
        return child.wait()


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _say(text: str) -> None:
    print(f"vm-wrapper: {text}", file=sys.stderr, flush=True)


class _progress:  # used as a context manager
    """Prints `ready k/N, elapsed s` every few seconds while the node boots."""

    def __init__(self, config: config_mod.Config, jobid: str, started: float) -> None:
        from vmwrapper.node import node_state  # noqa: PLC0415

        self.timeline = node_state(config, jobid, 0).timeline_file
        self.started = started
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> None:
        self.thread.start()

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()

    def _loop(self) -> None:
        while not self.stop.wait(5):
            try:
                events = json.loads(self.timeline.read_text())
            except (OSError, ValueError):
                continue
            total = sum(1 for key in events if key.endswith(":define"))
            ready = sum(1 for key in events if key.endswith(":ready"))
            elapsed = time.monotonic() - self.started
            _say(f"booting {total} VM(s): ready {ready}/{total}, elapsed {elapsed:.0f} s")
