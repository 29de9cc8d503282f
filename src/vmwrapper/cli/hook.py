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
from vmwrapper.errors import PermanentJobError, RequestError, VmWrapperError

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
    from vmwrapper.batch import torque_hooks  # noqa: PLC0415

    try:
        ctx = torque_hooks.parse(event, argv, dict(os.environ))
    except VmWrapperError as err:
        print(f"vm-wrapper: {err.message}", file=sys.stderr)
        return torque_hooks.ABORT if event == "prologue" else 0
    _setup_logging(ctx)
    if ctx.event == "precancel":
        return _precancel(ctx)
    if ctx.event == "epilogue":
        return _epilogue(ctx)
    outcome = _prologue(ctx)
    if outcome is None:
        return torque_hooks.RUN
    permanent, attempts_left = outcome
    return torque_hooks.prologue_exit_code(ctx, permanent=permanent, attempts_left=attempts_left)


def _prologue(ctx: HookContext) -> tuple[bool, bool] | None:
    """None on success, else (permanent, attempts_left).

    The attempt is counted before anything else can fail, so that every failure, expected
    or not, is bounded by MAX_PROLOGUE_ATTEMPTS: pbs_sched restarts a requeued job at once,
    without limit.
    """
    from vmwrapper import boot, node  # noqa: PLC0415  (only VM jobs pay for these imports)

    attempts, limit = 1, 1
    try:
        config = config_mod.load()
        limit = config.MAX_PROLOGUE_ATTEMPTS
        attempts = node.node_state(config, ctx.jobid, ctx.rank or 0).bump_attempts()
        node.prologue(ctx, config, boot.boot_node)
        return None
    except VmWrapperError as err:
        permanent = isinstance(err, (RequestError, PermanentJobError))
        _report(ctx, err.lines())
    except Exception as err:  # a bug is an attempt like any other
        _log_unexpected(err)
        permanent = False
        _report(ctx, ["internal error while booting the VMs (see the node's vm-wrapper log)"])
    if not permanent and attempts >= limit:
        _report(ctx, [f"giving up after {attempts} attempts to boot the VMs"])
    return permanent, attempts < limit


def _log_unexpected(err: BaseException) -> None:
    """The innermost frames only: a RecursionError's full traceback is ~400 KB a run."""
    import traceback  # noqa: PLC0415

    lines = traceback.format_exception(type(err), err, err.__traceback__, limit=-12)
    log.error("unexpected failure: %s", "".join(lines)[-8000:])


def _precancel(ctx: HookContext) -> int:
    """As the job owner on qdel: stop the job inside vm0 before pbs_mom kills the wrapper."""
    from vmwrapper.jobrun import stop_remote  # noqa: PLC0415

    try:
        stop_remote(config_mod.load(), ctx.jobid, ctx.user)
    except VmWrapperError as err:
        _report(ctx, err.lines())
    return 0


def _epilogue(ctx: HookContext) -> int:
    from vmwrapper import node  # noqa: PLC0415

    try:
        node.epilogue(ctx, config_mod.load())
    except VmWrapperError as err:
        _report(ctx, err.lines())
    except Exception as err:  # logged, never raised: Torque ignores it
        _log_unexpected(err)
        _report(ctx, ["internal error during VM teardown (see the node's vm-wrapper log)"])
    return 0  # Torque ignores epilogue failures; `vm-wrapper reap` finishes the job later


MAX_REPORT_LINES = 10


def _report(ctx: HookContext, lines: list[str]) -> None:
    """Each problem once, at most MAX_REPORT_LINES of them (a forged request can hold
    thousands), to the log and to the user."""
    unique = list(dict.fromkeys(lines))
    if len(unique) > MAX_REPORT_LINES:
        more = len(unique) - MAX_REPORT_LINES
        unique = [*unique[:MAX_REPORT_LINES], f"... and {more} more problems"]
    for line in unique:
        log.error("%s %s: %s", ctx.event, ctx.jobid, line)
        print(f"vm-wrapper: job {ctx.jobid}: {line}", file=sys.stderr)


def _setup_logging(ctx: HookContext) -> None:
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
