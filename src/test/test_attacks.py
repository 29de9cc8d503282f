"""Issue 9's attacks on the root hooks, each as an unprivileged user would mount it.

The disk race and the /dev/shm squat run against real libvirt and QEMU through the real
mom_priv shims; the forged requests go through the real hook entry. Each test failed on
the code before issue 9 (see the docstrings) and must keep failing if the hole reopens.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_torque_vms import make_site, refused
from torque_harness import Job, JobUser
from vmtest import job_run, leftovers, request_fields, system_config

from vmwrapper import requestblock
from vmwrapper.config import Config
from vmwrapper.hypervisor import Hypervisor
from vmwrapper.node import node_state
from vmwrapper.plan import job_tag

pytestmark = pytest.mark.needs("root", "libvirtd", "vmnet", "guest-image")
SUB_ID = "0123456789abcdef0123456789abcdef"


def forged(vm: dict[str, str], files: dict[str, bytes] | None = None) -> dict[str, Any]:
    """Job fields of a request written by hand, not by our wrapper."""
    return request_fields(vm, files, body="/bin/true\n")


def refused_once(
    site_base: Path, user: JobUser, fields: dict[str, Any], jobid: str, config: Config
) -> str:
    """Run a forged job: refused at its first start, said once, no traceback, no VM."""
    site = make_site(site_base, 1)
    job = Job(user=user, jobid=jobid, ppn=2, payload=job_run(), **fields)
    text = refused(site.run(job, max_starts=3))
    assert "internal error" not in text, text
    assert leftovers(config, jobid) == []
    return text


# -- 9.1: the persistent disk swapped for a link to a root-only file during the boot ------

ATTACKER = r"""
import os, sys, time
disk, secret, go, stop = sys.argv[1:5]
spare, link = disk + ".spare", disk + ".link"
while not os.path.exists(go):
    time.sleep(0.001)
swaps = 0
while not os.path.exists(stop):
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(secret, link)
    os.rename(disk, spare)
    os.rename(link, disk)            # the disk path now names the root-only file
    try:
        with open(disk, "ab") as handle:   # if root handed it over: take it
            handle.write(b"owned")
    except OSError:
        pass
    time.sleep(0.002)
    os.rename(spare, disk)           # and back, so root's own checks see the real disk
    swaps += 1
    time.sleep(0.001)
