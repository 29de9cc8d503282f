"""``vm-wrapper reap``: remove VMs and state of jobs that no longer run on this node (root).

Which jobs are gone is decided by batch/activity.py; when in doubt, nothing is reaped.
"""

from __future__ import annotations

import sys

from vmwrapper import config as config_mod


def run(args: list[str]) -> int:
    if args:
        print("usage: vm-wrapper reap", file=sys.stderr)
        return 2
    from vmwrapper import node  # noqa: PLC0415
    from vmwrapper.batch.activity import job_is_active  # noqa: PLC0415

    config = config_mod.load()
    for item in node.reap(config, lambda jobid: job_is_active(config, jobid)):
        print(f"vm-wrapper: reaped {item}", file=sys.stderr)
    return 0
