"""The only place that runs external commands.

Every command gets an explicit timeout and set of accepted exit codes, runs in its own
session so a timeout kills the whole process group, and fails with a CommandError whose
message is one line. We use subprocess rather than the ``sh`` package: sh gives children a
pty by default and imports asyncio (+80 ms), and we need exact control of sessions and fds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from vmwrapper.errors import CommandError

log = logging.getLogger(__name__)

# A fixed PATH: hooks start with none (Slurm) or a minimal one (Torque).
SAFE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    ok_codes: Iterable[int] = (0,),
    input_text: str | None = None,
    env: Mapping[str, str] | None = None,
    redact: Iterable[str] = (),
    pass_fds: Sequence[int] = (),
) -> Result:
    """Run argv to completion. Raises CommandError on timeout or an unaccepted exit code.
    ``pass_fds`` stay open in the child (a file root checked, named as /dev/fd/N)."""
    args = [str(a) for a in argv]
    shown = _redacted(args, redact)
    child_env = {"PATH": SAFE_PATH, "LC_ALL": "C.UTF-8"} if env is None else dict(env)
    log.debug("run: %s", " ".join(shown))
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env,
            start_new_session=True,  # so a timeout can kill the whole group
            pass_fds=tuple(pass_fds),
            text=True,
            errors="surrogateescape",  # bytes that are not UTF-8 survive a round trip
        )
    except OSError as err:
        raise CommandError(
            f"cannot run {args[0]}: {err.strerror}", argv=shown, returncode=None
        ) from None
    try:
        out, err_text = proc.communicate(input_text, timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        proc.communicate()
        raise CommandError(
            f"{os.path.basename(args[0])} timed out after {timeout:g} s",
            argv=shown,
            returncode=None,
        ) from None
    if proc.returncode not in set(ok_codes):
        last = (err_text.strip().splitlines() or ["no error output"])[-1][:200]
        raise CommandError(
            f"{os.path.basename(args[0])} failed (exit {proc.returncode}): {last}",
            argv=shown,
            returncode=proc.returncode,
            stderr=err_text,
        )
    return Result(shown, proc.returncode, out, err_text)


def spawn(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, stdin_pipe: bool = False
) -> subprocess.Popen[bytes]:
    """Start argv with this process's stdout/stderr, so its output streams straight through
    (the job's output files). The caller waits; used for ssh into VMs and job launches."""
    args = [str(a) for a in argv]
    log.debug("spawn: %s", " ".join(args))
    try:
        return subprocess.Popen(
            args,
            stdin=subprocess.PIPE if stdin_pipe else None,
            env=None if env is None else dict(env),
        )
    except OSError as err:
        raise CommandError(
            f"cannot run {args[0]}: {err.strerror}", argv=args, returncode=None
        ) from None


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a whole process group; it may already be gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def exec_replace(argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
    """Replace this process by argv (never returns). Used to hand over to the real qsub."""
    args = [str(a) for a in argv]
    try:
        if env is None:
            os.execv(args[0], args)  # noqa: S606  (argv list, no shell)
        os.execve(args[0], args, dict(env))  # noqa: S606
    except OSError as err:
        raise CommandError(
            f"cannot run {args[0]}: {err.strerror}", argv=args, returncode=None
        ) from None


def _redacted(args: list[str], secrets: Iterable[str]) -> list[str]:
    hidden = [s for s in secrets if s]
    if not hidden:
        return args
    out = []
    for arg in args:
        shown = arg
        for secret in hidden:
            shown = shown.replace(secret, "***")
        out.append(shown)
    return out
