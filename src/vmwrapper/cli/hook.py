"""``vm-wrapper hook BACKEND EVENT ARGV...``: the root entry point of every batch hook.

The user reads one line on stderr (Torque puts the mother superior's into the job's error
file); details and tracebacks go to syslog and to LOG_DIR/<job>.log, never to the user.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from pathlib import Path

from vmwrapper import config as config_mod
from vmwrapper.batch.hookctx import HookContext
from vmwrapper.errors import VmWrapperError

log = logging.getLogger("vmwrapper")
LOG_DIR = Path("/var/log/vm-wrapper")


def run(args: list[str]) -> int:
    if len(args) < 2:
        print("usage: vm-wrapper hook torque|slurm EVENT [ARGS...]", file=sys.stderr)
        return 2
    backend, event, argv = args[0], args[1], args[2:]
    os.umask(0o077)
    if backend == "torque":
        return _torque(event, argv)
    if backend == "slurm" and not argv:  # Slurm hooks get no argv, only SLURM_* variables
        from vmwrapper.cli.hook_slurm import run_slurm  # noqa: PLC0415

        return run_slurm(event, dict(os.environ))
    print(f"vm-wrapper: unknown hook backend {backend!r}", file=sys.stderr)
    return 2


def _torque(event: str, argv: list[str]) -> int:
    from vmwrapper.cli.hook_torque import run_torque  # noqa: PLC0415

    return run_torque(event, argv)


def log_unexpected(err: BaseException) -> None:
    """The innermost frames only: a RecursionError's full traceback is ~400 KB a run."""
    import traceback  # noqa: PLC0415

    lines = traceback.format_exception(type(err), err, err.__traceback__, limit=-12)
    log.error("unexpected failure: %s", "".join(lines)[-8000:])


def epilogue(ctx: HookContext) -> int:
    """Remove this node's part of the job (Slurm's Epilog; Torque has its own)."""
    from vmwrapper import node  # noqa: PLC0415

    try:
        node.epilogue(ctx, config_mod.load())
    except VmWrapperError as err:
        report(ctx, err.lines())
    except Exception as err:  # logged, never raised
        log_unexpected(err)
        report(ctx, ["internal error during VM teardown (see the node's vm-wrapper log)"])
    return 0


MAX_REPORT_LINES = 10


def report(ctx: HookContext, lines: list[str]) -> None:
    """Each problem once, at most MAX_REPORT_LINES of them (a forged request can hold
    thousands), to the log and to the user."""
    unique = list(dict.fromkeys(lines))
    if len(unique) > MAX_REPORT_LINES:
        more = len(unique) - MAX_REPORT_LINES
        unique = [*unique[:MAX_REPORT_LINES], f"... and {more} more problems"]
    for line in unique:
        log.error("%s %s: %s", ctx.event, ctx.jobid, line)
        print(f"vm-wrapper: job {ctx.jobid}: {line}", file=sys.stderr)


def setup_logging(ctx: HookContext) -> None:
    """Syslog and LOG_DIR/<job>.log. Idempotent (tests call hooks in-process), and quiet:
    a logging failure must never print its traceback into the user's error file."""
    logging.raiseExceptions = False
    for old in list(log.handlers):
        log.removeHandler(old)
        old.close()
    log.setLevel(logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    if os.path.exists("/dev/log"):
        syslog = logging.handlers.SysLogHandler(address="/dev/log")
        syslog.setFormatter(logging.Formatter("vm-wrapper[%(process)d]: %(message)s"))
        log.addHandler(syslog)
    try:
        LOG_DIR.mkdir(mode=0o700, exist_ok=True)
        name = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in ctx.jobid)
        # delay: a hook that has nothing to say leaves no file behind
        handler = logging.FileHandler(LOG_DIR / f"{name[:100]}.log", delay=True)
        handler.setFormatter(fmt)
        log.addHandler(handler)
    except OSError:
        pass  # logging must never stop a hook
