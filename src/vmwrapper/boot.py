"""Boot one node's VMs: disks, seeds, domains, readiness, and the user's files.

Each resource is journalled (state.record) before it is created, so teardown can remove
exactly what exists even after a crash at any point.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from vmwrapper import disks, keys
from vmwrapper.config import Config
from vmwrapper.errors import JobGone, NodeError, PermanentJobError, RequestError
from vmwrapper.hypervisor import BootWatch, Hypervisor, kvm_runs_guests, wait_ready
from vmwrapper.plan import JobPlan, VmSpec
from vmwrapper.requestblock import RequestBlock
from vmwrapper.state import DIR_MODE, NodeState, check_shared_parent, ensure_root_dir, write_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeInputs:
    """Everything the per-VM steps share."""

    image: disks.BaseImage
    accel: str
    secret: bytes
    user_key: keys.KeyPair
    metadata: dict[str, Any]
    disk: disks.UserDisk | None
    shares: tuple[tuple[str, str], ...]  # (host path, mount tag)
    known_hosts: list[str]  # every VM's derived host key: derived once per node
    overlay_dir: Path
    key_scope: str  # what the job's keys derive from (keys.job_scope)


class BootNode(Protocol):
    """What the lifecycle calls to create one node's VMs (boot_node; tests pass others)."""

    def __call__(
        self, *, plan: JobPlan, block: RequestBlock, state: NodeState, hypervisor: Hypervisor,
        config: Config, until: float, gone: Callable[[], bool],
    ) -> None: ...  # fmt: skip


def boot_node(
    *, plan: JobPlan, block: RequestBlock, state: NodeState, hypervisor: Hypervisor,
    config: Config, until: float, gone: Callable[[], bool],
) -> None:  # fmt: skip
    """Create this node's VMs and wait until each is ready, by ``until``
    (time.monotonic()); JobGone as soon as ``gone()`` says the job ended."""
    began = time.monotonic()
    hypervisor.conn  # noqa: B018  (libvirt must answer before we create anything)
    inputs = _gather_inputs(plan, block, state, config)
    state.mark("inputs_checked")
    watches: list[BootWatch] = []

    def start(vm: VmSpec) -> None:
        watches.append(
            _start_vm(vm, plan=plan, inputs=inputs, state=state, hypervisor=hypervisor,
                      config=config)
        )  # fmt: skip

    if config.PARALLEL and len(plan.vms) > 1:
        with ThreadPoolExecutor(max_workers=len(plan.vms)) as pool:
            list(pool.map(start, plan.vms))
    else:
        for vm in plan.vms:
            start(vm)
    if gone():
        raise JobGone()
    started = time.monotonic()
    wait_ready(hypervisor, watches, until, lambda n, e: state.mark(f"{n}:{e}"), gone)
    state.mark("node_ready")
    log.info(
        "job %s rank %d: %d VM(s) ready %.1f s after their start (%.2f s to start them)",
        plan.alloc.jobid, plan.alloc.rank, len(watches), time.monotonic() - started,
        started - began,
    )  # fmt: skip
    for watch in watches:
        give_console_to_user(watch.console_file, plan.alloc.uid, plan.alloc.gid)
    if plan.alloc.rank == 0:
        write_user_files(plan, inputs, state, block)


def _gather_inputs(
    plan: JobPlan, block: RequestBlock, state: NodeState, config: Config
) -> NodeInputs:
    request = plan.request
    image = _image(request.img, config, plan.alloc.uid)
    secret = keys.read_secret(Path(config.SITE_SECRET))
    scope = keys.job_scope(plan.alloc.user, plan.alloc.jobid, block.submission_id)
    disk = None
    if request.disk and plan.alloc.rank == 0:
        disk = disks.check_user_disk(request.disk, plan.alloc.uid)
        lock_disk(disk, plan.alloc.jobid, state)
    check_host_memory(plan, config)
    return NodeInputs(
        image=_private_boot_files(image, state),
        accel=choose_accel(request.hypervisor, config, image, state),
        secret=secret,
        user_key=keys.user_key(secret, scope),
        metadata=parse_user_metadata(block.files.get("metadata"), config),
        disk=disk,
        shares=shares_for(config, request.mounts),
        known_hosts=_known_hosts(plan, secret, scope),
        overlay_dir=_overlay_dir(plan, state, config),
        key_scope=scope,
    )


