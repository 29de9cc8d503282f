"""Slurm 22.05 sbatch grammar: argv, ``#SBATCH`` directives and what VMs need. Pure, no I/O.

Facts from slurm-wlm 22.05.8 (``src/sbatch/opt.c``, ``src/common/slurm_opt.c``,
``src/common/proc_args.c``):

- getopt_long with an optstring starting ``+``: options end at the first operand, the
  script; every later word is a script argument. ``--`` ends options. A long option may be
  abbreviated to a unique prefix (``--ntasks-per-n=2``). Short options bundle (``-vH``); a
  required value is attached (``-N2``, ``--mem=4G``) or the next word, whatever it looks
  like; an optional value (``--exclusive[=user]``, ``-k[arg]``) only attached.
- ``:`` separates the components of a heterogeneous job; the first pass ignores it.
- No script operand: the script comes on stdin. A script name without ``/`` at its start
  or ``.`` is looked up in the working directory, then in PATH (``search_path``).
- Directives: lines starting in column 0 with ``#SBATCH`` (or the deprecated ``#SLURM``),
  up to the first line whose first non-blank character is not ``#``. Blanks split words,
  quotes group, a backslash escapes (also inside quotes), an unquoted ``#`` ends the line.
  All directive words form one argv, parsed like the command line; an operand there is an
  error. ``#SBATCH hetjob`` starts the next component.
- Precedence: directives, then SBATCH_* variables, then the command line; the last
  occurrence wins. sbatch also translates ``#PBS`` and ``#BSUB`` lines (not ``--ignore-pbs``).

``--vm``/``-vm`` (value next or after ``=``) and ``--vm-dry-run`` are ours: sbatch would
read ``-vm`` as ``-v -m``. Misspellings that ask for a VM (``-VM vcpus=2``, ``--VM``) are
refused (batch/argv.py), and so is a control character in an ``#SBATCH`` line with
``--vm`` (sbatch splits words at ``\r``, ``\v``, ``\f`` too).
Like torque.py, this module imports nothing at run time (the sbatch fast path uses it).
"""

from __future__ import annotations

from vmwrapper.batch import argv
from vmwrapper.batch.argv import BAD_VM, DRY_RUN, DRY_RUN_OPTION, END, OPTIONS, VM, Item, last_value

# Not typing.TYPE_CHECKING: importing typing costs ~5 ms on the sbatch fast path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

NONE, REQUIRED, OPTIONAL = 0, 1, 2  # getopt's has_arg


def _words(text: str) -> list[str]:
    return text.split()


# sbatch's long options (slurm_opt.c common_options[] enabled for sbatch, 22.05.8)
LONG: dict[str, int] = {
    **dict.fromkeys(
        _words(
            "account acctg-freq array batch begin bb bbf cluster-constraint chdir cluster clusters "
            "comment container context constraint core-spec cores-per-socket cpu-freq cpus-per-gpu "
            "cpus-per-task deadline delay-boot dependency distribution error exclude export "
            "export-file extra-node-info gid gpu-bind gpu-freq gpus gpus-per-node gpus-per-socket "
            "gpus-per-task gres gres-flags hint input job-name kill-on-invalid-dep licenses "
            "mail-type mail-user mcs-label mem mem-bind mem-per-cpu mem-per-gpu mincpus network "
            "nodefile nodelist nodes ntasks ntasks-per-core ntasks-per-gpu ntasks-per-node "
            "ntasks-per-socket ntasks-per-tres open-mode output partition power prefer priority "
            "profile qos reservation signal sockets-per-node switches tasks-per-node thread-spec "
            "threads-per-core time time-min tmp uid wait-all-nodes wckey wrap"
        ),
        REQUIRED,
    ),
    **dict.fromkeys(
        _words(
            "contiguous help hold ignore-pbs no-requeue overcommit oversubscribe parsable quiet "
            "reboot requeue spread-job test-only use-min-nodes usage verbose version wait"
        ),
        NONE,
    ),
    **dict.fromkeys(_words("exclusive get-user-env nice no-kill propagate"), OPTIONAL),
}
ALIASES = {"tasks-per-node": "ntasks-per-node"}  # the same getopt val
SHORT: dict[str, str] = dict(
    pair.split("=")
    for pair in _words(
        "A=account a=array b=begin D=chdir M=clusters C=constraint S=core-spec c=cpus-per-task "
        "d=dependency m=distribution e=error x=exclude B=extra-node-info G=gpus h=help H=hold "
        "i=input J=job-name L=licenses k=no-kill F=nodefile w=nodelist N=nodes n=ntasks "
        "o=output O=overcommit s=oversubscribe p=partition q=qos Q=quiet t=time v=verbose "
        "V=version W=wait"
    )
)
# SBATCH_* variables that decide how we size or name a VM job (opt.c env_vars[]); they
# rank between the directives and the command line
ENV_OPTIONS = {
    "SBATCH_JOB_NAME": "job-name", "SBATCH_MEM_PER_NODE": "mem",
    "SBATCH_MEM_PER_CPU": "mem-per-cpu", "SBATCH_MEM_PER_GPU": "mem-per-gpu",
    "SBATCH_CPUS_PER_GPU": "cpus-per-gpu",
}  # fmt: skip
MAGIC = ("#SBATCH", "#SLURM")
TRANSLATED = ("#PBS", "#BSUB")  # sbatch's xlate.c reads these too
_BLANKS = " \t\n\v\f\r"
_SPECIAL = frozenset(_BLANKS + "\"'\\#")

