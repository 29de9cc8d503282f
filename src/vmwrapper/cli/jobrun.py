"""``vm-wrapper job-run``: what the generated job wrapper script execs (as the job user)."""

from __future__ import annotations

import os
import sys

from vmwrapper import config as config_mod
from vmwrapper.jobrun import main_job_run


def run(args: list[str]) -> int:
    """The payload comes on stdin, or (interactive jobs, whose stdin is the terminal) from
    the file named by --payload-file."""
    if args == ["--interactive"]:  # qsub -I -vm: libexec/interactive-job, on the terminal
        from vmwrapper.jobrun import run_in_vm  # noqa: PLC0415

        return run_in_vm({"v": 1, "interactive": True}, config_mod.load(), dict(os.environ))
    if args[:1] == ["--payload-file"] and len(args) == 2:
        with open(args[1], encoding="ascii") as handle:
            return main_job_run(handle.read(), config_mod.load())
    if args:
        print("usage: vm-wrapper job-run [--payload-file FILE | --interactive]", file=sys.stderr)
        return 2
    return main_job_run(sys.stdin.read(), config_mod.load())
