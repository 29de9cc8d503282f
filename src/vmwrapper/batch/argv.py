"""What the qsub and sbatch grammars share: argv items, the parsed result, last-wins lookup.

Imports nothing at run time: both wrappers use it on the pass-through path, before they
know whether a job is a VM job.
"""

from __future__ import annotations

# Not typing.TYPE_CHECKING: importing typing costs ~5 ms on the pass-through path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

DRY_RUN_OPTION = "--vm-dry-run"
VM_NAMES = ("-vm", "--vm")  # the value is attached after '=' or is the next word
# What a script must hold for a directive to name -vm in any case (a cheap first test)
VM_NEEDLES = (b"-vm", b"-VM", b"-Vm", b"-vM")

# Item kinds every grammar has; each adds its own operand kinds. BAD_VM: a misspelt -vm.
OPTIONS, VM, BAD_VM, DRY_RUN, END = "options", "vm", "bad-vm", "dry-run", "end"
OURS = frozenset((VM, BAD_VM, DRY_RUN))


class Item:
    """argv words ``[start, stop)`` and their meaning; ``options`` is [(name, value)]."""

    __slots__ = ("kind", "options", "start", "stop", "value")

    def __init__(
        self, kind: str, start: int, stop: int, value: str = "",
        options: list[tuple[str, str | None]] | None = None,
    ) -> None:  # fmt: skip
        self.kind, self.start, self.stop, self.value = kind, start, stop, value
        self.options = options or []

    def __repr__(self) -> str:
        return f"Item({self.kind}, {self.start}:{self.stop}, {self.value!r}, {self.options!r})"


class Parsed:
    """A parsed command line (or directive words): its items and what was wrong."""

    __slots__ = ("items", "problems")

    def __init__(self, items: list[Item], problems: list[str]) -> None:
        self.items, self.problems = items, problems

    def options(self) -> list[tuple[str, str | None]]:
        return [opt for item in self.items if item.kind == OPTIONS for opt in item.options]

    def vm_values(self) -> list[str]:
        return [item.value for item in self.items if item.kind == VM]

    def has(self, kind: str) -> bool:
        return any(item.kind == kind for item in self.items)

    def ours(self) -> set[str]:
        """Which of our kinds (VM, BAD_VM, DRY_RUN) occur."""
        return {item.kind for item in self.items if item.kind in OURS}

    def without(self, args: Sequence[str], *kinds: str) -> list[str]:
        """``args`` (the words parsed) minus the words of every item of ``kinds``."""
        items = [item for item in self.items if item.kind in kinds]
        drop = {n for item in items for n in range(item.start, item.stop)}
        return [word for n, word in enumerate(args) if n not in drop]


def ours(args: Sequence[str], index: int, problems: list[str]) -> Item | None:
    """-vm VALUE, -vm=VALUE, --vm VALUE, --vm=VALUE, --vm-dry-run, or a misspelling of
    them that asks for a VM (refused in ``problems``); None for any other word."""
    word = args[index]
    if word == DRY_RUN_OPTION:
        return Item(DRY_RUN, index, index + 1)
    name, eq, attached = word.partition("=")
    following = args[index + 1] if index + 1 < len(args) else None
    takes_next = not eq and following is not None
    if name in VM_NAMES:
        value = attached if eq else following or ""
        if not value:
            problems.append(f"{name} needs a value: {name} key=value[,key=value...]")
        return Item(VM, index, index + (2 if takes_next else 1), value)
    problem = misspelt_vm(word, following)
    if not problem:
        return None
    problems.append(problem)
    return Item(BAD_VM, index, index + (2 if takes_next and name.lower() in VM_NAMES else 1))


def misspelt_vm(word: str, following: str | None) -> str:
    """A problem if ``word`` is -vm or --vm in another spelling and asks for a VM, else ''.

    Neither qsub nor sbatch has a long option starting --vm, so every --vm... word is a
    mistake. -VM, -Vm and -vM (also with =VALUE) are real options (qsub -V -M LIST, -V -m
    EVENTS, -v M; sbatch -V, -v -M CLUSTERS): they are ours only if their value looks like
    key=value, which mail lists, mail events and cluster names never do (qsub -vM=a=b,
    exporting M='a=b', is refused as well). The batch system would run a host job.
    """
    name, eq, attached = word.partition("=")
    low = name.lower()
    if low.startswith("--vm"):
        return f"unknown option {word[:40]!r}: ours are -vm key=value[,...] and --vm-dry-run"
    value = attached if eq else following
    if low != "-vm" or value is None or "=" not in value or value.startswith("-"):
        return ""
    return f"{word[:40]!r}: options are case-sensitive; write -vm key=value[,key=value...]"


def may_name_vm(script: bytes) -> bool:
    """Whether a script may hold a directive with -vm, --vm or a misspelling of them."""
    return any(needle in script for needle in VM_NEEDLES)


def control_problem(text: str) -> str:
    """'' if ``text`` (a directive with -vm) has no control character but tabs, else a
    problem naming the word that holds one. Torque and sbatch split words at \\r, \\v and
    \\f too: 'img=a\\r,vcpus=9' would be two words, and the VM would not get 9 vCPUs."""
    for word in text.replace("\t", " ").split(" "):
        bad = next((c for c in word if c < " " or "\x7f" <= c <= "\x9f"), None)
        if bad is not None:
            return f"control character {bad!r} in {word[:60]!r}; a -vm directive takes plain text"
    return ""


def last_value(options: Iterable[tuple[str, str | None]], name: str) -> str | None:
    """The value of the last occurrence of option ``name`` (flags give ''), None if absent."""
    found: str | None = None
    for option, value in options:
        if option == name:
            found = "" if value is None else value
    return found
