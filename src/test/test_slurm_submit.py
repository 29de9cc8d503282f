"""sbatch's grammar (batch/slurm_submit.py): argv, #SBATCH directives, resources.

The option table is checked against the installed sbatch itself: getopt_long tells which
options need, refuse or optionally take a value, so a wrong entry cannot go unnoticed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmwrapper.batch import slurm_submit as slurm

NS = ["ip", "netns", "exec", "vmw"]


def opts(args: list[str]) -> list[tuple[str, str | None]]:
    parsed = slurm.parse_argv(args)
    assert parsed.problems == [], parsed.problems
    return parsed.options()


# -- argv ----------------------------------------------------------------------------------


def test_values_attached_separate_and_bundled() -> None:
    args = ["-N2", "-n", "4", "--mem=4G", "--time", "10", "-vHc3", "-J", "-x", "job.sh"]
    assert opts(args) == [
        ("nodes", "2"), ("ntasks", "4"), ("mem", "4G"), ("time", "10"),
        ("verbose", None), ("hold", None), ("cpus-per-task", "3"), ("job-name", "-x"),
    ]  # fmt: skip
    assert slurm.parse_argv(args).script() == "job.sh"


def test_optional_values_only_attached() -> None:
    assert opts(["--exclusive", "job.sh"]) == [("exclusive", None)]
    assert opts(["--exclusive=user", "-k", "-kx", "job.sh"]) == [
        ("exclusive", "user"), ("no-kill", None), ("no-kill", "x"),
    ]  # fmt: skip
    assert slurm.parse_argv(["--exclusive", "job.sh"]).script() == "job.sh"


def test_unique_prefixes_and_aliases() -> None:
    assert opts(["--ntasks-per-n=2", "--tasks-per-node", "3", "--exclus"]) == [
        ("ntasks-per-node", "2"), ("ntasks-per-node", "3"), ("exclusive", None),
    ]  # fmt: skip
    problems = slurm.parse_argv(["--excl", "--bogus", "-Y", "--hold=1", "--mem"]).problems
    assert problems == [
        "sbatch option --excl is ambiguous (exclude, exclusive...)",
        "unknown sbatch option --bogus",
        "unknown sbatch option -Y (in '-Y')",
        "sbatch option --hold takes no value",
        "sbatch option --mem needs a value",
    ]


def test_options_stop_at_the_script() -> None:
    parsed = slurm.parse_argv(["-N1", "job.sh", "--vm", "img=x", "-N3"])
    assert parsed.script() == "job.sh" and parsed.script_args() == ["--vm", "img=x", "-N3"]
    assert not parsed.has(slurm.VM) and parsed.options() == [("nodes", "1")]
    parsed = slurm.parse_argv(["--", "-odd-name", "a"])
    assert (parsed.script(), parsed.script_args()) == ("-odd-name", ["a"])
    assert slurm.parse_argv(["-N1"]).script() is None  # stdin


def test_our_options_in_every_spelling() -> None:
    parsed = slurm.parse_argv(["--vm", "vcpus=1", "-vm", "ram=1G", "--vm=img=a", "--vm-dry-run"])
    assert parsed.vm_values() == ["vcpus=1", "ram=1G", "img=a"] and parsed.has(slurm.DRY_RUN)
    assert slurm.parse_argv(["--vm"]).problems == [
        "--vm needs a value: --vm key=value[,key=value...]"
    ]
    assert slurm.parse_argv(["-J", "--vm", "job.sh"]).vm_values() == []  # -J's value
    assert slurm.parse_argv(["-N1", ":", "-N2", "j"]).has(slurm.HETSEP)


@pytest.mark.needs("sbatch")
def test_option_table_matches_the_installed_sbatch() -> None:
    """getopt_long's own verdict for every long and short option we list."""

    def said(*args: str) -> str:
        argv = [*NS, "sbatch", "--test-only", *args]
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=30, check=False)  # fmt: skip
        return done.stderr

    for name, kind in slurm.LONG.items():
        if name in ("help", "usage", "version"):
            continue
        assert ("requires an argument" in said(f"--{name}")) == (kind == slurm.REQUIRED), name
        assert ("allow an argument" in said(f"--{name}=1")) == (kind == slurm.NONE), name
    for letter, name in slurm.SHORT.items():
        if name not in ("help", "version"):
            needs = "requires an argument" in said(f"-{letter}")
            assert needs == (slurm.LONG[name] == slurm.REQUIRED), letter
    assert "unrecognized option" in said("--vm-not-sbatch")


# -- directives ----------------------------------------------------------------------------


def directives(text: str) -> slurm.Directives:
    return slurm.find_directives(text.split("\n"))


def test_directives_column_zero_up_to_the_first_command() -> None:
    found = directives(
        "#!/bin/sh\n#SBATCH -N2 # two nodes\n  #SBATCH -n9\n\n# note\n#SLURM -t 5\n"
        '#PBS -q x\n#SBATCH -J \'a b\' --comment="x\\"y"\necho\n#SBATCH -p late\n'
    )
    assert found.words == ["-N2", "-t", "5", "-J", "a b", '--comment=x"y']
    assert found.lines == [1, 5, 6, 7] and found.problems == []
    assert found.parsed.options()[-1] == ("comment", 'x"y')


def test_directive_problems_name_the_line() -> None:
    assert directives("#!/bin/sh\n#SBATCH -J 'open\n").problems == [
        "script line 2: unmatched ' in directive"
    ]
    assert directives("#!/bin/sh\n#SBATCH -N1 stray\n").problems == [
        "script line 2: 'stray' is not an option"
    ]
    assert directives("#!/bin/sh\n#SBATCH -N1\n#SBATCH hetjob\n#SBATCH -N2\n").het


def test_escaped_blank_ends_a_word_as_in_sbatch() -> None:
    # get_argument() tests for a blank before it looks at the escape
    assert slurm.split_words("a\\ b c") == (["a", "b", "c"], "")
    assert slurm.split_words('--x="" -y') == (["--x=", "-y"], "")
    assert slurm.split_words("-N1 hetjob -n2") == (["-N1", "-n2"], "")  # blanked by sbatch
    assert slurm.split_words('"" -y') == ([], "")  # an empty word ends the line


@given(st.lists(st.text(min_size=1, max_size=12).filter(lambda w: "\n" not in w), max_size=6))
def test_quoted_words_read_back(words: list[str]) -> None:
    text = " ".join(slurm.quote_word(word) for word in words)
    assert slurm.split_words(text) == (words, "")


def test_vm_words_leave_the_kept_lines() -> None:
    lines = ["#!/bin/sh", "#SBATCH --vm img=a -N2", "#SBATCH -vm", "#SBATCH vcpus=2",
             "#PBS -q x", "#SBATCH -t 5", ""]  # fmt: skip
    kept, problems = slurm.kept_directive_lines(lines, slurm.find_directives(lines))
    assert (kept, problems) == (["#SBATCH -N2", "#PBS -q x", "#SBATCH -t 5"], [])
    lines = ["#!/bin/sh", "#SBATCH --vm=img=a -J 'x y#'"]
    kept, _ = slurm.kept_directive_lines(lines, slurm.find_directives(lines))
    assert kept == ['#SBATCH -J "x y#"']
    torque = ["#!/bin/sh", "#PBS -vm img=a", ""]
    assert slurm.torque_vm_lines(torque, slurm.find_directives(torque)) == [1]


# -- resources -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "mb"),
    [("512", 512), ("4G", 4096), ("4gb", 4096), ("2048k", 2), ("1025K", 2), ("1t", 1048576),
     ("0", 0), ("4x", None), ("G", None), ("-1", None), ("1.5G", None)],
)  # fmt: skip
def test_sizes_as_sbatch_reads_them(text: str, mb: int | None) -> None:
    assert slurm.size_mb(text) == mb


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], ["--cpus-per-task=3", "--mem=2304M"]),
        (["-c", "1", "--mem=1G"], ["--cpus-per-task=3", "--mem=2304M"]),
        (["--ntasks-per-node=2"], ["--ntasks-per-node=3", "--mem=2304M"]),
        (["--ntasks-per-node=2", "-c2", "--mem=0"], []),  # 4 CPUs; 0: all of a node's memory
        (["-n4", "--ntasks-per-node=2"], ["--cpus-per-task=3", "--mem=2304M"]),  # a maximum
        (["--mem-per-cpu=512"], ["--cpus-per-task=3", "--mem-per-cpu=768M"]),
        (["--mem=8G", "-c4"], []),
    ],
)
def test_raise_resources(args: list[str], expected: list[str]) -> None:
    options = opts(args)
    memory = slurm.memory_option([], [], options)
    result = slurm.raise_resources(options, cores=3, node_mb=2304, memory=memory)
    assert result.problems == [] and result.argv() == expected


