"""Slurm 22.05 Prolog/Epilog environment -> HookContext, and our outcomes -> Slurm semantics.

Measured contract (DESIGN.md section 4, reference/batch.md 1.3-1.4): the hooks run as root
on every node of the job, concurrently, with no argv and only SLURM_* variables (no PATH):
SLURM_JOB_ID, SLURM_JOB_USER, SLURMD_NODENAME, SLURM_NODELIST (a hostlist expression such
as ``n[1-2]``), SLURM_JOB_NUM_NODES, SLURM_JOB_CPUS_PER_NODE (``1(x2)``),
SLURM_JOB_RESTART_COUNT, SLURM_JOB_COMMENT; the Epilog adds SLURM_JOB_EXIT_CODE.

A Prolog that exits non-zero DRAINS the node and requeues the job. So a problem with the
job's request never fails the Prolog: it fails the job instead (Comment + scancel, tested
on 22.05: ``JobState=CANCELLED Reason=Prolog Comment=vm-wrapper: ...``) and exits 0. Only
a node fault exits non-zero.

Parsing is pure. The few Slurm commands (fetch the script, fail the job, is it active)
run through proc.run with absolute paths, since the hook environment has no PATH.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from vmwrapper.batch.hookctx import HookContext, int_env
from vmwrapper.config import is_whole_number
from vmwrapper.errors import CommandError, PermanentJobError

EVENTS = {"prolog": "prologue", "epilog": "epilogue"}
TAG = "vm-wrapper"  # the sbatch wrapper's --comment; the shims' cheap pre-filter
SCONTROL = "/usr/bin/scontrol"
SCANCEL = "/usr/bin/scancel"
SQUEUE = "/usr/bin/squeue"
MAX_COMMENT = 250
MAX_HOSTS = 100_000  # a hostlist is untrusted text: never expand it without bound

RUN = 0  # the job runs (or was failed on purpose); the node stays up
DRAIN = 1  # a node fault: Slurm drains the node and requeues the job

_RANGE_RE = re.compile(r"(\d+)(?:-(\d+))?\Z")
_CPUS_RE = re.compile(r"(\d+)(?:\(x(\d+)\))?\Z")
_ACTIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
                  "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT",
                  "STOPPED", "SPECIAL_EXIT"}  # fmt: skip


# -- pure parsing --------------------------------------------------------------------------


def split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets: 'a1,b[3-4,6]' -> ['a1', 'b[3-4,6]']."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth not in (0, 1):
            raise ValueError(f"bad brackets in hostlist {text!r}")
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"unbalanced brackets in hostlist {text!r}")
    parts.append(text[start:])
    return parts


def _expand_ranges(body: str) -> list[str]:
    """'01-03,7' -> ['01', '02', '03', '7'], keeping zero padding as Slurm does."""
    out: list[str] = []
    for item in body.split(","):
        match = _RANGE_RE.match(item)
        if not match:
            raise ValueError(f"bad range {item!r} in hostlist")
        low, high = match.group(1), match.group(2) or match.group(1)
        if int(high) < int(low) or len(out) + int(high) - int(low) >= MAX_HOSTS:
            raise ValueError(f"bad or too large range {item!r} in hostlist")
        out += [str(n).zfill(len(low)) for n in range(int(low), int(high) + 1)]
    return out


def expand_hostlist(text: str) -> list[str]:
    """Slurm hostlist expression -> host names: 'n[01-02,5],gpu1' -> n01 n02 n05 gpu1.

    One bracket group per name (prefix[ranges]suffix), which is what slurmctld emits for
    SLURM_NODELIST; several groups in one name ('r[1-2]n[1-2]') are refused, not guessed.
    """
    hosts: list[str] = []
    for part in split_top_level(text.strip()):
        if not part:
            raise ValueError(f"empty name in hostlist {text!r}")
        if "[" not in part:
            hosts.append(part)
            continue
        prefix, _, rest = part.partition("[")
        body, _, suffix = rest.partition("]")
        if "[" in suffix or "]" in suffix:
            raise ValueError(f"more than one bracket group in {part!r}")
        hosts += [f"{prefix}{n}{suffix}" for n in _expand_ranges(body)]
        if len(hosts) > MAX_HOSTS:
            raise ValueError("hostlist too long")
    return hosts


def expand_cpus_per_node(text: str) -> list[int]:
    """SLURM_JOB_CPUS_PER_NODE -> CPUs of each node in order: '4,2(x3)' -> [4, 2, 2, 2]."""
    cpus: list[int] = []
    for item in text.strip().split(","):
        match = _CPUS_RE.match(item)
        count = int(match.group(2) or 1) if match else 0
        if not match or not 0 < count <= MAX_HOSTS - len(cpus):
            raise ValueError(f"bad CPUs-per-node item {item!r}")
        cpus += [int(match.group(1))] * count
    return cpus


def parse(event_name: str, env: dict[str, str]) -> HookContext:
    """The Prolog or Epilog environment of one node as a HookContext."""
    if event_name not in EVENTS:
        raise PermanentJobError(f"unknown Slurm hook {event_name!r}")
    jobid = env.get("SLURM_JOB_ID", "")
    if not is_whole_number(jobid):
        raise PermanentJobError(f"hook environment: SLURM_JOB_ID={jobid[:20]!r} is not a job id")
    try:
        nodes = expand_hostlist(env.get("SLURM_NODELIST") or env.get("SLURM_JOB_NODELIST", ""))
        cpus = expand_cpus_per_node(env.get("SLURM_JOB_CPUS_PER_NODE", "1"))
    except ValueError as err:
        raise PermanentJobError(f"hook environment: {err}") from None
    rank = _rank(env.get("SLURMD_NODENAME", ""), nodes)
    exit_text = env.get("SLURM_JOB_EXIT_CODE", "") if event_name == "epilog" else ""
    return HookContext(
        backend="slurm",
        event=EVENTS[event_name],
        jobid=jobid,
        user=env.get("SLURM_JOB_USER", ""),
        script_path="",  # Slurm keeps no script file on the node: see fetch_script
        rank=rank,
        num_nodes=int_env(env, "SLURM_JOB_NUM_NODES", len(nodes)),
        cores_on_node=cpus[rank] if rank < len(cpus) else cpus[-1],
        first_node=rank == 0,
        exit_status=int(exit_text) if is_whole_number(exit_text) else None,
    )


def _rank(node: str, nodes: list[str]) -> int:
    if node not in nodes:
        raise PermanentJobError(f"hook environment: node {node[:40]!r} is not in the job's list")
    return nodes.index(node)


def restart_count(env: dict[str, str]) -> int:
    """How often Slurm requeued the job: counts attempts across nodes (a drained node never
    sees the job again, so a per-node counter would not stop a job draining them all)."""
    text = env.get("SLURM_JOB_RESTART_COUNT", "0")
    return int(text) if is_whole_number(text) else 0


# -- outcomes -> Slurm -----------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    exit_code: int  # RUN or DRAIN
    fail_job: bool  # cancel the job with a readable reason


def prolog_verdict(*, permanent: bool, attempt: int, max_attempts: int) -> Verdict:
    """A failed Prolog. The job's fault: fail the job, keep the node. A node fault: drain
    (Slurm requeues the job elsewhere) until the job used up its attempts; then fail the
    job and keep the node, so a job that breaks every node it lands on (a guest that never
    boots) cannot drain the whole cluster. Failing the job always goes with exit 0: on
    22.05 a Prolog that fails after its own scancel still gets the job requeued."""
    if permanent or attempt >= max_attempts:
        return Verdict(RUN, fail_job=True)
    return Verdict(DRAIN, fail_job=False)


def failure_comment(reason: str, previous: str = "") -> str:
    """The job Comment the user reads; it keeps the tag so the Epilog still runs, and the
    user's own comment, which the sbatch wrapper put after "vm-wrapper; ", at its end."""
    text = " ".join(reason.split())  # one line, whatever the error said
    prefix = f"{TAG}; "
    theirs = " ".join(previous.split())[len(prefix) :][:100] if previous.startswith(prefix) else ""
    tail = f" [your comment: {theirs}]" if theirs else ""
    return f"{TAG}: {text}"[: MAX_COMMENT - len(tail)] + tail