def _overlay_dir(plan: JobPlan, state: NodeState, config: Config) -> Path:
    """The job's overlay directory. In RAM it lives in a directory every user may write
    (/dev/shm): a fixed name there could be created first by anyone, so each job gets a
    fresh, unguessable one, journalled before it exists."""
    if plan.request.fs_type != "ramdisk":
        overlay_dir = ensure_root_dir(Path(config.OVERLAY_DIR)) / plan.tag
        state.record("dir", str(overlay_dir))
        return ensure_root_dir(overlay_dir)
    parent = check_shared_parent(Path(config.RAMDISK_DIR))
    overlay_dir = parent / f"vm-wrapper-{plan.tag}-{secrets.token_hex(8)}"
    state.record("dir", str(overlay_dir))
    overlay_dir.mkdir(mode=0o700)  # fails, never follows, if anything holds the name
    os.chmod(overlay_dir, DIR_MODE)  # umask 077 in hooks; libvirt must reach it by name
    return overlay_dir


def lock_disk(disk: disks.UserDisk, jobid: str, state: NodeState) -> None:
    """One job at a time per persistent disk (two writers would corrupt it). The lock is
    keyed by device and inode, so no path trick gets around it, and journalled so that
    teardown releases it."""
    locks = ensure_root_dir(state.root / "locks", 0o700)
    lock = locks / f"disk-{disk.device}-{disk.inode}"
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        holder = lock.read_text(errors="replace").strip() or "another job"
        raise NodeError(f"disk={disk.path}: in use by job {holder}") from None
    state.record("file", str(lock))
    with os.fdopen(fd, "w") as handle:
        handle.write(jobid)


def check_host_memory(plan: JobPlan, config: Config) -> None:
    """The node must hold this node's VMs, QEMU's own overhead and the host's reserve."""
    need = plan.request.host_ram_needed_mb(config)
    with open("/proc/meminfo", encoding="ascii") as handle:
        total_kb = next(int(line.split()[1]) for line in handle if line.startswith("MemTotal:"))
    if total_kb // 1024 < need:
        raise PermanentJobError(
            f"this node has {total_kb // 1024} MB of RAM; the job's VMs need {need} MB "
            f"({config.HOST_OS_RAM_MB} MB for the host + {plan.request.vms_per_node} x "
            f"({plan.request.ram_mb} MB + {config.QEMU_OVERHEAD_MB} MB QEMU overhead))"
        )


def _image(name: str, config: Config, uid: int) -> disks.BaseImage:
    if name.startswith("/"):
        own = disks.check_user_disk(name, uid)
        return disks.BaseImage(own.path, own.fmt, None, None, "", user_size=own.size)
    return disks.resolve_admin_image(name, config.IMAGE_POOL)


def _private_boot_files(image: disks.BaseImage, state: NodeState) -> disks.BaseImage:
    """This node's own copy of the image's kernel and initrd (~15 MB, milliseconds).

    libvirt hands every file a domain uses to QEMU's user (here the job user) and takes it
    back afterwards; two jobs of different users sharing one kernel file would collide
    ("already in use" with another owner). The shared base image itself is exempt in the
    XML (relabel='no' on its source) and is only ever read through the job's overlay.
    """
    if image.kernel is None or image.initrd is None:
        return image
    copies = []
    for source in (image.kernel, image.initrd):
        target = state.node_dir / f"boot-{source.name}"
        state.record("file", str(target))
        write_file(target, source.read_bytes(), 0o644)
        copies.append(target)
    return dataclasses.replace(image, kernel=copies[0], initrd=copies[1])


def choose_accel(hypervisor: str, config: Config, image: disks.BaseImage, state: NodeState) -> str:
    """kvm or tcg. The probe result is cached per host boot (KVM does not come and go)."""
    if config.ACCEL != "auto":
        return config.ACCEL
    if hypervisor == "qemu" or image.kernel is None:
        return "tcg" if hypervisor == "qemu" else "kvm"
    cache = state.root / "accel.json"
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    try:
        cached = json.loads(cache.read_text())
        if cached.get("boot_id") == boot_id:
            return str(cached["accel"])
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    accel = "kvm" if kvm_runs_guests(image.kernel) else "tcg"
    if accel == "tcg":
        log.warning("KVM cannot run guests on this host; falling back to QEMU TCG")
    write_file(cache, json.dumps({"boot_id": boot_id, "accel": accel}).encode(), 0o644)
    return accel


def parse_user_metadata(blob: bytes | None, config: Config) -> dict[str, Any]:
    """The user's cloud-config: a mapping with only the keys the admin allows."""
    from vmwrapper import usermetadata  # noqa: PLC0415

    if not blob:
        return {}
    data = usermetadata.load(blob, config.MAX_USER_FILE_KB * 1024)
    bad = sorted(str(k) for k in data if k not in config.USER_METADATA_KEYS)
    if bad:
        allowed = " ".join(config.USER_METADATA_KEYS) or "none"
        raise RequestError(
            [f"metadata: key {k!r} is not allowed (allowed: {allowed})" for k in bad]
        )
    return data


