"""What a node does for a VM job: boot its VMs (prologue) and remove everything (epilogue).

Runs as root. It reads the request only from the batch system's own root-owned copy of the
job script, re-validates it against the admin config as if the qsub wrapper did not exist,
journals every resource before creating it, and tears down whatever it created when any
step fails.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import socket
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vmwrapper import requestblock
from vmwrapper.batch.hookctx import HookContext
from vmwrapper.config import Config, is_whole_number
from vmwrapper.errors import JobGone, NodeError, PermanentJobError, RequestError, VmWrapperError
from vmwrapper.hypervisor import Hypervisor
from vmwrapper.plan import Allocation, JobPlan, job_tag, make_plan
from vmwrapper.request import VmRequest, validate
from vmwrapper.state import NodeState, job_dirs

if TYPE_CHECKING:
    from vmwrapper.boot import BootNode

log = logging.getLogger(__name__)
MAX_SCRIPT_BYTES = 16 * 1024 * 1024
_USER_RE = re.compile(r"[a-z_][a-z0-9_.-]{0,31}\Z")


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str


def read_batch_file(path: str, owners: tuple[int, ...] = (0,)) -> bytes:
    """A file the batch system keeps for the job (a script copy, Torque's job record): a
    regular file owned by one of ``owners``, read through one O_NOFOLLOW descriptor.
    FileNotFoundError passes through; anything else is a PermanentJobError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise PermanentJobError(f"cannot open {path}: {err.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid not in owners:
            who = "the job's user or root" if len(owners) > 1 else "root"
            raise PermanentJobError(f"{path} is not a regular file of {who}")
        data = handle.read(MAX_SCRIPT_BYTES + 1)
    if len(data) > MAX_SCRIPT_BYTES:
        raise PermanentJobError(f"{path} is larger than 16 MiB")
    return data


def read_batch_script(path: str) -> bytes:
    """The batch system's root-owned copy of the job script (Slurm, local)."""
    try:
        return read_batch_file(path)
    except FileNotFoundError:
        raise PermanentJobError(f"the job script copy {path} does not exist") from None


def account_of(user: str) -> Account:
    if not _USER_RE.match(user):
        raise PermanentJobError(f"job user {user[:40]!r} is not a valid user name")
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise PermanentJobError(f"job user {user!r} is unknown on this node") from None
    if entry.pw_uid == 0:
        raise PermanentJobError("VM jobs of root are not allowed")
    return Account(user, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def check_site(config: Config, hostname: str) -> None:
    if config.DISABLE_VM_WRAPPER:
        raise PermanentJobError("VM jobs are disabled on this site (DISABLE_VM_WRAPPER)")
    pattern = config.DISABLED_HOSTS_LIST
    if pattern and re.fullmatch(pattern, hostname):
        raise PermanentJobError(f"VM jobs may not run on host {hostname} (DISABLED_HOSTS_LIST)")


def short_hostname() -> str:
    return socket.gethostname().split(".")[0]


# -- prologue ------------------------------------------------------------------------------


def load_request(ctx: HookContext, config: Config) -> requestblock.RequestBlock:
    """The request in a root-owned copy of the job script (Slurm, local); raises if the
    script carries none."""
    block = requestblock.find(read_batch_script(ctx.script_path))
    if block is None:
        raise PermanentJobError("the job script carries no VM request")
    return block


def plan_for(ctx: HookContext, request: VmRequest, account: Account, config: Config) -> JobPlan:
    alloc = Allocation(
        jobid=ctx.jobid,
        user=account.name,
        uid=account.uid,
        gid=account.gid,
        home=account.home,
        num_nodes=ctx.num_nodes,
        rank=ctx.rank or 0,
        cores_on_node=ctx.cores_on_node,
    )
    host_cpus = tuple(sorted(os.sched_getaffinity(0)))
    return make_plan(request, alloc, config, host_cpus)


def node_state(config: Config, jobid: str, rank: int) -> NodeState:
    return NodeState(Path(config.STATE_DIR), job_tag(jobid), rank)


def never() -> bool:
    return False


def prologue(
    ctx: HookContext,
    config: Config,
    boot: BootNode,
    block: requestblock.RequestBlock,
    *,
    until: float,
    gone: Callable[[], bool] = never,
    wait_for_others: bool = False,
) -> NodeState:
    """Boot this node's VMs by ``until`` (time.monotonic()), then, with ``wait_for_others``,
    wait in the same deadline until every other node's VMs answer. ``gone`` says the job
    ended meanwhile (JobGone). On any failure everything this node created is gone again."""
    check_site(config, short_hostname())
    request = validate(block.vm, config)
    account = account_of(ctx.user)
    plan = plan_for(ctx, request, account, config)
    state = node_state(config, ctx.jobid, plan.alloc.rank)
    hypervisor = Hypervisor(config.LIBVIRT_URI)
    with state.locked():
        if gone():
            raise JobGone()
        if state.exists():  # an earlier start of this job left it here: start clean
            teardown(state, hypervisor, config)
        _reap_quietly(config, ctx.jobid)
        state.create()
        state.record("jobid", ctx.jobid)
        try:
            boot(plan=plan, block=block, state=state, hypervisor=hypervisor, config=config,
                 until=until, gone=gone)  # fmt: skip
            if wait_for_others:
                wait_for_other_nodes(plan, until, gone)
                log.info("job %s: every VM of the job answers", ctx.jobid)
        except BaseException as err:
            log.warning("boot failed (%s); tearing down what this node created", err)
            teardown(state, hypervisor, config)
            raise
    return state


def _reap_quietly(config: Config, jobid: str) -> None:
    """Leftovers of crashed jobs cost this node resources: clean them now (cheap: a
    directory listing per job and one libvirt call). Never fails the prologue."""
    from vmwrapper.batch.activity import job_is_active  # noqa: PLC0415

    try:
        for item in reap(config, lambda other: other == jobid or job_is_active(config, other)):
            log.warning("reaped leftovers of %s", item)
    except (VmWrapperError, OSError) as err:
        log.warning("reap before boot failed: %s", err)


def wait_for_other_nodes(plan: JobPlan, until: float, gone: Callable[[], bool] = never) -> None:
    """Every other node boots its own VMs in parallel: each must answer by ``until``."""
    for vm in plan.all_vms:
        if vm.rank == plan.alloc.rank:
            continue
        while not ssh_banner(vm.address, timeout=1):
            if gone():
                raise JobGone()
            if time.monotonic() > until:
                raise NodeError(
                    f"VM {vm.hostname} ({vm.address}) on node rank {vm.rank} did not answer "
                    "in time; its node failed to boot it (see that node's vm-wrapper log)"
                )
            time.sleep(0.5)


def ssh_banner(address: str, port: int = 22, timeout: float = 3) -> bool:
    """Positive sign of life: the guest's sshd sends its banner."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            return sock.recv(8).startswith(b"SSH-")
    except OSError:
        return False


# -- epilogue and reap ---------------------------------------------------------------------


def teardown(state: NodeState, hypervisor: Hypervisor, config: Config) -> None:
    """Remove every resource in the journal, newest first. Idempotent; never raises for
    something already gone. A VM with something to keep (the persistent disk) that came
    up gets a graceful shutdown within SHUTDOWN_TIMEOUT; every other one is destroyed at
    once, concurrently: its disks are thrown away anyway."""
    entries = state.entries()
    domains = [e["value"] for e in entries if e["kind"] == "domain"]
    keep = {e["value"] for e in entries if e["kind"] == "keeps-data"}
    ready = set(state.saved_timeline())

    def grace(name: str) -> float:
        return config.SHUTDOWN_TIMEOUT if name in keep and f"{name}:ready" in ready else 0

    if domains:
        try:
            with ThreadPoolExecutor(max_workers=min(8, len(domains))) as pool:
                list(pool.map(lambda n: hypervisor.stop(n, grace(n)), domains))
        except VmWrapperError as err:
            log.error("cannot stop VMs: %s", err.message)
            raise
    for entry in reversed(entries):
        if entry["kind"] in ("file", "dir"):
            _remove_path(Path(entry["value"]), is_dir=entry["kind"] == "dir")
    state.remove_node_dir()


def teardown_if_unchanged(config: Config, state: NodeState, journal_started: float | None) -> None:
    """Tear down what one boot created, unless a later start of the job (a requeue) has
    replaced it meanwhile: that one belongs to its own watcher."""
    with state.locked():
        if state.exists() and state.journal_started() == journal_started:
            teardown(state, Hypervisor(config.LIBVIRT_URI), config)


def _remove_path(path: Path, *, is_dir: bool) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if is_dir and stat.S_ISDIR(info.st_mode):
        try:
            os.rmdir(path)
        except OSError as err:
            log.warning("leaving non-empty %s: %s", path, err.strerror)
    elif not is_dir:
        os.unlink(path)


def epilogue(ctx: HookContext, config: Config) -> list[str]:
    """Remove this node's part of the job. Returns the VMs that were still booting (the
    job was deleted during its boot), for the user's error file."""
    hypervisor = Hypervisor(config.LIBVIRT_URI)
    ranks = [ctx.rank] if ctx.rank is not None else _ranks_on_host(config, ctx.jobid)
    booting: list[str] = []
    for rank in ranks:
        state = node_state(config, ctx.jobid, rank)
        if state.exists() and "node_ready" not in state.saved_timeline():
            booting.append(f"node rank {rank}")
        if not ctx.rerun_expected:
            state.mark_job_ended()  # a prologue still booting stops now, releasing the lock
        with state.locked():
            if state.exists():
                teardown(state, hypervisor, config)
        if not ctx.rerun_expected:  # the job is over: its attempt count is history
            state.forget_attempts()
    if ctx.first_node:
        _remove_user_dir(config, ctx.jobid)
    return booting


def _ranks_on_host(config: Config, jobid: str) -> list[int]:
    job_dir = Path(config.STATE_DIR) / "jobs" / job_tag(jobid)
    if not job_dir.is_dir():
        return []
    return sorted(
        int(p.name[4:]) for p in job_dir.iterdir() if p.name.startswith("node") and
        is_whole_number(p.name[4:])
    )  # fmt: skip


def _remove_user_dir(config: Config, jobid: str) -> None:
    from vmwrapper.state import _rmtree  # noqa: PLC0415

    job_dir = Path(config.STATE_DIR) / "jobs" / job_tag(jobid)
    _rmtree(job_dir / "user")
    if job_dir.is_dir() and not any(job_dir.iterdir()):
        job_dir.rmdir()


def reap(config: Config, job_is_active: Callable[[str], bool]) -> list[str]:
    """Tear down state and domains of jobs that no longer run on this host."""
    hypervisor = Hypervisor(config.LIBVIRT_URI)
    reaped: list[str] = []
    for job_dir in job_dirs(Path(config.STATE_DIR)):
        jobid = _jobid_of(job_dir)
        if jobid is None or job_is_active(jobid):
            continue
        for node_dir in job_dir.glob("node*"):
            rank_text = node_dir.name[4:]
            if is_whole_number(rank_text):
                state = NodeState(Path(config.STATE_DIR), job_dir.name, int(rank_text))
                teardown(state, hypervisor, config)
                state.forget_attempts()
        _remove_user_dir(config, jobid)
        reaped.append(jobid)
    _forget_stale_attempts(Path(config.STATE_DIR))
    known = {job_dir.name for job_dir in job_dirs(Path(config.STATE_DIR))}
    for name, jobid in hypervisor.our_domains().items():
        if job_tag(jobid) not in known and not job_is_active(jobid):
            hypervisor.stop(name, 0)  # ours, but no state: its journal was lost
            reaped.append(name)
    return reaped


STALE_ATTEMPTS_SECONDS = 7 * 24 * 3600


def _forget_stale_attempts(state_dir: Path) -> None:
    """Attempt counters, reasons, end marks and node locks of jobs with no state left,
    untouched for a week: long gone."""
    now = time.time()
    for kind in ("attempts", "ended", "locks"):
        folder = state_dir / kind
        if not folder.is_dir() or folder.is_symlink():
            continue
        for item in folder.iterdir():
            if kind == "locks" and not item.name.startswith("node."):
                continue  # disk locks go with their job's teardown
            name = item.name.removeprefix("node.").removesuffix(".why")
            tag = name.rpartition(".")[0]
            stale = now - item.lstat().st_mtime > STALE_ATTEMPTS_SECONDS
            if stale and not (state_dir / "jobs" / tag).exists():
                item.unlink(missing_ok=True)


def _jobid_of(job_dir: Path) -> str | None:
    for node_dir in sorted(job_dir.glob("node*")):
        if not is_whole_number(node_dir.name[4:]):
            continue
        state = NodeState(job_dir.parent.parent, job_dir.name, int(node_dir.name[4:]))
        for entry in state.entries():
            if entry["kind"] == "jobid":
                return str(entry["value"])
    return None


def is_request_error(err: BaseException) -> bool:
    return isinstance(err, (RequestError, PermanentJobError))


__all__ = ["NodeError", "epilogue", "prologue", "reap", "teardown"]
