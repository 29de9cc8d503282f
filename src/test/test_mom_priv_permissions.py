"""The repo's Torque hook shims (mom_priv/*) against the pbs_mom contract, via the harness.

Installed the way admins are told to (``install -o root -g root -m 0700|0755``), each shim
must pass pbs_mom's permission check; 0777 or a non-root owner must fail it. Each shim must be
valid sh and hand its argv, unchanged, to the absolute interpreter path.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from torque_harness import (
    PELOG_PERMISSION_ERROR,
    USER_HOOKS,
    Job,
    JobUser,
    TorqueSite,
    ensure_job_user,
    pelog_permission_ok,
    site_root,
    stat_hook,
)

pytestmark = pytest.mark.needs("root", "useradd", "install")

REPO = Path(__file__).resolve().parents[2]
SHIMS = ("prologue", "prologue.parallel", "epilogue", "epilogue.parallel", "epilogue.precancel")
INTERPRETER = "/opt/vm-wrapper/venv/bin/python3"
MARKER = "#%VMW-REQUEST-V1 "
ROOT_MODE, OWNER_MODE = 0o700, 0o755  # root-only hooks may be 0700; precancel runs as owner

RECORDER = """#!/bin/sh
for a in "$@"; do printf '%s\\0' "$a"; done > @REC@/$PBS_NODENUM.$$
exit 0
"""


def readme_mode(name: str) -> int:
    return OWNER_MODE if name in USER_HOOKS else ROOT_MODE


def install(src: Path, dst: Path, mode: int) -> None:
    """What the README tells admins to run for each shim."""
    cmd = ["install", "-o", "root", "-g", "root", "-m", f"{mode:04o}", str(src), str(dst)]
    subprocess.run(cmd, check=True)


def install_all(site: TorqueSite, src: Path, modes: dict[str, int] | None = None) -> None:
    for mom in site.moms:
        for name in SHIMS:
            mode = (modes or {}).get(name, readme_mode(name))
            install(src / name, mom.hook(name), mode)


@pytest.fixture(scope="module")
def user() -> JobUser:
    return ensure_job_user()


@pytest.fixture
def base() -> Iterator[Path]:
    with site_root() as path:
        yield path


@pytest.fixture
def workdir(base: Path, user: JobUser) -> Path:
    path = base / "work"
    path.mkdir()
    os.chown(path, user.uid, user.gid)
    return path


def check(path: Path, name: str, user: JobUser) -> bool:
    """pbs_mom's check, with a user hook stat'ed as the owner as pbs_mom does."""
    st = stat_hook(path, user if name in USER_HOOKS else None)
    return isinstance(st, os.stat_result) and pelog_permission_ok(st, user_hook=name in USER_HOOKS)


# ------------------------------------------------------------------ static shape


def test_every_shim_is_in_the_repo() -> None:
    assert sorted(p.name for p in (REPO / "mom_priv").iterdir()) == sorted(SHIMS)


@pytest.mark.parametrize("name", SHIMS)
def test_shim_is_valid_sh(name: str) -> None:
    proc = subprocess.run(
        ["sh", "-n", str(REPO / "mom_priv" / name)], capture_output=True, check=False
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name", SHIMS)
def test_shim_execs_the_absolute_isolated_interpreter_with_quoted_args(name: str) -> None:
    text = (REPO / "mom_priv" / name).read_text()
    assert text.startswith("#!/bin/sh\n")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if name == "prologue.parallel":  # the exec runs in a detached child (see the shim)
        assert lines[-1] == "exit 0" and "</dev/null >/dev/null 2>&1 &" in lines[-2]
        assert lines[0] == "setsid sh -c '"
        lines = [ln.strip() for ln in lines[:-2]]
    assert lines[-1].endswith(' "$@"'), "argv must be passed quoted, unchanged"
    assert shlex.split(lines[-1]) == [
        "exec",
        INTERPRETER,
        "-I",
        "-m",
        "vmwrapper",
        "hook",
        "torque",
        name,
        "$@",
    ]
    assert [ln for ln in lines if "exec" in ln] == [lines[-1]], "a single exec, at the end"


# ------------------------------------------------------------------ permissions


@pytest.mark.parametrize("name", SHIMS)
def test_shim_installed_as_documented_passes_the_check(
    base: Path, user: JobUser, name: str
) -> None:
    site = TorqueSite(base / "pbs")
    dst = site.moms[0].hook(name)
    install(REPO / "mom_priv" / name, dst, readme_mode(name))
    assert check(dst, name, user)
    install(REPO / "mom_priv" / name, dst, OWNER_MODE)
    assert check(dst, name, user), "0755 is fine for every hook"


@pytest.mark.parametrize("name", SHIMS)
def test_shim_with_bad_mode_or_owner_fails_the_check(base: Path, user: JobUser, name: str) -> None:
    site = TorqueSite(base / "pbs")
    dst = site.moms[0].hook(name)
    install(REPO / "mom_priv" / name, dst, 0o777)
    assert not check(dst, name, user)
    install(REPO / "mom_priv" / name, dst, OWNER_MODE)
    os.chown(dst, user.uid, user.gid)
    assert not check(dst, name, user)


def test_precancel_installed_0700_is_refused(base: Path, user: JobUser) -> None:
    """epilogue.precancel runs as the owner: 0700 fails, so the README must say 0755."""
    site = TorqueSite(base / "pbs")
    dst = site.moms[0].hook("epilogue.precancel")
    install(REPO / "mom_priv" / "epilogue.precancel", dst, ROOT_MODE)
    assert not check(dst, "epilogue.precancel", user)


def test_installed_shims_run_a_job_without_a_vm_request(
    base: Path, user: JobUser, workdir: Path
) -> None:
    """The real shims, end to end: a job without the marker costs one grep on each hook."""
    site = TorqueSite(base / "pbs", 2)
    install_all(site, REPO / "mom_priv")
    job = Job(
        user=user,
        script="#!/bin/sh\nsleep 30\n",
        workdir=workdir,
        nodes=2,
        payload=["/bin/sleep", "30"],
    )
    out = site.run(job, max_starts=1, qdel_after=0.5)
    assert (out.state, out.exit_status) == ("completed", 271)
    ran = {(h.node, h.hook): h.rc for h in out.hooks() if h.ran}
    assert ran == {
        ("n1", "prologue.parallel"): 0,
        ("n0", "prologue"): 0,
        ("n0", "epilogue.precancel"): 0,
        ("n1", "epilogue.parallel"): 0,
        ("n0", "epilogue"): 0,
    }


def test_installed_shim_with_mode_0777_requeues_the_job(
    base: Path, user: JobUser, workdir: Path
) -> None:
    site = TorqueSite(base / "pbs")
    install_all(site, REPO / "mom_priv", {"prologue": 0o777})
    out = site.run(Job(user=user, script="true\n", workdir=workdir), max_starts=2)
    assert (out.state, out.start_count) == ("requeued", 2)
    assert {h.rc for h in out.hooks("prologue")} == {PELOG_PERMISSION_ERROR}


# ------------------------------------------------------------- argv pass-through


@pytest.fixture
def recording_shims(base: Path) -> Path:
    """Copies of the shims whose interpreter is a recorder of its argv (NUL-separated)."""
    rec, bindir, shims = base / "rec", base / "bin", base / "shims"
    for path in (rec, bindir, shims):
        path.mkdir(mode=0o755)
    rec.chmod(0o1777)
    recorder = bindir / "python3"
    recorder.write_text(RECORDER.replace("@REC@", str(rec)))
    recorder.chmod(0o755)
    for name in SHIMS:
        text = (REPO / "mom_priv" / name).read_text()
        assert INTERPRETER in text
        (shims / name).write_text(text.replace(INTERPRETER, str(recorder)))
        (shims / name).chmod(0o755)
    return shims


def recorded(base: Path) -> dict[str, list[list[str]]]:
    """event -> the argv lists the recorder got for it."""
    out: dict[str, list[list[str]]] = {}
    for path in (base / "rec").iterdir():
        args = path.read_bytes().decode().split("\0")[:-1]
        out.setdefault(args[5], []).append(args)
    return out


def vm_job(user: JobUser, workdir: Path, **kw: object) -> Job:
    """A VM job as the qsub wrapper submits it: the marked line in the script (the mother
    superior's .SC) and the request variable (what a sister's .JB carries)."""
    script = f"#!/bin/sh\n{MARKER}e30=\n#PBS -N glob*?\necho hi\n"
    variables = {"VMW_REQUEST_V1": "e30="}
    return Job(user=user, script=script, workdir=workdir, name="glob*?", nodes=2,
               variables=variables, **kw)  # type: ignore[arg-type]  # fmt: skip


def wait_recorded(
    base: Path, names: tuple[str, ...], seconds: float = 10
) -> dict[str, list[list[str]]]:
    """prologue.parallel execs the interpreter in a detached child: it records later."""
    deadline = time.monotonic() + seconds
    while True:
        got = recorded(base)
        if all(name in got for name in names) or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def test_root_shims_pass_argv_through_unchanged(
    base: Path, user: JobUser, workdir: Path, recording_shims: Path
) -> None:
    site = TorqueSite(base / "pbs", 2)
    install_all(site, recording_shims)
    out = site.run(vm_job(user, workdir, payload=["/bin/true"]), max_starts=1)
    assert out.state == "completed"
    names = ("prologue", "prologue.parallel", "epilogue", "epilogue.parallel")
    got = wait_recorded(base, names)
    for name in names:
        (hook,) = out.hooks(name)
        assert got[name] == [["-I", "-m", "vmwrapper", "hook", "torque", name, *hook.argv[1:]]]
        assert hook.argv[7 if name.startswith("prologue") else 9] == "", "empty account kept"


def test_precancel_shim_passes_argv_through_unchanged(
    base: Path, user: JobUser, workdir: Path, recording_shims: Path
) -> None:
    """Run directly as root with a readable script: "$@" reaches the interpreter as is."""
    script = base / "job.SC"
    script.write_text(f"{MARKER}x\n")
    argv = ["9.vm", user.name, user.group, "glob*?", "123", "nodes=1", "", "batch", "", "0"]
    env = {"PATH": "/bin:/usr/bin", "PBS_NODENUM": "0"}
    proc = subprocess.run(
        [str(recording_shims / "epilogue.precancel"), *argv, str(script)], env=env, check=False
    )
    assert proc.returncode == 0
    want = ["-I", "-m", "vmwrapper", "hook", "torque", "epilogue.precancel", *argv, str(script)]
    assert recorded(base) == {"epilogue.precancel": [want]}


def test_precancel_shim_reaches_the_hook_on_qdel(
    base: Path, user: JobUser, workdir: Path, recording_shims: Path
) -> None:
    site = TorqueSite(base / "pbs", 2)
    install_all(site, recording_shims)
    out = site.run(vm_job(user, workdir, payload=["/bin/sleep", "30"]), qdel_after=0.5)
    assert out.last.precancel is not None and out.last.precancel.ran
    (hook,) = out.hooks("epilogue.precancel")
    want = ["-I", "-m", "vmwrapper", "hook", "torque", "epilogue.precancel", *hook.argv[1:]]
    assert recorded(base).get("epilogue.precancel") == [want]