def job_active_from_squeue(returncode: int, stdout: str, stderr: str) -> bool:
    """Does squeue's answer say the job still holds (or will hold) resources? If slurmctld
    could not answer, say yes: reaping a live job's VMs is the worse mistake. squeue
    prints nothing for a finished job and fails with 'Invalid job id' once it is purged."""
    if returncode != 0:
        return "Invalid job id" not in stderr
    states = {line.strip() for line in stdout.splitlines() if line.strip()}
    return bool(states & _ACTIVE_STATES)


def slurm_env(env: dict[str, str]) -> dict[str, str]:
    """Environment for Slurm clients run from a hook: fixed PATH, the same slurm.conf."""
    out = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}
    if env.get("SLURM_CONF", "").startswith("/"):
        out["SLURM_CONF"] = env["SLURM_CONF"]
    return out


# -- the Slurm commands --------------------------------------------------------------------


def fetch_script(jobid: str, dest: Path, env: dict[str, str], timeout: float = 30) -> bool:
    """Slurm's own copy of the batch script into dest (root's, mode from the umask).
    False if the job has no batch script (an salloc allocation)."""
    from vmwrapper import proc  # noqa: PLC0415

    dest.unlink(missing_ok=True)  # scontrol writes through a symlink; ours is a root-only dir
    argv = [SCONTROL, "write", "batch_script", jobid, str(dest)]
    result = proc.run(argv, timeout=timeout, ok_codes=range(256), env=slurm_env(env))
    if dest.is_file() and not dest.is_symlink():
        return True
    said = " ".join((result.stderr + result.stdout).split())
    if "Job script not specified" in said:
        return False
    # 22.05 exits 0 even when it fails ("job script retrieval failed: ..."): judge the file
    raise CommandError(
        f"cannot fetch the job script from slurmctld: {said[:200]}",
        argv=result.argv,
        returncode=result.returncode,
        stderr=result.stderr,
    )


