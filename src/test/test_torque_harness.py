"""Tests of the pbs_mom hook harness itself, with tiny stub hooks written per test.

Each stub is a sh script that records what it saw (argv, ids, cwd, umask, fds, session,
environment) into a record file, then sleeps and/or exits as told. The assertions compare
those records with the Torque 6.1 contract (DESIGN.md section 4, reference/batch.md 2.4-2.7).
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from torque_harness import (
    JOB_EXEC_FAIL2,
    JOB_EXEC_RETRY,
    JOB_EXEC_RETRY_PROLOGUE,
    PELOG_PERMISSION_ERROR,
    PELOG_TIMEOUT,
    Job,
    JobContext,
    JobUser,
    TorqueSite,
    ensure_job_user,
    hook_timeout,
    kill_session,
    pelog_permission_ok,
    session_pids,
    site_root,
    stat_hook,
)

pytestmark = pytest.mark.needs("root", "useradd")

HOOK_ENV_KEYS = {
    "PATH",
    "LANG",
    "PBS_MSHOST",
    "PBS_NODENUM",
    "PBS_NP",
    "PBS_NUM_NODES",
    "PBS_NUM_PPN",
    "PBS_O_WORKDIR",
    "PBS_RESOURCE_NODES",
}
SHELL_ADDED = {"PWD", "SHLVL", "_", "OLDPWD"}  # set by the hook's own shell, not by the mom
MARKER_SCRIPT = "#!/bin/sh\n#PBS -N stubjob\necho job-body\n"

RECORDER = r"""#!/bin/sh
rec=@REC@/$(basename "$0").$PBS_NODENUM.$$
fd0=$(readlink /proc/$$/fd/0)
fd1=$(readlink /proc/$$/fd/1)
{
  i=0
  for a in "$0" "$@"; do printf 'arg%d=%s\n' "$i" "$a"; i=$((i + 1)); done
  echo "argc=$#"
  echo "uid=$(id -u)"
  echo "gid=$(id -g)"
  echo "groups=$(id -G)"
  echo "cwd=$(pwd -P)"
  echo "umask=$(umask)"
  echo "stdin=$fd0"
  echo "stdout=$fd1"
  echo "sid=$(read -r st < /proc/$$/stat; set -- ${st##*) }; echo "$4")"
  echo "pid=$$"
  echo "when=$(date +%s.%N)"
  env | sed 's/^/env:/'
} > "$rec.tmp"
mv "$rec.tmp" "$rec"
echo "$(basename "$0") $PBS_NODENUM" >> @REC@/sequence
"""


# ------------------------------------------------------------------------ helpers


class Stubs:
    """Writes stub hooks into a source dir and reads back what they recorded."""

    def __init__(self, base: Path) -> None:
        self.src = base / "hooks-src"
        self.rec = base / "records"
        for path in (self.src, self.rec):
            path.mkdir()
        self.rec.chmod(0o1777)  # user hooks write here too
        (self.rec / "sequence").touch(mode=0o666)
        (self.rec / "sequence").chmod(0o666)

    def write(self, name: str, tail: str = "exit 0", mode: int = 0o755) -> Path:
        """A stub hook: record, then run ``tail`` (shell code: exit N, sleep, ...)."""
        path = self.src / name
        path.write_text(RECORDER.replace("@REC@", str(self.rec)) + tail + "\n")
        path.chmod(mode)
        return path

    def records(self, name: str) -> list[dict[str, str]]:
        """Every record of hook ``name``, in the order the invocations began."""
        out = [self._parse(p) for p in self.rec.glob(f"{name}.*") if not p.name.endswith("tmp")]
        out = [r for r in out if r["arg0"].endswith("/" + name)]
        return sorted(out, key=lambda r: float(r["when"]))

    def sequence(self) -> list[tuple[str, int]]:
        path = self.rec / "sequence"
        if not path.exists():
            return []
        lines = path.read_text().splitlines()
        return [(line.split()[0], int(line.split()[1])) for line in lines]

    @staticmethod
    def _parse(path: Path) -> dict[str, str]:
        rec: dict[str, str] = {}
        for line in path.read_text().splitlines():
            key, _, value = line.partition("=")
            rec[key] = value
        return rec


def argv_of(rec: dict[str, str]) -> list[str]:
    return [rec[f"arg{i}"] for i in range(int(rec["argc"]) + 1)]


def hook_env(rec: dict[str, str]) -> dict[str, str]:
    """The recorded environment without what the shell adds itself."""
    raw = {}
    for key, value in rec.items():
        if key.startswith("env:"):
            raw[key[4:]] = value
    return {k: v for k, v in raw.items() if k not in SHELL_ADDED}


@pytest.fixture(scope="module")
def user() -> JobUser:
    return ensure_job_user()


@pytest.fixture
def base() -> Iterator[Path]:
    with site_root() as path:
        yield path


@pytest.fixture
def stubs(base: Path) -> Stubs:
    return Stubs(base)


@pytest.fixture
def workdir(base: Path, user: JobUser) -> Path:
    path = base / "work"
    path.mkdir()
    os.chown(path, user.uid, user.gid)
    return path


def make_site(
    base: Path, stubs: Stubs, nodes: int | Sequence[str] = 1, prologalarm: int = 300
) -> TorqueSite:
    site = TorqueSite(base / "pbs", nodes, prologalarm=prologalarm)
    site.install_hooks(stubs.src)
    return site


def make_job(user: JobUser, workdir: Path, **kw: Any) -> Job:
    return Job(user=user, script=MARKER_SCRIPT, workdir=workdir, name="stubjob", **kw)


@contextlib.contextmanager
def stdin_is_a_pipe() -> Iterator[None]:
    """Make this process's fd 0 a pipe, so a hook that inherits stdin would show it."""
    read_end, write_end = os.pipe()
    saved = os.dup(0)
    os.dup2(read_end, 0)
    try:
        yield
    finally:
        os.dup2(saved, 0)
        for fd in (saved, read_end, write_end):
            os.close(fd)


