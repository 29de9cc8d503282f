"""Where one VM's files live on its node, and how the seed's files are written.

The hook creates them as root in 0711 directories: libvirt's qemu user must reach them by name,
nobody else may list them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmwrapper import proc
from vmwrapper.errors import NodeError

if TYPE_CHECKING:
    from vmwrapper.disks import UserDisk
    from vmwrapper.plan import VmSpec

DISK_FORMATS: tuple[str, ...] = ("raw", "qcow2")
# Name of the virtio-serial port the guest writes its ready line to; in the guest it is
# /dev/virtio-ports/<name>.
READY_CHANNEL = "org.vm-wrapper.ready"
GENISOIMAGE = "/usr/bin/genisoimage"
SEED_LABEL = "cidata"  # the volume label cloud-init's NoCloud source looks for


@dataclass(frozen=True)
class VmPaths:
    """Host paths of one VM's files."""

    overlay: Path  # qcow2 copy-on-write overlay over the base image: the guest's vda
    seed: Path  # NoCloud seed ISO (label cidata), attached read-only
    console: Path  # serial console log, written by virtlogd
    ready: Path  # host end of the readiness channel
    disk: Path | None = None  # the user's persistent disk, if any
    disk_format: str = "raw"  # stated by the caller from the file name, never probed

    def __post_init__(self) -> None:
        if self.disk_format not in DISK_FORMATS:
            raise NodeError(f"persistent disk format {self.disk_format!r} is not raw or qcow2")

    @classmethod
    def for_vm(
        cls, vm: VmSpec, node_dir: Path, overlay_dir: Path, disk: UserDisk | None = None
    ) -> VmPaths:
        """The usual layout. Only the job's first VM gets the persistent disk: attaching one
        image read-write to several guests would corrupt it."""
        persistent = disk if vm.index == 0 else None
        return cls(
            overlay=Path(overlay_dir) / f"{vm.name}.qcow2",
            seed=Path(node_dir) / f"{vm.name}-seed.iso",
            console=Path(node_dir) / f"{vm.name}.console.log",
            ready=Path(node_dir) / f"{vm.name}.ready",
            disk=persistent.path if persistent else None,
            disk_format=persistent.fmt if persistent else "raw",
        )


def dump_yaml(data: Mapping[str, Any]) -> str:
    """``yaml.safe_dump``, but multi-line strings (keys, scripts) as readable ``|`` blocks."""
    import yaml  # noqa: PLC0415  (lazy: +21 ms, only VM jobs pay)

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        # The emitter itself falls back to quoting when a block cannot hold the value.
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return yaml.dump(dict(data), Dumper=Dumper, default_flow_style=False, sort_keys=False)


def write_iso(
    iso: Path,
    files: Mapping[str, str],
    *,
    owner: tuple[int, int] | None = None,
    timeout: float = 30,
) -> None:
    """Write an ISO 9660 image (label cidata) holding ``files`` to ``iso``, mode 0600,
    owned by ``owner`` (QEMU's uid and gid) or by us.

    Inputs and output are built in a fresh 0700 directory beside ``iso`` and renamed into
    place, so no symlink planted at any of these names is ever followed.
    """
    _check_private_dir(iso.parent)
    work = Path(tempfile.mkdtemp(prefix=".seed-", dir=iso.parent))
    try:
        for name, text in files.items():
            _write_new(work / name, text.encode("utf-8"))
        built = work / "seed.iso"
        proc.run(
            [GENISOIMAGE, "-quiet", "-input-charset", "utf-8", "-output", str(built),
             "-volid", SEED_LABEL, "-joliet", "-rock", *(str(work / n) for n in files)],
            timeout=timeout,
        )  # fmt: skip
        fd = os.open(built, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if owner is not None:
                os.fchown(fd, *owner)
            os.fchmod(fd, 0o600)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(built, iso)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(work)


def _check_private_dir(directory: Path) -> None:
    """Ours (root in production), a real directory, writable by nobody else."""
    try:
        info = os.lstat(directory)
    except OSError as err:
        raise NodeError(f"seed directory {directory}: {err.strerror}") from None
    if (
        not stat.S_ISDIR(info.st_mode)
        or info.st_uid != os.geteuid()
        or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    ):
        raise NodeError(f"{directory} must be a real directory owned by us, writable only by us")


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
