"""``vm-wrapper job-run``: what the generated job wrapper script execs (as the job user)."""

from __future__ import annotations

import sys

from vmwrapper import config as config_mod
from vmwrapper.jobrun import main_job_run


def run(args: list[str]) -> int:
    """The payload comes on stdin, or (interactive jobs, whose stdin is the terminal) from
    the file named by --payload-file."""
    if args[:1] == ["--payload-file"] and len(args) == 2:
        with open(args[1], encoding="ascii") as handle:
            return main_job_run(handle.read(), config_mod.load())
    if args:
        print("usage: vm-wrapper job-run [--payload-file FILE]", file=sys.stderr)
        return 2
    return main_job_run(sys.stdin.read(), config_mod.load())
