"""VM disks: qcow2 overlays over admin images, and checks of images and user disks.

An overlay costs the same ~15 ms whatever the base image's size. Image formats are always
stated (-F / driver type), never probed: a probed "raw" file could claim to be qcow2 with a
backing file pointing at any host file.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from vmwrapper import proc
from vmwrapper.errors import CommandError, NodeError, PermanentJobError, RequestError
from vmwrapper.request import image_candidates

QEMU_IMG = "/usr/bin/qemu-img"
_FORMATS = {".qcow2": "qcow2", ".img": "qcow2", ".raw": "raw"}


@dataclass(frozen=True)
class BaseImage:
    path: Path
    fmt: str
    kernel: Path | None  # direct kernel boot when the admin ships kernel/initrd beside it
    initrd: Path | None
    cmdline: str
    # A user's own image (img=/path): root never opens it by path; its size comes from
    # the checked file descriptor, and only QEMU, as the user, opens the path.
    user_size: int | None = None


def resolve_admin_image(name: str, pool: str) -> BaseImage:
    """Find an image by name in the admin pool; its real path must stay inside the pool."""
    pool_real = os.path.realpath(pool)
    for candidate in image_candidates(name, pool):
        if not os.path.isfile(candidate):
            continue
        real = os.path.realpath(candidate)
        if os.path.commonpath([pool_real, real]) != pool_real:
            raise PermanentJobError(f"img={name!r}: image resolves outside the image pool")
        image = _describe(Path(real))
        _refuse_backing_chain(image, name)
        return image
    raise PermanentJobError(f"img={name!r}: no such image in the image pool {pool}")


def _refuse_backing_chain(image: BaseImage, name: str) -> None:
    """Domain XML spells out each disk's chain and ends it at the base image, so that no
    qcow2 header can pull in another file. An admin image with a backing file would boot
    with an empty disk: say so instead."""
    if image.fmt != "qcow2":
        return
    try:
        data = image_info(image.path, image.fmt)
    except RequestError as err:
        raise PermanentJobError(f"img={name!r}: {err.problems[0]}") from None
    if data.get("backing-filename"):
        raise PermanentJobError(
            f"img={name!r}: the admin image has a backing file; flatten it with "
            "'qemu-img convert' into a standalone image"
        )


def _describe(path: Path) -> BaseImage:
    stem = path.with_suffix("")
    kernel, initrd = Path(f"{stem}.vmlinuz"), Path(f"{stem}.initrd")
    cmdline_file = Path(f"{stem}.cmdline")
    direct = kernel.is_file() and initrd.is_file()
    cmdline = cmdline_file.read_text().strip() if cmdline_file.is_file() else ""
    return BaseImage(
        path=path,
        fmt=_FORMATS.get(path.suffix, "qcow2"),
        kernel=kernel if direct else None,
        initrd=initrd if direct else None,
        cmdline=cmdline or "root=/dev/vda rw console=ttyS0",
    )


def create_overlay(
    base: BaseImage, overlay: Path, owner: tuple[int, int], timeout: float = 30
) -> None:
    """A copy-on-write overlay of `base`, owned by `owner` (QEMU's identity); new."""
    if overlay.exists() or overlay.is_symlink():
        raise NodeError(f"overlay {overlay} already exists")
    # -u with the size: qemu-img (root) must not open a user's image by its path
    unopened = ["-u", str(base.user_size)] if base.user_size is not None else []
    proc.run(
        [QEMU_IMG, "create", "-q", "-f", "qcow2", "-F", base.fmt, "-b", str(base.path),
         str(overlay), *unopened],
        timeout=timeout,
    )  # fmt: skip
    os.chown(overlay, *owner)  # our fresh file in a root-owned directory: no link to follow
    os.chmod(overlay, 0o600)


def image_info(path: Path, fmt: str, fd: int | None = None) -> dict[str, object]:
    """qemu-img's view of an image, with the format forced (never probed). With ``fd``,
    qemu-img reads that open file (/dev/fd/N), whatever ``path`` names by now."""
    source = f"/dev/fd/{fd}" if fd is not None else str(path)
    try:
        result = proc.run(
            [QEMU_IMG, "info", "--output=json", "-f", fmt, "-U", source], timeout=20,
            pass_fds=(fd,) if fd is not None else (),
        )  # fmt: skip
    except CommandError as err:
        raise RequestError([f"{path}: not a usable {fmt} image ({err.message})"]) from None
    data = json.loads(result.stdout)
    if not isinstance(data, dict):
        raise RequestError([f"{path}: unreadable image information"])
    return data


@dataclass(frozen=True)
class UserDisk:
    path: Path
    fmt: str
    device: int
    inode: int
    size: int  # virtual size in bytes


def check_user_disk(path_text: str, uid: int) -> UserDisk:
    """The persistent disk: a regular file owned by the job user, reached without symlinks.

    Every path component is opened with O_NOFOLLOW relative to its parent, and everything
    root learns comes from that descriptor. The path itself goes only into the domain XML,
    marked relabel='no': QEMU, running as the user, opens it with the user's own rights,
    so whatever the user swaps in by then is nothing they could not open themselves.
    """
    fd = _open_no_symlinks(path_text)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise RequestError([f"disk={path_text!r}: not a regular file"])
        if info.st_uid != uid:
            raise RequestError([f"disk={path_text!r}: not owned by the job's user"])
        fmt = "qcow2" if path_text.endswith(".qcow2") else "raw"
        data = image_info(Path(path_text), fmt, fd)
    finally:
        os.close(fd)
    if data.get("backing-filename") or data.get("full-backing-filename"):
        raise RequestError([f"disk={path_text!r}: images with a backing file are not allowed"])
    size = data.get("virtual-size")
    if not isinstance(size, int) or size <= 0:
        raise RequestError([f"disk={path_text!r}: qemu-img reports no size"])
    return UserDisk(Path(path_text), fmt, info.st_dev, info.st_ino, size)


def _open_no_symlinks(path_text: str) -> int:
    parts = [p for p in path_text.split("/") if p]
    flags_dir = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open("/", flags_dir)
    try:
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            flags = (os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC) if last else flags_dir
            try:
                child = os.open(part, flags, dir_fd=fd)
            except OSError as err:
                why = "is a symbolic link" if err.errno == 40 else err.strerror
                raise RequestError([f"disk={path_text!r}: {part!r} {why}"]) from None
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise
