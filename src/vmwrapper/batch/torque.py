"""Torque 6.1 qsub grammar: argv, ``#PBS`` directives and resource lists. Pure, no I/O.

Facts from Torque 6.1's ``src/cmds/qsub_functions.c`` (adaptivecomputing/torque):

- getopt string ``a:A:b:c:C:d:D:e:EfF:hi:Ij:J:k:K:l:L:m:M:nN:o:p:P:q:r:S:t:T:u:v:Vw:W:Xxz-:``,
  so flags bundle (``-hz``) and an option's value may be attached (``-lnodes=2``) or the next
  word. ``--word`` is option ``-`` with value ``word`` (``--version``); ``--`` ends options.
  glibc permutes, so options after the script still count, unless POSIXLY_CORRECT is set.
- Which file qsub reads, and with which directive prefix, is not getopt's business: a
  pre-scan (find_job_script_index) does it first, see ``prescan``. It takes ``-hN name``'s
  ``name`` for the script, reads stdin after ``--``, and sees ``-C`` only as two words
  before the script. Torque 6.1's qsub ignores PBS_DPREFIX (only xpbs reads it).
  Observed on the scratch build: ``qsub -- a.sh`` reads stdin, ``qsub -hN b a.sh`` reads b.
- Directives: a line whose first non-blank text starts with the prefix (``-C``, else
  ``#PBS``; an empty prefix turns directives off). A trailing backslash continues it. The
  rest is split like a shell would (quotes, backslash) and parsed as options. Scanning
  stops at the first executable line: not blank, not starting with ``#``, and not
  starting (column 0) with ``:`` or ``#!``.
- Command-line options win over directives; the last occurrence of an option wins; ``-l``
  lists merge, and a later value of the same resource wins.

``-vm`` is ours, not Torque's (Torque would read it as ``-v m``): the words ``-vm`` and
``--vm`` take the next word as their value, ``-vm=VALUE`` and ``--vm=VALUE`` the rest of
the word, on the command line and in directives (Torque refuses every ``--vm...``, and
``-vm=`` would be ``-v m=``). ``--vm-dry-run`` is ours too. Other spellings that ask for a
VM (``-VM vcpus=2`` would be ``-V -M vcpus=2``) are refused: never a silent host job.
In a directive, Torque splits words at any C blank (``\r``, ``\v``, ``\f`` too) and reads a
line only up to a NUL byte, so a ``-vm`` directive with a control character is refused,
and so is any directive with a NUL byte.

This module imports nothing at run time: the qsub fast path uses it before deciding that a
job is not a VM job.
"""

from __future__ import annotations

from vmwrapper.batch import argv
from vmwrapper.batch.argv import BAD_VM, DRY_RUN, DRY_RUN_OPTION, END, OPTIONS, VM, Item, last_value

# Not typing.TYPE_CHECKING: importing typing costs ~5 ms on the qsub fast path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

FLAGS = frozenset("EfhInVXxz")
WITH_VALUE = frozenset("aAbcCdDeFiJjkKlLmMNopPqrStTuvwW")
DEFAULT_PREFIX = "#PBS"
MAX_LINE_BYTES = 32766  # qsub's fgets(MAX_LINE_LEN=32768) reads longer lines in pieces
_BLANKS = " \t\n\v\f\r"
_DIGITS = frozenset("0123456789")

OPERAND = "operand"  # Item kinds beside argv's OPTIONS, VM, DRY_RUN and END


class Parsed(argv.Parsed):
    """A parsed qsub command line (or one directive's words)."""

    __slots__ = ()

    def operands(self) -> list[str]:
        return [item.value for item in self.items if item.kind == OPERAND]

    def script(self) -> str | None:
        """The script operand; None when the script comes on stdin."""
        operands = self.operands()
        return None if not operands or operands[0] == "-" else operands[0]


