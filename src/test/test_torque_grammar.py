"""Torque 6.1 qsub grammar: argv, #PBS directives, resource raising (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmwrapper.batch import torque

# Torque 6.1's getopt string (src/cmds/qsub_functions.c, non-PBS_NO_POSIX_VIOLATION build).
TORQUE_61_GETOPT = "a:A:b:c:C:d:D:e:EfF:hi:Ij:J:k:K:l:L:m:M:nN:o:p:P:q:r:S:t:T:u:v:Vw:W:Xxz-:"


def test_option_tables_match_torque_getopt_string() -> None:
    letters = [c for c in TORQUE_61_GETOPT if c != ":"]
    takes = {c for i, c in enumerate(TORQUE_61_GETOPT[:-1]) if TORQUE_61_GETOPT[i + 1] == ":"}
    assert set(torque.WITH_VALUE) == takes - {"-"}
    assert set(torque.FLAGS) == set(letters) - takes
    assert not torque.FLAGS & torque.WITH_VALUE


def opts(args: list[str]) -> list[tuple[str, str | None]]:
    return torque.parse_argv(args).options()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-l", "nodes=2"], [("l", "nodes=2")]),
        (["-lnodes=2"], [("l", "nodes=2")]),
        (["-hz"], [("h", None), ("z", None)]),
        (["-hlnodes=1"], [("h", None), ("l", "nodes=1")]),
        (["-hl", "nodes=1"], [("h", None), ("l", "nodes=1")]),
        (["-N", "-vm"], [("N", "-vm")]),  # an option's value is never an option
        (["--version"], [("-", "version")]),
        (["-F", "a b c"], [("F", "a b c")]),
    ],
)
def test_options_separate_attached_and_bundled(
    args: list[str], expected: list[tuple[str, str | None]]
) -> None:
    parsed = torque.parse_argv(args)
    assert parsed.options() == expected
    assert parsed.problems == []


def test_script_is_first_operand_and_options_after_it_still_count() -> None:
    parsed = torque.parse_argv(["-N", "x", "job.sh", "-q", "short"])
    assert parsed.script() == "job.sh"
    assert parsed.options() == [("N", "x"), ("q", "short")]


def test_posixly_correct_stops_options_at_the_script() -> None:
    parsed = torque.parse_argv(["job.sh", "-q", "short"], permute=False)
    assert parsed.operands() == ["job.sh", "-q", "short"]
    assert parsed.options() == []


def test_double_dash_ends_options() -> None:
    parsed = torque.parse_argv(["-q", "a", "--", "-vm", "job.sh"])
    assert parsed.operands() == ["-vm", "job.sh"]
    assert not parsed.has(torque.VM)
    assert [i.kind for i in parsed.items] == [torque.OPTIONS, torque.END, "operand", "operand"]


@pytest.mark.parametrize("args", [[], ["-q", "x"], ["-"], ["-q", "x", "-"]])
def test_no_script_or_dash_means_stdin(args: list[str]) -> None:
    assert torque.parse_argv(args).script() is None


def test_vm_option_and_dry_run_are_ours() -> None:
    parsed = torque.parse_argv(["-vm", "img=a", "--vm-dry-run", "-vm", "vcpus=2", "j.sh"])
    assert parsed.vm_values() == ["img=a", "vcpus=2"]
    assert parsed.has(torque.DRY_RUN)
    assert parsed.options() == []
    assert parsed.script() == "j.sh"


def test_items_cover_argv_words_exactly() -> None:
    args = ["-hlnodes=1", "-N", "x", "-vm", "img=a", "job.sh", "-q", "b"]
    parsed = torque.parse_argv(args)
    spans = [(i.start, i.stop) for i in parsed.items]
    assert spans == [(0, 1), (1, 3), (3, 5), (5, 6), (6, 8)]


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["-N"], "qsub option -N needs a value"),
        (["-vm"], "-vm needs a value"),
        (["-Q"], "unknown qsub option -Q"),
    ],
)
def test_grammar_problems(args: list[str], problem: str) -> None:
    problems = torque.parse_argv(args).problems
    assert len(problems) == 1 and problems[0].startswith(problem)


@given(st.lists(st.text(max_size=12), max_size=12))
def test_parse_argv_never_raises_and_covers_every_word(args: list[str]) -> None:
    parsed = torque.parse_argv(args)
    covered = [n for item in parsed.items for n in range(item.start, item.stop)]
    assert covered == list(range(len(args)))


# -- directives --------------------------------------------------------------------------


def directives(text: str, prefix: str = "#PBS") -> list[list[str]]:
    found, problems = torque.find_directives(text.split("\n"), prefix)
    assert problems == []
    return [d.words for d in found]


def test_directives_stop_at_the_first_command() -> None:
    script = "#!/bin/bash\n\n# comment\n#PBS -N a\n  #PBS -q b\nexport X=1\n#PBS -N late\n"
    assert directives(script) == [["-N", "a"], ["-q", "b"]]


def test_colon_lines_are_not_commands_but_indented_ones_are() -> None:
    assert directives(": ${X:=1}\n#PBS -N a\n") == [["-N", "a"]]
    assert directives("  : x\n#PBS -N a\n") == []


def test_directive_words_split_like_torque_make_argv() -> None:
    assert directives("#PBS -N \"my job\" -v A='x y',B=\\$z\n") == [
        ["-N", "my job", "-v", "A=x y,B=$z"]
    ]


def test_continuation_lines_join() -> None:
    found, _ = torque.find_directives(["#PBS -l nodes=1 \\", "  -N joined", "echo"], "#PBS")
    assert [(d.first, d.last, d.words) for d in found] == [
        (0, 1, ["-l", "nodes=1", "-N", "joined"])
    ]


def test_custom_and_empty_prefix() -> None:
    script = "#MY -N a\n#PBS -N b\n"
    assert directives(script, "#MY") == [["-N", "a"]]
    assert directives(script, "") == []


def test_prefix_as_getopt_reads_it() -> None:
    assert torque.directive_prefix(torque.parse_argv(["-C", "#X"])) == "#X"
    assert torque.directive_prefix(torque.parse_argv(["-C#X"])) == "#X"
    assert torque.directive_prefix(torque.parse_argv([])) == "#PBS"  # PBS_DPREFIX: ignored


@pytest.mark.parametrize(
    ("args", "script", "prefix"),
    [  # observed with the real Torque 6.1 qsub (the file read decides its directive errors)
        (["-q", "b", "a.sh"], 2, "#PBS"),
        (["--", "b.sh"], None, "#PBS"),  # reads stdin
        (["-hN", "name", "a.sh"], 1, "#PBS"),  # reads the file 'name'
        (["-C", "#X", "c.sh"], 2, "#X"),
        (["c.sh", "-C", "#X"], 0, "#PBS"),  # -C after the script: not for its directives
        (["-C#X", "c.sh"], 1, "c.sh"),
        (["-hC", "#X", "c.sh"], 1, "#PBS"),  # 'script file #X cannot be loaded'
        (["-N", "-C", "x.sh"], 2, "#PBS"),
        (["-", "job.sh"], None, "#PBS"),
        (["-lnodes=1", "-I"], None, "#PBS"),
    ],
)
def test_prescan_is_torques_find_job_script_index(
    args: list[str], script: int | None, prefix: str
) -> None:
    assert torque.prescan(args) == (script, prefix)


def test_view_problems_name_what_qsub_would_read() -> None:
    assert torque.view_problems(["-q", "b", "a.sh"], "a.sh", "#PBS") == []
    assert torque.view_problems(["--", "b.sh"], "b.sh", "#PBS") == [
        "qsub would read the job script from stdin; write bundled options apart "
        "(-h -N x, not -hN x), and no -- before the script"
    ]
    assert torque.view_problems(["c.sh", "-C", "#X"], "c.sh", "#X") == [
        "qsub would read directives with prefix '#PBS', not '#X'; give -C PREFIX as two "
        "words before the job script"
    ]


def test_unmatched_quote_is_a_problem_with_its_line() -> None:
    _, problems = torque.find_directives(["#!/bin/sh", '#PBS -N "x'], "#PBS")
    assert problems == ['script line 2: unmatched " in directive']


def test_vm_directives_found_and_removed_from_kept_lines() -> None:
    lines = ["#!/bin/sh", "#PBS -N a", "#PBS -vm img=x", "#PBS -q b -vm vcpus=2", "echo"]
    found, _ = torque.find_directives(lines, "#PBS")
    assert [d.parsed.vm_values() for d in found] == [[], ["img=x"], ["vcpus=2"]]
    assert torque.kept_directive_lines(found, lines, "#PBS") == ["#PBS -N a", "#PBS -q b"]


@given(st.lists(st.text(min_size=0, max_size=10), max_size=6))
def test_quote_word_round_trips_through_split_words(words: list[str]) -> None:
    words = [w.replace("\x00", "") for w in words]
    line = " ".join(torque.quote_word(w) for w in words)
    assert torque.split_words(line) == (words, "")


# -- resources ---------------------------------------------------------------------------


def test_merge_resources_later_wins() -> None:
    merged = torque.merge_resources(["nodes=1,walltime=1:00:00", "nodes=2:ppn=4"])
    assert merged == {"nodes": "2:ppn=4", "walltime": "1:00:00"}


@pytest.mark.parametrize(
    ("spec", "ppn", "expected"),
    [
        ("1", 3, ("1:ppn=3", 1)),
        ("2", 1, ("2", 2)),
        ("2:ppn=8", 3, ("2:ppn=8", 2)),
        ("2:ppn=2:gpus=1", 3, ("2:ppn=3:gpus=1", 2)),
        ("2:ppn=4+node05:ppn=1", 4, ("2:ppn=4+node05:ppn=4", 3)),
        ("node01+node02", 2, ("node01:ppn=2+node02:ppn=2", 2)),
        ("2#excl", 2, ("2:ppn=2#excl", 2)),
    ],
)
def test_raise_nodes(spec: str, ppn: int, expected: tuple[str, int]) -> None:
    assert torque.raise_nodes(spec, ppn) == expected


@pytest.mark.parametrize("spec", ["", "2:ppn=", "2:ppn=x", "+1", "1:ppn=1:ppn=2"])
def test_raise_nodes_refuses_what_it_cannot_read(spec: str) -> None:
    assert torque.raise_nodes(spec, 2) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512mb", 512 * 1024**2),
        ("4gb", 4 * 1024**3),
        ("4G", 4 * 1024**3),
        ("2048kb", 2 * 1024**2),
        ("100", 100),
        ("100b", 100),
        ("2w", 16),
        ("1kw", 8192),
        ("x", None),
        ("gb", None),
        ("", None),
    ],
)
def test_size_bytes(text: str, expected: int | None) -> None:
    assert torque.size_bytes(text) == expected


def test_raise_resources_adds_nodes_and_mem_when_absent() -> None:
    result = torque.raise_resources({"walltime": "1:00:00"}, cores=3, node_ram_mb=2304)
    assert result.changes == [("nodes", None, "1:ppn=3"), ("mem", None, "2304mb")]
    assert result.option_value() == "nodes=1:ppn=3,mem=2304mb"


def test_raise_resources_counts_every_node_for_mem() -> None:
    result = torque.raise_resources({"nodes": "2:ppn=4+1", "mem": "1gb"}, 4, 1000)
    assert result.nodes == 3
    assert result.option_value() == "nodes=2:ppn=4+1:ppn=4,mem=3000mb"


def test_raise_resources_changes_nothing_when_enough() -> None:
    result = torque.raise_resources({"nodes": "1:ppn=8", "mem": "64gb"}, 3, 4096)
    assert result.changes == [] and result.option_value() == "" and result.problems == []


def test_raise_resources_reports_unreadable_values() -> None:
    assert torque.raise_resources({"nodes": "1:ppn=x"}, 2, 10).problems[0].startswith("-l nodes=")
    assert torque.raise_resources({"mem": "lots"}, 2, 10).problems[0].startswith("-l mem=lots")


def test_whole_node_problems() -> None:
    problems = torque.whole_node_problems({"procs": "4", "nodes": "1"}, ["L", "l"])
    assert [p.split(":")[0] for p in problems] == ["-l procs=4", "-L"]


# -- what Torque would read otherwise in a -vm directive ----------------------------------


@pytest.mark.parametrize("char", ["\r", "\v", "\f", "\x1c", "\x7f", "\x85"])
def test_control_character_in_a_vm_directive_is_a_problem(char: str) -> None:
    lines = ["#!/bin/sh", f"#PBS -vm img=a{char},vcpus=999", "echo"]
    found, problems = torque.find_directives(lines, "#PBS")
    assert problems == [
        f"script line 2: control character {char!r} in {'img=a' + char + ',vcpus=999'!r}; "
        "a -vm directive takes plain text"
    ]
    assert found[0].parsed.has(torque.VM)


def test_stray_word_and_nul_in_directives_are_problems() -> None:
    _, problems = torque.find_directives(["#PBS -vm img=a ,vcpus=999", "echo"], "#PBS")
    assert problems == [
        "script line 1: stray word ',vcpus=999' in a -vm directive (no blanks in -vm values)"
    ]
    _, problems = torque.find_directives(["#PBS -N a\0 -l nodes=9", "#PBS -vm img=a"], "#PBS")
    assert problems == [
        "script line 1: a NUL byte in a directive (Torque reads the line only up to it)"
    ]
    _, problems = torque.find_directives(["#PBS -N a\rb -q c"], "#PBS")  # no -vm: as Torque
    assert problems == []


# -- our options in every spelling, and what must never become a host job -------------------


@pytest.mark.parametrize(
    "args", [["-vm", "img=a"], ["-vm=img=a"], ["--vm", "img=a"], ["--vm=img=a"]]
)
def test_vm_option_spellings(args: list[str]) -> None:
    parsed = torque.parse_argv([*args, "job.sh"])
    assert parsed.vm_values() == ["img=a"] and parsed.problems == []
    assert parsed.options() == [] and parsed.script() == "job.sh"


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["-VM", "vcpus=2"], "'-VM': options are case-sensitive; write -vm key=value"),
        (["-Vm", "vcpus=2"], "'-Vm': options are case-sensitive"),
        (["-vM=vcpus=2"], "'-vM=vcpus=2': options are case-sensitive"),
        (["--VM", "vcpus=2"], "unknown option '--VM': ours are -vm key=value[,...] and"),
        (["--vm-dryrun"], "unknown option '--vm-dryrun'"),
        (["--vm-dry-run=yes"], "unknown option '--vm-dry-run=yes'"),
        (["-vm="], "-vm needs a value"),
        (["--vm", ""], "--vm needs a value"),
    ],
)
def test_misspelt_vm_options_are_problems_not_torque_options(args: list[str], problem: str) -> None:
    parsed = torque.parse_argv([*args, "job.sh"])
    assert len(parsed.problems) == 1 and parsed.problems[0].startswith(problem)
    assert parsed.ours() & {torque.VM, torque.BAD_VM} and parsed.script() == "job.sh"


@pytest.mark.parametrize(
    ("args", "options"),
    [
        (["-VM", "alice@host"], [("V", None), ("M", "alice@host")]),
        (["-Vm", "abe"], [("V", None), ("m", "abe")]),
        (["-vM", "-lnodes=1"], [("v", "M"), ("l", "nodes=1")]),
        (["-vMY=1"], [("v", "MY=1")]),
    ],
)
def test_torque_options_that_look_like_vm_stay_torque_options(
    args: list[str], options: list[tuple[str, str | None]]
) -> None:
    parsed = torque.parse_argv(args)
    assert parsed.options() == options and parsed.problems == [] and not parsed.ours()


def test_dry_run_directive_found_and_removed_from_kept_lines() -> None:
    lines = ["#!/bin/sh", "#PBS --vm-dry-run", "#PBS -N a --vm-dry-run -vm=img=x", "echo"]
    found, problems = torque.find_directives(lines, "#PBS")
    assert problems == [] and [d.parsed.ours() for d in found] == [
        {torque.DRY_RUN},
        {torque.DRY_RUN, torque.VM},
    ]
    assert torque.kept_directive_lines(found, lines, "#PBS") == ["#PBS -N a"]
