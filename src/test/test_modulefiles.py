"""The vm-wrapper modulefiles, loaded by the real Environment Modules and the real Lmod.

Each test copies src/modules into a temporary tree (the path contains a space) with dummy
``src/scripts/qsub`` and ``sbatch``, then runs a fresh ``bash -c`` with an empty environment:
the module system's init file is sourced and the temporary tree is added with ``module use``.

Environment Modules comes from Debian's ``environment-modules`` package. Lmod conflicts with it
as a Debian package, so ``tools/install-module-systems`` unpacks Debian's lmod into /opt/lmod;
``VM_WRAPPER_LMOD_INIT`` may name another Lmod init file (for example Debian's own
/usr/share/lmod/lmod/init/bash on a machine where lmod is the installed package).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULES = REPO / "src" / "modules"
TCL = MODULES / "vm-wrapper" / "0.1.0"
LUA = MODULES / "vm-wrapper" / "0.1.0.lua"

EM_INIT = "/usr/share/modules/init/bash"
_LMOD_CANDIDATES = ("/opt/lmod/lmod/init/bash", "/usr/share/lmod/lmod/init/bash")
LMOD_INIT = os.environ.get("VM_WRAPPER_LMOD_INIT") or next(
    (p for p in _LMOD_CANDIDATES if Path(p).exists()), _LMOD_CANDIDATES[0]
)

# Variables the module systems keep for themselves; everything else a load changes is ours.
BOOKKEEPING = re.compile(r"LOADEDMODULES|_LMFILES_|__MODULES_\w+|__LMOD_\w+|_ModuleTable\w*|_")
# A PATH already in the normal form Lmod keeps (Lmod drops duplicates, empty entries and
# trailing slashes whenever it rewrites PATH, whatever the modulefile does).
BASE_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
MARK = "@@"


@dataclass(frozen=True)
class System:
    """A module system and which modulefile it should pick from the shipped pair."""

    name: str
    init: str
    tcl_only: bool  # remove the .lua file from the copy, to test the Tcl file under Lmod
    picks: str  # the file name _LMFILES_ should end with

    def dirname(self, name: str) -> str:
        """``name`` with its spaces, except where the module system cannot take them.

        Lmod 8.6 runs Tcl modulefiles through ``tcl2lua.tcl`` with ``eval main $argv``, so a
        Tcl modulefile whose path has a space fails there ("wrong # args"), whatever it says.
        """
        return name.replace(" ", "-") if self is LMOD_TCL else name


EM = System("environment-modules", EM_INIT, tcl_only=False, picks="0.1.0")
LMOD_LUA = System("lmod-lua", LMOD_INIT, tcl_only=False, picks="0.1.0.lua")
LMOD_TCL = System("lmod-tcl", LMOD_INIT, tcl_only=True, picks="0.1.0")

ALL = [
    pytest.param(EM, id=EM.name, marks=pytest.mark.needs("bash", EM_INIT)),
    pytest.param(LMOD_LUA, id=LMOD_LUA.name, marks=pytest.mark.needs("bash", LMOD_INIT)),
    pytest.param(LMOD_TCL, id=LMOD_TCL.name, marks=pytest.mark.needs("bash", LMOD_INIT)),
]
LMOD = [p for p in ALL if p.values[0] is not EM]

DUMMY = "#!/bin/sh\necho 'dummy {name} from {where}'\n"


@dataclass
class Run:
    rc: int
    out: str
    err: str
    values: dict[str, str]
    snaps: dict[str, dict[str, str]]


def make_tree(root: Path, system: System, *, scripts: bool = True) -> Path:
    """A vm-wrapper tree at ``root``: the repo's modulefiles plus dummy wrappers."""
    shutil.copytree(MODULES, root / "src" / "modules")
    if system.tcl_only:
        (root / "src" / "modules" / "vm-wrapper" / "0.1.0.lua").unlink()
    if scripts:
        write_commands(root / "src" / "scripts", "vm-wrapper")
    return root


def write_commands(bindir: Path, where: str) -> None:
    bindir.mkdir(parents=True)
    for name in ("qsub", "sbatch"):
        exe = bindir / name
        exe.write_text(DUMMY.format(name=name, where=where))
        exe.chmod(0o755)


@pytest.fixture
def batch_bin(tmp_path: Path) -> Path:
    """A stand-in for the real batch system's commands, on PATH before any load."""
    bindir = tmp_path / "batch system" / "bin"
    write_commands(bindir, "batch-system")
    return bindir