def flag_job(flag: list[int], code: int = 0) -> Callable[[JobContext], int]:
    """A callable payload that records that it ran."""

    def payload(ctx: JobContext) -> int:
        flag.append(ctx.start)
        return code

    return payload


# ----------------------------------------------------------------- permissions


@pytest.mark.parametrize(
    ("mode", "root_ok", "user_ok"),
    [
        (0o755, True, True),
        (0o700, True, False),
        (0o500, True, False),
        (0o555, True, True),
        (0o744, True, False),  # other may read but not execute
        (0o751, True, False),  # other may execute but not read
        (0o775, False, False),  # group-writable
        (0o757, False, False),  # other-writable
        (0o777, False, False),
        (0o644, False, False),  # owner cannot execute
        (0o311, False, False),  # owner cannot read
    ],
)
def test_permission_check_modes(base: Path, mode: int, root_ok: bool, user_ok: bool) -> None:
    path = base / "hook"
    path.write_text("#!/bin/sh\n")
    os.chown(path, 0, 0)
    path.chmod(mode)
    st = path.stat()
    assert pelog_permission_ok(st, user_hook=False) is root_ok
    assert pelog_permission_ok(st, user_hook=True) is user_ok


def test_permission_check_owner_type_and_symlinks(base: Path, user: JobUser) -> None:
    good = base / "good"
    good.write_text("#!/bin/sh\n")
    good.chmod(0o755)
    assert pelog_permission_ok(good.stat(), user_hook=False)
    os.chown(good, user.uid, user.gid)
    assert not pelog_permission_ok(good.stat(), user_hook=False), "non-root owner"
    os.chown(good, 0, 0)
    directory = base / "dir"
    directory.mkdir(mode=0o755)
    assert not pelog_permission_ok(directory.stat(), user_hook=False), "not a regular file"
    link = base / "link"
    link.symlink_to(good)  # the symlink's own 0777 does not matter: stat follows it
    st = stat_hook(link)
    assert isinstance(st, os.stat_result) and pelog_permission_ok(st, user_hook=False)
    good.chmod(0o777)
    st = stat_hook(link)
    assert isinstance(st, os.stat_result) and not pelog_permission_ok(st, user_hook=False)
    assert stat_hook(base / "absent") is None


