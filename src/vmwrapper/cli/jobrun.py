"""``vm-wrapper job-run``: what the generated job wrapper script execs (as the job user)."""

from __future__ import annotations

import sys

from vmwrapper import config as config_mod
from vmwrapper.jobrun import main_job_run


def run(args: list[str]) -> int:
    if args:
        print("usage: vm-wrapper job-run  (the payload comes on stdin)", file=sys.stderr)
        return 2
    return main_job_run(sys.stdin.read(), config_mod.load())