def parse_argv(args: Sequence[str], *, permute: bool = True) -> Parsed:
    """Split qsub's arguments into items, the way Torque's getopt reads them."""
    items: list[Item] = []
    problems: list[str] = []
    index, ended = 0, False
    while index < len(args):
        word = args[index]
        if ended or word == "-" or not word.startswith("-"):
            items.append(Item(OPERAND, index, index + 1, word))
            ended = ended or not permute
            index += 1
        elif word == "--":
            items.append(Item(END, index, index + 1))
            ended, index = True, index + 1
        else:
            item = argv.ours(args, index, problems) or _option_cluster(args, index, problems)
            items.append(item)
            index = item.stop
    return Parsed(items, problems)


def _at(args: Sequence[str], index: int) -> str:
    return args[index] if index < len(args) else ""


def _option_cluster(args: Sequence[str], index: int, problems: list[str]) -> Item:
    """One word of bundled options, plus the next word if the last option takes it."""
    word, stop = args[index], index + 1
    if word.startswith("--"):  # getopt's "-:": --version is option '-' with value 'version'
        return Item(OPTIONS, index, stop, options=[("-", word[2:])])
    options: list[tuple[str, str | None]] = []
    for pos in range(1, len(word)):
        letter = word[pos]
        if letter in WITH_VALUE:
            value: str | None = word[pos + 1 :]
            if not value:
                value, stop = _at(args, index + 1), min(index + 2, len(args))
                if index + 1 >= len(args):
                    problems.append(f"qsub option -{letter} needs a value")
            options.append((letter, value))
            break
        if letter not in FLAGS:
            problems.append(f"unknown qsub option -{letter} (in {word[:40]!r})")
        options.append((letter, None))
    return Item(OPTIONS, index, stop, options=options)


def directive_prefix(parsed: Parsed) -> str:
    """getopt's view: the last -C, else #PBS ('' = no directives). See view_problems."""
    prefix = last_value(parsed.options(), "C")
    return DEFAULT_PREFIX if prefix is None else prefix


def prescan(args: Sequence[str]) -> tuple[int | None, str]:
    """Torque 6.1's find_job_script_index(), which runs before getopt and alone decides
    which file qsub reads (None: stdin) and with which directive prefix.

    The script is the first word not starting with '-' that does not follow a word of at
    most two characters whose letter takes a value ('-N', '-l', and '-', '--' too); the
    prefix is the word after the last word whose letter is C before it ('-C#X job.sh'
    makes 'job.sh' the prefix).
    """
    prefix, skip = DEFAULT_PREFIX, False
    for index, word in enumerate(args):
        if skip:
            skip = False
        elif not word.startswith("-"):
            return index, prefix
        elif word[1:2] in WITH_VALUE or word[1:2] in ("-", ""):
            skip = len(word) <= 2
            if word[1:2] == "C" and index + 1 < len(args):
                prefix = args[index + 1]
    return None, prefix


def view_problems(args: Sequence[str], script: str | None, prefix: str) -> list[str]:
    """Where qsub given ``args`` would read another script (None: stdin) or directive
    prefix than ``script`` and ``prefix``, the ones we checked."""
    index, theirs = prescan(args)
    problems = []
    if (None if index is None else args[index]) != script:
        what = "stdin" if index is None else repr(args[index])
        problems.append(f"qsub would read the job script from {what}; write bundled options "
                        "apart (-h -N x, not -hN x), and no -- before the script")  # fmt: skip
    if theirs != prefix:
        problems.append(f"qsub would read directives with prefix {theirs!r}, not {prefix!r}; "
                        "give -C PREFIX as two words before the job script")  # fmt: skip
    return problems


# ---------------------------------------------------------------------------------------
# Directives
# ---------------------------------------------------------------------------------------


class Directive:
    """One logical directive: physical lines ``first..last`` (inclusive) and its words."""

    __slots__ = ("first", "last", "parsed", "words")

    def __init__(self, first: int, last: int, words: list[str], parsed: Parsed) -> None:
        self.first, self.last, self.words, self.parsed = first, last, words, parsed


