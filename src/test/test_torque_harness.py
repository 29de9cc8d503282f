"""Tests of the pbs_mom hook harness itself, with tiny stub hooks written per test.

Each stub is a sh script that records what it saw (argv, ids, cwd, umask, fds, session,
environment, and the job files beside argv 8: the script and the .JB) into a record file, then
runs the shell code the test gives it, the way an admin traces a real Torque. The assertions
compare those records with the Torque 6.1 contract (DESIGN.md section 4, "Torque 6.1 hook
contract" and "Torque corrections"; reference/batch.md 2.4-2.7b). Tests of a fact observed on
the real Torque 6.1-dev on 2026-12-01 say which one ("fact N", as numbered in the harness brief:
1 script owner, 2 sisters, 3 .JB content, 4 MS .JB timing, 5 qstat, 6 blocking sister
prologues, 7 abort, 8 requeue, 9 normal end, 10 qdel during the prologue, 11 interactive,
12 the earlier contract).
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from torque_harness import (
    INTERACTIVE_EXIT_STATUS,
    JOB_EXEC_FAIL2,
    JOB_EXEC_RETRY,
    JOB_EXEC_RETRY_PROLOGUE,
    PELOG_PERMISSION_ERROR,
    PELOG_TIMEOUT,
    Job,
    JobContext,
    JobUser,
    Outcome,
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
SAMPLES = Path(__file__).with_name("torque_samples")
NOW = "date +%s.%N"  # shell: a timestamp comparable with the records' "when"

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
  eval "last=\${$#}"
  echo "sc=$(stat -c %u:%g:%a "$last" 2>/dev/null || echo absent)"
  echo "jb=$(stat -c %u:%g:%a:%i "${last%.SC}.JB" 2>/dev/null || echo absent)"
  echo "jobs=$(ls "${last%/*}" 2>/dev/null | tr '\n' ' ')"
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


def wait_for_text(path: Path, needle: str, timeout: float = 10.0) -> str:
    """The text of ``path`` once it contains ``needle`` (a detached watcher's log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            text = path.read_text()
            if needle in text:
                return text
        time.sleep(0.01)
    raise AssertionError(f"{path} never got {needle!r}")


def stamp(path: Path) -> float:
    """A timestamp a stub wrote with ``echo "...=$(date +%s.%N)"``."""
    return float(path.read_text().strip().rpartition("=")[2])


def skeleton(elem: ET.Element, depth: int = 0) -> list[tuple[int, str, dict[str, str]]]:
    """The shape of an XML tree: (depth, tag, attributes) of every element, in order."""
    out = [(depth, elem.tag, dict(elem.attrib))]
    for child in elem:
        out += skeleton(child, depth + 1)
    return out


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


def test_ms_script_belongs_to_the_job_user_before_the_prologue(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    """Fact 1: pbs_mom chowns the MS's <id>.SC to the job user (0700) before `prologue`;
    while the sisters run `prologue.parallel` it is still root's. The node file is root 0644."""
    site = make_site(base, stubs, nodes=2)
    ms_script = site.moms[0].script("1.vm")
    stubs.write("prologue.parallel", f'stat -c %u:%g:%a "{ms_script}" > ../ms-script-then')
    stubs.write("prologue", 'stat -c "%u %a" "$PBS_NODEFILE" > ../nodefile; cat "$8" > ../copy')
    stubs.write("epilogue")
    site.install_hooks(stubs.src)
    out = site.run(make_job(user, workdir, nodes=2))
    assert out.state == "completed"
    (pro,) = stubs.records("prologue")
    assert argv_of(pro)[8] == str(ms_script)
    assert pro["sc"] == f"{user.uid}:{user.gid}:700"
    assert (site.moms[0].home / "copy").read_text() == MARKER_SCRIPT
    assert (site.moms[0].home / "nodefile").read_text() == "0 644\n"
    assert (site.moms[1].home / "ms-script-then").read_text() == "0:0:700\n"
    (epi,) = stubs.records("epilogue")
    assert epi["sc"] == f"{user.uid}:{user.gid}:700", "still the user's at job end"
    assert [(e.action, e.node) for e in out.files(".SC")] == [
        ("written", "n0"),
        ("chowned", "n0"),
        ("removed", "n0"),
    ]
    assert not ms_script.exists(), "purged at job end"


def test_sister_never_has_the_script_and_saves_its_jb_after_prologue_parallel(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    """Fact 2 (multi-mom names): a sister's argv 8 names <id><its own port>.SC, which does not
    exist; its .JB does not exist during prologue.parallel either and appears (root 0644)
    about 2 ms after the hook returned. A detached watcher sees it come and go."""
    watch = base / "watch"
    stubs.write(
        "prologue.parallel",
        f"""jb="${{8%.SC}}.JB"
setsid sh -c '
  jb=$1 log=$2
  for i in $(seq 3000); do [ -e "$jb" ] && break; sleep 0.001; done
  echo "appeared=$({NOW}) mode=$(stat -c %u:%g:%a "$jb")" >> $log
  cp "$jb" $log.JB
  while [ -e "$jb" ]; do sleep 0.005; done
  echo "gone=$({NOW})" >> $log
' sh "$jb" {watch} </dev/null >/dev/null 2>&1 &
sleep 0.2
echo "end=$({NOW})" > ../hook-end""",
    )
    stubs.write("prologue")
    site = TorqueSite(base / "pbs", 2, multi_mom=True)
    site.install_hooks(stubs.src)
    ms, sister = site.moms
    assert (ms.port, sister.port) == (15003, 15013)

    def payload(ctx: JobContext) -> int:
        time.sleep(0.3)
        return 0

    out = site.run(make_job(user, workdir, nodes=2, jobid="14.vm", payload=payload))
    assert out.state == "completed"
    (par,) = stubs.records("prologue.parallel")
    assert argv_of(par)[8] == str(sister.jobs / "14.vm15013.SC")
    assert (par["sc"], par["jb"], par["jobs"]) == ("absent", "absent", "")
    (pro,) = stubs.records("prologue")
    assert argv_of(pro)[8] == str(ms.jobs / "14.vm15003.SC") and pro["sc"] != "absent"
    assert "14.vm15013.SC" not in pro["jobs"] and not (sister.jobs / "14.vm15013.SC").exists()

    log = wait_for_text(watch, "gone=")
    seen = dict(line.split("=", 1) for line in log.replace(" mode=", "\nmode=").splitlines())
    hook_end = float((sister.home / "hook-end").read_text().split("=")[1])
    assert 0 < float(seen["appeared"]) - hook_end < 1.0, "written just after the hook ended"
    assert seen["mode"] == "0:0:644"
    assert float(seen["gone"]) > float(seen["appeared"])
    assert ET.parse(f"{watch}.JB").getroot().findtext("jobid") == "14.vm"
    # the harness's own account of it: the first save follows the hook's end
    (run,) = out.hooks("prologue.parallel")
    first = out.files(".JB", node=sister.name)[0]
    assert first.action == "written" and first.when >= run.ended
    assert first.path == sister.jobs / "14.vm15013.JB"


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


def test_sister_prologue_exit_1_requeues_without_sister_epilogues(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    """prologue.parallel exit 1 requeues (-3) in a tight loop (observed). What else happens is
    read in Torque's source: the failing sister purges the job at once (no .JB, no epilogue;
    im_join_job_as_sister), the MS bails and the other sisters get IM_ABORT_JOB (no hook), and
    the MS, which set "prologues ran" before joining them, runs its epilogues (argv 10 -3)."""
    stubs.write("prologue.parallel", "exit 1")
    stubs.write("prologue")
    stubs.write("epilogue")
    stubs.write("epilogue.parallel")
    site = make_site(base, stubs, nodes=2)
    ran: list[int] = []
    out = site.run(make_job(user, workdir, nodes=2, payload=flag_job(ran)), max_starts=3)
    assert (out.state, out.exit_status, out.start_count) == ("requeued", JOB_EXEC_RETRY, 3)
    assert ran == [] and stubs.records("prologue") == [], "the MS aborts the start"
    assert stubs.records("epilogue.parallel") == []
    epis = stubs.records("epilogue")
    assert [argv_of(r)[10] for r in epis] == [str(JOB_EXEC_RETRY)] * 3
    assert out.files(".JB", node="n1") == [], "the failing sister never saved the job"
    assert not out.delivered


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


# ------------------------------------------------------------- the job's .JB files


def expected_variable_list(user: JobUser, workdir: Path, given: str) -> str:
    head = (
        f"PBS_O_QUEUE=batch,PBS_O_HOME={user.home},PBS_O_LOGNAME={user.name},"
        f"PBS_O_PATH=/usr/local/bin:/usr/bin:/bin,PBS_O_SHELL={user.shell},PBS_O_LANG=C.UTF-8"
    )
    return f"{head},{given},PBS_O_WORKDIR={workdir},PBS_O_HOST=vm,PBS_O_SERVER=vm"


def test_jb_holds_variable_list_exec_host_and_owner(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    """Fact 3: both .JB files hold the -v variables in Variable_List, joined by bare commas
    (a value's comma splits it: OTHER=a,b=), exec_host MS first, euser and egroup; XML with
    the job's attributes, values escaped; the job's environment has the same variables."""
    stubs.write("epilogue.parallel", 'cp "${11%.SC}.JB" ../sister.JB')
    stubs.write("epilogue", 'cp "${11%.SC}.JB" ../ms.JB')
    site = make_site(base, stubs, nodes=2)
    envs: list[dict[str, str]] = []

    def payload(ctx: JobContext) -> int:
        envs.append(ctx.env)
        return 0

    variables = {"VMW_REQUEST_V1": "abc+/=", "OTHER": "a,b", "AMP": "x&y<z"}
    job = make_job(user, workdir, nodes=2, variables=variables, payload=payload)
    assert site.run(job).state == "completed"
    want = expected_variable_list(user, workdir, "VMW_REQUEST_V1=abc+/=,OTHER=a,b=,AMP=x&y<z")
    for node, name in ((site.moms[1], "sister.JB"), (site.moms[0], "ms.JB")):
        raw = (node.home / name).read_text()
        assert raw.startswith('<?xml version="1.0"?>\n<job>\n  <version>')
        assert "AMP=x&amp;y&lt;z" in raw
        root = ET.fromstring(raw)
        attrs = root.find("attributes")
        assert attrs is not None
        assert attrs.findtext("Variable_List") == want
        assert attrs.findtext("exec_host") == "n0/0+n1/0"
        assert (attrs.findtext("euser"), attrs.findtext("egroup")) == (user.name, user.group)
        assert attrs.findtext("Job_Name") == "stubjob"
        assert root.findtext("nodeid") == ("1" if node is site.moms[1] else "0")
    (env,) = envs
    assert (env["VMW_REQUEST_V1"], env["OTHER"], env["b"]) == ("abc+/=", "a", "")
    assert env["PBS_O_HOME"] == str(user.home) and env["PBS_O_QUEUE"] == "batch"


def test_jb_has_the_shape_of_the_real_ones(base: Path, user: JobUser) -> None:
    """Fact 3: element for element (with the flags), the harness's .JB files look like the
    ones Torque wrote for job 14 (torque_samples/); so do the fixed-value fields."""
    site = TorqueSite(base / "pbs", ("tqn2", "tqn1"), multi_mom=True, mom_ports=(15013, 15003))
    job = Job(
        user=user,
        script="#!/bin/sh\n",
        jobid="14.vm",
        name="tj.sh",
        nodes=2,
        resource_list="nodes=2:ppn=1,neednodes=2:ppn=1",
        variables={"VMW_REQUEST_V1": "U27VVkTm3u0jR/ywHu7L"},
    )
    fixed = ["version", "state", "substate", "server_flags", "record_type", "svr_addr"]
    fixed += ["socket_stdout", "socket_stderr", "taskid", "nodeid"]
    attr_fixed = ["Checkpoint", "Join_Path", "Keep_Files", "job_state", "exec_host"]
    attr_fixed += ["exec_port", "fault_tolerant", "job_radix", "request_version", "queue"]
    for nodenum, sample in ((0, "ms-14.vm15013.JB"), (1, "sister-14.vm15003.JB")):
        ours = ET.fromstring(site.job_record(job, nodenum))
        real = ET.parse(SAMPLES / sample).getroot()
        assert skeleton(ours) == skeleton(real), sample
        for tag in fixed:
            assert ours.findtext(tag) == real.findtext(tag), (sample, tag)
        for tag in attr_fixed:
            assert ours.findtext(f"attributes/{tag}") == real.findtext(f"attributes/{tag}")
        for tag in ("nodes", "neednodes"):
            path = f"attributes/Resource_List/{tag}"
            assert ours.findtext(path) == real.findtext(path)
        real_vars = real.findtext("attributes/Variable_List") or ""
        ours_vars = ours.findtext("attributes/Variable_List") or ""
        assert [v.split("=")[0] for v in ours_vars.split(",")] == [
            v.split("=")[0] for v in real_vars.split(",")
        ]


def test_ms_jb_appears_only_after_the_ms_prologue_by_default(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    """Fact 4, the worse case (first job after an idle spell): no MS .JB during the whole MS
    prologue (a 0.5 s wait does not help); it is there for the epilogue."""
    stubs.write(
        "prologue",
        'for i in $(seq 50); do [ -e "${8%.SC}.JB" ] && break; sleep 0.01; done; '
        'stat -c %a "${8%.SC}.JB" > ../after-wait 2>&1 || echo absent > ../after-wait',
    )
    stubs.write("epilogue")
    site = make_site(base, stubs)
    out = site.run(make_job(user, workdir))
    (pro,) = stubs.records("prologue")
    assert pro["jb"] == "absent"
    assert (site.moms[0].home / "after-wait").read_text() == "absent\n"
    (epi,) = stubs.records("epilogue")
    assert epi["jb"].startswith("0:0:644:")
    (run,) = out.hooks("prologue")
    first = out.files(".JB", node="n0")[0]
    assert first.action == "written" and first.when >= run.ended


def test_ms_jb_before_the_prologue_as_an_option(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    """Fact 4, the other case (later jobs): the MS .JB is there during prologue.parallel and
    the MS prologue."""
    site = TorqueSite(base / "pbs", 2, ms_jb_before_prologue=True)
    ms_record = site.moms[0].record("1.vm")
    stubs.write("prologue.parallel", f'stat -c %a "{ms_record}" > ../ms-jb 2>&1')
    stubs.write("prologue")
    site.install_hooks(stubs.src)
    assert site.run(make_job(user, workdir, nodes=2)).state == "completed"
    (pro,) = stubs.records("prologue")
    assert pro["jb"].startswith("0:0:644:")
    assert (site.moms[1].home / "ms-jb").read_text() == "644\n"


# ------------------------------------------------------------------------ qstat -x


def test_qstat_answers_from_a_hook_on_any_node(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    """Fact 5: `qstat -f -x JOBID` by absolute path from a hook (PATH=/bin:/usr/bin) on the MS
    and on a sister: the XML declaration, then one line with <Data><Job>...; an unknown job
    id exits non-zero with 'qstat: Unknown Job Id ID'."""
    site = make_site(base, stubs, nodes=2)
    ask = f'"{site.qstat}" -f -x "$1" > ../qstat.out 2> ../qstat.err; echo $? > ../qstat.rc; '
    ask += f'"{site.qstat}" -f -x 99.vm > ../unknown.out 2> ../unknown.err; echo $? > ../unknown.rc'
    stubs.write("prologue.parallel", ask)
    stubs.write("prologue", ask)
    site.install_hooks(stubs.src)
    st = site.qstat.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755)
    job = make_job(user, workdir, nodes=2, jobid="14.vm", variables={"VMW_REQUEST_V1": "abc"})
    assert site.run(job).state == "completed"
    want = expected_variable_list(user, workdir, "VMW_REQUEST_V1=abc")
    for mom in site.moms:
        home = mom.home
        assert (home / "qstat.rc").read_text() == "0\n" and (home / "qstat.err").read_text() == ""
        head, line, rest = (home / "qstat.out").read_text().split("\n")
        assert (head, rest) == ('<?xml version="1.0"?>', "")
        assert line.startswith("<Data><Job><Job_Id>14.vm</Job_Id>")
        root = ET.fromstring(line)
        assert root.findtext("Job/Variable_List") == want
        assert root.findtext("Job/job_state") == "R"
        assert root.findtext("Job/exec_host") == "n0/0+n1/0"
        assert (home / "unknown.rc").read_text() != "0\n"
        assert (home / "unknown.err").read_text() == "qstat: Unknown Job Id 99.vm\n"
        assert (home / "unknown.out").read_text() == ""
    done = subprocess.run(
        [site.qstat, "-f", "-x", "14"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, "the server keeps completed jobs (keep_completed)"
    root = ET.fromstring(done.stdout.split("\n")[1])
    assert (root.findtext("Job/job_state"), root.findtext("Job/exit_status")) == ("C", "0")
    usage = subprocess.run([site.qstat, "14.vm"], capture_output=True, text=True, check=False)
    assert usage.returncode != 0, "only qstat -f -x JOBID is imitated"


def test_qstat_has_the_shape_of_the_real_ones(base: Path, user: JobUser) -> None:
    """Fact 5: element for element, `qstat -f -x` of a completed batch and interactive job
    looks like the real output of jobs 14 and 29 (torque_samples/)."""
    site = TorqueSite(base / "pbs", ("tqn2", "tqn1"))
    batch = Job(
        user=user,
        script="#!/bin/sh\n",
        jobid="14.vm",
        name="tj.sh",
        nodes=2,
        resource_list="nodes=2:ppn=1,neednodes=2:ppn=1",
        variables={"VMW_REQUEST_V1": "U27VVkTm3u0jR/ywHu7L"},
    )
    inter = Job(
        user=user,
        script="",
        jobid="29.vm",
        resource_list="nodes=1:ppn=1,neednodes=1:ppn=1",
        interactive=True,
        inter_cmd="/tmp/ix.sh",
        variables={"VMW_REQUEST_V1": "abc"},
    )
    assert inter.name == "ix.sh", "-x names the job after the file"
    cases = ((batch, 0, "qstat-f-x-14.vm.xml"), (inter, 265, "qstat-f-x-29.vm-interactive.xml"))
    for job, status, sample in cases:
        text = site.qstat_xml(job, "C", start_count=1, exit_status=status, session_id=4242)
        real_text = (SAMPLES / sample).read_text()
        assert text.count("\n") == real_text.count("\n") == 2
        ours, real = ET.fromstring(text.split("\n")[1]), ET.fromstring(real_text.split("\n")[1])
        assert skeleton(ours) == skeleton(real), sample
        for tag in ("Job_Id", "Job_Name", "interactive", "inter_cmd", "Rerunable", "exit_status"):
            assert ours.findtext(f"Job/{tag}") == real.findtext(f"Job/{tag}"), tag
    assert inter.qsub_args() == "-I -l nodes=1:ppn=1 -v VMW_REQUEST_V1=abc -x /tmp/ix.sh"


def test_qstat_prints_values_unescaped_like_mxml(base: Path, user: JobUser) -> None:
    """Read in Torque's source (u_MXML.c), not observed: qstat -x writes values raw except
    '<', which becomes byte 0x0E. A -v value with '&' makes the output ill-formed XML."""
    site = TorqueSite(base / "pbs")
    job = Job(user=user, script="", variables={"A": "x&y", "B": "p<q>r"})
    site.publish(job, "Q")
    proc = subprocess.run([site.qstat, "-f", "-x", "1.vm"], capture_output=True, check=True)
    assert b",A=x&y,B=p\x0eq>r," in proc.stdout
    with pytest.raises(ET.ParseError):
        ET.fromstring(proc.stdout.split(b"\n")[1])


# -------------------------------------------------------- sister prologues block


def test_sister_prologue_blocks_its_mom_and_the_ms_waits_for_it(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    """Fact 6: prologue.parallel runs inside the sister's pbs_mom, which answers nothing
    meanwhile (momctl -d); the MS prologue starts only after every sister's returned."""
    stubs.write("prologue.parallel", f'sleep 0.5; echo "end=$({NOW})" > ../par-end')
    stubs.write("prologue")
    site = make_site(base, stubs, nodes=3)
    answers: dict[str, set[bool]] = {mom.name: set() for mom in site.moms}
    outcome: list[Outcome] = []
    job = make_job(user, workdir, nodes=3)
    runner = threading.Thread(target=lambda: outcome.append(site.run(job)))
    runner.start()
    while runner.is_alive():
        for mom in site.moms:
            answers[mom.name].add(mom.answers())
        time.sleep(0.01)
    runner.join()
    assert outcome[0].state == "completed"
    assert answers["n0"] == {True}, "the MS mom stays responsive"
    assert False in answers["n1"] and False in answers["n2"]
    assert all(mom.answers() for mom in site.moms)
    (pro,) = stubs.records("prologue")
    for sister in site.moms[1:]:
        assert float(pro["when"]) >= stamp(sister.home / "par-end")


def test_detached_child_lets_the_sister_hook_return_and_outlives_the_job(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    """Fact 6: `setsid ... </dev/null >/dev/null 2>&1 &` lets prologue.parallel return at once;
    the child survives the job's end (nothing kills it)."""
    child = base / "child"
    stubs.write(
        "prologue.parallel", f"setsid sleep 60 </dev/null >/dev/null 2>&1 & echo $! > {child}"
    )
    site = make_site(base, stubs, nodes=2)
    out = site.run(make_job(user, workdir, nodes=2, payload=["/bin/true"]))
    pid = int(child.read_text())
    try:
        assert out.state == "completed"
        assert out.hooks("prologue.parallel")[0].duration < 1.0
        assert _alive(pid), "the child outlived the job"
    finally:
        kill_session(pid)


# ---------------------------------------------------- failed starts, normal end


def jb_actions(out: Outcome, node: str) -> list[str]:
    return [e.action for e in out.files(".JB", node=node)]


def test_ms_prologue_exit_1_aborts_without_any_sister_hook(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    """Fact 7: MS prologue exit 1 aborts (-2), no rerun; the MS epilogue still runs (argv 10
    = -2); sisters run no hook at all and remove their .JB first; output stays in the spool."""
    site = make_site(base, stubs, nodes=2)
    sister_jb = site.moms[1].record("1.vm")
    for name in ("prologue.parallel", "epilogue.parallel", "epilogue.user.parallel"):
        stubs.write(name)
    stubs.write("prologue", "echo refusing; exit 1")
    stubs.write("epilogue", f'stat "{sister_jb}" >/dev/null 2>&1 && echo there > ../sister-jb')
    site.install_hooks(stubs.src)
    out = site.run(make_job(user, workdir, nodes=2), max_starts=10)
    assert (out.state, out.exit_status, out.start_count) == ("aborted", JOB_EXEC_FAIL2, 1)
    assert stubs.sequence() == [("prologue.parallel", 1), ("prologue", 0), ("epilogue", 0)]
    (epi,) = stubs.records("epilogue")
    assert argv_of(epi)[10] == "-2"
    assert not (site.moms[0].home / "sister-jb").exists(), "gone before the MS epilogue"
    assert jb_actions(out, "n1") == ["written", "removed"]
    (pro,) = out.hooks("prologue")
    removed = out.files(".JB", node="n1")[-1].when
    assert pro.ended <= removed <= out.hooks("epilogue")[0].started
    assert not out.delivered and out.stdout_path == site.moms[0].spool / "1.vm.OU"
    assert out.stdout_path.read_text() == "refusing\n"
    assert list(workdir.iterdir()) == []


def test_ms_prologue_exit_2_requeues_and_the_restart_gets_a_new_sister_jb(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    """Fact 8: MS prologue exit 2 requeues (-14) and pbs_sched restarts the job at once. The
    failed start runs no sister hook (the sister just removes its .JB) but the MS epilogue;
    the restart runs prologue.parallel again, and a new .JB (another inode) appears."""
    counter = base / "count"
    stubs.write(
        "prologue",
        f"n=$(($(cat {counter} 2>/dev/null || echo 0) + 1)); echo $n > {counter}; "
        "[ $n -ge 2 ] || exit 2",
    )
    for name in ("prologue.parallel", "epilogue.parallel", "epilogue"):
        stubs.write(name)
    site = make_site(base, stubs, nodes=2)
    out = site.run(make_job(user, workdir, nodes=2, payload=["/bin/true"]), max_starts=5)
    assert (out.state, out.exit_status, out.start_count) == ("completed", 0, 2)
    assert [s.exit_status for s in out.starts] == [JOB_EXEC_RETRY_PROLOGUE, 0]
    assert [n for n, _ in stubs.sequence()] == [
        "prologue.parallel",
        "prologue",
        "epilogue",
        "prologue.parallel",
        "prologue",
        "epilogue.parallel",
        "epilogue",
    ]
    assert [argv_of(r)[10] for r in stubs.records("epilogue")] == ["-14", "0"]
    assert [r["jb"] for r in stubs.records("prologue.parallel")] == ["absent", "absent"]
    first, second = out.starts
    assert [e.action for e in first.files if e.node == "n1"] == ["written", "removed"]
    old = next(e for e in first.files if e.node == "n1")
    new = next(e for e in second.files if e.node == "n1")
    assert (old.action, new.action) == ("written", "written")
    assert old.inode != new.inode, "a new file, another inode"


def test_normal_end_sister_epilogue_then_its_jb_goes_then_ms_epilogue(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    """Fact 9: at a normal end the sister runs epilogue.parallel (its .JB still there, argv 5
    = 0), then removes the .JB; the MS epilogue runs last."""
    site = make_site(base, stubs, nodes=2)
    sister_jb = site.moms[1].record("1.vm")
    stubs.write("epilogue.parallel")
    stubs.write("epilogue", f'stat "{sister_jb}" >/dev/null 2>&1 && echo there > ../sister-jb')
    site.install_hooks(stubs.src)
    out = site.run(make_job(user, workdir, nodes=2, payload=["/bin/true"]))
    assert out.state == "completed"
    assert [n for n, _ in stubs.sequence()] == ["epilogue.parallel", "epilogue"]
    (par,) = stubs.records("epilogue.parallel")
    assert par["jb"].startswith("0:0:644:") and argv_of(par)[5] == "0"
    (epi,) = stubs.records("epilogue")
    assert epi["jb"].startswith("0:0:644:"), "the MS's own .JB"
    assert argv_of(epi)[5] != "0", "the MS knows the job's session"
    assert not (site.moms[0].home / "sister-jb").exists()
    removed = out.files(".JB", node="n1")[-1]
    assert removed.action == "removed"
    assert out.hooks("epilogue.parallel")[0].ended <= removed.when
    assert removed.when <= out.hooks("epilogue")[0].started


# ---------------------------------------------------------- qdel during prologue


def test_qdel_during_the_ms_prologue_ends_the_job_around_it(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    """Fact 10: a qdel while the MS prologue sleeps: the prologue is not signalled and runs to
    its end, while the job is killed around it: sister epilogue.parallel, epilogue.precancel
    (as the owner), sister .JB removed, MS epilogue (argv 10 = 0 everywhere). The job ends C
    with exit status 0, never having run; its (empty) output is delivered."""
    home = base / "pbs" / "n0"
    stubs.write(
        "prologue",
        f"trap 'echo got-term > {home}/term; exit 0' TERM\n"
        f'sleep 2 & wait $!\necho "end=$({NOW})" > {home}/prologue-end',
    )
    for name in ("prologue.parallel", "epilogue.parallel", "epilogue.precancel", "epilogue"):
        stubs.write(name)
    site = make_site(base, stubs, nodes=2)
    ran: list[int] = []
    began = time.monotonic()
    out = site.run(
        make_job(user, workdir, nodes=2, payload=flag_job(ran)), qdel_during_prologue_after=0.5
    )
    assert time.monotonic() - began >= 2.0, "the prologue ran to its end"
    assert (out.state, out.exit_status, out.start_count) == ("completed", 0, 1)
    assert ran == [] and out.last.deleted and not out.last.ran_job
    assert not (home / "term").exists()
    prologue_end = stamp(home / "prologue-end")
    assert [n for n, _ in stubs.sequence()] == [
        "prologue.parallel",
        "prologue",
        "epilogue.parallel",
        "epilogue.precancel",
        "epilogue",
    ]
    for name in ("epilogue.parallel", "epilogue.precancel", "epilogue"):
        (rec,) = stubs.records(name)
        assert float(rec["when"]) < prologue_end, f"{name} ran while the prologue still ran"
        assert (argv_of(rec)[5], argv_of(rec)[10]) == ("0", "0"), name
    (pre,) = stubs.records("epilogue.precancel")
    assert pre["uid"] == str(user.uid)
    assert out.hooks("prologue")[0].rc == 0
    removed = out.files(".JB", node="n1")[-1]
    assert removed.action == "removed"
    assert out.hooks("epilogue.precancel")[0].started <= removed.when
    assert removed.when <= out.hooks("epilogue")[0].started
    assert out.delivered and (workdir / "stubjob.o1").exists()


# -------------------------------------------------------------------- interactive


def test_interactive_x_runs_the_file_in_the_login_shell_on_the_terminal(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    """Fact 11: qsub -I -x PATH: no script on the mom (argv 8 names a .SC that does not
    exist), argv 4 is PATH's basename, the MS prologue writes to the terminal; the mom runs
    the login shell as `-<shell> -c PATH` on the terminal, with PBS_ENVIRONMENT=PBS_INTERACTIVE
    and the -v variables; the job ends with exit status 265. Fact 5: qstat -f -x from that
    prologue, which has neither script nor .JB, shows the job and its variables."""
    seen = base / "ix-seen"
    ix = base / "ix.sh"
    ix.write_text(
        "#!/bin/sh\n"
        f'echo "me=$(tr "\\0" " " < /proc/$$/cmdline)" > {seen}\n'
        f'echo "parent=$(tr "\\0" " " < /proc/$PPID/cmdline)" >> {seen}\n'
        f"env | sed 's/^/env:/' >> {seen}\n"
        "echo ix-out; echo ix-err >&2\n"
    )
    ix.chmod(0o755)
    seen.touch()
    seen.chmod(0o666)
    site = TorqueSite(base / "pbs")
    stubs.write("prologue", f'echo prologue-out; "{site.qstat}" -f -x "$1" > ../qstat.out')
    stubs.write("epilogue", "echo epilogue-out")  # to /dev/null for -I (source: run_epilogues)
    site.install_hooks(stubs.src)
    variables = {"VMW_REQUEST_V1": "abc"}
    job = Job(user, "", workdir=workdir, interactive=True, inter_cmd=str(ix), variables=variables)
    assert job.name == "ix.sh"
    out = site.run(job)
    assert (out.state, out.exit_status) == ("completed", INTERACTIVE_EXIT_STATUS)
    (pro,) = stubs.records("prologue")
    assert argv_of(pro)[4] == "ix.sh" and pro["sc"] == "absent"
    (epi,) = stubs.records("epilogue")
    assert argv_of(epi)[10] == "265"
    assert site.terminal.read_text() == "prologue-out\nix-out\nix-err\n"
    lines = seen.read_text().splitlines()
    assert lines[0] == f"me=/bin/sh {ix} "
    shell = Path(user.shell).name
    if shell != "bash":  # bash would exec PATH itself: its parent would be the "mom"
        assert lines[1] == f"parent=-{shell} -c {ix} ", "the login shell, -c PATH"
    env = dict(line[4:].split("=", 1) for line in lines if line.startswith("env:"))
    assert env["PBS_ENVIRONMENT"] == "PBS_INTERACTIVE" and env["PBS_JOBID"] == "1.vm"
    assert env["PBS_NODEFILE"] == f"{site.moms[0].aux}//1.vm"
    assert env["PBS_O_WORKDIR"] == str(workdir) and env["VMW_REQUEST_V1"] == "abc"
    assert (env["HOME"], env["SHELL"]) == (str(user.home), user.shell)
    assert not out.delivered and list(workdir.iterdir()) == []
    assert out.files(".SC") == [], "no script on any mom"
    asked = ET.fromstring((site.moms[0].home / "qstat.out").read_text().split("\n")[1])
    assert asked.findtext("Job/interactive") == "True"
    assert (asked.findtext("Job/inter_cmd"), asked.findtext("Job/job_state")) == (str(ix), "R")
    assert ",VMW_REQUEST_V1=abc," in (asked.findtext("Job/Variable_List") or "")


def test_interactive_without_x_is_stdin_and_runs_what_the_user_types(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    """Fact 11: plain qsub -I: argv 4 is STDIN, no script anywhere, the login shell reads the
    terminal (here: Job.script as what the user types)."""
    stubs.write("prologue")
    stubs.write("prologue.parallel")
    site = make_site(base, stubs, nodes=2)
    typed = "echo typed-$PBS_ENVIRONMENT\n"
    job = Job(user=user, script=typed, workdir=workdir, nodes=2, interactive=True)
    out = site.run(job)
    assert out.exit_status == INTERACTIVE_EXIT_STATUS
    for name in ("prologue", "prologue.parallel"):
        (rec,) = stubs.records(name)
        assert argv_of(rec)[4] == "STDIN" and rec["sc"] == "absent", name
    assert "typed-PBS_INTERACTIVE\n" in site.terminal.read_text()


def test_interactive_x_of_a_dev_fd_path_means_nothing_on_the_mom(
    base: Path, stubs: Stubs, user: JobUser, workdir: Path
) -> None:
    """Fact 11: -x takes a path on the MS; /dev/fd/N of the submitting qsub is not open there."""
    site = make_site(base, stubs)
    job = Job(user=user, script="", workdir=workdir, interactive=True, inter_cmd="/dev/fd/7")
    out = site.run(job)
    assert job.name == "7" and out.state == "completed"
    assert "/dev/fd/7" in site.terminal.read_text(), "the shell's complaint, nothing else"