SCRIPT, ARG, HETSEP = "script", "arg", "hetjob"  # Item kinds beside argv's


class Parsed(argv.Parsed):
    """A parsed sbatch command line (or the words of all directives)."""

    __slots__ = ()

    def script(self) -> str | None:
        """The script operand as given; None when the script comes on stdin."""
        return next((item.value for item in self.items if item.kind == SCRIPT), None)

    def script_args(self) -> list[str]:
        return [item.value for item in self.items if item.kind == ARG]


def parse_argv(args: Sequence[str]) -> Parsed:
    """Split sbatch's arguments into items, the way its getopt_long reads them."""
    items: list[Item] = []
    problems: list[str] = []
    index = 0
    while index < len(args):
        word = args[index]
        if word == ":":  # between components of a heterogeneous job
            items.append(Item(HETSEP, index, index + 1))
            index += 1
            continue
        if word in ("--", "-") or not word.startswith("-"):
            if word == "--":
                items.append(Item(END, index, index + 1))
            first = index + 1 if word == "--" else index
            items += [
                Item(ARG if n > first else SCRIPT, n, n + 1, args[n])
                for n in range(first, len(args))
            ]
            break
        item = argv.ours(args, index, problems) or _option(args, index, problems)
        items.append(item)
        index = item.stop
    return Parsed(items, problems)


def _option(args: Sequence[str], index: int, problems: list[str]) -> Item:
    """One long option, or one word of bundled short options."""
    word = args[index]
    if word.startswith("--"):
        return _long_option(args, index, problems)
    return _short_cluster(args, index, problems)


def long_name(text: str) -> tuple[str | None, str]:
    """getopt_long's lookup: (canonical name, '') or (None, problem). Exact, else a prefix
    of options that are all the same option."""
    if text in LONG:
        return ALIASES.get(text, text), ""
    found = {ALIASES.get(name, name) for name in LONG if name.startswith(text)}
    if len(found) == 1:
        return found.pop(), ""
    if found:
        return None, f"sbatch option --{text} is ambiguous ({', '.join(sorted(found)[:4])}...)"
    return None, f"unknown sbatch option --{text[:40]}"


def _long_option(args: Sequence[str], index: int, problems: list[str]) -> Item:
    text, eq, attached = args[index][2:].partition("=")
    name, problem = long_name(text)
    value = attached if eq else None
    if name is None:
        problems.append(problem)
        return Item(OPTIONS, index, index + 1, options=[("?" + text, value)])
    if LONG[name] == NONE and eq:
        problems.append(f"sbatch option --{name} takes no value")
    if LONG[name] != REQUIRED or eq:
        return Item(OPTIONS, index, index + 1, options=[(name, value)])
    if index + 1 >= len(args):
        problems.append(f"sbatch option --{name} needs a value")
        return Item(OPTIONS, index, index + 1, options=[(name, None)])
    return Item(OPTIONS, index, index + 2, options=[(name, args[index + 1])])


def _short_cluster(args: Sequence[str], index: int, problems: list[str]) -> Item:
    """``-vHN2``: flags, then at most one option with a value (attached or the next word)."""
    word, stop = args[index], index + 1
    options: list[tuple[str, str | None]] = []
    for pos in range(1, len(word)):
        name = SHORT.get(word[pos])
        if name is None:
            problems.append(f"unknown sbatch option -{word[pos]} (in {word[:40]!r})")
            continue
        if LONG[name] == NONE:
            options.append((name, None))
            continue
        value: str | None = word[pos + 1 :] or None
        if value is None and LONG[name] == REQUIRED:
            if index + 1 >= len(args):
                problems.append(f"sbatch option -{word[pos]} needs a value")
            value, stop = _at(args, index + 1), min(index + 2, len(args))
        options.append((name, value))
        break
    return Item(OPTIONS, index, stop, options=options)


