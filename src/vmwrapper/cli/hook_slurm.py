"""``vm-wrapper hook slurm prolog|epilog``: the Slurm branch of the root hook entry.

The shims in slurm/ exec this only for jobs the sbatch wrapper tagged (--comment=vm-wrapper)
or, in the Epilog, that our Prolog marked. Hook output lands in slurmd's log (and only when
the hook fails); the user reads a failure in the job's Comment (`scontrol show job`).
Details go to syslog and LOG_DIR/<job>.log, as for Torque.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

from vmwrapper import config as config_mod
from vmwrapper.batch import slurm_hooks as sh
from vmwrapper.batch.hookctx import HookContext
from vmwrapper.cli.hook import epilogue, log_unexpected, report, setup_logging
from vmwrapper.errors import NodeError, VmWrapperError

log = logging.getLogger("vmwrapper.slurm")
# Root-only: Slurm's copy of the job script while the Prolog reads it, and one marker per
# (job, node) that makes the Epilog shim run even if the user changed the job's comment.
RUN_DIR = Path("/run/vm-wrapper")
SLURM_DIR = RUN_DIR / "slurm"
_DEFAULT_ATTEMPTS = config_mod.SCHEMA["MAX_PROLOGUE_ATTEMPTS"]["default"]


def run_slurm(event: str, env: dict[str, str]) -> int:
    try:
        ctx = sh.parse(event, env)
    except VmWrapperError as err:
        # not the job's request and not a node fault: draining would fix nothing
        log.error("slurm %s: %s", event, err.message)
        print(f"vm-wrapper: {err.message}", file=sys.stderr)
        return sh.RUN
    setup_logging(ctx)
    if ctx.event == "epilogue":
        code = epilogue(ctx)
        _marker(env).unlink(missing_ok=True)
        return code
    return _prolog(ctx, env)


def _marker(env: dict[str, str]) -> Path:
    """Same name as the Epilog shim tests: <jobid>.<SLURMD_NODENAME>."""
    node = env.get("SLURMD_NODENAME", "").replace("/", "_")
    return SLURM_DIR / f"{env.get('SLURM_JOB_ID', '')}.{node}"


def _prolog(ctx: HookContext, env: dict[str, str]) -> int:
    from vmwrapper import boot, node  # noqa: PLC0415  (only VM jobs pay for these imports)

    config = None
    script = SLURM_DIR / f"{_marker(env).name}.script"
    try:
        config = config_mod.load()
        if not _fetch_request_script(ctx, env, script):
            return sh.RUN  # tagged, but carries no request: an ordinary job
        _marker(env).touch(mode=0o600)
        # Slurm runs every node's Prolog at once; the batch script starts when the first
        # node's Prolog ends (measured) and the job wrapper waits for every VM itself.
        node_ctx = replace(ctx, script_path=str(script))
        block = node.load_request(node_ctx, config)
        until = time.monotonic() + config.TIMEOUT
        node.prologue(node_ctx, config, boot.boot_node, block, until=until)
        return sh.RUN
    except VmWrapperError as err:
        failure = err
    except Exception as err:  # a bug is an attempt like any other
        log_unexpected(err)
        failure = NodeError("internal error while booting the VMs (see the node's vm-wrapper log)")
    finally:
        script.unlink(missing_ok=True)
    return _failed(ctx, env, failure, config)


def _fetch_request_script(ctx: HookContext, env: dict[str, str], dest: Path) -> bool:
    """Slurm's own copy of the job script into a root-only file; does it carry a request?"""
    from vmwrapper import requestblock  # noqa: PLC0415
    from vmwrapper.state import ensure_root_dir  # noqa: PLC0415

    ensure_root_dir(RUN_DIR)
    ensure_root_dir(SLURM_DIR, 0o700)
    started = time.monotonic()
    if not sh.fetch_script(ctx.jobid, dest, env):
        log.info("prolog %s: no batch script (an allocation): nothing to boot", ctx.jobid)
        return False
    found = requestblock.MARKER_BYTES in dest.read_bytes()
    log.info("prolog %s: job script fetched in %.0f ms; VM request: %s",
             ctx.jobid, (time.monotonic() - started) * 1000, "yes" if found else "no")  # fmt: skip
    return found


def _failed(
    ctx: HookContext, env: dict[str, str], err: VmWrapperError, config: config_mod.Config | None
) -> int:
    """Fail the job with a readable reason and/or drain the node (see prolog_verdict)."""
    from vmwrapper import node  # noqa: PLC0415

    report(ctx, err.lines())
    attempt = sh.restart_count(env) + 1
    # an unreadable config is this node's fault: drain it, with the default attempt limit
    limit = int(config.MAX_PROLOGUE_ATTEMPTS if config else _DEFAULT_ATTEMPTS)
    verdict = sh.prolog_verdict(
        permanent=node.is_request_error(err), attempt=attempt, max_attempts=limit
    )
    if not verdict.fail_job:
        return verdict.exit_code
    reason = err.message
    if not node.is_request_error(err):
        reason = f"giving up after {attempt} attempts to boot the VMs: {reason}"
    try:
        sh.fail_job(ctx.jobid, reason, env)
    except VmWrapperError as cancel_err:
        # the job would start without its VMs; a node that cannot reach slurmctld is faulty
        report(ctx, [f"cannot fail the job in Slurm: {cancel_err.message}"])
        return sh.DRAIN
    return verdict.exit_code
