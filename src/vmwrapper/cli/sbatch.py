"""``sbatch``: the wrapper users run (via src/scripts/sbatch). VM jobs get a job wrapper script.

Fast path (no ``--vm``/``-vm`` anywhere): read two settings with the tiny reader, find the
script the way sbatch does (``--wrap``, a file, or stdin), look for ``--vm`` in its
``#SBATCH`` lines, and exec the real sbatch with the very same argv (and, if the script
came on stdin, the very same bytes). Nothing heavier than ``os`` is imported on that path.

``--vm-dry-run``, on the command line or in an ``#SBATCH`` line, prints what would be
submitted and submits nothing, for plain and VM jobs alike.

VM path, as for qsub (submitvm): every problem at once, the request raised so that the
VMs fit (``--cpus-per-task`` or ``--ntasks-per-node``, and ``--mem`` or ``--mem-per-cpu``),
the job wrapper on the real sbatch's stdin. The job is tagged for slurm/prolog with
``--comment=vm-wrapper``; a comment of the user's own follows the tag
(``vm-wrapper; <theirs>``), since the command line's --comment replaces the directive's.
The job name stays the script's (``--job-name``), as the wrapper comes on stdin.
"""

from __future__ import annotations

import os
import sys

from vmwrapper import submitcore as core
from vmwrapper.batch import argv
from vmwrapper.batch import slurm_submit as slurm

# Not typing.TYPE_CHECKING: importing typing costs ~5 ms (re, collections) on the fast path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import NoReturn

# The settings the pass-through path needs, with their schema defaults (a test keeps these
# equal to config.SCHEMA).
FAST_DEFAULTS: dict[str, str] = {"DISABLE_VM_WRAPPER": "false", "REAL_SBATCH": "/usr/bin/sbatch"}


def main(args: list[str] | None = None, self_path: str | None = None) -> NoReturn:
    """Entry of src/scripts/sbatch: never a traceback, one line per problem."""
    words = sys.argv[1:] if args is None else args
    core.run_main(lambda: submit(words, self_path or sys.argv[0], os.environ))


def run(args: list[str]) -> int:
    """``vm-wrapper sbatch ...`` (errors are reported by cli.main.run_guarded)."""
    return submit(args, sys.argv[0], os.environ)


def submit(args: list[str], self_path: str, environ: Mapping[str, str]) -> int:
    """Pass the job through or submit it as a VM job. Returns only on dry runs."""
    settings = core.load_settings(environ, FAST_DEFAULTS)
    real = core.refuse_self("REAL_SBATCH", settings["REAL_SBATCH"], self_path, "sbatch")
    if core.is_true(settings["DISABLE_VM_WRAPPER"]):
        exec_sbatch(real, args, None)
    parsed = slurm.parse_argv(args)
    script, on_stdin = read_job_script(parsed, environ)
    kinds = ours(parsed, script)
    dry_run = slurm.DRY_RUN in kinds
    if not kinds & {slurm.VM, slurm.BAD_VM}:  # a misspelt --vm is refused on the VM path
        if dry_run:
            plain = parsed.without(args, slurm.DRY_RUN)
            return core.print_dry_run("sbatch", real, plain, script if on_stdin else None)
        exec_sbatch(real, args, script if on_stdin else None)
    return submit_vm(args, parsed, script, real, environ, dry_run=dry_run)


def read_job_script(parsed: slurm.Parsed, environ: Mapping[str, str]) -> tuple[bytes | None, bool]:
    """(script or None if unreadable here, whether it came from stdin), as sbatch finds it."""
    wrap = slurm.last_value(parsed.options(), "wrap")
    if wrap is not None:
        return slurm.wrap_script(wrap), False
    return core.read_script(script_path(parsed, environ))


def script_path(parsed: slurm.Parsed, environ: Mapping[str, str]) -> str | None:
    name = parsed.script()
    if name is None:
        return None
    try:
        cwd = os.getcwd()
    except OSError:  # sbatch fails too; it says so itself
        return name
    return slurm.resolve_script(name, cwd, environ.get("PATH", ""), _is_file)


def _is_file(path: str) -> bool:
    try:
        return (os.stat(path).st_mode & 0o170000) != 0o040000
    except OSError:
        return False


def ours(parsed: slurm.Parsed, script: bytes | None) -> set[str]:
    """Which of --vm, a misspelt --vm and --vm-dry-run (VM, BAD_VM, DRY_RUN) occur on the
    command line or in a directive; qsub's #PBS -vm counts as VM (refused later)."""
    kinds = parsed.ours()
    if script is None or not argv.may_name_vm(script):  # the cheap test settles most jobs
        return kinds
    lines = core.script_lines(script)
    found = slurm.find_directives(lines)
    torque_vm = {slurm.VM} if slurm.torque_vm_lines(lines, found) else set()
    return kinds | found.parsed.ours() | torque_vm


def exec_sbatch(real: str, args: Sequence[str], stdin_data: bytes | None) -> NoReturn:
    """Become the real sbatch with ``args`` unchanged (tests replace this)."""
    core.exec_real("sbatch", real, args, stdin_data)


# ---------------------------------------------------------------------------------------
# VM jobs (everything below is off the fast path and may import freely)
# ---------------------------------------------------------------------------------------


def submit_vm(
    args: list[str],
    parsed: slurm.Parsed,
    script: bytes | None,
    real: str,
    environ: Mapping[str, str],
    *,
    dry_run: bool,
) -> int:
    """Validate everything, then exec the real sbatch with the job wrapper on its stdin."""
    core.enable_site()
    from vmwrapper import submitvm  # noqa: PLC0415
    from vmwrapper.cli.sbatch_vm import SlurmVmJob  # noqa: PLC0415

    job = SlurmVmJob(args, parsed, script, submitvm.load_config(), environ)
    return submitvm.submit(job, "sbatch", real, dry_run, exec_sbatch)
