"""``vm-wrapper SUBCOMMAND ...``: dispatch with lazy imports, one error path for users."""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import import_module

# subcommand -> ("module[:function]" under vmwrapper.cli, one-line help). Modules import
# lazily so that each command pays only for what it uses; the function defaults to run.
COMMANDS: dict[str, tuple[str, str]] = {
    "check-config": ("admin", "print the effective config and its problems"),
    "qsub": ("qsub", "the Torque qsub wrapper (what src/scripts/qsub runs)"),
    "sbatch": ("sbatch", "the Slurm sbatch wrapper (what src/scripts/sbatch runs)"),
    "hook": ("hook", "root batch hook: hook torque|slurm EVENT ARGS..."),
    "job-run": ("jobrun", "run the job inside its first VM (the job wrapper execs this)"),
    "reap": ("reap", "remove VMs and state of jobs that no longer run here (root)"),
    "run": ("run", "local backend: boot VMs here, run a script inside, tear down (root)"),
    "status": ("usertools:status", "your job's VMs, whether they answer, the boot timeline"),
    "console": ("usertools:console", "console JOBID vmN: a VM's console log (owner only)"),
    "ssh": ("usertools:ssh", "ssh JOBID vmN [CMD]: a shell in a VM of your running job"),
}


def usage() -> str:
    lines = ["usage: vm-wrapper COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<14} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"vm-wrapper: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, _, function = COMMANDS[name][0].partition(":")
    module = import_module(f"vmwrapper.cli.{module_name}")
    entry: Callable[[list[str]], int] = getattr(module, function or "run")
    return run_guarded(entry, rest)


def run_guarded(entry: Callable[[list[str]], int], args: list[str]) -> int:
    """Run a command; turn our errors into one line each on stderr, never a traceback."""
    from vmwrapper.errors import VmWrapperError  # noqa: PLC0415

    try:
        return entry(args)
    except VmWrapperError as err:
        for line in err.lines():
            print(f"vm-wrapper: {line}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