print(swaps)
"""


def _watch_owner(path: Path, seen: set[tuple[int, int, int]], stop: threading.Event) -> None:
    while not stop.is_set():
        info = os.lstat(path)
        seen.add((info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)))
        time.sleep(0.0005)


def _when_overlay_exists(config: Config, jobid: str, go: Path, stop: threading.Event) -> None:
    overlays = Path(config.OVERLAY_DIR) / job_tag(jobid)
    while not stop.is_set():
        if overlays.is_dir() and any(overlays.iterdir()):
            go.touch()
            return
        time.sleep(0.005)


def test_disk_swapped_for_a_link_during_the_boot_never_hands_over_a_root_file(
    user: JobUser, site_base: Path
) -> None:
    """Before issue 9 libvirt chowned whatever the disk path named at domain start: the
    root-only file became the user's, who appended to it (won on the first try)."""
    secret = Path("/var/tmp") / f"vmw-root-only-{os.getpid()}"
    secret.write_bytes(os.urandom(4096))
    secret.chmod(0o600)
    digest = hashlib.sha256(secret.read_bytes()).hexdigest()
    home = Path(user.home)
    disk, go, stop_file = home / "vmw-race.raw", home / ".vmw-race-go", home / ".vmw-race-stop"
    for path in (disk, go, stop_file, Path(f"{disk}.spare"), Path(f"{disk}.link")):
        path.unlink(missing_ok=True)
    disk.write_bytes(b"\0" * (1 << 20))
    os.chown(disk, user.uid, user.gid)
    jobid = "901.vm"
    stop, seen = threading.Event(), set()
    with system_config(TIMEOUT="8", SHUTDOWN_TIMEOUT="1", MAX_PROLOGUE_ATTEMPTS="1") as config:
        attacker = subprocess.Popen(
            ["runuser", "-u", user.name, "--", "python3", "-c", ATTACKER,
             str(disk), str(secret), str(go), str(stop_file)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        threads = [
            threading.Thread(target=_watch_owner, args=(secret, seen, stop)),
            threading.Thread(target=_when_overlay_exists, args=(config, jobid, go, stop)),
        ]
        for thread in threads:
            thread.start()
        try:
            site = make_site(site_base, 1)
            vm = {"img": "debian12", "vcpus": "1", "ram": "1G", "disk": str(disk)}
            job = Job(user=user, jobid=jobid, ppn=2, payload=job_run(), **forged(vm))
            out = site.run(job, max_starts=2)
        finally:
            stop_file.touch()
            swaps = int(attacker.communicate(timeout=30)[0].strip() or 0)
            stop.set()
            for thread in threads:
                thread.join()
        assert go.exists(), "the overlay never appeared: the attack did not run"
        assert swaps > 20, f"only {swaps} swaps during the boot"
        refused(out)  # TIMEOUT=8: no guest is ready that fast
        assert leftovers(config, jobid) == []
    try:
        assert seen == {(0, 0, 0o600)}, f"the root-only file changed hands: {seen}"
        assert hashlib.sha256(secret.read_bytes()).hexdigest() == digest
    finally:
        secret.unlink()
        for path in (disk, go, stop_file, Path(f"{disk}.spare"), Path(f"{disk}.link")):
            path.unlink(missing_ok=True)


# -- 9.5: a name in /dev/shm created first by a user ---------------------------------------


def test_a_squatted_name_in_dev_shm_does_not_block_ramdisk_jobs(
    user: JobUser, site_base: Path
) -> None:
    """Before issue 9 any user could mkdir /dev/shm/vm-wrapper and every fs_type=ramdisk
    job failed on that node."""
    squat = Path("/dev/shm/vm-wrapper")
    created = not squat.exists()
    if created:
        subprocess.run(["runuser", "-u", user.name, "--", "mkdir", str(squat)], check=True)
    try:
        with system_config(TIMEOUT="5", SHUTDOWN_TIMEOUT="1", MAX_PROLOGUE_ATTEMPTS="1") as cfg:
            site = make_site(site_base, 1)
            vm = {"img": "debian12", "vcpus": "1", "ram": "1G", "fs_type": "ramdisk"}
            job = Job(user=user, jobid="905.vm", ppn=2, payload=job_run(), **forged(vm))
            out = site.run(job, max_starts=2)
            # It got as far as booting (the guest cannot be ready in 5 s under TCG).
            assert "not ready within" in refused(out)
            assert leftovers(cfg, job.jobid) == []
    finally:
        if created:
            squat.rmdir()


# -- 9.2: the VM is the user's, and only theirs --------------------------------------------


def _while_running(
    config: Config, jobid: str, seen: dict[str, object], stop: threading.Event
) -> None:
    """Once the domain runs: who owns its seed, can another user read it, who owns the
    directories shared into it."""
    node_dir = node_state(config, jobid, 0).node_dir
    hypervisor = Hypervisor(config.LIBVIRT_URI)
    while not stop.is_set():
        seeds = list(node_dir.glob("*-seed.iso")) if node_dir.is_dir() else []
        names = [n for n, owner in hypervisor.our_domains().items() if owner == jobid]
        if seeds and names and hypervisor.is_active(names[0]):
            info = os.stat(seeds[0])
            seen["seed"] = (info.st_uid, stat.S_IMODE(info.st_mode))
            other = subprocess.run(["runuser", "-u", "nobody", "--", "cat", str(seeds[0])],
                                   capture_output=True, check=False)  # fmt: skip
            seen["other_user_reads_seed"] = other.returncode == 0
            seen["share_owners"] = {p: os.stat(p).st_uid for p in ("/home", MOUNT)}
            return
        time.sleep(0.05)


MOUNT = "/var/tmp/vmw-mount-root/data"


def test_the_seed_is_the_job_users_alone_and_no_shared_directory_changes_hands(
    user: JobUser, site_base: Path
) -> None:
    """The user may rewrite their own seed (root in their guest: the model), but nobody else
    may read it (it holds the job's private keys), and libvirt chowns no shared directory
    (/home and a user mount, root-owned here, are 9p sources of the running domain)."""
    Path(MOUNT).mkdir(parents=True, exist_ok=True)
    os.chmod(MOUNT, 0o755)
    jobid, seen, stop = "906.vm", {}, threading.Event()
    settings = {"TIMEOUT": "8", "SHUTDOWN_TIMEOUT": "1", "MAX_PROLOGUE_ATTEMPTS": "1",
                "USER_MOUNT_ROOTS": str(Path(MOUNT).parent)}  # fmt: skip
    with system_config(**settings) as config:
        watcher = threading.Thread(target=_while_running, args=(config, jobid, seen, stop))
        watcher.start()
        try:
            site = make_site(site_base, 1)
            vm = {"img": "debian12", "vcpus": "1", "ram": "1G", "mounts": MOUNT}
            refused(site.run(Job(user=user, jobid=jobid, ppn=2, payload=job_run(), **forged(vm))))
        finally:
            stop.set()
            watcher.join()
        assert leftovers(config, jobid) == []
    assert seen.get("seed") == (user.uid, 0o600), seen
    assert seen["other_user_reads_seed"] is False
    assert seen["share_owners"] == {"/home": 0, MOUNT: 0}


# -- 9.3 / 9.4: forged requests that used to requeue forever or dump tracebacks ------------


def test_a_kelvin_sign_in_ram_is_refused_not_requeued(user: JobUser, site_base: Path) -> None:
    """U+212A matched K under re.IGNORECASE, then raised KeyError: exit 2 forever."""
    with system_config() as config:
        vm = {"img": "debian12", "ram": "1048576\u212a"}
        text = refused_once(site_base, user, forged(vm), "903.vm", config)
        assert "ram=" in text


@pytest.mark.parametrize(
    ("name", "fields", "message"),
    [
        (
            "yaml",
            forged(
                {"img": "debian12", "metadata": "/m.yaml"},
                {"metadata": b"packages: " + b"[" * 1500 + b"]" * 1500},
            ),
            "nests deeper than 32",
        ),
        (
            "json",
            {"script": f"#!/bin/sh\n{requestblock.MARKER}{'[' * 1500}{']' * 1500}\n"},
            "nests deeper than 4",
        ),
    ],
)
def test_deeply_nested_input_is_refused_before_it_is_parsed(
    user: JobUser, site_base: Path, name: str, fields: dict[str, Any], message: str
) -> None:
    """1,500 levels raised RecursionError: exit 2, 2, then 1, and a 370 KB log a run."""
    jobid = f"904{len(name)}.vm"
    with system_config() as config:
        text = refused_once(site_base, user, fields, jobid, config)
        assert message in text
    log = Path("/var/log/vm-wrapper") / f"{jobid}.log"
    assert not log.exists() or log.stat().st_size < 20_000


def test_the_request_id_is_part_of_what_root_validates() -> None:
    line = requestblock.encode({"img": "x"}, {}, SUB_ID).replace(SUB_ID, "../../" + "a" * 26)
    with pytest.raises(Exception, match="32 lowercase hexadecimal"):
        requestblock.find(line.encode())
    assert json.loads(line.removeprefix(requestblock.MARKER))["id"].startswith("../")
