"""What the qsub and sbatch grammars share: argv items, the parsed result, last-wins lookup.

Imports nothing at run time: both wrappers use it on the pass-through path, before they
know whether a job is a VM job.
"""

from __future__ import annotations

# Not typing.TYPE_CHECKING: importing typing costs ~5 ms on the pass-through path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

DRY_RUN_OPTION = "--vm-dry-run"

# Item kinds every grammar has; each adds its own operand kinds.
OPTIONS, VM, DRY_RUN, END = "options", "vm", "dry-run", "end"


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
