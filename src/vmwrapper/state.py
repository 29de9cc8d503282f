"""Root-owned per-job state on one node, and the journal that makes teardown reliable.

Layout (STATE_DIR is root-owned)::

    STATE_DIR/jobs/<tag>/              0711 root   the job on this host
    STATE_DIR/jobs/<tag>/node<rank>/   0711 root   one node's resources (several ranks share a
                                                   host only in tests)
        journal                        0600        one JSON line per resource, written and
                                                   fsync'ed BEFORE the resource is created
        timeline.json                  0644        boot timeline, for `vm-wrapper status`
    STATE_DIR/jobs/<tag>/user/         0711 root   what the job user may read: files owned by
                                                   the user (key, known_hosts, vms.json)
    STATE_DIR/attempts/<tag>.<rank>    0600        prologue attempts; survives teardown so a
                                                   requeued job's count keeps growing
    STATE_DIR/attempts/<tag>.<rank>.why 0600       one line per failed attempt: the reason
    STATE_DIR/locks/                   0700 root   one file per persistent disk in use
                                                   (disk-<dev>-<inode>), and node.<tag>.<rank>
                                                   which boot and teardown of a node hold
    STATE_DIR/ended/<tag>.<rank>       0600        written by the epilogue: a prologue still
                                                   booting (Torque runs epilogues beside a
                                                   running prologue after qdel) stops at once
    STATE_DIR/jobs/<tag>/user/failure  0644 user   why the VMs could not start: the job
                                                   wrapper prints it and exits

Directories are 0711 so libvirt's qemu user can reach the files it needs by name while no one
else can list them. Every open uses O_NOFOLLOW and every directory is checked to be a real,
root-owned directory: nothing here follows a symlink.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vmwrapper.errors import NodeError

DIR_MODE = 0o711


def ensure_root_dir(path: Path, mode: int = DIR_MODE) -> Path:
    """Create (or accept) a root-owned real directory; refuse symlinks and foreign owners."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=mode)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0:
        raise NodeError(f"{path} must be a root-owned directory (not a link)")
    if stat.S_IMODE(info.st_mode) != mode:
        os.chmod(path, mode)
    return path


def check_shared_parent(path: Path) -> Path:
    """A root-owned real directory in which others cannot rename or remove our entries:
    writable by root alone, or sticky (/dev/shm, /tmp)."""
    try:
        info = os.lstat(path)
    except OSError as err:
        raise NodeError(f"{path}: {err.strerror}") from None
    others_write = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if (
        not stat.S_ISDIR(info.st_mode)
        or info.st_uid != 0
        or (others_write and not info.st_mode & stat.S_ISVTX)
    ):
        raise NodeError(f"{path} must be a root-owned directory, sticky if others may write it")
    return path