def is_executable(line: str) -> bool:
    """Torque's isexecutable(): the first line that ends the directive block."""
    if line.startswith((":", "#!")):
        return False
    text = line.lstrip(_BLANKS)
    return bool(text) and not text.startswith("#")


def directive_text(line: str, prefix: str) -> str | None:
    """What follows the prefix on a directive line; None if the line is not one."""
    text = line.lstrip(_BLANKS)
    if prefix and text.startswith(prefix):
        return text[len(prefix) :]
    return None


def find_directives(lines: Sequence[str], prefix: str) -> tuple[list[Directive], list[str]]:
    """Directives of a script given as lines (without line ends), up to its first command."""
    found: list[Directive] = []
    problems: list[str] = []
    number = 0
    while number < len(lines):
        text = directive_text(lines[number], prefix)
        if text is None:
            if is_executable(lines[number]):
                break
            number += 1
            continue
        first = number
        while text.endswith("\\") and number + 1 < len(lines):
            number += 1
            text = text[:-1] + lines[number]
        words, problem = split_words(text)
        parsed = parse_argv(words)
        problem = problem or _directive_problem(text, parsed)
        if problem:
            problems.append(f"script line {first + 1}: {problem}")
        found.append(Directive(first, number, words, parsed))
        number += 1
    return found, problems


def _directive_problem(text: str, parsed: Parsed) -> str:
    """What would make Torque read a directive otherwise than we do."""
    if "\0" in text:
        return "a NUL byte in a directive (Torque reads the line only up to it)"
    if not parsed.has(VM):
        return ""
    stray = parsed.operands()
    problem = argv.control_problem(text)
    if not problem and stray:
        problem = f"stray word {stray[0][:40]!r} in a -vm directive (no blanks in -vm values)"
    return problem


def split_words(text: str) -> tuple[list[str], str]:
    """Torque's make_argv(): blanks split, quotes group (no escapes inside), \\ escapes."""
    words: list[str] = []
    current: list[str] = []
    in_word = False
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char in "\"'":
            end = text.find(char, pos + 1)
            if end < 0:
                return words, f"unmatched {char} in directive"
            current.append(text[pos + 1 : end])
            in_word, pos = True, end + 1
            continue
        if char in _BLANKS:
            if in_word:
                words.append("".join(current))
                current, in_word = [], False
        elif char == "\\":
            current.append(text[pos + 1 : pos + 2])
            in_word, pos = True, pos + 1
        else:
            current.append(char)
            in_word = True
        pos += 1
    if in_word:
        words.append("".join(current))
    return words, ""


def quote_word(word: str) -> str:
    """Quote a word so that split_words() (and a POSIX shell) gives it back unchanged."""
    if word and all(c.isalnum() or c in "@%+=:,./_-" for c in word):
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


# ---------------------------------------------------------------------------------------
# Resource lists (-l)
# ---------------------------------------------------------------------------------------


def merge_resources(lists: Iterable[str]) -> dict[str, str]:
    """``-l`` values in submission order -> {resource: value}; a later value wins."""
    merged: dict[str, str] = {}
    for text in lists:
        for part in text.split(","):
            name, _, value = part.partition("=")
            if name.strip():
                merged[name.strip()] = value.strip()
    return merged


def raise_nodes(spec: str, ppn: int) -> tuple[str, int] | None:
    """``nodes=`` spec with every ``+`` part raised to at least ``ppn`` cores per node.

    Returns (new spec, number of nodes), or None if the spec is not one we can read.
    A part is ``count[:prop...]`` or ``hostname[:prop...]`` (one node); ``#excl``-style
    suffixes are kept.
    """
    body, hash_mark, suffix = spec.partition("#")
    parts: list[str] = []
    total = 0
    for part in body.split("+"):
        head, *props = part.split(":")
        if not head:
            return None
        count = int(head) if set(head) <= _DIGITS else 1
        ppn_props = [p for p in props if p.startswith("ppn=")]
        if any(not p[4:] or not set(p[4:]) <= _DIGITS for p in ppn_props) or len(ppn_props) > 1:
            return None
        if not ppn_props and ppn > 1:  # no ppn means one core per node
            props.append(f"ppn={ppn}")
        elif ppn_props and int(ppn_props[0][4:]) < ppn:
            props[props.index(ppn_props[0])] = f"ppn={ppn}"
        parts.append(":".join([head, *props]))
        total += count
    return "+".join(parts) + hash_mark + suffix, total


