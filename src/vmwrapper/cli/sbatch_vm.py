"""The Slurm side of a VM job submitted with sbatch (cli/sbatch.py imports this only for VM
jobs).

``#SBATCH`` lines keep all but their ``--vm`` words (``#PBS``/``#BSUB`` lines, which sbatch
also reads, stay as they are); the request is raised with ``--cpus-per-task`` or
``--ntasks-per-node`` and ``--mem`` or ``--mem-per-cpu`` on the command line, which wins.
The job is tagged for slurm/prolog with ``--comment=vm-wrapper``, followed by the user's
own comment (``vm-wrapper; <theirs>``): the command line's --comment replaces the
directive's, so nothing is lost. The wrapper comes on stdin, so the job keeps the name
sbatch would give it with ``--job-name`` (the script's basename, wrap, or sbatch).
"""

from __future__ import annotations

from collections.abc import Mapping

from vmwrapper import submitcore
from vmwrapper.batch import slurm_submit as slurm
from vmwrapper.batch.slurm_hooks import TAG
from vmwrapper.config import Config
from vmwrapper.request import VmRequest
from vmwrapper.submitvm import VmJob, cores_why, ram_why


class SlurmVmJob(VmJob):
    """An sbatch VM job: argv, #SBATCH directives, SBATCH_* variables."""

    def __init__(
        self,
        args: list[str],
        parsed: slurm.Parsed,
        script: bytes | None,
        cfg: Config,
        environ: Mapping[str, str],
    ) -> None:
        super().__init__(script, cfg)
        self.args, self.parsed = args, parsed
        self.lines = submitcore.script_lines(script) if script is not None else []
        self.found = slurm.find_directives(self.lines)
        script_options = self.found.parsed.options()
        env = [(name, environ[key]) for key, name in slurm.ENV_OPTIONS.items() if key in environ]
        # later wins: directives, then SBATCH_* variables, then the command line
        self.options = [*script_options, *env, *parsed.options()]
        self.memory = slurm.memory_option(script_options, env, parsed.options())
        self.problems = parsed.problems + self.found.problems
        self.problems += [f"#SBATCH: {p}" for p in self.found.parsed.problems]
        self.kept, problems = slurm.kept_directive_lines(self.lines, self.found)
        self.problems += problems
        self.extra: list[str] = []

    def check_script(self) -> None:
        if self.script is None:
            name = self.parsed.script()
            self.problems.append(f"job script {name!r}: not a readable regular file")
        else:
            self.problems += slurm.script_problems(self.script)

    def check_shape(self) -> None:
        if self.parsed.has(slurm.HETSEP) or self.found.het:
            self.problems.append("heterogeneous jobs (':', hetjob) cannot run in VMs")
        if self._wrap() is not None and self.parsed.script() is not None:
            self.problems.append("--wrap takes no script or script arguments")
        for number in slurm.torque_vm_lines(self.lines, self.found):
            self.problems.append(f"script line {number + 1}: '#PBS -vm' is for qsub; "
                                 "write '#SBATCH --vm ...'")  # fmt: skip
        self.problems += slurm.vm_problems(self.options, self.memory)

    def vm_texts(self) -> list[str]:
        return self.found.parsed.vm_values() + self.parsed.vm_values()  # the command line wins

    def _wrap(self) -> str | None:
        return slurm.last_value(self.parsed.options(), "wrap")

    def raise_resources(self, request: VmRequest, cores: int, node_mb: int) -> None:
        result = slurm.raise_resources(self.options, cores, node_mb, self.memory)
        self.problems += result.problems
        self.extra = result.argv()
        cpus = f"each node needs {cores} cores: {cores_why(request, self.cfg)}"
        ram = f"each node needs {node_mb} MB: {ram_why(request, self.cfg)}"
        why = {"cpus-per-task": cpus, "ntasks-per-node": cpus, "mem": ram,
               "mem-per-cpu": f"{ram}, over {result.cpus} CPU(s)"}  # fmt: skip
        for name, old, new in result.changes:
            change = f"raised --{name}={old} to" if old is not None else "added"
            self.notes.append(f"{change} --{name}={new}: {why[name]}")

    # -- output ---------------------------------------------------------------------------

    def job_name(self) -> str:
        """-J, else sbatch's default: wrap, the script's base name, or sbatch (stdin)."""
        name = slurm.last_value(self.options, "job-name")
        if name is not None:
            return name
        path = self.parsed.script()
        if self._wrap() is not None or path is None:
            return "wrap" if self._wrap() is not None else "sbatch"
        return path.rstrip("/").rpartition("/")[2]

    def script_args(self) -> tuple[str, ...]:
        return tuple(self.parsed.script_args())

    def shell(self) -> str:
        return ""  # sbatch has no -S: the script's #! line decides

    def comment(self) -> str:
        """The tag slurm/prolog looks for, then the user's own comment (if any)."""
        theirs = slurm.last_value(self.options, "comment")
        return f"{TAG}; {theirs}" if theirs else TAG

    def real_argv(self) -> list[str]:
        """The user's options minus ours, --comment and --wrap (the script and its arguments
        travel in the wrapper), plus ours: the command line wins over every directive."""
        keep = [
            item for item in self.parsed.items if item.kind == slurm.OPTIONS
            and not {"comment", "wrap"} & {name for name, _ in item.options}
        ]  # fmt: skip
        argv = [word for item in keep for word in self.args[item.start : item.stop]]
        argv.append(f"--comment={self.comment()}")
        if slurm.last_value(self.options, "job-name") is None:
            argv.append(f"--job-name={self.job_name()}")
        return argv + self.extra

    def kept_directives(self) -> list[str]:
        return self.kept

    def read_back_problem(self, wrapper: bytes, kept: list[str]) -> str:
        """sbatch must read exactly the kept directive lines, and no --vm."""
        found = slurm.find_directives(submitcore.script_lines(wrapper))
        if found.problems or len(found.lines) != len(kept) or found.parsed.has(slurm.VM):
            return "the job wrapper would not read back as written; please report"
        return ""