def test_user_hook_is_stat_as_the_owner(base: Path, user: JobUser) -> None:
    """A user hook behind a directory the owner cannot traverse fails with EACCES."""
    hidden = base / "hidden"
    hidden.mkdir(mode=0o700)
    hook = hidden / "epilogue.precancel"
    hook.write_text("#!/bin/sh\n")
    hook.chmod(0o755)
    assert isinstance(stat_hook(hook), os.stat_result)  # root can
    assert stat_hook(hook, user) == 13  # the owner cannot: "cannot stat", errno
    assert stat_hook(hidden / "absent", user) == 13
    hidden.chmod(0o755)
    assert isinstance(stat_hook(hook, user), os.stat_result)
    assert stat_hook(hidden / "absent", user) is None


def test_hook_timeout_is_prologalarm_minus_ten_above_ten() -> None:
    assert hook_timeout(300) == 290
    assert hook_timeout(12) == 2
    assert hook_timeout(11) == 1
    assert hook_timeout(10) == 10
    assert hook_timeout(5) == 5


# ------------------------------------------------------------ invocation contract


def test_single_node_prologue_and_epilogue_invocation(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    stubs.write("prologue", "echo prologue-out; echo prologue-err >&2; exit 0")
    stubs.write("epilogue", "echo epilogue-out; exit 0")
    site = make_site(base, stubs)
    job = make_job(user, workdir, jobid="7.vm", payload=["/bin/sh", "-c", "echo job-out; exit 3"])
    with stdin_is_a_pipe():
        out = site.run(job)
    ms = site.moms[0]

    assert (out.state, out.exit_status, out.start_count) == ("completed", 3, 1)
    (pro,) = stubs.records("prologue")
    (epi,) = stubs.records("epilogue")
    script = str(ms.mom_priv / "jobs" / "7.vm.SC")
    resources = "nodes=1:ppn=1,walltime=01:00:00,neednodes=1:ppn=1"
    assert argv_of(pro) == [
        str(ms.mom_priv / "prologue"),
        "7.vm",
        user.name,
        user.group,
        "stubjob",
        resources,
        "batch",
        "",
        script,
    ]
    epi_argv = argv_of(epi)
    assert len(epi_argv) == 12  # $0 + 11
    assert epi_argv[1:5] == ["7.vm", user.name, user.group, "stubjob"]
    assert epi_argv[5].isdigit() and int(epi_argv[5]) > 0, "session id of the job"
    assert epi_argv[6] == resources
    assert epi_argv[7].startswith("cput=") and "walltime=00:00:" in epi_argv[7]
    assert epi_argv[8:] == ["batch", "", "3", script]

    for rec in (pro, epi):
        assert rec["uid"] == "0" and rec["gid"] == "0"
        assert str(user.gid) in rec["groups"].split(), "MS root hooks carry the job's group"
        assert rec["cwd"] == str(ms.mom_priv)
        assert rec["stdin"] == "/dev/null"
        assert rec["sid"] == rec["pid"], "the hook leads its own session"
        assert rec["stdout"] == str(ms.spool / "7.vm.OU")
    assert pro["umask"] == "0077"
    assert epi["umask"] == "0022"

    env = hook_env(pro)
    assert set(env) == HOOK_ENV_KEYS | {"PBS_NODEFILE"}
    assert env["PATH"] == "/bin:/usr/bin" and env["LANG"] == "C.UTF-8"
    assert env["PBS_MSHOST"] == ms.name and env["PBS_NODENUM"] == "0"
    assert env["PBS_NODEFILE"] == f"{ms.home}/aux//7.vm"
    assert (env["PBS_NP"], env["PBS_NUM_NODES"], env["PBS_NUM_PPN"]) == ("1", "1", "1")
    assert env["PBS_RESOURCE_NODES"] == "1:ppn=1"
    assert env["PBS_O_WORKDIR"] == str(workdir)
    assert hook_env(epi) == env

    # MS output: appended to the job's files, delivered to the work dir as the owner's.
    assert out.delivered and out.stdout_path == workdir / "stubjob.o7"
    assert out.stdout_path.read_text() == "prologue-out\njob-out\nepilogue-out\n"
    assert out.stderr_path.read_text() == "prologue-err\n"
    assert out.stdout_path.stat().st_uid == user.uid
    assert not (ms.spool / "7.vm.OU").exists()


def test_multi_node_order_env_and_output(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    for name in ("prologue", "prologue.parallel", "epilogue", "epilogue.parallel"):
        stubs.write(name, f"echo {name}-says-hi; exit 0")
    site = make_site(base, stubs, nodes=("mother", "sis1", "sis2"))
    seen: list[str] = []

    def payload(ctx: JobContext) -> int:
        seen.append(Path(ctx.env["PBS_NODEFILE"]).read_text())
        with (stubs.rec / "sequence").open("a") as fh:
            fh.write("JOB -1\n")
        return 0

    out = site.run(make_job(user, workdir, nodes=3, ppn=2, payload=payload))
    assert out.state == "completed" and out.start_count == 1
    seq = stubs.sequence()
    names = [n for n, _ in seq]
    # sisters' prologue.parallel (in any order between them), then MS prologue, the job,
    # sisters' epilogue.parallel, then MS epilogue
    assert names == ["prologue.parallel"] * 2 + ["prologue", "JOB"] + ["epilogue.parallel"] * 2 + [
        "epilogue"
    ]
    assert sorted(num for name, num in seq if name.endswith(".parallel")) == [1, 1, 2, 2]
    assert [num for name, num in seq if name in ("prologue", "epilogue")] == [0, 0]
    harness_view = [h for _, h in out.order()]
    assert harness_view[2:] == ["prologue", "epilogue.parallel", "epilogue.parallel", "epilogue"]
    assert seen == ["mother\nmother\nsis1\nsis1\nsis2\nsis2\n"]

    for rec in stubs.records("prologue.parallel") + stubs.records("epilogue.parallel"):
        env = hook_env(rec)
        assert set(env) == HOOK_ENV_KEYS, "no PBS_NODEFILE on a sister"
        assert env["PBS_MSHOST"] == "mother"
        assert (env["PBS_NP"], env["PBS_NUM_NODES"], env["PBS_NUM_PPN"]) == ("6", "3", "2")
        assert rec["umask"] == "0022" and rec["uid"] == "0" and rec["groups"] == "0"
        node = site.moms[int(env["PBS_NODENUM"])]
        assert rec["cwd"] == str(node.mom_priv)
        assert argv_of(rec)[-1] == str(node.mom_priv / "jobs" / "1.vm.SC")
    for rec in stubs.records("prologue.parallel"):
        assert rec["stdout"] == "/dev/null"
    text = out.stdout_path.read_text()
    assert "prologue-says-hi" in text and "epilogue-says-hi" in text
    assert "parallel-says-hi" not in text, "sister output never reaches the job's files"
    sister_ou = site.moms[1].spool / "1.vm.OU"
    assert sister_ou.read_text() == "epilogue.parallel-says-hi\n"


def test_missing_hooks_are_skipped(base: Path, stubs: Stubs, user: JobUser, workdir: Path) -> None:
    stubs.write("epilogue")
    site = make_site(base, stubs, nodes=2)
    ran: list[int] = []
    out = site.run(make_job(user, workdir, nodes=2, payload=flag_job(ran)))
    assert out.state == "completed" and ran == [0]
    assert [h.missing for h in out.hooks("prologue")] == [True]
    assert [h.missing for h in out.hooks("prologue.parallel")] == [True]
    assert len(stubs.records("epilogue")) == 1


def test_job_script_and_nodefile_are_root_owned_copies(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    probe = 'stat -c "%u %a" "$8" "$PBS_NODEFILE" > ../probe; cat "$8" > ../copy'
    stubs.write("prologue", probe)
    stubs.write("prologue.parallel", 'stat -c "%u %a" "$8" > ../probe; cat "$8" > ../copy')
    site = make_site(base, stubs, nodes=2)
    out = site.run(make_job(user, workdir, nodes=2))
    ms, sister = site.moms[0].home, site.moms[1].home
    assert (ms / "probe").read_text() == "0 700\n0 644\n"
    assert (ms / "copy").read_text() == MARKER_SCRIPT
    assert (sister / "probe").read_text() == "0 700\n", "each mom has its own copy"
    assert (sister / "copy").read_text() == MARKER_SCRIPT
    assert out.state == "completed"
    assert not (site.moms[0].mom_priv / "jobs" / "1.vm.SC").exists(), "purged at job end"


def test_default_payload_runs_the_script_as_the_owner(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    site = make_site(base, stubs)
    script = '#!/bin/sh\necho "uid=$(id -u) job=$PBS_JOBID env=$PBS_ENVIRONMENT"\nexit 4\n'
    out = site.run(Job(user=user, script=script, workdir=workdir, name="own", jobid="3.vm"))
    assert out.exit_status == 4
    assert out.stdout_path.read_text() == f"uid={user.uid} job=3.vm env=PBS_BATCH\n"


# ------------------------------------------------------------------ exit semantics


def test_prologue_exit_1_aborts_and_keeps_output_in_spool(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    stubs.write("prologue", "echo refusing; exit 1")
    stubs.write("epilogue")
    site = make_site(base, stubs)
    ran: list[int] = []
    out = site.run(make_job(user, workdir, payload=flag_job(ran)), max_starts=10)
    assert (out.state, out.exit_status, out.start_count) == ("aborted", JOB_EXEC_FAIL2, 1)
    assert ran == [], "the job never ran"
    (epi,) = stubs.records("epilogue")
    assert argv_of(epi)[5] == "0" and argv_of(epi)[10] == str(JOB_EXEC_FAIL2)
    assert not out.delivered and out.stdout_path == site.moms[0].spool / "1.vm.OU"
    assert out.stdout_path.read_text() == "refusing\n"
    assert list(workdir.iterdir()) == [], "nothing delivered"


@pytest.mark.parametrize("code", [2, 255])
def test_prologue_other_failure_requeues_and_reruns_at_once(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path, code: int
) -> None:
    stubs.write("prologue", f"exit {code}")
    stubs.write("epilogue")
    site = make_site(base, stubs)
    ran: list[int] = []
    out = site.run(make_job(user, workdir, payload=flag_job(ran)), max_starts=4)
    assert (out.state, out.exit_status, out.start_count) == (
        "requeued",
        JOB_EXEC_RETRY_PROLOGUE,
        4,
    )
    assert ran == []
    assert [h.rc for h in out.hooks("prologue")] == [code] * 4
    epis = stubs.records("epilogue")
    assert len(epis) == 4, "every failed start still runs the epilogue"
    assert {argv_of(r)[10] for r in epis} == {str(JOB_EXEC_RETRY_PROLOGUE)}


def test_requeue_loop_ends_when_the_prologue_succeeds(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    counter = base / "count"
    stubs.write(
        "prologue",
        f"n=$(($(cat {counter} 2>/dev/null || echo 0) + 1)); echo $n > {counter}; "
        "[ $n -ge 3 ] || exit 2",
    )
    site = make_site(base, stubs)
    ran: list[int] = []
    out = site.run(make_job(user, workdir, payload=flag_job(ran)), max_starts=10)
    assert (out.state, out.start_count) == ("completed", 3)
    assert ran == [2]


def test_hook_that_counts_its_attempts_can_stop_the_loop_with_exit_1(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    """What our hooks must do: retry a few times (exit 2), then give up for good (exit 1)."""
    counter = base / "count"
    stubs.write(
        "prologue",
        f"n=$(($(cat {counter} 2>/dev/null || echo 0) + 1)); echo $n > {counter}; "
        "[ $n -ge 3 ] && exit 1; exit 2",
    )
    site = make_site(base, stubs)
    out = site.run(make_job(user, workdir), max_starts=50)
    assert (out.state, out.exit_status, out.start_count) == ("aborted", JOB_EXEC_FAIL2, 3)
    assert [s.exit_status for s in out.starts] == [-14, -14, -2]


def test_bad_permissions_requeue_without_running_the_hook(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    stubs.write("prologue", mode=0o777)
    stubs.write("epilogue")
    site = make_site(base, stubs)
    out = site.run(make_job(user, workdir), max_starts=3)
    assert (out.state, out.exit_status, out.start_count) == (
        "requeued",
        JOB_EXEC_RETRY_PROLOGUE,
        3,
    )
    assert stubs.records("prologue") == []
    assert [h.rc for h in out.hooks("prologue")] == [PELOG_PERMISSION_ERROR] * 3
    assert len(stubs.records("epilogue")) == 3

    # fixed mode: it runs; then a non-root owner: refused again
    for path in site.hook_paths("prologue"):
        path.chmod(0o755)
    assert site.run(make_job(user, workdir, jobid="2.vm"), max_starts=1).state == "completed"
    for path in site.hook_paths("prologue"):
        os.chown(path, user.uid, user.gid)
    bad = site.run(make_job(user, workdir, jobid="3.vm"), max_starts=1)
    assert bad.state == "requeued" and bad.hooks("prologue")[0].rc == PELOG_PERMISSION_ERROR


def test_symlinked_hooks_are_judged_by_their_target(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    target = stubs.write("prologue", mode=0o700)
    site = TorqueSite(base / "pbs")
    site.install_hooks(stubs.src, symlink=True)
    link = site.moms[0].hook("prologue")
    assert link.is_symlink()
    assert site.run(make_job(user, workdir), max_starts=1).state == "completed"
    assert len(stubs.records("prologue")) == 1
    target.chmod(0o775)
    out = site.run(make_job(user, workdir, jobid="2.vm"), max_starts=1)
    assert out.state == "requeued" and len(stubs.records("prologue")) == 1


def test_exec_failure_is_exit_255_and_requeues(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    hook = stubs.src / "prologue"
    hook.write_text("#!/nonexistent/interpreter\n")
    hook.chmod(0o755)
    site = make_site(base, stubs)
    out = site.run(make_job(user, workdir), max_starts=1)
    assert out.hooks("prologue")[0].rc == 255 and out.exit_status == JOB_EXEC_RETRY_PROLOGUE
    assert "execv of" in out.stderr_path.read_text()


def test_hook_killed_by_a_signal_counts_as_success(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    """get_child_exit_status() only reads WEXITSTATUS: death by signal leaves run_exit 0."""
    stubs.write("prologue", "kill -TERM $$; sleep 5; exit 2")
    site = make_site(base, stubs)
    out = site.run(make_job(user, workdir), max_starts=2)
    assert out.state == "completed" and out.hooks("prologue")[0].rc == 0


def test_sister_prologue_exit_1_requeues_not_aborts(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    stubs.write("prologue.parallel", "exit 1")
    stubs.write("prologue")
    stubs.write("epilogue")
    stubs.write("epilogue.parallel")
    site = make_site(base, stubs, nodes=2)
    ran: list[int] = []
    out = site.run(make_job(user, workdir, nodes=2, payload=flag_job(ran)), max_starts=3)
    assert (out.state, out.exit_status, out.start_count) == ("requeued", JOB_EXEC_RETRY, 3)
    assert ran == [] and stubs.records("prologue") == [], "the MS aborts the start"
    assert len(stubs.records("epilogue.parallel")) == 3
    assert len(stubs.records("epilogue")) == 3


def test_interactive_job_aborts_on_any_prologue_failure(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    stubs.write("prologue", "echo to-the-terminal; exit 2")
    site = make_site(base, stubs)
    out = site.run(make_job(user, workdir, interactive=True), max_starts=5)
    assert (out.state, out.exit_status, out.start_count) == ("aborted", JOB_EXEC_FAIL2, 1)
    assert site.terminal.read_text() == "to-the-terminal\n"


def test_epilogue_failure_is_ignored(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    stubs.write("epilogue", "exit 1")
    stubs.write("epilogue.parallel", "exit 2")
    site = make_site(base, stubs, nodes=2)
    out = site.run(make_job(user, workdir, nodes=2, payload=["/bin/sh", "-c", "exit 5"]))
    assert (out.state, out.exit_status, out.start_count) == ("completed", 5, 1)
    assert out.hooks("epilogue")[0].rc == 1 and out.delivered


# ------------------------------------------------------------------------ timeouts


def test_prologue_timeout_kills_its_whole_session_and_requeues(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    pids, detached_pid = base / "pids", base / "detached"
    stubs.write(
        "prologue",
        f"sleep 120 & echo $! >> {pids}; (sleep 121 & echo $! >> {pids}; wait) & "
        f"setsid sleep 122 </dev/null >/dev/null 2>&1 & echo $! > {detached_pid}; "
        f"trap 'echo got-term > {base}/term' TERM; sleep 119; exit 0",
    )
    stubs.write("epilogue")
    site = make_site(base, stubs, prologalarm=12)
    began = time.monotonic()
    out = site.run(make_job(user, workdir), max_starts=1)
    elapsed = time.monotonic() - began
    run = out.hooks("prologue")[0]
    assert run.timed_out and run.rc == PELOG_TIMEOUT
    assert (out.state, out.exit_status) == ("requeued", JOB_EXEC_RETRY_PROLOGUE)
    assert elapsed < 60, "killed well before the 119 s sleep would have ended"
    assert len(stubs.records("epilogue")) == 1
    same_session = [int(p) for p in pids.read_text().split()]
    detached = int(detached_pid.read_text())
    sid = int(stubs.records("prologue")[0]["sid"])
    try:
        assert len(same_session) == 2
        time.sleep(0.2)
        assert session_pids(sid) == [], "everything in the hook's session got SIGKILL"
        for pid in same_session:
            assert not _alive(pid)
        assert _alive(detached), "a child in its own session survives, as observed"
        assert not (base / "term").exists(), "SIGKILL only, no SIGTERM first"
    finally:
        kill_session(sid)  # only if the assertions failed is anything left
        kill_session(detached)


def test_epilogue_timeout_is_ignored(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    stubs.write("epilogue", "sleep 119; exit 0")
    site = make_site(base, stubs, prologalarm=12)
    began = time.monotonic()
    out = site.run(make_job(user, workdir, payload=["/bin/true"]))
    assert time.monotonic() - began < 60
    assert out.hooks("epilogue")[0].timed_out
    assert (out.state, out.exit_status) == ("completed", 0)


def test_sister_timeout_requeues_like_a_sister_failure(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    stubs.write("prologue.parallel", "sleep 119")
    site = make_site(base, stubs, nodes=2, prologalarm=12)
    out = site.run(make_job(user, workdir, nodes=2), max_starts=1)
    assert out.hooks("prologue.parallel")[0].timed_out
    assert (out.state, out.exit_status) == ("requeued", JOB_EXEC_RETRY)


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return text[text.rindex(")") + 2] == "Z"


# ----------------------------------------------------------------- qdel, precancel


def test_qdel_runs_precancel_as_the_owner_then_the_epilogue(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    stubs.write("epilogue.precancel")
    stubs.write("epilogue")
    site = make_site(base, stubs)
    began = time.monotonic()
    out = site.run(make_job(user, workdir, payload=["/bin/sleep", "60"]), qdel_after=1.0)
    assert time.monotonic() - began < 30
    assert out.state == "completed" and out.exit_status == 271, "256 + SIGTERM"
    assert out.last.deleted
    assert [h for _, h in out.order()] == ["epilogue.precancel", "epilogue"]
    (pre,) = stubs.records("epilogue.precancel")
    (epi,) = stubs.records("epilogue")
    assert float(pre["when"]) < float(epi["when"])
    assert (pre["uid"], pre["gid"]) == (str(user.uid), str(user.gid))
    assert pre["cwd"] == str(user.home)
    assert pre["umask"] == "0022" and pre["stdin"] == "/dev/null"
    assert pre["stdout"] == "/dev/null"
    assert set(hook_env(pre)) == HOOK_ENV_KEYS | {"PBS_NODEFILE"}
    pre_argv, epi_argv = argv_of(pre), argv_of(epi)
    assert len(pre_argv) == 12
    assert pre_argv[5] == epi_argv[5] != "0", "the job's session id"
    assert (pre_argv[7], pre_argv[10]) == ("", "0")
    assert epi_argv[10] == "271"


def test_callable_job_can_qdel_itself(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    stubs.write("epilogue.precancel")

    def payload(ctx: JobContext) -> int:
        run = ctx.qdel()
        assert run is not None and run.ran and run.rc == 0
        return 0

    out = make_site(base, stubs).run(make_job(user, workdir, payload=payload))
    assert out.exit_status == 271 and out.last.precancel is not None
    assert len(stubs.records("epilogue.precancel")) == 1


def test_precancel_needs_other_rx(base: Path, stubs: Stubs, user: JobUser, workdir: Path) -> None:
    stubs.write("epilogue.precancel", mode=0o750)
    site = make_site(base, stubs)
    out = site.run(make_job(user, workdir, payload=["/bin/sleep", "30"]), qdel_after=0.5)
    assert out.last.precancel is not None
    assert out.last.precancel.rc == PELOG_PERMISSION_ERROR and not out.last.precancel.ran
    assert stubs.records("epilogue.precancel") == []
    assert out.exit_status == 271


def test_user_hooks_run_as_owner_in_order(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    names = (
        "prologue",
        "prologue.user",
        "prologue.parallel",
        "prologue.user.parallel",
        "epilogue",
        "epilogue.user",
        "epilogue.parallel",
        "epilogue.user.parallel",
    )
    for name in names:
        stubs.write(name)
    site = make_site(base, stubs, nodes=2)
    out = site.run(make_job(user, workdir, nodes=2, payload=["/bin/true"]))
    assert out.state == "completed"
    assert [n for n, _ in stubs.sequence()] == [
        "prologue.parallel",
        "prologue.user.parallel",
        "prologue",
        "prologue.user",
        "epilogue.user.parallel",
        "epilogue.parallel",
        "epilogue.user",
        "epilogue",
    ]
    for name in names:
        (rec,) = stubs.records(name)
        want = str(user.uid) if ".user" in name else "0"
        assert rec["uid"] == want, name
    (pu,) = stubs.records("prologue.user")
    assert pu["umask"] == "0077" and pu["cwd"] == str(user.home)
    assert stat.S_IMODE(site.moms[0].hook("prologue.user").stat().st_mode) == 0o755