def test_memory_option_as_sbatch_resolves_it() -> None:
    mem, per_cpu = [("mem", "1G")], [("mem-per-cpu", "1G")]
    assert slurm.memory_option([], [], []) == "mem"
    assert slurm.memory_option(mem, per_cpu, []) == "mem"  # the script beats SBATCH_*
    assert slurm.memory_option([], per_cpu, []) == "mem-per-cpu"
    assert slurm.memory_option(mem, per_cpu, per_cpu) == "mem"  # both set: sbatch refuses
    assert slurm.memory_option(per_cpu, mem, []) == "mem-per-cpu"
    assert slurm.memory_option(mem, mem, []) == "mem"


def test_resources_we_cannot_size_by() -> None:
    result = slurm.raise_resources(opts(["-c", "x", "--mem=lots"]), cores=2, node_mb=100)
    assert result.problems == [
        "--cpus-per-task=x: not a positive whole number",
        "--mem=lots: not a size sbatch reads (e.g. 4G, 512M)",
    ]
    assert slurm.vm_problems([], "mem-per-gpu") == [
        "--mem-per-gpu: VM jobs size nodes by --mem; drop --mem-per-gpu"
    ]


# -- the script ----------------------------------------------------------------------------


def test_script_found_as_sbatch_finds_it(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "job").write_text("")
    (tmp_path / "dir").mkdir()

    def exists(path: str) -> bool:
        return Path(path).is_file()

    cwd, path = str(tmp_path), f"/nonexistent:{tmp_path}/bin"
    assert slurm.resolve_script("job", cwd, path, exists) == f"{tmp_path}/bin/job"
    (tmp_path / "job").write_text("")
    assert slurm.resolve_script("job", cwd, path, exists) == f"{tmp_path}/job"  # cwd first
    assert slurm.resolve_script("./none", cwd, path, exists) == "./none"
    assert slurm.resolve_script("dir", cwd, path, exists) == "dir"  # a directory is no script


def test_scripts_sbatch_refuses() -> None:
    assert slurm.script_problems(b"#!/bin/sh\necho\n") == []
    assert slurm.script_problems(b" \n\t") == ["job script is empty or only blanks"]
    assert "first line must be #!" in slurm.script_problems(b"echo\n")[0]
    assert "DOS line breaks" in slurm.script_problems(b"#!/bin/sh\r\necho\r\n")[0]
    assert slurm.wrap_script("hostname") == (
        b"#!/bin/sh\n# This script was created by sbatch --wrap.\n\nhostname\n"
    )


def test_control_character_in_a_vm_directive_is_one_problem() -> None:
    found = directives("#!/bin/sh\n#SBATCH --vm img=a\r,vcpus=9 -N1\n#SBATCH -J a\rb\necho\n")
    assert found.problems == [
        "script line 2: control character '\\r' in 'img=a\\r,vcpus=9'; "
        "a -vm directive takes plain text"
    ]  # and not also ",vcpus=9 is not an option"; -J a\rb has no --vm: sbatch reads it so


def test_misspelt_vm_options_are_problems() -> None:
    assert slurm.parse_argv(["-vm=img=a", "j.sh"]).vm_values() == ["img=a"]
    for args, problem in [
        (["-VM", "vcpus=2"], "'-VM': options are case-sensitive; write -vm key=value"),
        (["--VM", "vcpus=2"], "unknown option '--VM': ours are -vm"),
        (["--VM=vcpus=2"], "unknown option '--VM=vcpus=2'"),
        (["--vm-dry"], "unknown option '--vm-dry'"),
    ]:
        parsed = slurm.parse_argv([*args, "j.sh"])
        assert len(parsed.problems) == 1 and parsed.problems[0].startswith(problem)
        assert parsed.has(slurm.BAD_VM) and parsed.script() == "j.sh"
    parsed = slurm.parse_argv(["-VM", "cluster1", "j.sh"])  # sbatch's -V -M CLUSTERS
    assert parsed.options() == [("version", None), ("clusters", "cluster1")]
    assert not parsed.ours()


def test_dry_run_directive_is_ours_and_leaves_the_kept_lines() -> None:
    found = directives("#!/bin/sh\n#SBATCH --vm-dry-run -t 5\n#SBATCH --vm vcpus=1\necho\n")
    assert found.parsed.ours() == {slurm.DRY_RUN, slurm.VM}
    lines = ["#!/bin/sh", "#SBATCH --vm-dry-run -t 5"]
    assert slurm.kept_directive_lines(lines, slurm.find_directives(lines)) == (["#SBATCH -t 5"], [])
