"""A faithful pbs_mom hook runner for tests (Torque 6.1, as observed).

Torque is not packaged for Debian, so this module reproduces the hook contract recorded in
DESIGN.md section 4 and reference/batch.md section 2 on one host:

- every simulated node (``Mom``) has its own PBS_HOME with ``mom_priv/`` (the hooks),
  ``mom_priv/jobs/<jobid>.SC`` (root 0700), ``aux/<jobid>`` (the node file) and ``spool/``;
- a start runs, in the observed order: the sisters' ``prologue.parallel`` and
  ``prologue.user.parallel`` (sisters concurrently), the mother superior's ``prologue`` and
  ``prologue.user``, the job, the sisters' ``epilogue.user.parallel`` and ``epilogue.parallel``,
  then the mother superior's ``epilogue.user`` and ``epilogue``;
- each hook is checked like ``check_pelog_permissions`` and run like ``run_pelog``: exact argv,
  an ``env -i`` environment with exactly the observed variables, cwd ``mom_priv`` (the owner's
  home for user hooks), stdin ``/dev/null``, its own session, the observed umask, and SIGKILL
  to its whole session at ``prologalarm - 10`` seconds;
- the prologue's result decides the start: run, abort (-2) or requeue (-14 / -3). The real
  requeue loop is endless; ``TorqueSite.run`` bounds it with ``max_starts``.

It needs root: the hooks must be root-owned and user hooks run as the job owner.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

# Job exit statuses (JOB_EXEC_*) that pbs_server records.
JOB_EXEC_FAIL2 = -2  # MS prologue exit 1: aborted, never rerun
JOB_EXEC_RETRY = -3  # a sister failed to start: requeued
JOB_EXEC_RETRY_PROLOGUE = -14  # MS prologue failed otherwise: requeued

# run_pelog() results that are not an exit code.
PELOG_PERMISSION_ERROR = -1
PELOG_TIMEOUT = -4
PELOG_UNKILLABLE = -5
EXEC_FAILED = 255  # the child's exit(255) after a failed execv

PROLOGUE_ARGC = 8
EPILOGUE_ARGC = 11
DEFAULT_PROLOGALARM = 300
KILL_GRACE = 5.0  # run_pelog waits alarm(5) more after the SIGKILL before giving up
HOOK_PATH = "/bin:/usr/bin"  # from $PBS_HOME/pbs_environment
HOOK_LANG = "C.UTF-8"

# Hooks that run as the job owner (PE_PROLOGUSER / PE_EPILOGUSER): o+rx is also required.
USER_HOOKS = frozenset(
    {
        "prologue.user",
        "prologue.user.parallel",
        "epilogue.user",
        "epilogue.user.parallel",
        "epilogue.precancel",
    }
)
ALL_HOOKS = (
    "prologue",
    "prologue.user",
    "prologue.parallel",
    "prologue.user.parallel",
    "epilogue",
    "epilogue.user",
    "epilogue.parallel",
    "epilogue.user.parallel",
    "epilogue.precancel",
)
SISTER_PROLOGUES = ("prologue.parallel", "prologue.user.parallel")
MS_PROLOGUES = ("prologue", "prologue.user")
SISTER_EPILOGUES = ("epilogue.user.parallel", "epilogue.parallel")
MS_EPILOGUES = ("epilogue.user", "epilogue")

State = Literal["completed", "aborted", "requeued"]


# ---------------------------------------------------------------------------- users


@dataclass(frozen=True)
class JobUser:
    """The job owner: a real account on this host."""

    name: str
    uid: int
    gid: int
    group: str
    home: Path
    shell: str

    @classmethod
    def lookup(cls, name: str) -> JobUser:
        """The account ``name`` from the passwd and group databases."""
        pw = pwd.getpwnam(name)
        shell = pw.pw_shell if Path(pw.pw_shell).is_file() else "/bin/sh"
        group = grp.getgrgid(pw.pw_gid).gr_name
        return cls(name, pw.pw_uid, pw.pw_gid, group, Path(pw.pw_dir), shell)

    def groups(self) -> list[int]:
        """Every group the account is in (what pbs_mom puts in its group cache)."""
        return os.getgrouplist(self.name, self.gid)


def ensure_job_user(name: str = "vmwtest", uid: int = 2000) -> JobUser:
    """Return the test account ``name``, creating it (with a home) if missing. Needs root."""
    with contextlib.suppress(KeyError):
        return JobUser.lookup(name)
    cmd = ["useradd", "--create-home", "--shell", "/bin/sh", "--user-group"]
    with contextlib.suppress(KeyError):
        pwd.getpwuid(uid)
        uid = -1  # taken: let useradd choose
    if uid >= 0 and not _gid_taken(uid):
        cmd += ["--uid", str(uid)]
    subprocess.run([*cmd, name], check=True, capture_output=True)
    return JobUser.lookup(name)


def _gid_taken(gid: int) -> bool:
    try:
        grp.getgrgid(gid)
    except KeyError:
        return False
    return True


@contextlib.contextmanager
def site_root(prefix: str = "vmw-torque-") -> Iterator[Path]:
    """A fresh 0755 directory under /tmp, removed afterwards.

    User hooks and the job run as the owner, who must be able to traverse PBS_HOME, as on a
    real node; pytest's tmp_path sits under a 0700 directory and does not allow that.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------- permissions


