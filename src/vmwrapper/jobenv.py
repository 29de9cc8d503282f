"""Which of the job's environment goes into the VM, and how PBS variables are translated.

Like Apptainer: the job's environment (which the batch system already built from -v/-V)
passes into the guest, except what describes the HOST rather than the job: search paths
(PATH, LD_*), the host's identity and session (HOME, SHELL, HOSTNAME, SSH_*, XDG_*, TMPDIR),
shell and module-system internals, and the node file, which is replaced by the VMs' own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
DROP_EXACT = frozenset(
    {
        "PATH", "HOME", "SHELL", "USER", "LOGNAME", "HOSTNAME", "PWD", "OLDPWD", "SHLVL", "_",
        "MAIL", "TMPDIR", "TMP", "TEMP", "DISPLAY", "XAUTHORITY", "ENV", "BASH_ENV", "PS1",
        "PBS_NODEFILE", "PBS_GPUFILE", "PBS_MICFILE", "MODULEPATH", "MODULESHOME",
        "LOADEDMODULES", "_LMFILES_", "MANPATH", "PYTHONPATH", "PYTHONHOME", "TERM",
        "KRB5CCNAME", "DBUS_SESSION_BUS_ADDRESS",
    }
)  # fmt: skip
DROP_PREFIXES = ("LD_", "SSH_", "XDG_", "BASH_FUNC_", "LMOD_", "__LMOD", "__MODULES",
                 "MODULES_", "VM_WRAPPER_", "VMW_")  # fmt: skip


def passes(name: str) -> bool:
    return (
        bool(_NAME_RE.match(name)) and name not in DROP_EXACT and not name.startswith(DROP_PREFIXES)
    )


def guest_environment(
    job_env: Mapping[str, str], *, nodefile: str, hostnames: list[str], vcpus: list[int]
) -> dict[str, str]:
    """The environment the user's script sees inside the first VM."""
    env = {k: v for k, v in job_env.items() if passes(k) and "\0" not in v}
    jobid = job_env.get("PBS_JOBID") or job_env.get("SLURM_JOB_ID") or job_env.get("VMW_JOBID", "")
    env.update(
        {
            "PBS_NODEFILE": nodefile,
            "PBS_NP": str(sum(vcpus)),
            "PBS_NUM_NODES": str(len(hostnames)),
            "PBS_NUM_PPN": str(vcpus[0] if vcpus else 1),
            "VMW_NODEFILE": nodefile,
            "VMW_JOBID": jobid,
        }
    )
    env.setdefault("PBS_JOBID", jobid)
    if "SLURM_JOB_ID" in job_env:
        env["SLURM_JOB_NODELIST"] = ",".join(hostnames)
        env["SLURM_NODELIST"] = env["SLURM_JOB_NODELIST"]
        env["SLURM_JOB_NUM_NODES"] = str(len(hostnames))
    return env


def nodefile_text(hostnames: list[str], vcpus: list[int]) -> str:
    """Each VM's host name once per vCPU, in rank order: what mpirun -hostfile wants."""
    return "".join(f"{name}\n" * count for name, count in zip(hostnames, vcpus, strict=True))