def write_file(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None = None) -> Path:
    """Write a file without following a symlink at its name; set owner and mode via the fd."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISLNK(os.lstat(path).st_mode):
            os.unlink(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


class NodeState:
    """State of job `tag` for node rank `rank` on this host."""

    def __init__(self, state_dir: Path, tag: str, rank: int) -> None:
        self.root = state_dir
        self.job_dir = state_dir / "jobs" / tag
        self.node_dir = self.job_dir / f"node{rank}"
        self.user_dir = self.job_dir / "user"
        self.tag, self.rank = tag, rank
        self.attempts_file = state_dir / "attempts" / f"{tag}.{rank}"
        self.reasons_file = state_dir / "attempts" / f"{tag}.{rank}.why"
        self.ended_name = f"{tag}.{rank}"
        self.journal = self.node_dir / "journal"
        self.timeline_file = self.node_dir / "timeline.json"
        self._timeline: dict[str, float] = {}

    # -- creation ------------------------------------------------------------------------
    def create(self) -> None:
        for path in (self.root, self.root / "jobs", self.job_dir, self.node_dir):
            ensure_root_dir(path)

    def exists(self) -> bool:
        return self.node_dir.is_dir() and not self.node_dir.is_symlink()

    def record(self, kind: str, value: str) -> None:
        """Journal a resource before creating it, durably."""
        line = json.dumps({"kind": kind, "value": value, "time": time.time()}) + "\n"
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.journal, flags, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def journal_started(self) -> float | None:
        """When this node's journal began: tells one boot of the job from a later one."""
        entries = self.entries()
        return float(entries[0].get("time", 0)) if entries else None

    def entries(self) -> list[dict[str, Any]]:
        """Journal entries in creation order; a torn last line (crash) is ignored."""
        try:
            fd = os.open(self.journal, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return []
        with os.fdopen(fd, encoding="utf-8") as handle:
            text = handle.read()
        found = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and {"kind", "value"} <= set(entry):
                    found.append(entry)
        return found

    # -- one boot or teardown at a time ---------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Held while this node's part of the job is created or removed. The lock file
        stays (a name, no content) until reap clears stale ones."""
        locks = ensure_root_dir(ensure_root_dir(self.root) / "locks", 0o700)
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(locks / f"node.{self.tag}.{self.rank}", flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- attempts ------------------------------------------------------------------------
    def bump_attempts(self) -> int:
        ensure_root_dir(self.root)  # the first thing a prologue does: STATE_DIR may be new
        ensure_root_dir(self.root / "attempts")
        count = self.attempts() + 1
        write_file(self.attempts_file, str(count).encode(), 0o600)
        return count

    def attempts(self) -> int:
        try:
            fd = os.open(self.attempts_file, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return 0
        with os.fdopen(fd) as handle:
            text = handle.read().strip()
        return int(text) if text.isascii() and text.isdigit() else 0

    def forget_attempts(self) -> None:
        for path in (self.attempts_file, self.reasons_file):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def add_reason(self, line: str) -> None:
        """Why an attempt failed, kept with the attempt count for the final report."""
        ensure_root_dir(ensure_root_dir(self.root) / "attempts")
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.reasons_file, flags, 0o600)
        try:
            os.write(fd, line.replace("\n", " ")[:500].encode() + b"\n")
        finally:
            os.close(fd)

    def reasons(self) -> list[str]:
        try:
            fd = os.open(self.reasons_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return []
        with os.fdopen(fd, encoding="utf-8", errors="replace") as handle:
            return handle.read(64 * 1024).splitlines()

    # -- the job's end, seen by a prologue still at work ------------------------------------
    def mark_job_ended(self) -> None:
        ended = ensure_root_dir(ensure_root_dir(self.root) / "ended", 0o700)
        write_file(ended / self.ended_name, str(time.time()).encode(), 0o600)

    def job_ended_since(self, since: float) -> bool:
        """Did this node's epilogue of this job run after ``since`` (a time.time())?"""
        try:
            return os.lstat(self.root / "ended" / self.ended_name).st_mtime >= since
        except OSError:
            return False

    def write_failure(self, lines: list[str], owner: tuple[int, int]) -> None:
        """Why the job's VMs could not start, for the job wrapper to print."""
        for path in (self.root, self.root / "jobs", self.job_dir, self.user_dir):
            ensure_root_dir(path)
        text = "".join(line + "\n" for line in lines)
        write_file(self.user_dir / "failure", text.encode(), 0o644, owner)

    # -- timeline ------------------------------------------------------------------------
    def mark(self, event: str, when: float | None = None) -> None:
        """Record a boot timeline event (first occurrence wins) and persist the timeline."""
        self._timeline.setdefault(event, time.time() if when is None else when)
        data = json.dumps(self._timeline, indent=1, sort_keys=True).encode()
        if self.exists():
            write_file(self.timeline_file, data, 0o644)

    @property
    def timeline(self) -> dict[str, float]:
        return dict(self._timeline)

    def saved_timeline(self) -> dict[str, float]:
        """The timeline as the booting process last wrote it (another process's view)."""
        try:
            fd = os.open(self.timeline_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return {}
        with os.fdopen(fd, encoding="utf-8") as handle:
            try:
                data = json.load(handle)
            except ValueError:
                return {}
        return data if isinstance(data, dict) else {}

    # -- removal -------------------------------------------------------------------------
    def remove_node_dir(self) -> None:
        _rmtree(self.node_dir)
        with contextlib.suppress(OSError):
            remaining = [p.name for p in self.job_dir.iterdir()]
            if remaining in ([], ["user"]):
                _rmtree(self.job_dir)


def _rmtree(path: Path) -> None:
    # shutil.rmtree works on fds here (avoids_symlink_attacks), so a swapped-in link
    # cannot redirect it.
    assert shutil.rmtree.avoids_symlink_attacks
    with contextlib.suppress(FileNotFoundError):
        if os.path.islink(path):
            os.unlink(path)
            return
        shutil.rmtree(path)


def job_dirs(state_dir: Path) -> Iterator[Path]:
    """Every job state directory on this host (for reap)."""
    jobs = state_dir / "jobs"
    if not jobs.is_dir() or jobs.is_symlink():
        return iter(())
    return (p for p in sorted(jobs.iterdir()) if p.is_dir() and not p.is_symlink())