def _at(args: Sequence[str], index: int) -> str | None:
    return args[index] if index < len(args) else None


def resolve_script(name: str, cwd: str, path_env: str, exists: Callable[[str], bool]) -> str:
    """Which file sbatch reads for script operand ``name`` (proc_args.c search_path with
    test_exec false): as given if it starts with '.' or '/', else the first existing
    cwd/name or PATH-entry/name that is no directory, else as given."""
    if name.startswith((".", "/")):
        return name
    for entry in [cwd] + [p for p in path_env.split(":") if p]:
        base = f"{cwd}/{entry}" if entry.startswith(".") else entry
        candidate = f"{base}/{name}"
        if exists(candidate):
            return candidate
    return name


# ---------------------------------------------------------------------------------------
# Directives
# ---------------------------------------------------------------------------------------


class Directives:
    """What sbatch reads from a script's head: the lines, and the #SBATCH words as one argv
    (``word_lines[i]`` is the line of ``words[i]``)."""

    __slots__ = ("het", "lines", "parsed", "problems", "word_lines", "words")

    def __init__(self) -> None:
        self.lines: list[int] = []  # every #SBATCH/#SLURM/#PBS/#BSUB line before the first command
        self.words: list[str] = []
        self.word_lines: list[int] = []
        self.het = False  # a "#SBATCH hetjob" line: a heterogeneous job
        self.problems: list[str] = []
        self.parsed = Parsed([], [])


def is_command(line: str) -> bool:
    """sbatch's end of directives: the first non-blank character is not '#'."""
    text = line.lstrip(_BLANKS)
    return bool(text) and not text.startswith("#")


def _after_magic(line: str) -> str | None:
    for magic in MAGIC:
        if line.startswith(magic):
            return line[len(magic) :]
    return None


def _is_het(text: str) -> bool:
    low = text.lstrip(_BLANKS).lower()
    return any(
        low.startswith(word) and low[len(word) : len(word) + 1] in ("", *_BLANKS)
        for word in ("hetjob", "packjob")
    )


def find_directives(lines: Sequence[str]) -> Directives:
    """The directives of a script given as lines (without line ends), for component 0."""
    found = Directives()
    for number, line in enumerate(lines):
        rest = _after_magic(line)
        if rest is None:
            if line.startswith(TRANSLATED):
                found.lines.append(number)
            elif is_command(line):
                break
            continue
        found.lines.append(number)
        if _is_het(rest):
            found.het = True
            break
        words, problem = split_words(rest)
        if problem:
            found.problems.append(f"script line {number + 1}: {problem}")
        found.words += words
        found.word_lines += [number] * len(words)
    found.parsed = parse_argv(found.words)
    found.problems += _control_problems(lines, found) or _operand_problems(found)
    return found


def _control_problems(lines: Sequence[str], found: Directives) -> list[str]:
    """Control characters in #SBATCH lines with --vm (sbatch splits words at them too)."""
    vm_words = [n for item in found.parsed.items if item.kind == VM
                for n in range(item.start, item.stop)]  # fmt: skip
    numbers = sorted({found.word_lines[n] for n in vm_words})
    problems = [(n, argv.control_problem(lines[n])) for n in numbers]
    return [f"script line {n + 1}: {problem}" for n, problem in problems if problem]


def _operand_problems(found: Directives) -> list[str]:
    """An operand among the directives' words: sbatch refuses it."""
    for item in found.parsed.items:
        if item.kind in (SCRIPT, ARG, END, HETSEP):
            number = found.word_lines[item.start] + 1
            return [f"script line {number}: {item.value or '--'!r} is not an option"]
    return []


def split_words(text: str) -> tuple[list[str], str]:
    """sbatch's get_argument() over a directive's text: (words, problem)."""
    words: list[str] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos] in _BLANKS:
            pos += 1
        if text[pos : pos + 1] == ":":
            return words, "unexpected ':' in directive"
        if _is_het(text[pos:]):  # get_argument() blanks these words out
            pos += 6 if text[pos] in "hH" else 7
            continue
        word, pos, quote = _one_word(text, pos)
        if quote:
            return words, f"unmatched {quote} in directive"
        if not word:  # end of text, a comment, or "": sbatch stops reading the line
            return words, ""
        words.append(word)


