"""``qsub``: the wrapper users run (via src/scripts/qsub). VM jobs get a job wrapper script.

Fast path (no ``-vm`` anywhere, the common case): read four settings with a tiny reader,
find the script the way Torque does, look for ``-vm`` in its directives, and exec the real
qsub with the very same argv (and, if we had to read the script from stdin, the very same
bytes on stdin). Nothing heavier than ``os`` is imported on that path.

``--vm-dry-run``, on the command line or in a directive, prints what would be submitted
and submits nothing, for plain and VM jobs alike.

VM path: full config, validation of every input (all problems at once), the job wrapper
script rendered from templates/jobwrapper.sh.tmpl, then exec of the real qsub with the wrapper
on its stdin. Handing the script over on stdin (a memfd) instead of a temp file means there
is nothing to clean up, the user's shell waits on the real qsub itself (signals, exit code,
job control), and no file is ever left behind, even on SIGKILL. The job name is passed with
``-N`` (the script's basename, or STDIN), so output files stay ``<name>.o<id>``.
"""

from __future__ import annotations

import os
import sys

from vmwrapper import submitcore as core
from vmwrapper.batch import argv, torque

# Not typing.TYPE_CHECKING: importing typing costs ~5 ms (re, collections) on the fast path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import NoReturn

# The settings the pass-through path needs, with their schema defaults (a test keeps these
# equal to config.SCHEMA). Anything unusual about them sends us to the full parser.
FAST_DEFAULTS: dict[str, str] = {
    "DISABLE_VM_WRAPPER": "false",
    "SERVER_HOSTNAME": "",
    "REAL_QSUB_ON_SERVER": "/usr/bin/qsub",
    "REAL_QSUB_ON_NODES": "/usr/bin/qsub",
}


def main(args: list[str] | None = None, self_path: str | None = None) -> NoReturn:
    """Entry of src/scripts/qsub: never a traceback, one line per problem."""
    words = sys.argv[1:] if args is None else args
    core.run_main(lambda: submit(words, self_path or sys.argv[0], os.environ))


def run(args: list[str]) -> int:
    """``vm-wrapper qsub ...`` (errors are reported by cli.main.run_guarded)."""
    return submit(args, sys.argv[0], os.environ)


def submit(args: list[str], self_path: str, environ: Mapping[str, str]) -> int:
    """Pass the job through or submit it as a VM job. Returns only on dry runs."""
    settings = core.load_settings(environ, FAST_DEFAULTS)
    real = real_qsub(settings, self_path)
    if core.is_true(settings["DISABLE_VM_WRAPPER"]):
        exec_qsub(real, args, None)
    parsed = torque.parse_argv(args, permute="POSIXLY_CORRECT" not in environ)
    interactive = torque.last_value(parsed.options(), "I") is not None
    kinds, script, on_stdin = find_ours(parsed, args, interactive)
    dry_run = torque.DRY_RUN in kinds
    if not kinds & {torque.VM, torque.BAD_VM}:  # a misspelt -vm is refused on the VM path
        if dry_run:
            plain = parsed.without(args, torque.DRY_RUN)
            return core.print_dry_run("qsub", real, plain, script if on_stdin else None)
        exec_qsub(real, args, script if on_stdin else None)
    return submit_vm(args, parsed, script, real, dry_run=dry_run)


def real_qsub(settings: Mapping[str, str], self_path: str) -> str:
    """Torque's qsub for this host; refuses to point back at this wrapper."""
    host = os.uname().nodename.partition(".")[0].lower()
    server = settings["SERVER_HOSTNAME"]
    on_server = not server or server.partition(".")[0].lower() == host
    key = "REAL_QSUB_ON_SERVER" if on_server else "REAL_QSUB_ON_NODES"
    return core.refuse_self(key, settings[key], self_path, "qsub")


def find_ours(
    parsed: torque.Parsed, args: list[str], interactive: bool
) -> tuple[set[str], bytes | None, bool]:
    """(which of -vm, a misspelt -vm and --vm-dry-run occur on the command line or in a
    directive; the script; whether it came from stdin).

    With -vm on the command line the script is getopt's (our words would mislead Torque's
    pre-scan; TorqueVmJob checks that both agree). Else it is the one Torque's pre-scan
    reads, with its prefix and getopt's; and getopt's file too, if it names another one:
    a -vm there must not pass silently either.
    """
    prefixes = {torque.directive_prefix(parsed)}
    if parsed.ours() & {torque.VM, torque.BAD_VM}:
        script, on_stdin = core.read_script(parsed.script(), stdin_ok=not interactive)
        return scan(parsed.ours(), script, prefixes), script, on_stdin
    index, prefix = torque.prescan(args)
    path = None if index is None else args[index]
    script, on_stdin = core.read_script(path, stdin_ok=not interactive)
    kinds = scan(parsed.ours(), script, prefixes | {prefix})
    other = parsed.script()
    if other is not None and other != path:
        kinds = scan(kinds, core.read_script(other)[0], prefixes | {prefix})
    return kinds, script, on_stdin


def scan(kinds: set[str], script: bytes | None, prefixes: set[str]) -> set[str]:
    """``kinds`` and our options in the directives of ``script``, read with each prefix."""
    if script is None or not argv.may_name_vm(script):  # the cheap test settles most jobs
        return kinds
    lines = core.script_lines(script)
    for prefix in prefixes:
        directives, _ = torque.find_directives(lines, prefix)
        kinds = kinds.union(*(d.parsed.ours() for d in directives))
    return kinds


def exec_qsub(real: str, args: Sequence[str], stdin_data: bytes | None) -> NoReturn:
    """Become the real qsub with ``args`` unchanged (tests replace this)."""
    core.exec_real("qsub", real, args, stdin_data)


# ---------------------------------------------------------------------------------------
# VM jobs (everything below is off the fast path and may import freely)
# ---------------------------------------------------------------------------------------


def submit_vm(
    args: list[str],
    parsed: torque.Parsed,
    script: bytes | None,
    real: str,
    *,
    dry_run: bool,
) -> int:
    """Validate everything, then exec the real qsub with the job wrapper on its stdin."""
    core.enable_site()
    from vmwrapper import submitvm  # noqa: PLC0415
    from vmwrapper.cli.qsub_vm import TorqueVmJob  # noqa: PLC0415

    job = TorqueVmJob(args, parsed, script, submitvm.load_config())
    return submitvm.submit(job, "qsub", real, dry_run, exec_qsub)
