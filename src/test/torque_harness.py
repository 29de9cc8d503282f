"""A faithful pbs_mom hook runner for tests (Torque 6.1, as observed).

Torque is not packaged for Debian, so this module reproduces on one host what a real Torque
6.1-dev (two moms, multi-mom) was seen to do: DESIGN.md section 4 ("Torque 6.1 hook contract"
and "Torque corrections") and reference/batch.md sections 2.4-2.7b. The few behaviours taken
from Torque's source rather than from an observation say so where they are made.

One start of a job (``TorqueSite.start``):

1. The mother superior (MS, ``moms[0]``) gets the job from pbs_server: the script
   ``mom_priv/jobs/<stem>.SC`` (root 0700; there is none for ``qsub -I``), the node file
   ``aux/<jobid>`` and the spool files. Sisters get no script, ever.
2. Every sister joins: it runs ``prologue.parallel`` and ``prologue.user.parallel``
   synchronously inside its pbs_mom (that mom answers nothing meanwhile: ``Mom.answers``), the
   sisters concurrently. About 2 ms after they returned, the sister saves ``<stem>.JB`` (XML,
   root 0644, with the job's ``Variable_List``, ``exec_host``, ``euser``...).
3. Once every sister has returned, the MS chowns the script to the job user (0700) and runs
   ``prologue`` and ``prologue.user``. Its own ``.JB`` is saved only after they return, the
   worse of the two cases seen (``ms_jb_before_prologue=True`` for the other one).
4. The job runs. At its end every sister runs ``epilogue.user.parallel`` and
   ``epilogue.parallel`` and then removes its ``.JB``; then the MS runs ``epilogue.user`` and
   ``epilogue``, purges its job files and delivers the output.

A failed start: MS prologue exit 1 aborts the job (-2, output left in the spool), any other
MS prologue failure requeues it (-14) and pbs_sched restarts it at once, a failed sister
prologue requeues it (-3). The sisters then purge their ``.JB`` without running any hook,
the MS still runs its epilogues, and a requeued job starts over at step 1 with new files
(``max_starts`` bounds what is an endless loop in reality). ``qdel`` while the MS prologue
runs (``qdel_during_prologue_after``) ends the job around that prologue, which is not
signalled and runs on.

Each hook is checked like ``check_pelog_permissions`` and run like ``run_pelog``: exact argv,
an ``env -i`` environment with exactly the observed variables, cwd ``mom_priv`` (the owner's
home for user hooks), stdin ``/dev/null``, its own session, the observed umask, and SIGKILL to
its whole session at ``prologalarm - 10`` seconds. Children a hook leaves behind are never
killed at job end.

The site also plays pbs_server for ``qstat -f -x JOBID``: ``site.qstat`` is a root-owned
executable that answers from what the site knows about each job.

It needs root: the hooks must be root-owned and user hooks run as the job owner.
"""

from __future__ import annotations

import contextlib
import grp
import itertools
import os
import pwd
import secrets
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
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
INTERACTIVE_EXIT_STATUS = 265  # what every observed qsub -I job ended with

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
MOM_MANAGER_PORT = 15003  # pbs_mom -R: in the job file names in multi-mom mode
SUBMIT_PATH = "/usr/local/bin:/usr/bin:/bin"  # PBS_O_PATH: qsub's PATH on the submit host

# Observed delays of pbs_mom's own file work (the harness waits them too).
SISTER_JB_DELAY = 0.002  # a sister saves its .JB ~2 ms after prologue.parallel returned
ABORT_PURGE_DELAY = 0.006  # sisters remove their .JB ~6 ms after an abort (MS prologue exit 1)
REQUEUE_PURGE_DELAY = 0.04  # ... and ~40 ms after a requeue (MS prologue exit 2)