_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}


def size_bytes(text: str) -> int | None:
    """A Torque size (``512mb``, ``4gb``, ``2048kb``, ``100w``, plain bytes) in bytes."""
    low = text.strip().lower()
    word = 8 if low.endswith("w") else 1
    low = low[:-1] if low.endswith(("b", "w")) else low
    unit = low[-1:] if low[-1:] in _SIZE_UNITS and low[-1:] else ""
    number = low[: len(low) - len(unit)]
    if not number or not set(number) <= _DIGITS:
        return None
    return int(number) * _SIZE_UNITS[unit] * word


def whole_node_problems(resources: Mapping[str, str], letters: Iterable[str]) -> list[str]:
    """VMs need whole-node requests: refuse the request forms we cannot raise."""
    problems = [
        f"-l {name}={resources[name]}: VM jobs need node requests; use -l nodes=N[:ppn=M]"
        for name in ("procs", "ncpus", "size")
        if name in resources
    ]
    if "L" in letters:
        problems.append("-L: VM jobs need node requests; use -l nodes=N[:ppn=M]")
    return problems


class Raise:
    """How a job's nodes= and mem= must grow so its VMs fit."""

    __slots__ = ("changes", "nodes", "problems")

    def __init__(self) -> None:
        self.changes: list[tuple[str, str | None, str]] = []  # (resource, old, new)
        self.nodes = 0
        self.problems: list[str] = []

    def option_value(self) -> str:
        """The one extra ``-l`` value (a later -l wins in qsub), '' if nothing changes."""
        return ",".join(f"{name}={new}" for name, _, new in self.changes)


def raise_resources(resources: Mapping[str, str], cores: int, node_ram_mb: int) -> Raise:
    """Every node gets >= ``cores`` (ppn); mem >= nodes x ``node_ram_mb``. Default: 1 node."""
    result = Raise()
    old_nodes = resources.get("nodes")
    raised = raise_nodes(old_nodes or "1", cores)
    if raised is None:
        result.problems.append(f"-l nodes={old_nodes}: cannot read it; use nodes=N[:ppn=M][+...]")
        return result
    spec, result.nodes = raised
    if spec != (old_nodes or "1"):
        result.changes.append(("nodes", old_nodes, spec))
    need = result.nodes * node_ram_mb
    old_mem = resources.get("mem")
    have = size_bytes(old_mem) if old_mem is not None else 0
    if have is None:
        result.problems.append(f"-l mem={old_mem}: not a size Torque reads (e.g. 4gb, 512mb)")
    elif have < need * 1024 * 1024:
        result.changes.append(("mem", old_mem, f"{need}mb"))
    return result


def kept_directive_lines(
    directives: Iterable[Directive], lines: Sequence[str], prefix: str
) -> list[str]:
    """The user's directives minus every ``-vm`` and ``--vm-dry-run``: one line each, for
    the job wrapper.

    A single-line directive without them is kept verbatim; others are rewritten as one line
    of quoted words (continuation lines would be shell commands in the wrapper).
    """
    kept: list[str] = []
    for directive in directives:
        parsed = directive.parsed
        if directive.first == directive.last and not parsed.ours():
            kept.append(lines[directive.first])
            continue
        words = [
            word
            for item in parsed.items
            if item.kind not in argv.OURS
            for word in directive.words[item.start : item.stop]
        ]
        if words:
            kept.append(prefix + " " + " ".join(quote_word(word) for word in words))
    return kept


# re-exported: callers see one grammar module (the names this module defines stay public)
__all__ = ["BAD_VM", "DRY_RUN", "DRY_RUN_OPTION", "END", "OPTIONS", "VM", "Item", "last_value"]