def _one_word(text: str, pos: int) -> tuple[str, int, str]:
    chars: list[str] = []
    quote, escape = "", False
    while pos < len(text) and (quote or text[pos] not in _BLANKS):
        char = text[pos]
        pos += 1
        if escape:
            escape = False
        elif char == "\\":
            escape = True
            continue
        elif quote:
            if char == quote:
                quote = ""
                continue
        elif char in "\"'":
            quote = char
            continue
        elif char == "#":
            pos -= 1
            break
        chars.append(char)
    return "".join(chars), pos, quote


def quote_word(word: str) -> str:
    """A word that split_words() (sbatch) reads back unchanged. Double quotes, since a
    backslash cannot keep a blank (get_argument tests for blanks before escapes)."""
    plain = word and not word.startswith(":") and not any(c in _SPECIAL for c in word)
    if plain and not _is_het(word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def kept_directive_lines(lines: Sequence[str], found: Directives) -> tuple[list[str], list[str]]:
    """(directive lines for the job wrapper, problems): every directive line sbatch reads,
    verbatim, except that --vm and --vm-dry-run words are taken out of #SBATCH lines."""
    ours = {
        n for item in found.parsed.items if item.kind in argv.OURS
        for n in range(item.start, item.stop)
    }  # fmt: skip
    kept: list[str] = []
    problems: list[str] = []
    for number in found.lines:
        indexes = [i for i, line in enumerate(found.word_lines) if line == number]
        if not ours.intersection(indexes):
            kept.append(lines[number])
            continue
        words = [found.words[i] for i in indexes if i not in ours]
        if "" in words:
            problems.append(f"script line {number + 1}: an empty quoted word; remove it")
        if words:
            kept.append("#SBATCH " + " ".join(quote_word(word) for word in words))
    return kept, problems


def torque_vm_lines(lines: Sequence[str], found: Directives) -> list[int]:
    """#PBS lines carrying -vm: qsub's syntax, which sbatch would read as -v (export)."""
    return [
        n for n in found.lines if lines[n].startswith("#PBS")
        and any(word.partition("=")[0] in argv.VM_NAMES for word in lines[n].split())
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------
# Resources: every node must hold the cores and memory of its VMs
# ---------------------------------------------------------------------------------------

_DIGITS = frozenset("0123456789")
_MB_PER = {"": 1, "k": 0, "m": 1, "g": 1024, "t": 1024 * 1024}  # k: rounded up, below


def size_mb(text: str) -> int | None:
    """A Slurm size (``--mem=4G``, ``512``, ``2048kb``; default unit MB) in MB, like
    proc_args.c str_to_mbytes; None if sbatch would refuse it."""
    low = text.lower()
    low = low[:-1] if low.endswith("b") and low[-2:-1] in "kmgt" and len(low) > 1 else low
    unit = low[-1:] if low[-1:] in ("k", "m", "g", "t") else ""
    number = low[: len(low) - len(unit)]
    if not number or not set(number) <= _DIGITS:
        return None
    return (int(number) + 1023) // 1024 if unit == "k" else int(number) * _MB_PER[unit]


def _count(options: Sequence[tuple[str, str | None]], name: str, problems: list[str]) -> int:
    """A positive whole option value (absent: 1)."""
    text = last_value(options, name)
    if text is None:
        return 1
    if not text or not set(text) <= _DIGITS or int(text) < 1:
        problems.append(f"--{name}={text}: not a positive whole number")
        return 1
    return int(text)


class Raise:
    """How a VM job's request must grow: [(option, old value, new value)] and problems."""

    __slots__ = ("changes", "cpus", "problems")

    def __init__(self) -> None:
        self.changes: list[tuple[str, str | None, str]] = []
        self.cpus = 0  # CPUs each node is sure to hold
        self.problems: list[str] = []

    def argv(self) -> list[str]:
        """The extra options (the command line wins over directives and SBATCH_*)."""
        return [f"--{name}={new}" for name, _, new in self.changes]


def vm_problems(options: Sequence[tuple[str, str | None]], memory: str) -> list[str]:
    """Requests we cannot size VMs by: sbatch refuses them beside -c or --mem."""
    used = {"cpus-per-gpu": last_value(options, "cpus-per-gpu") is not None,
            "mem-per-gpu": memory == "mem-per-gpu"}  # fmt: skip
    return [
        f"--{name}: VM jobs size nodes by {instead}; drop --{name}"
        for name, instead in (("cpus-per-gpu", "--cpus-per-task"), ("mem-per-gpu", "--mem"))
        if used[name]
    ]


MEMORY_OPTIONS = ("mem", "mem-per-cpu", "mem-per-gpu")


def memory_option(
    script: Iterable[tuple[str, str | None]],
    env: Iterable[tuple[str, str | None]],
    command_line: Iterable[tuple[str, str | None]],
) -> str:
    """Which of --mem, --mem-per-cpu, --mem-per-gpu sbatch will use: one the script or the
    command line set last beats one set last by SBATCH_* (slurm_opt.c
    _validate_memory_options; an SBATCH_* value overrides the script's). Default --mem."""
    last: dict[str, bool] = {}  # option -> set last by the environment?
    for options, by_env in ((script, False), (env, True), (command_line, False)):
        for name, _ in options:
            if name in MEMORY_OPTIONS:
                last[name] = by_env
    for by_env in (False, True):
        chosen = [name for name in MEMORY_OPTIONS if last.get(name) is by_env]
        if chosen:
            return chosen[0]  # more than one: sbatch refuses the job itself
    return "mem"


def raise_resources(
    options: Sequence[tuple[str, str | None]], cores: int, node_mb: int, memory: str = "mem"
) -> Raise:
    """Every node gets >= ``cores`` CPUs and >= ``node_mb`` MB.

    CPUs per node are tasks per node x --cpus-per-task. Tasks per node are known only from
    --ntasks-per-node without --ntasks (with --ntasks it is a maximum, and every node holds
    at least one task): then --ntasks-per-node grows, like qsub's ppn; else -c does.
    """
    result = Raise()
    per_node = _count(options, "ntasks-per-node", result.problems)
    per_task = _count(options, "cpus-per-task", result.problems)
    tasks_known = last_value(options, "ntasks-per-node") is not None and (
        last_value(options, "ntasks") is None
    )
    tasks = per_node if tasks_known else 1
    if tasks * per_task < cores:
        name = "ntasks-per-node" if tasks_known else "cpus-per-task"
        if tasks_known:
            tasks = -(-cores // per_task)
        else:
            per_task = -(-cores // tasks)
        new = tasks if tasks_known else per_task
        result.changes.append((name, last_value(options, name), str(new)))
    result.cpus = tasks * per_task
    _raise_memory(options, node_mb, result, memory)
    return result


def _raise_memory(
    options: Sequence[tuple[str, str | None]], node_mb: int, result: Raise, name: str
) -> None:
    """--mem is per node; if sbatch sizes the job by --mem-per-cpu, that one grows."""
    if name not in ("mem", "mem-per-cpu"):
        return  # refused by vm_problems
    text = last_value(options, name)
    need = -(-node_mb // result.cpus) if name == "mem-per-cpu" else node_mb
    have = size_mb(text) if text is not None else None
    if text is not None and have is None:
        result.problems.append(f"--{name}={text}: not a size sbatch reads (e.g. 4G, 512M)")
    elif have is None or (have < need and not (name == "mem" and have == 0)):  # 0: all of it
        result.changes.append((name, text, f"{need}M"))


# ---------------------------------------------------------------------------------------
# The script itself
# ---------------------------------------------------------------------------------------


def wrap_script(command: str) -> bytes:
    """The script ``sbatch --wrap=COMMAND`` submits (sbatch.c _script_wrap)."""
    text = f"#!/bin/sh\n# This script was created by sbatch --wrap.\n\n{command}\n"
    return text.encode("utf-8", "surrogateescape")


def script_problems(script: bytes) -> list[str]:
    """What sbatch refuses in a script (sbatch.c _get_script_buffer): the wrapper carries a
    VM job's script as data, so we must refuse it ourselves."""
    if not script.strip(_BLANKS.encode()):
        return ["job script is empty or only blanks"]
    if not script.startswith(b"#!"):
        return ["job script: its first line must be #! and an interpreter, e.g. #!/bin/bash"]
    if b"\0" in script:
        return ["job script contains a NUL byte"]
    if b"\r\n" in script:
        return ["job script has DOS line breaks (\\r\\n); convert it with dos2unix"]
    return []


# re-exported: callers see one grammar module (the names this module defines stay public)
__all__ = ["BAD_VM", "DRY_RUN", "DRY_RUN_OPTION", "END", "OPTIONS", "VM", "Item", "last_value"]