QSTAT_UNKNOWN_JOB_EXIT = 153  # exit(PBSE_UNKJOBID = 15001), i.e. 15001 & 255 (source: qstat.c)

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
FileAction = Literal["written", "removed", "chowned"]


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
      for ``interactive``, the owner's login shell on the session's terminal (``site.terminal``)
      with ``script`` as what the user types, or ``-<shell> -c <inter_cmd>`` for ``-x``;
    - a command (argv): run as the owner in the job's environment, output to .OU/.ER (the
      terminal for an interactive job);
    - a callable: called in the test process with a JobContext; it returns the exit status.

    ``variables`` are the ``qsub -v`` variables, in order. They reach the job's ``.JB`` files,
    ``qstat -f -x`` and the job's environment inside ``Variable_List``, whose entries Torque
    joins with bare commas: a value with a comma comes back split (``{"OTHER": "a,b"}`` reads
    ``OTHER=a,b=``, i.e. OTHER=a and b=, as seen for ``qsub -v 'OTHER=a\\,b'``).

    ``interactive`` is ``qsub -I``; ``inter_cmd`` its ``-x PATH``: a file on the MS, run by the
    owner's login shell (not a command line, and not shipped from the submit host); the job's
    name then defaults to its basename, else to ``STDIN``. ``submit_args`` is what qstat shows
    as such (built from the other fields when None).
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
    variables: dict[str, str] = field(default_factory=dict)
    inter_cmd: str | None = None
    submit_args: str | None = None

    def __post_init__(self) -> None:
        if self.interactive and self.inter_cmd is not None and self.name == "STDIN":
            self.name = Path(self.inter_cmd).name

    @property
    def seq(self) -> str:
        """The numeric part of the job id (used in the delivered output names)."""
        return self.jobid.split(".", 1)[0]

    @property
    def server(self) -> str:
        """The pbs_server host: the job id's suffix (``vm`` for ``14.vm``)."""
        _, _, suffix = self.jobid.partition(".")
        return suffix or "vm"

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

    def resource_items(self) -> list[tuple[str, str]]:
        """``resources()`` as (name, value) pairs, in order."""
        items = []
        for item in self.resources().split(","):
            name, _, value = item.partition("=")
            if name:
                items.append((name, value))
        return items

    def nodes_spec(self) -> str | None:
        """PBS_RESOURCE_NODES; None when no nodes= resource was requested or defaulted."""
        if self.resource_nodes == "":
            return f"{self.nodes}:ppn={self.ppn}"
        return self.resource_nodes

    def variable_entries(self) -> list[str]:
        """The server's ``Variable_List`` entries: qsub's PBS_O_* around the ``-v`` ones."""
        user = self.user
        head = [
            f"PBS_O_QUEUE={self.queue}",
            f"PBS_O_HOME={user.home}",
            f"PBS_O_LOGNAME={user.name}",
            f"PBS_O_PATH={SUBMIT_PATH}",
            f"PBS_O_SHELL={user.shell}",
            f"PBS_O_LANG={HOOK_LANG}",
        ]
        given = []
        for key, value in self.variables.items():
            given += [p if "=" in p else f"{p}=" for p in f"{key}={value}".split(",")]
        tail = [
            f"PBS_O_WORKDIR={self.o_workdir}",
            f"PBS_O_HOST={self.server}",
            f"PBS_O_SERVER={self.server}",
        ]
        return head + given + tail

    def variable_list(self) -> str:
        """``Variable_List`` as the .JB and qstat show it: the entries joined by bare commas."""
        return ",".join(self.variable_entries())

    def variable_env(self) -> dict[str, str]:
        """``Variable_List`` as environment variables of the job."""
        return dict(entry.partition("=")[::2] for entry in self.variable_entries())

    def qsub_args(self) -> str:
        """``submit_args``: given, or what the qsub command line would have been."""
        if self.submit_args is not None:
            return self.submit_args
        args = ["-I"] if self.interactive else []
        args += ["-l", f"nodes={self.nodes}:ppn={self.ppn}"]
        if self.variables:
            typed = (f"{k}={v.replace(',', chr(92) + ',')}" for k, v in self.variables.items())
            args += ["-v", ",".join(typed)]
        if self.interactive and self.inter_cmd is not None:
            args += ["-x", self.inter_cmd]
        elif not self.interactive and self.name != "STDIN":
            args.append(self.name)
        return " ".join(args)


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


@dataclass(frozen=True)
class FileEvent:
    """pbs_mom writing, chowning or removing one job file (``when`` is time.monotonic())."""

    when: float
    node: str
    action: FileAction
    path: Path
    inode: int = 0


@dataclass
class StartRecord:
    """One start of the job (the scheduler's run request and its consequences).

    ``deleted`` is a ``qdel`` during this start (of the running job, or during the MS
    prologue); ``files`` are the job files the moms wrote, chowned and removed, in order.
    """

    number: int
    hooks: list[HookRun] = field(default_factory=list)
    ran_job: bool = False
    job_exit: int | None = None
    exit_status: int = 0
    deleted: bool = False
    precancel: HookRun | None = None
    stdout_text: str = ""
    stderr_text: str = ""
    files: list[FileEvent] = field(default_factory=list)
    session_id: int = 0
    stdout_path: Path | None = None
    stderr_path: Path | None = None
    delivered: bool = False


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

    def files(self, suffix: str | None = None, node: str | None = None) -> list[FileEvent]:
        """File events of every start, in order, optionally of one suffix (``.JB``) or node."""
        events = [e for rec in self.starts for e in rec.files]
        if suffix is not None:
            events = [e for e in events if e.path.suffix == suffix]
        if node is not None:
            events = [e for e in events if e.node == node]
        return sorted(events, key=lambda e: e.when)


# ------------------------------------------------------------------------- moms


@dataclass(frozen=True)
class Identity:
    """uid, gid and supplementary groups a process is started with."""

    uid: int
    gid: int
    groups: list[int]


