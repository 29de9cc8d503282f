"""One description of a hook invocation, whatever batch system made it."""

from __future__ import annotations

from dataclasses import dataclass

from vmwrapper.config import is_whole_number
from vmwrapper.errors import PermanentJobError


@dataclass(frozen=True)
class HookContext:
    backend: str  # "torque" | "slurm" | "local"
    event: str  # "prologue" | "epilogue" | "precancel"
    jobid: str
    user: str
    script_path: str  # the batch system's own copy of the job script ("" if none)
    rank: int | None  # this node's rank in the job; None: not known (teardown all ranks)
    num_nodes: int
    cores_on_node: int
    first_node: bool  # mother superior / first node: it checks all VMs and serves the user
    exit_status: int | None = None  # epilogue only
    rerun_expected: bool = False  # epilogue of a start the batch system will retry

    @property
    def job_ran(self) -> bool:
        """The epilogue of a job that really ran (not of a failed start)."""
        return self.exit_status is not None and self.exit_status >= 0


def int_env(env: dict[str, str], name: str, default: int | None = None) -> int:
    """A whole-number variable from the hook environment; a clear error if malformed."""
    text = env.get(name, "")
    if is_whole_number(text):
        return int(text)
    if default is not None and not text:
        return default
    raise PermanentJobError(f"hook environment: {name}={text[:20]!r} is not a whole number")