def run(
    system: System, tmp_path: Path, body: str, *, use: list[Path], path: str = BASE_PATH
) -> Run:
    """Run ``body`` in a fresh, empty-environment bash that has the module command."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    snapdir = tmp_path / "snaps"
    shutil.rmtree(snapdir, ignore_errors=True)
    snapdir.mkdir()
    prologue = (
        f"source {_q(system.init)} || exit 90\n"
        f'val() {{ printf "{MARK}%s=%s\\n" "$1" "$2"; }}\n'
        f'snap() {{ env -0 > {_q(str(snapdir))}/"$1"; }}\n'
    )
    prologue += "".join(f"module use {_q(str(d))} || exit 91\n" for d in use)
    env = {"PATH": path, "HOME": str(home), "LANG": "C.UTF-8", "TERM": "dumb"}
    proc = subprocess.run(
        ["/bin/bash", "--noprofile", "--norc", "-c", prologue + body],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode not in (90, 91), proc.stderr
    values = {}
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            key, _, value = line[len(MARK) :].partition("=")
            values[key] = value
    snaps = {f.name: _parse_env(f.read_bytes()) for f in snapdir.iterdir()}
    return Run(proc.returncode, proc.stdout, proc.stderr, values, snaps)


def _q(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _parse_env(raw: bytes) -> dict[str, str]:
    pairs = (item.decode().partition("=") for item in raw.split(b"\0") if item)
    return {key: value for key, _, value in pairs}


def _ours(snap: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in snap.items() if not BOOKKEEPING.fullmatch(k)}


def _changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    keys = before.keys() | after.keys()
    return {k for k in keys if before.get(k) != after.get(k)}


@pytest.mark.parametrize("system", ALL)
def test_load_puts_scripts_first_and_unload_restores(
    system: System, tmp_path: Path, batch_bin: Path
) -> None:
    root = make_tree(tmp_path / system.dirname("vm wrapper tree"), system)
    scripts = root / "src" / "scripts"
    start = f"{batch_bin}:{BASE_PATH}"
    r = run(
        system,
        tmp_path,
        'val qsub0 "$(command -v qsub)"; val path0 "$PATH"; snap before\n'
        'module load vm-wrapper; val load "$?"\n'
        'val qsub1 "$(command -v qsub)"; val sbatch1 "$(command -v sbatch)"\n'
        'val run1 "$(qsub)"; val path1 "$PATH"; val files "$_LMFILES_"; snap loaded\n'
        'module unload vm-wrapper; val unload "$?"\n'
        'val qsub2 "$(command -v qsub)"; val path2 "$PATH"; snap after\n',
        use=[root / "src" / "modules"],
        path=start,
    )
    v = r.values
    assert (v["load"], v["unload"]) == ("0", "0"), r.err
    assert v["qsub0"] == str(batch_bin / "qsub")
    # Load: exactly one entry, first, and it is the tree's src/scripts; nothing else.
    assert v["path0"] == start
    assert v["path1"] == f"{scripts}:{start}"
    assert v["qsub1"] == str(scripts / "qsub")
    assert v["sbatch1"] == str(scripts / "sbatch")
    assert v["run1"] == "dummy qsub from vm-wrapper"
    assert v["files"].endswith("/vm-wrapper/" + system.picks)
    before, loaded, after = r.snaps["before"], r.snaps["loaded"], r.snaps["after"]
    assert _changed(_ours(before), _ours(loaded)) == {"PATH", "VM_WRAPPER_HOME"}
    assert loaded["VM_WRAPPER_HOME"] == str(root)
    # Unload: PATH byte for byte, and none of our variables left behind.
    assert v["path2"] == v["path0"]
    assert v["qsub2"] == str(batch_bin / "qsub")
    assert _ours(after) == _ours(before)


@pytest.mark.parametrize("system", ALL)
def test_loading_twice_keeps_one_path_entry(system: System, tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree", system)
    r = run(
        system,
        tmp_path,
        'module load vm-wrapper; val a "$?"; val path1 "$PATH"\n'
        'module load vm-wrapper; val b "$?"; val path2 "$PATH"\n'
        'module load vm-wrapper/0.1.0; val c "$?"; val path3 "$PATH"\n'
        'val loaded "$LOADEDMODULES"\n'
        'module unload vm-wrapper; val path4 "$PATH"\n',
        use=[root / "src" / "modules"],
    )
    v = r.values
    assert (v["a"], v["b"], v["c"]) == ("0", "0", "0"), r.err
    scripts = str(root / "src" / "scripts")
    assert v["path1"] == f"{scripts}:{BASE_PATH}"
    assert v["path2"] == v["path1"]
    assert v["path3"] == v["path1"]
    assert v["path3"].split(":").count(scripts) == 1
    assert v["loaded"] == "vm-wrapper/0.1.0"
    assert v["path4"] == BASE_PATH


@pytest.mark.parametrize("system", ALL)
def test_only_one_vm_wrapper_at_a_time(system: System, tmp_path: Path) -> None:
    """Two trees, two versions: never both on PATH (Tcl conflict; Lmod swaps by name)."""
    tree_a = make_tree(tmp_path / "a", system)
    tree_b = make_tree(tmp_path / "b", system)
    mod_b = tree_b / "src" / "modules" / "vm-wrapper"
    for f in list(mod_b.iterdir()):
        f.rename(mod_b / f.name.replace("0.1.0", "0.2.0"))
    r = run(
        system,
        tmp_path,
        'module load vm-wrapper/0.1.0; val a "$?"\n'
        'module load vm-wrapper/0.2.0; val b "$?"\n'
        'val path "$PATH"; val loaded "$LOADEDMODULES"; val home "$VM_WRAPPER_HOME"\n',
        use=[tree_a / "src" / "modules", tree_b / "src" / "modules"],
    )
    v = r.values
    assert v["a"] == "0", r.err
    entries = v["path"].split(":")
    ours = [e for e in entries if e.endswith("/src/scripts")]
    assert len(ours) == 1, v["path"]
    assert v["loaded"].count("vm-wrapper/") == 1
    assert ours[0] == f"{v['home']}/src/scripts"
    assert entries[0] == ours[0]
    if system is EM:  # conflict: the second load is refused, the first stays
        assert v["b"] != "0"
        assert "conflict" in r.err
        assert v["home"] == str(tree_a)
    else:  # Lmod: one module per name, so it swaps
        assert v["b"] == "0", r.err
        assert (v["home"], v["loaded"]) == (str(tree_b), "vm-wrapper/0.2.0")


@pytest.mark.parametrize("system", ALL)
def test_avail_lists_vm_wrapper(system: System, tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree", system)
    r = run(system, tmp_path, "module -t avail 2>&1\n", use=[root / "src" / "modules"])
    listed = [line.strip() for line in r.out.splitlines()]
    assert r.rc == 0, r.err
    assert "vm-wrapper/0.1.0" in listed, r.out
    assert not any(".lua" in line for line in listed), r.out


@pytest.mark.needs("bash", EM_INIT)
def test_environment_modules_ignores_the_lua_file(tmp_path: Path) -> None:
    lua_only = make_tree(tmp_path / "lua only", EM)
    (lua_only / "src" / "modules" / "vm-wrapper" / "0.1.0").unlink()
    r = run(
        EM,
        tmp_path,
        'val avail "$(module -t avail vm-wrapper 2>&1)"\n'
        'module load vm-wrapper; val load "$?"; val path "$PATH"\n'
        'val home "${VM_WRAPPER_HOME-unset}"\n',
        use=[lua_only / "src" / "modules"],
    )
    v = r.values
    assert "vm-wrapper" not in v["avail"]
    assert v["load"] != "0"
    assert (v["path"], v["home"]) == (BASE_PATH, "unset")


@pytest.mark.needs("bash", LMOD_INIT)
def test_lmod_loads_the_lua_file_alone(tmp_path: Path) -> None:
    lua_only = make_tree(tmp_path / "lua only", LMOD_LUA)
    (lua_only / "src" / "modules" / "vm-wrapper" / "0.1.0").unlink()
    r = run(
        LMOD_LUA,
        tmp_path,
        'module load vm-wrapper; val load "$?"; val path "$PATH"; val files "$_LMFILES_"\n',
        use=[lua_only / "src" / "modules"],
    )
    v = r.values
    assert v["load"] == "0", r.err
    assert v["path"] == f"{lua_only}/src/scripts:{BASE_PATH}"
    assert v["files"] == str(lua_only / "src" / "modules" / "vm-wrapper" / "0.1.0.lua")


@pytest.mark.parametrize("system", ALL)
def test_help_and_whatis(system: System, tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree", system)
    r = run(
        system,
        tmp_path,
        'val help "$(module help vm-wrapper 2>&1 | tr "\\n" " ")"\n'
        'val whatis "$(module whatis vm-wrapper 2>&1 | tr "\\n" " ")"\n',
        use=[root / "src" / "modules"],
    )
    v = r.values
    assert "run HPC batch jobs inside virtual machines" in v["help"], v["help"]
    assert "Sets: PATH" in v["help"]
    assert re.search(r"vm-wrapper/0\.1\.0\s*: Name: vm-wrapper", v["whatis"]), v["whatis"]
    assert "Description: run HPC batch jobs inside VMs" in v["whatis"]


@pytest.mark.parametrize("system", ALL)
def test_broken_tree_refuses_to_load(system: System, tmp_path: Path) -> None:
    """Without src/scripts, qsub would silently be the real one: the load must fail."""
    root = make_tree(tmp_path / "broken", system, scripts=False)
    r = run(
        system,
        tmp_path,
        'module load vm-wrapper; val load "$?"; val path "$PATH"\n'
        'val home "${VM_WRAPPER_HOME-unset}"; val loaded "${LOADEDMODULES-}"\n',
        use=[root / "src" / "modules"],
    )
    v = r.values
    assert v["load"] != "0"
    assert f"{root}/src/scripts is missing" in " ".join(r.err.split())  # both wrap lines
    assert (v["path"], v["home"], v["loaded"]) == (BASE_PATH, "unset", "")


@pytest.mark.parametrize("system", ALL)
@pytest.mark.parametrize("link", ["file", "dir"])
def test_symlinked_modulefile_finds_the_real_tree(
    system: System, link: str, tmp_path: Path
) -> None:
    """A site may link the modulefile (or its directory) into its own module tree."""
    root = make_tree(tmp_path / "tree", system)
    real = root / "src" / "modules" / "vm-wrapper"
    site = tmp_path / system.dirname("site modules")
    site.mkdir()
    if link == "dir":
        (site / "vm-wrapper").symlink_to(real)
    else:
        (site / "vm-wrapper").mkdir()
        for f in real.iterdir():
            (site / "vm-wrapper" / f.name).symlink_to(f)
    r = run(
        system,
        tmp_path,
        'module load vm-wrapper; val load "$?"; val path "$PATH"; val home "$VM_WRAPPER_HOME"\n',
        use=[site],
    )
    v = r.values
    assert v["load"] == "0", r.err
    assert v["path"] == f"{root}/src/scripts:{BASE_PATH}"
    assert v["home"] == str(root)


@pytest.mark.parametrize("system", ALL)
def test_repo_modulefiles_point_at_the_repo(system: System, tmp_path: Path) -> None:
    """The files as committed, in place: show (which does not need src/scripts) names REPO."""
    modules = MODULES
    if system.tcl_only:
        modules = tmp_path / system.dirname("tcl only")
        (modules / "vm-wrapper").mkdir(parents=True)
        (modules / "vm-wrapper" / "0.1.0").symlink_to(TCL)
    r = run(system, tmp_path, "module show vm-wrapper 2>&1\n", use=[modules])
    shown = r.out
    assert r.rc == 0, r.err
    assert f"{modules}/vm-wrapper/{system.picks}" in shown
    assert re.search(rf"prepend[-_]path\W+PATH\W+{re.escape(str(REPO))}/src/scripts\b", shown)
    assert re.search(rf"setenv\W+VM_WRAPPER_HOME\W+{re.escape(str(REPO))}\W", shown), shown


def test_modulefiles_shape() -> None:
    """Cheap checks that need no module system."""
    tcl = TCL.read_text()
    lua = LUA.read_text()
    assert tcl.startswith("#%Module1.0\n")
    assert not lua.startswith("#%Module")  # so Environment Modules never reads it
    assert "$ModulesCurrentModulefile" in tcl
    assert "myFileName()" in lua
    assert re.search(r"^conflict vm-wrapper$", tcl, re.M)
    assert 'conflict("vm-wrapper")' in lua
    for text, cmd in ((tcl, "prepend-path"), (lua, "prepend_path")):
        assert re.findall(r"^\s*(\w+[-_]path)\W+(\w+)", text, re.M) == [(cmd, "PATH")]
        assert re.findall(r"^\s*setenv\W+(\w+)", text, re.M) == ["VM_WRAPPER_HOME"]