class Mom:
    """One simulated node: a pbs_mom with its own PBS_HOME.

    ``port`` is its manager port (``pbs_mom -R``). In multi-mom mode the job files carry it:
    ``jobs/14.vm15003.SC`` on the mom with port 15003; otherwise ``jobs/14.vm.SC``.
    """

    def __init__(
        self, name: str, home: Path, port: int = MOM_MANAGER_PORT, *, multi_mom: bool = False
    ) -> None:
        self.name = name
        self.home = home
        self.port = port
        self.multi_mom = multi_mom
        self.mom_priv = home / "mom_priv"
        self.jobs = self.mom_priv / "jobs"
        self.aux = home / "aux"
        self.spool = home / "spool"
        self._blocked = 0
        self._lock = threading.Lock()

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

    def stem(self, jobid: str) -> str:
        """The job files' name without suffix: the job id, plus the port in multi-mom mode."""
        return f"{jobid}{self.port}" if self.multi_mom else jobid

    def script(self, jobid: str) -> Path:
        """Hook argv 8 (epilogue argv 11). Only a batch job's MS has this file."""
        return self.jobs / f"{self.stem(jobid)}.SC"

    def record(self, jobid: str) -> Path:
        """The job's ``.JB``: the job as this mom saved it (XML)."""
        return self.jobs / f"{self.stem(jobid)}.JB"

    def nodefile(self, jobid: str) -> str:
        """PBS_NODEFILE exactly as pbs_mom spells it (path_aux ends in '/': a double slash)."""
        return f"{self.aux}//{jobid}"

    def out(self, jobid: str) -> Path:
        return self.spool / f"{jobid}.OU"

    def err(self, jobid: str) -> Path:
        return self.spool / f"{jobid}.ER"

    def answers(self) -> bool:
        """Whether this mom would answer ``momctl -d`` now: not while it runs a sister
        prologue, which pbs_mom does synchronously in its main process."""
        with self._lock:
            return self._blocked == 0

    @contextlib.contextmanager
    def blocked(self) -> Iterator[None]:
        with self._lock:
            self._blocked += 1
        try:
            yield
        finally:
            with self._lock:
                self._blocked -= 1


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


# ------------------------------------------------------------------- XML documents


def xml_escape(text: str) -> str:
    """``appendEscapedXML()``: how pbs_mom escapes values in a ``.JB`` (source)."""
    for char, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&quot;")):
        text = text.replace(char, entity)
    return text.replace("'", "&apos;")


def mxml_value(text: str) -> str:
    """``MXMLSetVal()``: how ``qstat -x`` prints a value (source, u_MXML.c). Only '<' is
    touched, replaced by byte 0x0E; '&' and '>' go out raw, so such a value makes the
    output ill-formed XML, as it would from the real qstat."""
    return text.replace("<", "\x0e")


def _exec_host(moms: Sequence[Mom], ppn: int) -> str:
    """``exec_host``: the MS first, ``tqn2/0+tqn1/0`` (``vm/0-1`` for ppn=2)."""
    slots = "0" if ppn == 1 else f"0-{ppn - 1}"
    return "+".join(f"{mom.name}/{slots}" for mom in moms)


QSTAT_SCRIPT = """#!/bin/sh
# qstat as the vm-wrapper test harness imitates it: only `qstat -f -x JOBID`, answered from
# what the harness (playing pbs_server) knows about each job: one file per job in $db.
db=@DB@
full= xml= id=
for arg in "$@"; do
  case $arg in
  -f) full=1 ;;
  -x) xml=1 ;;
  -*) echo "qstat: the test harness does not imitate option $arg" >&2; exit 2 ;;
  *)
    if [ -n "$id" ]; then
      echo "qstat: the test harness answers one job id at a time" >&2
      exit 2
    fi
    id=$arg ;;
  esac
done
if [ -z "$full" ] || [ -z "$xml" ] || [ -z "$id" ]; then
  echo "usage (test harness): qstat -f -x JOBID" >&2
  exit 2
fi
case $id in
*/* | .*) ;;
*.*) if [ -f "$db/$id.xml" ]; then exec cat "$db/$id.xml"; fi ;;
*) for f in "$db/$id".*.xml; do if [ -f "$f" ]; then exec cat "$f"; fi; done ;;
esac
echo "qstat: Unknown Job Id $id" >&2
exit @UNKNOWN@
"""


# -------------------------------------------------------------------------- site


