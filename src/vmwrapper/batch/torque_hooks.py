"""Torque 6.1 hook invocations -> HookContext, and our outcomes -> Torque exit codes.

Measured contract (DESIGN.md section 4): prologue argv is jobid user group jobname
resources queue account script (8); epilogue argv is jobid user group jobname session
resources used queue account exit_status script (11). The environment is nearly empty:
PBS_NODENUM (0 on the mother superior), PBS_NUM_NODES, PBS_NUM_PPN, PBS_MSHOST, ...
"""

from __future__ import annotations

from vmwrapper.batch.hookctx import HookContext, int_env
from vmwrapper.config import Config, is_whole_number
from vmwrapper.errors import PermanentJobError

EVENTS = {
    "prologue": ("prologue", True),
    "prologue.parallel": ("prologue", False),
    "epilogue": ("epilogue", True),
    "epilogue.parallel": ("epilogue", False),
    "epilogue.precancel": ("precancel", True),
}
PROLOGUE_ARGS = 8
EPILOGUE_ARGS = 11

# Exit codes with their measured meaning for the job.
RUN = 0
ABORT = 1  # mother superior prologue: job aborted, never rerun, its output NOT delivered
REQUEUE = 2  # mother superior prologue: requeued at once (pbs_sched loops without limit)
# Job exit statuses of a start that pbs_server will retry (JOB_EXEC_RETRY*).
RETRY_STATUSES = frozenset({-3, -4, -14})


def parse(event_name: str, argv: list[str], env: dict[str, str]) -> HookContext:
    if event_name not in EVENTS:
        raise PermanentJobError(f"unknown Torque hook {event_name!r}")
    event, mother_superior = EVENTS[event_name]
    expected = PROLOGUE_ARGS if event == "prologue" else EPILOGUE_ARGS
    if len(argv) < expected:
        raise PermanentJobError(f"{event_name}: expected {expected} arguments, got {len(argv)}")
    default_rank = 0 if mother_superior else None
    rank_text = env.get("PBS_NODENUM", "")
    rank = int(rank_text) if is_whole_number(rank_text) else default_rank
    exit_text = argv[9] if event != "prologue" else ""
    exit_status = int(exit_text) if is_whole_number(exit_text.removeprefix("-")) else None
    return HookContext(
        backend="torque",
        event=event,
        jobid=argv[0],
        user=argv[1],
        script_path=argv[7] if event == "prologue" else argv[10],
        rank=rank,
        num_nodes=int_env(env, "PBS_NUM_NODES", 1),
        cores_on_node=int_env(env, "PBS_NUM_PPN", 1),
        first_node=mother_superior,
        exit_status=exit_status,
        rerun_expected=exit_status in RETRY_STATUSES,
    )


TEARDOWN_MARGIN = 15  # seconds kept after the boot deadline for teardown and the report


def boot_budget(config: Config) -> float:
    """The mother superior's one deadline for its own boot and every other node's VMs:
    TIMEOUT, but always well inside pbs_mom's SIGKILL at $prologalarm - 10 s."""
    return float(min(config.TIMEOUT, config.PROLOGALARM - 10 - TEARDOWN_MARGIN))
