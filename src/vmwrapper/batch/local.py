"""The local backend: this machine plays batch system and single node (demos, tests).

It keeps what a batch system would keep: a job id sequence and a root-owned copy of the
job script carrying the request, which the node-side code reads exactly as it reads
Torque's or Slurm's copy. User files are read as the user (runuser), never as root.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from vmwrapper import proc
from vmwrapper.batch.hookctx import HookContext
from vmwrapper.errors import RequestError
from vmwrapper.state import ensure_root_dir, write_file

RUNUSER = "/usr/sbin/runuser"


def local_dir(state_dir: str) -> Path:
    root = ensure_root_dir(Path(state_dir))
    return ensure_root_dir(root / "local", 0o700)


def next_jobid(state_dir: str) -> str:
    """Sequential ids like Torque's, so each job gets its own address block. Locked:
    two `vm-wrapper run` started together must not share an id."""
    directory = local_dir(state_dir)
    fd = os.open(directory / "seq", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        text = os.read(fd, 32).decode("ascii", "replace").strip()
        number = int(text) + 1 if text.isascii() and text.isdigit() else 1
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, str(number).encode())
        os.fsync(fd)
    finally:
        os.close(fd)  # releases the lock
    return f"{number}.local"


def read_as_user(user: str, path: str, limit: int) -> bytes:
    """A user's file, read with the user's own rights."""
    result = proc.run([RUNUSER, "-u", user, "--", "/usr/bin/head", "-c", str(limit + 1), "--",
                       path], timeout=30, ok_codes=range(256))  # fmt: skip
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["cannot read it"])[-1]
        raise RequestError([f"{path}: {reason.split(': ')[-1]}"])
    data = result.stdout.encode("utf-8", "surrogateescape")
    if len(data) > limit:
        raise RequestError([f"{path}: larger than {limit // 1024} KiB"])
    return data


def store_script_copy(state_dir: str, jobid: str, text: str) -> Path:
    path = local_dir(state_dir) / f"{jobid}.SC"
    return write_file(path, text.encode(), 0o600)


def context(event: str, jobid: str, user: str, script: Path, *, status: int | None = None
            ) -> HookContext:  # fmt: skip
    return HookContext(
        backend="local",
        event=event,
        jobid=jobid,
        user=user,
        script_path=str(script),
        rank=0,
        num_nodes=1,
        cores_on_node=len(os.sched_getaffinity(0)),
        first_node=True,
        exit_status=status,
    )


def job_is_active(state_dir: str, jobid: str) -> bool:
    """A local job is active while its `vm-wrapper run` process lives."""
    try:
        pid = int((local_dir(state_dir) / f"{jobid}.pid").read_text())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