class TorqueSite:
    """Several pbs_moms on one host, plus the bit of pbs_server/pbs_sched that starts jobs.

    ``moms[0]`` is the mother superior of every job; a job on N nodes uses ``moms[:N]``.

    Options:

    - ``multi_mom``: name job files as multi-mom pbs_moms do, ``<jobid><port>.SC/.JB`` with
      each mom's own manager port (``mom_ports``, by default 15003, 15013, ...); otherwise
      ``<jobid>.SC/.JB``, as one pbs_mom per host does (every port 15003 then);
    - ``ms_jb_before_prologue``: the MS saves its ``.JB`` when it gets the job (seen on a mom
      that had just run jobs); by default only after its prologues return (seen for the first
      job after an idle spell, and for interactive jobs), the worse case for a prologue;
    - ``sister_has_script``: kept for old callers; only False is accepted (a sister never
      receives the script).

    Attributes besides the moms: ``qstat``, the fake qstat (root 0755, ``root/bin/qstat``),
    which answers ``qstat -f -x JOBID`` (or the bare number) from ``server_jobs/<jobid>.xml``
    for every job the site has run or ``publish``-ed, completed ones included, and exits 153
    with ``qstat: Unknown Job Id JOBID`` otherwise; ``terminal``, the file standing for an
    interactive qsub's terminal.
    """

    def __init__(
        self,
        root: Path,
        nodes: int | Sequence[str] = 1,
        *,
        prologalarm: int = DEFAULT_PROLOGALARM,
        kill_delay: float = 2.0,
        sister_has_script: bool = False,
        multi_mom: bool = False,
        ms_jb_before_prologue: bool = False,
        mom_ports: Sequence[int] | None = None,
    ) -> None:
        if sister_has_script:
            raise ValueError("a Torque sister never receives the job script")
        names = [f"n{i}" for i in range(nodes)] if isinstance(nodes, int) else list(nodes)
        self.root = root
        self.prologalarm = prologalarm
        self.kill_delay = kill_delay
        self.multi_mom = multi_mom
        self.ms_jb_before_prologue = ms_jb_before_prologue
        self._qdel_after: float | None = None
        self.terminal = root / "terminal.log"  # what an interactive qsub -I would show
        if mom_ports is None:
            step = 10 if multi_mom else 0
            mom_ports = [MOM_MANAGER_PORT + step * i for i in range(len(names))]
        self.moms = [
            Mom(name, root / name, port, multi_mom=multi_mom)
            for name, port in zip(names, mom_ports, strict=True)
        ]
        for mom in self.moms:
            mom.create()
        self.bin = root / "bin"
        self.qstat = self.bin / "qstat"
        self.server_jobs = root / "server_priv" / "jobs"
        self._purged = root / "purged"  # removed .JB files live on here: no inode is reused
        self._counter = itertools.count()
        self._cookies: dict[str, str] = {}
        self._make_server()

    @property
    def timeout(self) -> int:
        return hook_timeout(self.prologalarm)

    def _make_server(self) -> None:
        for path, mode in (
            (self.bin, 0o755),
            (self.server_jobs.parent, 0o755),
            (self.server_jobs, 0o755),
            (self._purged, 0o700),
        ):
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, 0, 0)
            path.chmod(mode)
        text = QSTAT_SCRIPT.replace("@DB@", shlex.quote(str(self.server_jobs)))
        _write_root_file(self.qstat, text.replace("@UNKNOWN@", str(QSTAT_UNKNOWN_JOB_EXIT)), 0o755)

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
        """argv of a hook: 8 for a prologue, 11 for an epilogue (``tail`` = args 5, 7, 10).

        The last argument names this mom's ``.SC`` whether it exists or not: it does only on
        the MS of a batch job.
        """
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
        """stdout/stderr of a hook: the job's files on the MS, /dev/null or the sister spool.

        An interactive job's MS prologues write to the user's terminal (observed); its
        epilogues to /dev/null (run_epilogues() uses PE_IO_TYPE_NULL for them: source).
        """
        if run.hook == "epilogue.precancel" or run.hook in SISTER_PROLOGUES:
            paths = (Path(os.devnull), Path(os.devnull))
        elif job.interactive and run.nodenum == 0 and run.hook in MS_PROLOGUES:
            paths = (self.terminal, self.terminal)
        elif job.interactive:
            paths = (Path(os.devnull), Path(os.devnull))
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

    # -- job files -----------------------------------------------------------

    def _event(self, rec: StartRecord, mom: Mom, action: FileAction, path: Path) -> None:
        inode = path.stat().st_ino if action != "removed" else 0
        rec.files.append(FileEvent(time.monotonic(), mom.name, action, path, inode))

    def job_record(self, job: Job, nodenum: int, phase: str = "joined") -> str:
        """The ``.JB`` text a mom saves, shaped like the observed ones (torque_samples/):
        ``<?xml version="1.0"?>`` then ``<job>`` with the ``<attributes>`` section, values
        escaped as appendEscapedXML() does. ``phase`` (joined, running, exiting) changes only
        the state fields: later saves were seen to differ (their size grew), not how."""
        ms = nodenum == 0
        now = str(int(time.time()))
        user = job.user
        hosts = self.moms[: job.nodes]
        state = {"joined": "T", "running": "R", "exiting": "E"}[phase]
        out_path, err_path = self._output_paths(job)

        def attr(name: str, flags: int, value: str) -> str:
            return f'    <{name} flags="{flags}">{xml_escape(value)}</{name}>\n'

        attrs = [
            attr("Job_Name", 3, job.name),
            attr("Job_Owner", 3, f"{user.name}@localhost"),
            attr("job_state", 1 if ms else 3, state),
            attr("queue", 3, job.queue),
            attr("server", 3, job.server),
        ]
        if job.account:
            attrs.append(attr("Account_Name", 3, job.account))
        attrs += [
            attr("Checkpoint", 3, "u"),
            attr("Error_Path", 3, err_path),
            attr("exec_host", 3, _exec_host(hosts, job.ppn)),
            attr("exec_port", 3, "+".join(str(mom.port) for mom in hosts)),
        ]
        if job.interactive:
            attrs.append(attr("interactive", 3, "40001"))  # qsub's port: a long (source)
        attrs += [
            attr("Join_Path", 3, "n"),
            attr("Keep_Files", 3, "n"),
            attr("mtime", 1 if ms else 3, now),
            attr("Output_Path", 3, out_path),
            "    <Resource_List>\n",
            *(f"  {attr(k, 3, v)}" for k, v in job.resource_items()),
            "    </Resource_List>\n",
            attr("Variable_List", 3, job.variable_list()),
            attr("euser", 3, user.name),
            attr("egroup", 7 if ms else 3, user.group),
            attr("hashname", 3, job.jobid),
            attr("cookie", 1 if ms else 3, self._cookie(job)),
            attr("start_time", 3, now),
            attr("fault_tolerant", 3, "0"),
        ]
        if job.interactive and job.inter_cmd is not None:
            attrs.append(attr("inter_cmd", 3, job.inter_cmd))
        attrs += [attr("job_radix", 3, "0"), attr("request_version", 3, "1")]
        substate = {"joined": "40", "running": "42", "exiting": "50"}[phase]
        head = [
            ("version", "131842"),
            ("state", "4" if ms else "0"),
            ("substate", substate),
            ("server_flags", "65569" if ms else "65536"),
            ("start_time", "0" if ms else now),
            ("jobid", job.jobid),
            ("fileprefix", job.jobid),
            ("queue", ""),
            ("destination_queue", ""),
            ("record_type", "3"),
            ("svr_addr", "2130706433" if ms else "0"),
            ("exit_status", "0"),
            ("execution_uid", str(user.uid)),
            ("execution_gid", str(user.gid)),
        ]
        lines = ['<?xml version="1.0"?>\n', "<job>\n"]
        lines += [f"  <{k}>{v}</{k}>\n" if v else f"  <{k}/>\n" for k, v in head]
        lines += ["  <attributes>\n", *attrs, "  </attributes>\n"]
        tail = [
            ("socket_stdout", "9" if ms else "0"),
            ("socket_stderr", "10" if ms else "0"),
            ("taskid", "1"),
            ("nodeid", str(nodenum)),
        ]
        lines += [f"  <{k}>{v}</{k}>\n" for k, v in tail]
        return "".join([*lines, "</job>\n"])

    def _cookie(self, job: Job) -> str:
        return self._cookies.setdefault(job.jobid, secrets.token_hex(16).upper())

    def _output_paths(self, job: Job) -> tuple[str, str]:
        """Output_Path and Error_Path: host:path of the delivered files, or the terminal."""
        if job.interactive:
            return str(self.terminal), str(self.terminal)
        base = f"{job.server}:{job.o_workdir}/{job.name}"
        return f"{base}.o{job.seq}", f"{base}.e{job.seq}"

    def _save_record(self, job: Job, nodenum: int, rec: StartRecord, phase: str) -> None:
        """job_save(): write ``<stem>.CP``, unlink ``.JB``, link the copy to ``.JB``, unlink
        the copy (job_recov.c). Every save is a new inode; the name is briefly absent."""
        mom = self.moms[nodenum]
        path = mom.record(job.jobid)
        copy = path.with_suffix(".CP")
        _write_root_file(copy, self.job_record(job, nodenum, phase), 0o644)
        if path.exists():
            self._bury(path)
        os.link(copy, path)
        copy.unlink()
        self._event(rec, mom, "written", path)

    def _remove_record(self, job: Job, nodenum: int, rec: StartRecord) -> None:
        mom = self.moms[nodenum]
        path = mom.record(job.jobid)
        if path.exists():
            self._bury(path)
            self._event(rec, mom, "removed", path)

    def _bury(self, path: Path) -> None:
        """Unlink ``path`` but keep its inode allocated, so that no later .JB reuses it (a
        restarted job's new .JB had a new inode when observed)."""
        os.link(path, self._purged / f"{next(self._counter)}{path.suffix}")
        path.unlink()

    def _stage(self, job: Job, rec: StartRecord) -> None:
        """What the moms hold before the prologues: the MS's script (root 0700; none for an
        interactive job), node file and spool files; the sisters' spool files only."""
        hosts = self.moms[: job.nodes]
        ms = hosts[0]
        for mom in hosts:
            for path in (mom.out(job.jobid), mom.err(job.jobid)):
                path.unlink(missing_ok=True)
                _touch_owned(path, job.user)
        if not job.interactive:
            _write_root_file(ms.script(job.jobid), job.script, 0o700)
            self._event(rec, ms, "written", ms.script(job.jobid))
        lines = "".join(f"{mom.name}\n" * job.ppn for mom in hosts)
        _write_root_file(ms.aux / job.jobid, lines, 0o644)
        if self.ms_jb_before_prologue:
            self._save_record(job, 0, rec, "joined")

    def _give_script_to_owner(self, job: Job, rec: StartRecord) -> None:
        """TMomFinalizeJob2(): the MS chowns the script to the job user before the prologue."""
        ms = self.moms[0]
        script = ms.script(job.jobid)
        if not job.interactive and script.exists():
            os.chown(script, job.user.uid, job.user.gid)
            script.chmod(0o700)
            self._event(rec, ms, "chowned", script)

    def _purge_sisters(self, job: Job, rec: StartRecord) -> None:
        for nodenum in range(1, job.nodes):
            self._remove_record(job, nodenum, rec)

    def _purge_ms(self, job: Job, rec: StartRecord) -> None:
        """Job end on the MS: keep the output in the record, drop the job files."""
        ms = self.moms[0]
        if job.interactive:
            rec.stdout_path = rec.stderr_path = self.terminal
            self.terminal.touch()
        else:
            rec.stdout_path, rec.stderr_path = ms.out(job.jobid), ms.err(job.jobid)
        rec.stdout_text = rec.stdout_path.read_text(errors="replace")
        rec.stderr_text = rec.stderr_path.read_text(errors="replace")
        script = ms.script(job.jobid)
        if script.exists():
            script.unlink()
            self._event(rec, ms, "removed", script)
        self._remove_record(job, 0, rec)
        (ms.aux / job.jobid).unlink(missing_ok=True)

    def _deliver(self, job: Job, rec: StartRecord) -> None:
        """Copy the MS spool files to the work dir as the owner's (``$usecp``: cp, unlink)."""
        if job.interactive or rec.stdout_path is None or rec.stderr_path is None:
            return
        base = job.o_workdir / job.name
        rec.stdout_path = _copy_out(rec.stdout_path, Path(f"{base}.o{job.seq}"), job.user)
        rec.stderr_path = _copy_out(rec.stderr_path, Path(f"{base}.e{job.seq}"), job.user)
        rec.delivered = True

    # -- qstat -----------------------------------------------------------------

    def publish(
        self,
        job: Job,
        state: str,
        *,
        start_count: int = 0,
        exit_status: int | None = None,
        session_id: int | None = None,
    ) -> None:
        """Record what pbs_server would answer to ``qstat -f -x JOBID`` for ``job`` now.

        ``state`` is the job_state letter (Q, R, C). ``TorqueSite.run`` keeps this up to date;
        a test may call it for a job it does not run.
        """
        path = self.server_jobs / f"{job.jobid}.xml"
        tmp = path.with_name(f".{path.name}.tmp")
        text = self.qstat_xml(
            job, state, start_count=start_count, exit_status=exit_status, session_id=session_id
        )
        _write_root_file(tmp, text, 0o644)
        tmp.replace(path)

    def qstat_xml(
        self,
        job: Job,
        state: str,
        *,
        start_count: int = 0,
        exit_status: int | None = None,
        session_id: int | None = None,
    ) -> str:
        """``qstat -f -x JOBID`` output: the XML declaration, then one line of ``<Data>``,
        shaped like the observed ones (torque_samples/qstat-f-x-*.xml)."""
        now = int(time.time())
        started = start_count > 0 and state in ("R", "C")
        out_path, err_path = self._output_paths(job)

        def el(name: str, value: str) -> str:
            return f"<{name}>{mxml_value(value)}</{name}>"

        parts = [el("Job_Id", job.jobid), el("Job_Name", job.name)]
        parts.append(el("Job_Owner", f"{job.user.name}@localhost"))
        if started:
            used = "".join(
                el(k, v)
                for k, v in (
                    ("cput", "00:00:00"),
                    ("vmem", "0kb"),
                    ("walltime", "00:00:00"),
                    ("mem", "0kb"),
                    ("energy_used", "0"),
                )
            )
            parts.append(f"<resources_used>{used}</resources_used>")
        parts += [el("job_state", state), el("queue", job.queue), el("server", job.server)]
        if job.account:
            parts.append(el("Account_Name", job.account))
        parts += [el("Checkpoint", "u"), el("ctime", str(now)), el("Error_Path", err_path)]
        if started:
            parts.append(el("exec_host", _exec_host(self.moms[: job.nodes], job.ppn)))
        parts.append(el("Hold_Types", "n"))
        if job.interactive:
            parts.append(el("interactive", "True"))
        parts += [
            el("Join_Path", "n"),
            el("Keep_Files", "n"),
            el("Mail_Points", "a"),
            el("mtime", str(now)),
            el("Output_Path", out_path),
            el("Priority", "0"),
            el("qtime", str(now)),
            el("Rerunable", "False" if job.interactive else "True"),
        ]
        resources = ""
        for name, value in job.resource_items():
            resources += el(name, value)
            if name == "nodes":
                resources += el("nodect", str(job.nodes))
        parts.append(f"<Resource_List>{resources}</Resource_List>")
        if session_id is not None:
            parts.append(el("session_id", str(session_id)))
        parts += [
            el("substate", {"Q": "10", "R": "42"}.get(state, "59")),
            el("Variable_List", job.variable_list()),
            el("euser", job.user.name),
            el("egroup", job.user.group),
            el("hashname", job.jobid),
            el("queue_rank", job.seq),
            el("queue_type", "E"),
        ]
        if started:
            parts.append(el("comment", time.strftime("Job started on %a %b %d at %H:%M")))
        parts.append(el("etime", str(now)))
        if exit_status is not None:
            parts.append(el("exit_status", str(exit_status)))
        parts.append(el("submit_args", job.qsub_args()))
        if started:
            parts += [el("start_time", str(now)), el("start_count", str(start_count))]
        parts.append(el("fault_tolerant", "False"))
        if state == "C":
            parts.append(el("comp_time", str(now)))
        if job.interactive and job.inter_cmd is not None:
            parts.append(el("inter_cmd", job.inter_cmd))
        parts.append(el("job_radix", "0"))
        if state == "C":
            parts.append(el("total_runtime", "0.000000"))
        parts += [
            el("submit_host", job.server),
            el("init_work_dir", str(job.o_workdir)),
            el("request_version", "1"),
        ]
        return '<?xml version="1.0"?>\n<Data><Job>' + "".join(parts) + "</Job></Data>\n"

    # -- a start -------------------------------------------------------------

    def _sister_prologues(self, job: Job, rec: StartRecord) -> bool:
        """im_join_job_as_sister() on every sister, concurrently: the prologues inside the
        blocked mom, then (on success) the first save of the sister's ``.JB``. A sister whose
        prologue failed purges the job at once and never writes one (source)."""

        def join(nodenum: int) -> list[HookRun]:
            runs = []
            with self.moms[nodenum].blocked():
                for hook in SISTER_PROLOGUES:
                    runs.append(self.run_hook(hook, job, nodenum))
                    if runs[-1].rc != 0:
                        return runs
            time.sleep(SISTER_JB_DELAY)
            self._save_record(job, nodenum, rec, "joined")
            return runs

        sisters = range(1, job.nodes)
        if not sisters:
            return True
        with ThreadPoolExecutor(max_workers=len(sisters)) as pool:
            runs = [run for chain in pool.map(join, sisters) for run in chain]
        rec.hooks += runs
        return all(run.rc == 0 for run in runs)

    def _sister_epilogues(
        self, job: Job, rec: StartRecord, tail: Sequence[str], *, purge: bool = True
    ) -> None:
        """Job end on every sister, concurrently: it re-saves its ``.JB`` (its size grew by
        then when observed), runs ``epilogue.user.parallel`` and ``epilogue.parallel`` (their
        failures are ignored), then (``purge``) removes the ``.JB``."""

        def end(nodenum: int) -> list[HookRun]:
            self._save_record(job, nodenum, rec, "exiting")
            runs = [self.run_hook(hook, job, nodenum, tail) for hook in SISTER_EPILOGUES]
            if purge:
                self._remove_record(job, nodenum, rec)
            return runs

        sisters = range(1, job.nodes)
        if not sisters:
            return
        with ThreadPoolExecutor(max_workers=len(sisters)) as pool:
            rec.hooks += [run for chain in pool.map(end, sisters) for run in chain]

    def _ms_epilogues(self, job: Job, rec: StartRecord, tail: Sequence[str]) -> None:
        """``epilogue.user`` and ``epilogue`` on the MS; its ``.JB`` exists by then (always
        seen there, also when it was missing during the prologue)."""
        self._save_record(job, 0, rec, "exiting")
        for hook in MS_EPILOGUES:
            rec.hooks.append(self.run_hook(hook, job, 0, tail))

    def _ms_prologues(self, job: Job, rec: StartRecord, qdel_after: float | None) -> int:
        """``prologue`` and ``prologue.user`` on the MS. Returns the start's failure status,
        or 0 (also when a qdel ended the job during them: ``rec.deleted``)."""
        deadline = None if qdel_after is None else time.monotonic() + qdel_after
        began = time.monotonic()
        for hook in MS_PROLOGUES:
            run = self._ms_prologue(hook, job, rec, deadline, began)
            rec.hooks.append(run)
            if rec.deleted:
                return 0
            if run.rc == 0:
                continue
            return JOB_EXEC_FAIL2 if run.rc == 1 or job.interactive else JOB_EXEC_RETRY_PROLOGUE
        return 0

    def _ms_prologue(
        self, hook: str, job: Job, rec: StartRecord, deadline: float | None, began: float
    ) -> HookRun:
        if deadline is None:
            return self.run_hook(hook, job, 0)
        with ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(self.run_hook, hook, job, 0)
            try:
                return future.result(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                self._delete_during_prologue(job, rec, time.monotonic() - began)
                return future.result()

    def _delete_during_prologue(self, job: Job, rec: StartRecord, elapsed: float) -> None:
        """qdel while the MS prologue runs, as observed: pbs_mom gives up waiting for the job
        ("job not ready after 5 second timeout") and kills it around the prologue, which is not
        signalled: sister epilogues, epilogue.precancel, sister purge, MS epilogues (argv 10
        = 0 everywhere, session id 0), purge and delivery. The job ends C with status 0."""
        rec.deleted = True
        used = _resources_used(elapsed)
        self._sister_epilogues(job, rec, ("0", used, "0"), purge=False)
        rec.precancel = self.run_precancel(job, 0)
        rec.hooks.append(rec.precancel)
        self._purge_sisters(job, rec)
        self._ms_epilogues(job, rec, ("0", used, "0"))
        rec.exit_status = 0
        self._purge_ms(job, rec)
        self._deliver(job, rec)

    def _failed_start(self, job: Job, rec: StartRecord, status: int, delay: float) -> None:
        """The start failed: sisters purge without any hook, the MS runs its epilogues (session
        id 0, no resources used) and purges; the output stays in the spool."""
        rec.exit_status = status
        time.sleep(delay)
        self._purge_sisters(job, rec)
        self._ms_epilogues(job, rec, ("0", "", str(status)))
        self._purge_ms(job, rec)

    def start(
        self, job: Job, number: int, *, qdel_during_prologue_after: float | None = None
    ) -> StartRecord:
        """One start: the moms' files, the prologues, the job if they allow it, the epilogues,
        the purge (see the module docstring). ``qdel_during_prologue_after``: seconds after
        the MS prologues began at which a qdel ends the job if they still run."""
        if job.nodes > len(self.moms):
            raise ValueError(f"job wants {job.nodes} nodes, site has {len(self.moms)}")
        rec = StartRecord(number)
        began = time.monotonic()
        self._stage(job, rec)
        self.publish(job, "R", start_count=number + 1)
        if not self._sister_prologues(job, rec):
            # The MS bails (exec_bail): the other sisters get IM_ABORT_JOB. The MS had set
            # "prologues ran" before joining them, so its epilogues do run (source).
            self._failed_start(job, rec, JOB_EXEC_RETRY, ABORT_PURGE_DELAY)
            return rec
        self._give_script_to_owner(job, rec)
        status = self._ms_prologues(job, rec, qdel_during_prologue_after)
        if rec.deleted:
            return rec
        if status != 0:
            delay = ABORT_PURGE_DELAY if status == JOB_EXEC_FAIL2 else REQUEUE_PURGE_DELAY
            self._failed_start(job, rec, status, delay)
            return rec
        self._save_record(job, 0, rec, "running")
        sid = rec.session_id = self._run_job(job, rec)
        rec.exit_status = rec.job_exit if rec.job_exit is not None else 0
        used = _resources_used(time.monotonic() - began)
        self._sister_epilogues(job, rec, ("0", used, str(rec.exit_status)))
        self._ms_epilogues(job, rec, (str(sid), used, str(rec.exit_status)))
        self._purge_ms(job, rec)
        self._deliver(job, rec)
        return rec

    # -- the job itself ----------------------------------------------------------

    def job_env(self, job: Job) -> dict[str, str]:
        """The job's own environment (a subset of what pbs_mom sets; no hook variables):
        ``Variable_List`` (PBS_O_* and the -v variables) and the PBS_* of the job."""
        user = job.user
        env = {
            "HOME": str(user.home),
            "USER": user.name,
            "LOGNAME": user.name,
            "SHELL": user.shell,
            "PATH": HOOK_PATH,
            "LANG": HOOK_LANG,
            **job.variable_env(),
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
        """Run the payload; fill ``rec``; return the job's session id (0 for a callable).

        An interactive job that was not deleted ends with status 265, whatever ran in it.
        """
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
            sid = 0
        else:
            proc = self._spawn_job(job, job.payload)
            rec.job_exit = self._wait_job(job, proc, rec)
            sid = proc.pid
        if job.interactive and not rec.deleted:
            rec.job_exit = INTERACTIVE_EXIT_STATUS
        return sid

    def _spawn_job(self, job: Job, command: Sequence[str] | None) -> subprocess.Popen[bytes]:
        """Start the job as its owner in its own session. Batch: output to the MS spool files,
        the script on the login shell's stdin. Interactive: everything on the terminal."""
        ms, user = self.moms[0], job.user
        login = "-" + Path(user.shell).name
        argv, executable = [login], user.shell
        if job.interactive:
            stdin_path = self.root / f"{job.jobid}.typed"  # what the user types
            _write_root_file(stdin_path, job.script, 0o600)
            out_path = err_path = self.terminal
            if job.inter_cmd is not None:
                argv = [login, "-c", job.inter_cmd]
        else:
            stdin_path = ms.script(job.jobid)
            out_path, err_path = ms.out(job.jobid), ms.err(job.jobid)
        if command is not None:
            argv, executable, stdin_path = list(command), command[0], Path(os.devnull)
        cwd = user.home if user.home.is_dir() else Path("/")
        with (
            open(stdin_path, "rb") as stdin,
            open(out_path, "ab") as out,
            open(err_path, "ab") as err,
        ):
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

    def run(
        self,
        job: Job,
        *,
        max_starts: int = 5,
        qdel_after: float | None = None,
        qdel_during_prologue_after: float | None = None,
    ) -> Outcome:
        """Start ``job`` until it runs or is aborted; pbs_sched restarts a requeued job at once.

        ``max_starts`` bounds what is an endless loop in reality. ``qdel_after`` deletes a
        running command job after that many seconds (a callable job calls ``ctx.qdel()``).
        ``qdel_during_prologue_after`` deletes the job that many seconds after its MS
        prologues began if they still run (observed ~7 s after a qdel): the job ends around
        the prologue, which runs on to its own end; the job never runs.
        """
        self._qdel_after = qdel_after
        self.publish(job, "Q")
        starts: list[StartRecord] = []
        state: State = "requeued"
        while len(starts) < max_starts:
            rec = self.start(
                job, len(starts), qdel_during_prologue_after=qdel_during_prologue_after
            )
            starts.append(rec)
            if rec.ran_job or rec.deleted or rec.exit_status == JOB_EXEC_FAIL2:
                state = "aborted" if rec.exit_status == JOB_EXEC_FAIL2 else "completed"
                break
        return self._finish(job, state, starts)

    def _finish(self, job: Job, state: State, starts: list[StartRecord]) -> Outcome:
        """The outcome; an aborted or requeued job's output stays in the spool."""
        last = starts[-1]
        ran = next((rec for rec in starts if rec.ran_job), None)
        self.publish(
            job,
            "Q" if state == "requeued" else "C",
            start_count=len(starts),
            exit_status=None if state == "requeued" else last.exit_status,
            session_id=None if ran is None else ran.session_id,
        )
        ms = self.moms[0]
        out = last.stdout_path or ms.out(job.jobid)
        err = last.stderr_path or ms.err(job.jobid)
        return Outcome(job.jobid, state, last.exit_status, starts, out, err, last.delivered)


def _copy_out(src: Path, dst: Path, user: JobUser) -> Path:
    shutil.copyfile(src, dst)
    os.chown(dst, user.uid, user.gid)
    dst.chmod(0o600)
    src.unlink()
    return dst


def _resources_used(walltime: float) -> str:
    secs = int(walltime)
    hms = f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}"
    return f"cput=00:00:00,vmem=0kb,walltime={hms},mem=0kb,energy_used=0"