def fail_job(jobid: str, reason: str, env: dict[str, str], timeout: float = 30) -> None:
    """Record the reason in the job's Comment, then cancel it (JobState=CANCELLED
    Reason=Prolog). Every node of the job may do this at once: whoever comes second finds
    the job finished (scontrol exits 1), which is the outcome we want."""
    from vmwrapper import proc  # noqa: PLC0415

    child_env = slurm_env(env)
    comment = f"Comment={failure_comment(reason, env.get('SLURM_JOB_COMMENT', ''))}"
    argv = [SCONTROL, "update", f"JobId={jobid}", comment]
    result = proc.run(argv, timeout=timeout, ok_codes=(0, 1), env=child_env)
    if result.returncode and "already finished" not in result.stderr:
        raise CommandError(
            f"scontrol update failed: {result.stderr.strip()[:200]}",
            argv=result.argv,
            returncode=result.returncode,
            stderr=result.stderr,
        )
    proc.run([SCANCEL, jobid], timeout=timeout, ok_codes=(0, 1), env=child_env)


def job_is_active(jobid: str, timeout: float = 30) -> bool:
    """For `vm-wrapper reap`: one squeue RPC (~10 ms) per job with state on this host."""
    from vmwrapper import proc  # noqa: PLC0415

    argv = [SQUEUE, "-h", "-j", jobid, "-o", "%T"]
    try:
        result = proc.run(argv, timeout=timeout, ok_codes=range(256), env=slurm_env({}))
    except CommandError:
        return True  # could not ask: keep the job's VMs
    return job_active_from_squeue(result.returncode, result.stdout, result.stderr)
