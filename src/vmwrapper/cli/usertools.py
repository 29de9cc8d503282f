"""User tools: ``status [JOBID]``, ``console JOBID vmN``, ``ssh JOBID vmN [CMD...]``.

They run as the user, with the user's rights only: the job's files on this node are owned by
the job user (key 0600, console log 0640), inside root-owned directories nobody can list.
Another user's job is refused with a clear message, and the file system would refuse anyway.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from vmwrapper import config as config_mod
from vmwrapper import proc
from vmwrapper.errors import RequestError
from vmwrapper.plan import job_tag


def _job_dir(config: config_mod.Config, jobid: str) -> Path:
    return Path(config.STATE_DIR) / "jobs" / job_tag(jobid)


def _vms(config: config_mod.Config, jobid: str) -> list[dict[str, Any]]:
    info_file = _job_dir(config, jobid) / "user" / "vms.json"
    try:
        owner = info_file.stat().st_uid
        data = json.loads(info_file.read_text())
    except (OSError, ValueError):
        raise RequestError([f"job {jobid}: no VMs of it on this node"]) from None
    if owner != os.getuid() and os.getuid() != 0:
        raise RequestError([f"job {jobid} is not yours"])
    return list(data["vms"])


def _pick(vms: list[dict[str, Any]], name: str, jobid: str) -> dict[str, Any]:
    for vm in vms:
        if name in (vm["hostname"], vm["name"], str(vm["index"])):
            return vm
    names = ", ".join(vm["hostname"] for vm in vms)
    raise RequestError([f"job {jobid} has no VM {name!r} (it has {names})"])


def status(args: list[str]) -> int:
    config = config_mod.load()
    jobid = args[0] if args else os.environ.get("PBS_JOBID") or os.environ.get("VMW_JOBID", "")
    if not jobid:
        raise RequestError(["usage: vm-wrapper status JOBID"])
    from vmwrapper.node import ssh_banner  # noqa: PLC0415

    for vm in _vms(config, jobid):
        up = "answering" if ssh_banner(vm["address"], timeout=1) else "not answering"
        print(f"{vm['hostname']:<6} {vm['address']:<15} rank {vm['rank']}  "
              f"{vm['vcpus']} vCPU {vm['ram_mb']} MB  {up}")  # fmt: skip
    for timeline in sorted(_job_dir(config, jobid).glob("node*/timeline.json")):
        _print_timeline(timeline)
    return 0


def _print_timeline(path: Path) -> None:
    try:
        events: dict[str, float] = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    start = min(events.values())
    print(f"boot timeline ({path.parent.name}, started {time.ctime(start)}):")
    for name, when in sorted(events.items(), key=lambda item: item[1]):
        print(f"  +{when - start:7.2f} s  {name}")


def console(args: list[str]) -> int:
    if len(args) != 2:
        raise RequestError(["usage: vm-wrapper console JOBID vmN"])
    config = config_mod.load()
    jobid, name = args
    vm = _pick(_vms(config, jobid), name, jobid)
    log = _job_dir(config, jobid) / f"node{vm['rank']}" / f"{vm['name']}.console.log"
    try:
        fd = os.open(log, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as err:
        raise RequestError([f"{vm['hostname']}: no console log here ({err.strerror})"]) from None
    with os.fdopen(fd, "rb") as handle:
        sys.stdout.buffer.write(handle.read())
    return 0


def ssh(args: list[str]) -> int:
    if len(args) < 2:
        raise RequestError(["usage: vm-wrapper ssh JOBID vmN [COMMAND...]"])
    config = config_mod.load()
    jobid, name, command = args[0], args[1], args[2:]
    vm = _pick(_vms(config, jobid), name, jobid)
    import pwd  # noqa: PLC0415

    from vmwrapper.jobrun import load_job_files, ssh_argv  # noqa: PLC0415

    user = pwd.getpwuid(os.getuid()).pw_name
    files = load_job_files(config, jobid)
    argv = ssh_argv(files, user, vm["address"], tty=not command and sys.stdin.isatty())
    child = proc.spawn([*argv, *command])
    return child.wait()
