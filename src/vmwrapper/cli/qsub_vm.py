"""The Torque side of a VM job submitted with qsub (cli/qsub.py imports this only for VM jobs).

``#PBS`` directives (honouring -C) keep all but their ``-vm`` words; the
request is raised with one extra ``-l nodes=...:ppn=...,mem=...`` (a later -l wins); the job
is named with ``-N`` (the script's basename, or STDIN), so output files stay
``<name>.o<id>``; ``-S /bin/sh`` runs the wrapper whatever the user's -S says (the payload
keeps theirs for the script itself).
"""

from __future__ import annotations

import os

from vmwrapper import requestblock, submitcore
from vmwrapper.batch import argv, torque
from vmwrapper.config import Config
from vmwrapper.request import VmRequest
from vmwrapper.submitvm import VmJob, cores_why, ram_why

# A -v value of 130,000 characters reached every mom intact; the kernel refuses a single
# argument over 128 KiB (measured on Torque 6.1, reference/batch.md 2.7b).
MAX_REQUEST_VARIABLE = 120_000


class TorqueVmJob(VmJob):
    """A qsub VM job: argv, #PBS directives, -l resources."""

    def __init__(
        self,
        args: list[str],
        parsed: torque.Parsed,
        script: bytes | None,
        cfg: Config,
    ) -> None:
        super().__init__(script, cfg)
        self.args, self.parsed = args, parsed
        self.prefix = torque.directive_prefix(parsed)
        self.lines = submitcore.script_lines(script) if script is not None else []
        self.directives, problems = torque.find_directives(self.lines, self.prefix)
        self.problems = parsed.problems + problems
        for directive in self.directives:
            line = directive.first + 1
            self.problems += [f"script line {line}: {p}" for p in directive.parsed.problems]
        options = [opt for d in self.directives for opt in d.parsed.options()]
        self.options = options + parsed.options()  # later wins: the command line
        self.interactive = torque.last_value(self.options, "I") is not None
        self.extra_l = ""

    def is_interactive(self) -> bool:
        return self.interactive

    def check_script(self) -> None:
        if self.script is None and not self.interactive:
            name = self.parsed.script()
            self.problems.append(f"job script {name!r}: not a readable regular file")

    def analyse(self) -> list[str]:
        super().analyse()
        if not self.problems:
            self.problems += self._carrier_problems()
        return self.problems

    def _carrier_problems(self) -> list[str]:
        """The request travels as one qsub -v value; qsub -I needs the session script."""
        problems = []
        size = len(requestblock.to_variable(self.request_json()))
        if size > MAX_REQUEST_VARIABLE:
            problems.append(
                f"the request with its embedded files (metadata, vm_prologue, vm_epilogue) is "
                f"{size // 1024} KB as a job variable; Torque passes at most "
                f"{MAX_REQUEST_VARIABLE // 1024} KB: make those files smaller"
            )
        if self.interactive and not os.path.isfile(self.cfg.INTERACTIVE_SCRIPT):
            problems.append(
                f"INTERACTIVE_SCRIPT {self.cfg.INTERACTIVE_SCRIPT} is missing on this host "
                "(admins: tools/install-deps installs it)"
            )
        return problems

    def check_shape(self) -> None:
        if len(self.parsed.operands()) > 1:
            self.problems.append("qsub takes one job script; pass its arguments with -F")
        if self.directives and not self.prefix.startswith("#"):
            self.problems.append(f"directive prefix {self.prefix!r}: VM jobs need one starting #")
        torque_words = self.parsed.without(self.args, *argv.OURS)  # what the real qsub gets
        self.problems += torque.view_problems(torque_words, self.parsed.script(), self.prefix)
        letters = [letter for letter, _ in self.options]
        self.problems += torque.whole_node_problems(self._resources(), letters)

    def vm_texts(self) -> list[str]:
        texts = [v for d in self.directives for v in d.parsed.vm_values()]
        return texts + self.parsed.vm_values()

    def _resources(self) -> dict[str, str]:
        return torque.merge_resources(v or "" for letter, v in self.options if letter == "l")

    def raise_resources(self, request: VmRequest, cores: int, node_mb: int) -> None:
        result = torque.raise_resources(self._resources(), cores, node_mb)
        self.problems += result.problems
        self.extra_l = result.option_value()
        why = {
            "nodes": f"each node needs {cores} cores: {cores_why(request, self.cfg)}",
            "mem": f"{result.nodes} node(s) x {node_mb} MB: {ram_why(request, self.cfg)}",
        }
        for name, old, new in result.changes:
            change = f"raised -l {name}={old} to" if old is not None else "added -l"
            self.notes.append(f"{change} {name}={new}: {why[name]}")

    # -- output ---------------------------------------------------------------------------

    def job_name(self) -> str:
        name = torque.last_value(self.options, "N")
        if name is not None:
            return name
        path = self.parsed.script()
        return "STDIN" if path is None else path.rpartition("/")[2]

    def script_args(self) -> tuple[str, ...]:
        return tuple((torque.last_value(self.options, "F") or "").split())

    def shell(self) -> str:
        return torque.last_value(self.options, "S") or ""

    def real_argv(self) -> list[str]:
        """The user's options minus -vm (and the script), plus ours; later options win."""
        keep = [item for item in self.parsed.items if item.kind == torque.OPTIONS]
        argv = [word for item in keep for word in self.args[item.start : item.stop]]
        argv += ["-S", "/bin/sh"]
        if torque.last_value(self.options, "N") is None:
            argv += ["-N", self.job_name()]
        argv += ["-l", self.extra_l] if self.extra_l else []
        # Every mom reads the request from the job's variables (a sister has no script,
        # qsub -I none at all). Its own -v, last: Torque 6.1's qsub crashed ("stack
        # smashing detected") when a long value was followed by another variable in one -v.
        argv += ["-v", f"{requestblock.VARIABLE}={requestblock.to_variable(self.request_json())}"]
        # qsub -I -x PATH: pbs_mom runs PATH (bash -c) on the session's terminal; Torque
        # ships no script for -I, so PATH is a file on every node that opens vm0's shell.
        return argv + (["-x", self.cfg.INTERACTIVE_SCRIPT] if self.interactive else [])

    def kept_directives(self) -> list[str]:
        return torque.kept_directive_lines(self.directives, self.lines, self.prefix)

    def read_back_problem(self, wrapper: bytes, kept: list[str]) -> str:
        """Torque must read the wrapper (stdin), with our prefix, and in it exactly our
        directive lines (and none of our options)."""
        problems = torque.view_problems(self.real_argv(), None, self.prefix)
        if problems:
            return problems[0]
        longest = max((len(line.encode("utf-8", "surrogateescape")) for line in kept), default=0)
        if longest > torque.MAX_LINE_BYTES:
            limit = torque.MAX_LINE_BYTES
            return f"a directive is longer than the {limit} bytes Torque reads as one line"
        found, problems = torque.find_directives(submitcore.script_lines(wrapper), self.prefix)
        if problems or len(found) != len(kept) or any(d.parsed.ours() for d in found):
            why = f"directive prefix {self.prefix!r} clashes with vm-wrapper's own lines"
            return why + "; choose another -C"
        return ""