def shares_for(config: Config, user_mounts: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """(host directory, 9p tag): the admin's SHARED_MOUNTS, then the user's own mounts
    (validated against USER_MOUNT_ROOTS); mounted at the same path in the guest."""
    missing = [path for path in user_mounts if not Path(path).is_dir()]
    if missing:
        raise RequestError([f"mounts={path!r}: no such directory on this node" for path in missing])
    paths = [p for p in config.SHARED_MOUNTS if Path(p).is_dir()]
    paths += [p for p in user_mounts if p not in paths]
    return tuple((path, f"vmwshare{i}") for i, path in enumerate(paths))


def _start_vm(
    vm: VmSpec, *, plan: JobPlan, inputs: NodeInputs, state: NodeState, hypervisor: Hypervisor,
    config: Config,
) -> BootWatch:  # fmt: skip
    from vmwrapper import render, seed, xmlcheck  # noqa: PLC0415
    from vmwrapper.vmfiles import VmPaths  # noqa: PLC0415

    paths = VmPaths.for_vm(vm, state.node_dir, inputs.overlay_dir, inputs.disk)
    nonce = secrets.token_hex(16)
    qemu_owner = (plan.alloc.uid, plan.alloc.gid)  # QEMU runs as the job user (render.py)
    state.record("file", str(paths.overlay))
    disks.create_overlay(inputs.image, paths.overlay, qemu_owner)
    state.mark(f"{vm.name}:overlay")
    state.record("file", str(paths.seed))
    seed.write_seed(
        vm=vm, plan=plan, config=config, paths=paths, nonce=nonce,
        user_public_key=inputs.user_key.public_openssh,
        user_private_key=inputs.user_key.private_openssh,
        host_key=keys.host_key(inputs.secret, inputs.key_scope, vm.index),
        known_hosts=inputs.known_hosts, shares=inputs.shares,
        user_metadata=inputs.metadata, owner=qemu_owner,
    )  # fmt: skip
    state.mark(f"{vm.name}:seed")
    for path in (paths.console, paths.ready):
        state.record("file", str(path))
    xml = render.render_domain(
        vm=vm, plan=plan, config=config, paths=paths, accel=inputs.accel, image=inputs.image,
        shares=inputs.shares,
    )  # fmt: skip
    xmlcheck.validate_domain(xml)
    if paths.disk is not None:  # its shutdown must be graceful: the user's data is on it
        state.record("keeps-data", vm.name)
    state.record("domain", vm.name)
    hypervisor.start(xml)
    state.mark(f"{vm.name}:define")
    return BootWatch(vm.name, paths.ready, paths.console, nonce, hostname=vm.hostname)


def _known_hosts(plan: JobPlan, secret: bytes, scope: str) -> list[str]:
    hosts = [(vm.index, vm.hostname, vm.address) for vm in plan.all_vms]
    return keys.known_hosts_lines(secret, scope, hosts)


def give_console_to_user(console: Path, uid: int, gid: int) -> None:
    """The console log is the user's to read (`vm-wrapper console`). libvirt takes the file
    back to root 0600 when the domain starts, so hand it over once the guest is up; virtlogd
    keeps appending through its open descriptor. The root 0711 directory stops the user
    from swapping the file for a link; O_NOFOLLOW stops us from following one."""
    try:
        fd = os.open(console, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        log.warning("console log %s: %s", console, err.strerror)
        return
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, 0o640)
    finally:
        os.close(fd)


def write_user_files(
    plan: JobPlan, inputs: NodeInputs, state: NodeState, block: RequestBlock
) -> None:
    """What the job user needs on the first node: key, known_hosts, the VM list, and the
    vm_prologue/vm_epilogue scripts embedded at submission (the user's own content)."""
    ensure_root_dir(state.user_dir)
    owner = (plan.alloc.uid, plan.alloc.gid)
    for name in ("vm_prologue", "vm_epilogue"):
        if block.files.get(name):
            write_file(state.user_dir / name, block.files[name], 0o600, owner)
    key = inputs.user_key.private_openssh.encode()
    write_file(state.user_dir / "id_ed25519", key, 0o600, owner)
    known = "\n".join(inputs.known_hosts) + "\n"
    write_file(state.user_dir / "known_hosts", known.encode(), 0o644, owner)
    vms = [
        {"index": vm.index, "hostname": vm.hostname, "address": vm.address, "rank": vm.rank,
         "vcpus": vm.vcpus, "ram_mb": vm.ram_mb, "name": vm.name}
        for vm in plan.all_vms
    ]  # fmt: skip
    info = {"jobid": plan.alloc.jobid, "vms": vms, "written": time.time()}
    write_file(state.user_dir / "vms.json", json.dumps(info, indent=1).encode(), 0o644, owner)