def pelog_permission_ok(st: os.stat_result, *, user_hook: bool) -> bool:
    """``check_pelog_permissions()`` of Torque 6.1 (without ``$reduce_prolog_checks``).

    A regular file owned by uid 0, readable and executable by its owner, writable by neither
    group nor other; a user hook must also be readable and executable by other.
    """
    mode = st.st_mode
    owner_rx = stat.S_IRUSR | stat.S_IXUSR
    other_rx = stat.S_IROTH | stat.S_IXOTH
    if st.st_uid != 0 or not stat.S_ISREG(mode):
        return False
    if mode & owner_rx != owner_rx or mode & (stat.S_IWGRP | stat.S_IWOTH):
        return False
    return not (user_hook and mode & other_rx != other_rx)


def stat_hook(path: Path, as_user: JobUser | None = None) -> os.stat_result | int | None:
    """stat(2) the hook, following symlinks, as root or (user hooks) as the owner.

    Returns the stat result, None if the file does not exist (the hook is skipped), or the
    errno of any other failure ("cannot stat": the hook fails with that code).
    """
    if as_user is None:
        try:
            return path.stat()
        except FileNotFoundError:
            return None
        except OSError as err:
            return err.errno or 1
    return _stat_as(path, as_user)


def _stat_as(path: Path, user: JobUser) -> os.stat_result | int | None:
    """pbs_mom stats a user hook after becoming the user (root squashing support)."""
    proc = subprocess.run(
        ["stat", "-L", "-c", "%u %f", str(path)],
        user=user.uid,
        group=user.gid,
        extra_groups=user.groups(),
        env={"PATH": HOOK_PATH, "LANG": "C"},
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode == 0:
        return path.stat()  # the owner could stat it: the same inode, read as root
    if "No such file" in proc.stderr:
        return None
    return 13 if "Permission denied" in proc.stderr else 1


# ----------------------------------------------------------------------- processes


def session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes of session ``sid``, read from /proc like pelogalm()."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[3]) == sid:
            pids.append(int(entry.name))
    return pids


def kill_session(sid: int, sig: int = signal.SIGKILL) -> int:
    """Send ``sig`` to every process of session ``sid``; returns how many were signalled."""
    count = 0
    for pid in session_pids(sid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            count += 1
    return count


def hook_timeout(prologalarm: int) -> int:
    """Seconds before pbs_mom kills a hook: ``$prologalarm`` minus 10 when it is above 10."""
    return prologalarm - 10 if prologalarm > 10 else prologalarm


def wait_status(returncode: int) -> int:
    """A job's exit status as Torque reports it: the exit code, or 256 + signal."""
    return 256 - returncode if returncode < 0 else returncode


# ------------------------------------------------------------------------- the job


@dataclass
class JobContext:
    """What a callable job payload gets: the job's view, and a way to ``qdel`` it."""

    site: TorqueSite
    job: Job
    start: int
    env: dict[str, str]
    nodefile: Path
    script: Path
    session_id: int = 0
    deleted: bool = False
    precancel: HookRun | None = None

    def qdel(self) -> HookRun | None:
        """Simulate ``qdel``: run ``epilogue.precancel`` now; the job then ends as killed."""
        self.precancel = self.site.run_precancel(self.job, self.session_id)
        self.deleted = True
        return self.precancel


JobPayload = Callable[[JobContext], int] | Sequence[str] | None


@dataclass
class Job:
    """A submitted job. ``payload`` is what runs as the job.

    - None: the job script itself, fed on stdin to the owner's login shell, as pbs_mom does;
    - a command (argv): run as the owner in the job's environment, output to .OU/.ER;
    - a callable: called in the test process with a JobContext; it returns the exit status.
    """

    user: JobUser
    script: str
    jobid: str = "1.vm"
    name: str = "STDIN"
    nodes: int = 1
    ppn: int = 1
    queue: str = "batch"
    account: str = ""
    walltime: str = "01:00:00"
    resource_list: str | None = None
    resource_nodes: str | None = ""
    workdir: Path | None = None
    interactive: bool = False
    payload: JobPayload = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def seq(self) -> str:
        """The numeric part of the job id (used in the delivered output names)."""
        return self.jobid.split(".", 1)[0]

    @property
    def o_workdir(self) -> Path:
        """PBS_O_WORKDIR: where qsub ran (the owner's home unless given)."""
        return self.workdir if self.workdir is not None else self.user.home

    def resources(self) -> str:
        """Prologue argv[5] / epilogue argv[6]: the requested resource list."""
        if self.resource_list is not None:
            return self.resource_list
        nodes = f"{self.nodes}:ppn={self.ppn}"
        return f"nodes={nodes},walltime={self.walltime},neednodes={nodes}"

    def nodes_spec(self) -> str | None:
        """PBS_RESOURCE_NODES; None when no nodes= resource was requested or defaulted."""
        if self.resource_nodes == "":
            return f"{self.nodes}:ppn={self.ppn}"
        return self.resource_nodes


# ----------------------------------------------------------------------- results


@dataclass
class HookRun:
    """One hook invocation (or its skip) on one node."""

    hook: str
    node: str
    nodenum: int
    argv: list[str]
    env: dict[str, str]
    rc: int = 0
    ran: bool = False
    missing: bool = False
    timed_out: bool = False
    started: float = 0.0
    ended: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the mom treats the hook as successful (including a missing hook)."""
        return self.rc == 0

    @property
    def duration(self) -> float:
        return self.ended - self.started


@dataclass
class StartRecord:
    """One start of the job (the scheduler's run request and its consequences)."""

    number: int
    hooks: list[HookRun] = field(default_factory=list)
    ran_job: bool = False
    job_exit: int | None = None
    exit_status: int = 0
    deleted: bool = False
    precancel: HookRun | None = None
    stdout_text: str = ""
    stderr_text: str = ""


@dataclass
class Outcome:
    """The job's fate after ``TorqueSite.run``."""

    jobid: str
    state: State
    exit_status: int
    starts: list[StartRecord]
    stdout_path: Path
    stderr_path: Path
    delivered: bool

    @property
    def start_count(self) -> int:
        return len(self.starts)

    @property
    def last(self) -> StartRecord:
        return self.starts[-1]

    def hooks(self, name: str | None = None, start: int | None = None) -> list[HookRun]:
        """Hook runs (all starts, or one), in start-time order, optionally of one name."""
        records = self.starts if start is None else [self.starts[start]]
        runs = [h for rec in records for h in rec.hooks if name is None or h.hook == name]
        return sorted(runs, key=lambda h: h.started)

    def order(self, start: int = 0) -> list[tuple[str, str]]:
        """(node, hook) of the hooks that really ran in one start, in the order they began."""
        return [(h.node, h.hook) for h in self.hooks(start=start) if h.ran]


# ------------------------------------------------------------------------- moms


@dataclass(frozen=True)
class Identity:
    """uid, gid and supplementary groups a process is started with."""

    uid: int
    gid: int
    groups: list[int]


class Mom:
    """One simulated node: a pbs_mom with its own PBS_HOME."""

    def __init__(self, name: str, home: Path) -> None:
        self.name = name
        self.home = home
        self.mom_priv = home / "mom_priv"
        self.jobs = self.mom_priv / "jobs"
        self.aux = home / "aux"
        self.spool = home / "spool"

    def create(self) -> None:
        """Lay out PBS_HOME with the modes a Torque install uses."""
        for path, mode in (
            (self.home, 0o755),
            (self.mom_priv, 0o751),
            (self.jobs, 0o751),
            (self.aux, 0o755),
            (self.spool, 0o1777),
        ):
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, 0, 0)
            path.chmod(mode)

    def hook(self, name: str) -> Path:
        return self.mom_priv / name

    def script(self, jobid: str) -> Path:
        return self.jobs / f"{jobid}.SC"

    def nodefile(self, jobid: str) -> str:
        """PBS_NODEFILE exactly as pbs_mom spells it (path_aux ends in '/': a double slash)."""
        return f"{self.aux}//{jobid}"

    def out(self, jobid: str) -> Path:
        return self.spool / f"{jobid}.OU"

    def err(self, jobid: str) -> Path:
        return self.spool / f"{jobid}.ER"


def _write_root_file(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chown(path, 0, 0)
    path.chmod(mode)


def _touch_owned(path: Path, user: JobUser) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    os.fchown(fd, user.uid, user.gid)
    os.close(fd)


# -------------------------------------------------------------------------- site


class TorqueSite:
    """Several pbs_moms on one host, plus the bit of pbs_server/pbs_sched that starts jobs.

    ``moms[0]`` is the mother superior of every job; a job on N nodes uses ``moms[:N]``.
    """

    def __init__(
        self,
        root: Path,
        nodes: int | Sequence[str] = 1,
        *,
        prologalarm: int = DEFAULT_PROLOGALARM,
        kill_delay: float = 2.0,
        sister_has_script: bool = True,
    ) -> None:
        names = [f"n{i}" for i in range(nodes)] if isinstance(nodes, int) else list(nodes)
        self.root = root
        self.prologalarm = prologalarm
        self.kill_delay = kill_delay
        self.sister_has_script = sister_has_script
        self._qdel_after: float | None = None
        self.terminal = root / "terminal.log"  # what an interactive qsub -I would show
        self.moms = [Mom(name, root / name) for name in names]
        for mom in self.moms:
            mom.create()

    @property
    def timeout(self) -> int:
        return hook_timeout(self.prologalarm)

    # -- hooks ---------------------------------------------------------------

    def install_hooks(
        self, src: Path, *, symlink: bool = False, names: Sequence[str] | None = None
    ) -> None:
        """Put the hooks of ``src`` into every mom's mom_priv, root-owned.

        A copy keeps the source's mode bits; a symlink points at the source file (pbs_mom's
        check follows symlinks, so the target's owner and mode are what count).
        """
        chosen = names if names is not None else [n for n in ALL_HOOKS if (src / n).exists()]
        for mom in self.moms:
            for name in chosen:
                dst = mom.hook(name)
                dst.unlink(missing_ok=True)
                if symlink:
                    dst.symlink_to(src / name)
                    continue
                shutil.copyfile(src / name, dst)
                os.chown(dst, 0, 0)
                dst.chmod(stat.S_IMODE((src / name).stat().st_mode))

    def hook_paths(self, name: str) -> list[Path]:
        return [mom.hook(name) for mom in self.moms]

    # -- one hook ------------------------------------------------------------

    def hook_env(self, job: Job, mom: Mom, nodenum: int) -> dict[str, str]:
        """The complete environment pbs_mom gives a hook (setup_pelog_environment)."""
        env = {"PATH": HOOK_PATH, "LANG": HOOK_LANG}
        spec = job.nodes_spec()
        if spec is not None:
            env["PBS_RESOURCE_NODES"] = spec
            env["PBS_NUM_NODES"] = str(job.nodes)
            env["PBS_NUM_PPN"] = str(job.ppn)
            env["PBS_NP"] = str(job.nodes * job.ppn)
        env["PBS_NODENUM"] = str(nodenum)
        env["PBS_MSHOST"] = self.moms[0].name
        if nodenum == 0:
            env["PBS_NODEFILE"] = mom.nodefile(job.jobid)
        env["PBS_O_WORKDIR"] = str(job.o_workdir)
        return env

    def hook_argv(self, hook: str, job: Job, mom: Mom, tail: Sequence[str]) -> list[str]:
        """argv of a hook: 8 for a prologue, 11 for an epilogue (``tail`` = args 5, 7, 10)."""
        head = [str(mom.hook(hook)), job.jobid, job.user.name, job.user.group, job.name]
        script = str(mom.script(job.jobid))
        if hook.startswith("prologue"):
            return [*head, job.resources(), job.queue, job.account, script]
        sid, used, status = tail
        return [*head, sid, job.resources(), used, job.queue, job.account, status, script]

    def run_hook(self, hook: str, job: Job, nodenum: int, tail: Sequence[str] = ()) -> HookRun:
        """Check and run one hook on node ``nodenum`` like run_pelog(); never raises."""
        mom = self.moms[nodenum]
        user_hook = hook in USER_HOOKS
        run = HookRun(hook, mom.name, nodenum, self.hook_argv(hook, job, mom, tail), {})
        run.env = self.hook_env(job, mom, nodenum)
        run.started = run.ended = time.monotonic()
        st = stat_hook(mom.hook(hook), job.user if user_hook else None)
        if st is None:
            run.missing = True
        elif isinstance(st, int):
            run.rc = st
        elif not pelog_permission_ok(st, user_hook=user_hook):
            run.rc = PELOG_PERMISSION_ERROR
        else:
            self._execute(run, job, mom)
        run.ended = time.monotonic()
        return run

    def _execute(self, run: HookRun, job: Job, mom: Mom) -> None:
        user_hook = run.hook in USER_HOOKS
        ms_prologue = run.nodenum == 0 and run.hook in MS_PROLOGUES
        cwd = mom.mom_priv
        if user_hook and job.user.home.is_dir():
            cwd = job.user.home
        ident = self._identity(run, job)
        with self._outputs(run, job, mom) as (out, err):
            run.ran = True
            try:
                proc = subprocess.Popen(
                    run.argv,
                    executable=run.argv[0],
                    env=run.env,
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                    umask=0o077 if ms_prologue else 0o022,
                    user=ident.uid,
                    group=ident.gid,
                    extra_groups=ident.groups,
                )
            except OSError as exc:
                err.write(f"execv of {run.argv[0]} failed: {exc.strerror}\n".encode())
                run.rc = EXEC_FAILED
                return
            run.rc, run.timed_out = self._wait_hook(proc)

    def _identity(self, run: HookRun, job: Job) -> Identity:
        """Who the hook runs as: the owner for user hooks; root (MS: with the job's groups)."""
        if run.hook in USER_HOOKS:
            return Identity(job.user.uid, job.user.gid, job.user.groups())
        if run.nodenum == 0 and run.hook in (*MS_PROLOGUES, *MS_EPILOGUES):
            return Identity(0, 0, job.user.groups())
        return Identity(0, 0, [0])

    @contextlib.contextmanager
    def _outputs(self, run: HookRun, job: Job, mom: Mom) -> Iterator[tuple[IO[bytes], IO[bytes]]]:
        """stdout/stderr of a hook: the job's files on the MS, /dev/null or the sister spool."""
        if run.hook == "epilogue.precancel" or run.hook in SISTER_PROLOGUES:
            paths = (Path(os.devnull), Path(os.devnull))
        elif job.interactive and run.nodenum == 0:
            paths = (self.terminal, self.terminal)
        else:
            paths = (mom.out(job.jobid), mom.err(job.jobid))
        with open(paths[0], "ab") as out, open(paths[1], "ab") as err:
            yield out, err

    def _wait_hook(self, proc: subprocess.Popen[bytes]) -> tuple[int, bool]:
        """Wait for the hook itself (not its children); SIGKILL its session at the deadline.

        Like get_child_exit_status(): only a normal exit yields its code; a hook that died
        from some other signal counts as 0 (the mom reads WEXITSTATUS only).
        """
        try:
            code = proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            kill_session(proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            try:
                proc.wait(timeout=KILL_GRACE)
            except subprocess.TimeoutExpired:
                return PELOG_UNKILLABLE, True
            return PELOG_TIMEOUT, True
        return (code if code >= 0 else 0), False

    # -- a start -------------------------------------------------------------

    def _stage(self, job: Job) -> None:
        """What the moms hold before the prologues: scripts, node file, spool files."""
        hosts = self.moms[: job.nodes]
        for nodenum, mom in enumerate(hosts):
            if nodenum == 0 or self.sister_has_script:
                _write_root_file(mom.script(job.jobid), job.script, 0o700)
            for path in (mom.out(job.jobid), mom.err(job.jobid)):
                path.unlink(missing_ok=True)
                _touch_owned(path, job.user)
        lines = "".join(f"{mom.name}\n" * job.ppn for mom in hosts)
        _write_root_file(self.moms[0].aux / job.jobid, lines, 0o644)

    def _purge(self, job: Job, rec: StartRecord) -> None:
        """Job end on every mom: keep the MS output text in the record, drop job files."""
        ms = self.moms[0]
        rec.stdout_text = ms.out(job.jobid).read_text(errors="replace")
        rec.stderr_text = ms.err(job.jobid).read_text(errors="replace")
        for mom in self.moms[: job.nodes]:
            mom.script(job.jobid).unlink(missing_ok=True)
        (ms.aux / job.jobid).unlink(missing_ok=True)

    def _parallel(self, hooks: Sequence[str], job: Job, tail: Sequence[str] = ()) -> list[HookRun]:
        """Run a chain of hooks on every sister, the sisters concurrently."""

        def chain(nodenum: int) -> list[HookRun]:
            runs = []
            for hook in hooks:
                runs.append(self.run_hook(hook, job, nodenum, tail))
                if runs[-1].rc != 0 and hook.startswith("prologue"):
                    break
            return runs

        sisters = range(1, job.nodes)
        if not sisters:
            return []
        with ThreadPoolExecutor(max_workers=len(sisters)) as pool:
            return [run for runs in pool.map(chain, sisters) for run in runs]

    def _prologues(self, job: Job, rec: StartRecord) -> int:
        """Sister prologues, then the MS ones. Returns the exit status if the start fails."""
        sister_runs = self._parallel(SISTER_PROLOGUES, job)
        rec.hooks += sister_runs
        if any(run.rc != 0 for run in sister_runs):
            return JOB_EXEC_RETRY
        for hook in MS_PROLOGUES:
            run = self.run_hook(hook, job, 0)
            rec.hooks.append(run)
            if run.rc == 0:
                continue
            if run.rc == 1 or job.interactive:
                return JOB_EXEC_FAIL2
            return JOB_EXEC_RETRY_PROLOGUE
        return 0

    def _epilogues(self, job: Job, rec: StartRecord, sid: int, walltime: float) -> None:
        used = _resources_used(walltime)
        tail = (str(sid), used, str(rec.exit_status))
        rec.hooks += self._parallel(SISTER_EPILOGUES, job, tail)
        for hook in MS_EPILOGUES:
            rec.hooks.append(self.run_hook(hook, job, 0, tail))

    def start(self, job: Job, number: int) -> StartRecord:
        """One start: prologues, the job if they allow it, the epilogues, the purge."""
        if job.nodes > len(self.moms):
            raise ValueError(f"job wants {job.nodes} nodes, site has {len(self.moms)}")
        rec = StartRecord(number)
        self._stage(job)
        began = time.monotonic()
        rec.exit_status = self._prologues(job, rec)
        sid = 0
        if rec.exit_status == 0:
            sid = self._run_job(job, rec)
            rec.exit_status = rec.job_exit if rec.job_exit is not None else 0
        self._epilogues(job, rec, sid, time.monotonic() - began)
        self._purge(job, rec)
        return rec

    # -- the job itself ----------------------------------------------------------

    def job_env(self, job: Job) -> dict[str, str]:
        """The job's own environment (a subset of what pbs_mom sets; no hook variables)."""
        user = job.user
        env = {
            "HOME": str(user.home),
            "USER": user.name,
            "LOGNAME": user.name,
            "SHELL": user.shell,
            "PATH": HOOK_PATH,
            "LANG": HOOK_LANG,
            "PBS_ENVIRONMENT": "PBS_INTERACTIVE" if job.interactive else "PBS_BATCH",
            "PBS_JOBID": job.jobid,
            "PBS_JOBNAME": job.name,
            "PBS_QUEUE": job.queue,
            "PBS_O_WORKDIR": str(job.o_workdir),
            "PBS_NODEFILE": self.moms[0].nodefile(job.jobid),
            "PBS_NP": str(job.nodes * job.ppn),
            "PBS_NUM_NODES": str(job.nodes),
            "PBS_NUM_PPN": str(job.ppn),
            "PBS_NODENUM": "0",
            "PBS_VNODENUM": "0",
            "PBS_TASKNUM": "1",
        }
        return env | job.extra_env

    def _run_job(self, job: Job, rec: StartRecord) -> int:
        """Run the payload; fill ``rec``; return the job's session id (0 for a callable)."""
        rec.ran_job = True
        if callable(job.payload):
            ms = self.moms[0]
            ctx = JobContext(
                self, job, rec.number, self.job_env(job), ms.aux / job.jobid, ms.script(job.jobid)
            )
            code = job.payload(ctx)
            rec.deleted, rec.precancel = ctx.deleted, ctx.precancel
            rec.hooks += [ctx.precancel] if ctx.precancel else []
            rec.job_exit = 256 + signal.SIGTERM if ctx.deleted else code
            return 0
        proc = self._spawn_job(job, job.payload)
        rec.job_exit = self._wait_job(job, proc, rec)
        return proc.pid

    def _spawn_job(self, job: Job, command: Sequence[str] | None) -> subprocess.Popen[bytes]:
        """Start the job as its owner in its own session, output to the MS spool files."""
        ms, user = self.moms[0], job.user
        if command is None:
            argv = ["-" + Path(user.shell).name]
            executable, stdin = user.shell, open(ms.script(job.jobid), "rb")  # noqa: SIM115
        else:
            argv = list(command)
            executable, stdin = argv[0], open(os.devnull, "rb")  # noqa: SIM115
        cwd = user.home if user.home.is_dir() else Path("/")
        with stdin, open(ms.out(job.jobid), "ab") as out, open(ms.err(job.jobid), "ab") as err:
            return subprocess.Popen(
                argv,
                executable=executable,
                env=self.job_env(job),
                cwd=cwd,
                stdin=stdin,
                stdout=out,
                stderr=err,
                start_new_session=True,
                umask=0o077,
                user=user.uid,
                group=user.gid,
                extra_groups=user.groups(),
            )

    def _wait_job(self, job: Job, proc: subprocess.Popen[bytes], rec: StartRecord) -> int:
        """Wait for the job; a qdel (``qdel_after``) runs precancel, SIGTERM, then SIGKILL."""
        try:
            return wait_status(proc.wait(timeout=self._qdel_after))
        except subprocess.TimeoutExpired:
            pass
        rec.deleted = True
        rec.precancel = self.run_precancel(job, proc.pid)
        rec.hooks.append(rec.precancel)
        kill_session(proc.pid, signal.SIGTERM)
        try:
            return wait_status(proc.wait(timeout=self.kill_delay))
        except subprocess.TimeoutExpired:
            kill_session(proc.pid, signal.SIGKILL)
            return wait_status(proc.wait())

    def run_precancel(self, job: Job, session_id: int) -> HookRun:
        """``epilogue.precancel`` on the MS as the owner: no resources used, exit status 0."""
        return self.run_hook("epilogue.precancel", job, 0, (str(session_id), "", "0"))

    # -- the scheduler loop ------------------------------------------------------

    def run(self, job: Job, *, max_starts: int = 5, qdel_after: float | None = None) -> Outcome:
        """Start ``job`` until it runs or is aborted; pbs_sched restarts a requeued job at once.

        ``max_starts`` bounds what is an endless loop in reality. ``qdel_after`` deletes a
        running command job after that many seconds (a callable job calls ``ctx.qdel()``).
        """
        self._qdel_after = qdel_after
        starts: list[StartRecord] = []
        state: State = "requeued"
        while len(starts) < max_starts:
            rec = self.start(job, len(starts))
            starts.append(rec)
            if rec.ran_job or rec.exit_status == JOB_EXEC_FAIL2:
                state = "completed" if rec.ran_job else "aborted"
                break
        return self._finish(job, state, starts)

    def _finish(self, job: Job, state: State, starts: list[StartRecord]) -> Outcome:
        """Deliver the output of a job that ran; an aborted job's output stays in the spool."""
        ms = self.moms[0]
        out, err = ms.out(job.jobid), ms.err(job.jobid)
        delivered = state == "completed"
        if delivered:
            out = _deliver(out, job.o_workdir / f"{job.name}.o{job.seq}", job.user)
            err = _deliver(err, job.o_workdir / f"{job.name}.e{job.seq}", job.user)
        return Outcome(job.jobid, state, starts[-1].exit_status, starts, out, err, delivered)


def _deliver(src: Path, dst: Path, user: JobUser) -> Path:
    shutil.move(src, dst)
    os.chown(dst, user.uid, user.gid)
    return dst


def _resources_used(walltime: float) -> str:
    secs = int(walltime)
    hms = f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}"
    return f"cput=00:00:00,vmem=0kb,walltime={hms},mem=0kb,energy_used=0"
