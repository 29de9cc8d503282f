"""Torque's hooks: mother superior prologue, detached sister boot, epilogues, precancel.

Observed on Torque 6.1 (DESIGN.md section 4, "Torque corrections"):
- ``prologue.parallel`` blocks its whole mom, and the mother superior's prologue starts only
  after every sister's returned. The sister shim therefore returns at once and starts this
  module's sister boot detached; the job's ``.JB``, which carries the request, appears
  right after. The sister then watches that file: Torque purges it without running any
  sister hook when the job is aborted or requeued, and the sister tears down by itself.
- The mother superior boots its own VMs meanwhile and waits, in one deadline that ends well
  inside ``$prologalarm`` - 10 s, until every VM of the job answers.
- Torque never delivers the output of a prologue that exits 1. So a job whose VMs cannot
  start is let start (exit 0) and the job wrapper prints why and exits non-zero; only a
  transient fault with attempts left requeues (exit 2), bounded by MAX_PROLOGUE_ATTEMPTS.
- After ``qdel`` the epilogues run while the mother superior's prologue still runs: they
  mark the job ended, and a boot in progress stops at once.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from vmwrapper import config as config_mod
from vmwrapper.batch import torque_hooks
from vmwrapper.batch.hookctx import HookContext
from vmwrapper.cli.hook import log_unexpected, report, setup_logging
from vmwrapper.errors import JobGone, PermanentJobError, RequestError, VmWrapperError

log = logging.getLogger("vmwrapper")
SISTER_RECORD_WAIT = 60.0  # the .JB appears ~2 ms after prologue.parallel returns
WATCH_SECONDS = 1.0  # how often a sister looks whether its job is still there


def run_torque(event: str, argv: list[str]) -> int:
    try:
        ctx = torque_hooks.parse(event, argv, dict(os.environ))
    except VmWrapperError as err:
        print(f"vm-wrapper: {err.message}", file=sys.stderr)
        return torque_hooks.ABORT if event == "prologue" else 0
    setup_logging(ctx)
    if ctx.event == "precancel":
        return _precancel(ctx)
    if ctx.event == "epilogue":
        return _epilogue(ctx)
    if not ctx.first_node:
        return _sister(ctx)
    return _mother_superior(ctx)


def _mother_superior(ctx: HookContext) -> int:
    """Boot this node's VMs and wait for every node's; the exit code per the module doc."""
    from vmwrapper import boot, node, torque_files  # noqa: PLC0415  (VM jobs only)

    config = None
    try:
        config = config_mod.load()
        state = node.node_state(config, ctx.jobid, 0)
        state.bump_attempts()  # first: every failure below is a counted attempt
        started, until = time.time(), time.monotonic() + torque_hooks.boot_budget(config)
        account = node.account_of(ctx.user)
        block = torque_files.mother_superior_request(
            ctx.script_path, ctx.jobid, account.uid, config.TORQUE_QSTAT
        )
        if block is None:
            return torque_hooks.RUN  # no request after all: an ordinary job

        def gone() -> bool:  # Torque runs the epilogues beside this prologue after qdel
            return state.job_ended_since(started)

        node.prologue(ctx, config, boot.boot_node, block, until=until, gone=gone,
                      wait_for_others=True)  # fmt: skip
        return torque_hooks.RUN
    except JobGone:
        log.info("prologue %s: the job ended during the boot; stopped", ctx.jobid)
        return torque_hooks.RUN
    except VmWrapperError as err:
        lines, permanent = err.lines(), isinstance(err, (RequestError, PermanentJobError))
    except Exception as err:  # a bug is an attempt like any other
        log_unexpected(err)
        lines = ["internal error while booting the VMs (see the node's vm-wrapper log)"]
        permanent = False
    return _failed(ctx, config, lines, permanent)


def _failed(
    ctx: HookContext, config: config_mod.Config | None, lines: list[str], permanent: bool
) -> int:
    """Requeue a transient fault while attempts are left; otherwise let the job start, and
    leave the reasons (every attempt's) for the job wrapper to print."""
    from vmwrapper import node  # noqa: PLC0415

    for line in lines:  # the user reads them from the job wrapper (once, not twice)
        log.error("prologue %s: %s", ctx.jobid, line)
    if config is None:
        report(ctx, lines)
        return torque_hooks.ABORT  # no config, no state: say it here; pbs_mom keeps the .e
    state = node.node_state(config, ctx.jobid, 0)
    attempts, limit = state.attempts(), config.MAX_PROLOGUE_ATTEMPTS
    if not permanent and attempts < limit:
        for line in lines:
            state.add_reason(f"attempt {attempts}: {line}")
        return torque_hooks.REQUEUE
    earlier = state.reasons()
    final = lines if permanent else [
        *(f"attempt {attempts}: {line}" for line in lines), f"giving up after {attempts} attempts"
    ]  # fmt: skip
    try:
        account = node.account_of(ctx.user)
        state.write_failure([*earlier, *final], (account.uid, account.gid))
    except (VmWrapperError, OSError) as err:
        log.error("cannot leave the failure for the job wrapper: %s", err)
        report(ctx, [*earlier, *final])
        return torque_hooks.ABORT
    return torque_hooks.RUN


def _sister(ctx: HookContext) -> int:
    """Detached from pbs_mom by the shim: wait for the job's record, boot, then stay until
    the job is gone from this mom and tear down (Torque may run no hook to say so)."""
    from vmwrapper import boot, node, torque_files  # noqa: PLC0415

    try:
        config = config_mod.load()
        block = torque_files.wait_for_job_record(ctx.script_path, SISTER_RECORD_WAIT)
        if block is None:
            return 0
        watch = torque_files.RecordWatch(ctx.script_path)
        state = node.node_state(config, ctx.jobid, ctx.rank or 0)  # the rank plan_for uses
        started, until = time.time(), time.monotonic() + config.TIMEOUT

        def gone() -> bool:
            return watch.gone() or state.job_ended_since(started)

        node.prologue(ctx, config, boot.boot_node, block, until=until, gone=gone)
        mine = state.journal_started()
    except JobGone:
        log.info("sister %s: the job ended during the boot; stopped", ctx.jobid)
        return 0
    except VmWrapperError as err:
        log.error("sister boot of %s failed: %s", ctx.jobid, err.message)
        return 0
    except Exception as err:  # detached: nobody reads an exit code, the log says it
        log_unexpected(err)
        return 0
    while not gone():
        time.sleep(WATCH_SECONDS)
    node.teardown_if_unchanged(config, state, mine)
    return 0


def _precancel(ctx: HookContext) -> int:
    """As the job owner on qdel: stop the job inside vm0 before pbs_mom kills the wrapper."""
    from vmwrapper.jobrun import stop_remote  # noqa: PLC0415

    try:
        stop_remote(config_mod.load(), ctx.jobid, ctx.user)
    except VmWrapperError as err:
        report(ctx, err.lines())
    return 0


def _epilogue(ctx: HookContext) -> int:
    from vmwrapper import node  # noqa: PLC0415

    try:
        booting = node.epilogue(ctx, config_mod.load())
        if booting and ctx.first_node:
            report(ctx, ["the job ended while its VMs were booting; they are removed"])
    except VmWrapperError as err:
        report(ctx, err.lines())
    except Exception as err:  # logged, never raised: Torque ignores it
        log_unexpected(err)
        report(ctx, ["internal error during VM teardown (see the node's vm-wrapper log)"])
    return 0  # Torque ignores epilogue failures; `vm-wrapper reap` finishes the job later
