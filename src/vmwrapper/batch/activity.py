"""Is a job still on this node? Asked by `vm-wrapper reap` and by every VM prologue.

A job counts as gone only when its batch system says so: Torque keeps mom_priv/jobs/<jobid>*
while the job is on this mom; Slurm's squeue must not list it (slurmctld unreachable counts
as "still there"); a local job lives as long as its `vm-wrapper run` process. When no batch
system can vouch, the job is left alone.
"""

from __future__ import annotations

import os
from pathlib import Path

from vmwrapper.batch import local
from vmwrapper.config import Config, is_whole_number


def torque_job_present(torque_home: str, jobid: str) -> bool | None:
    """True/False from pbs_mom's job directory; None when this is no Torque node."""
    jobs = Path(torque_home) / "mom_priv" / "jobs"
    if not jobs.is_dir():
        return None
    return any(name.startswith(jobid) for name in os.listdir(jobs))


def job_is_active(config: Config, jobid: str) -> bool:
    if is_whole_number(jobid):  # Slurm job ids are plain numbers
        from vmwrapper.batch import slurm_hooks  # noqa: PLC0415

        return slurm_hooks.job_is_active(jobid)
    if jobid.endswith(".local"):
        return local.job_is_active(config.STATE_DIR, jobid)
    present = torque_job_present(config.TORQUE_HOME, jobid)
    return True if present is None else present
