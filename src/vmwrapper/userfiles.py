"""The user's files named in a VM request, checked at submission as the user.

img (pool name or own image), disk, and the files embedded in the request (vm_prologue,
vm_epilogue, metadata). Root checks every one again on the node; these checks exist so that
the user hears about a problem now, in one line, instead of from a failed job.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping

from vmwrapper.config import Config
from vmwrapper.request import FILE_KEYS, IMAGE_SUFFIXES, image_candidates


def check_user_files(
    raw: Mapping[str, str], cfg: Config, skip: set[str], files: dict[str, bytes]
) -> list[str]:
    """Problems with img, disk and the embedded files; fills ``files`` with their bytes."""
    problems: list[str] = []
    image = raw.get("img", cfg.IMG_DEFAULT)
    if "img" not in skip:
        problems += _image_problems(image, cfg)
    if raw.get("disk") and "disk" not in skip:
        problems += _own_file_problems("disk", raw["disk"], must_own=True)
    for key in FILE_KEYS:
        if raw.get(key) and key not in skip:
            data, why = read_user_file(raw[key], cfg.MAX_USER_FILE_KB)
            if data is None:
                problems.append(f"{key}={raw[key]!r}: {why}")
            else:
                files[key] = data
    if "metadata" in files:
        problems += _metadata_problems(raw["metadata"], files["metadata"], cfg)
    return problems


def read_user_file(path: str, limit_kb: int) -> tuple[bytes | None, str]:
    """(bytes, '') or (None, why): a regular file, not a symlink, at most limit_kb."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return None, "is a symlink; name the file itself"
        return None, f"cannot open it ({err.strerror})"
    if not is_regular(fd):  # before open(): it refuses directories with a traceback
        os.close(fd)
        return None, "not a regular file"
    with open(fd, "rb") as handle:
        data = handle.read(limit_kb * 1024 + 1)
    if len(data) > limit_kb * 1024:
        return None, f"larger than {limit_kb} KB (MAX_USER_FILE_KB)"
    return data, ""


def _own_file_problems(key: str, path: str, *, must_own: bool) -> list[str]:
    """disk= and img=/path: a regular file (not a symlink); disk= must be the user's."""
    try:
        info = os.lstat(path)
    except OSError as err:
        return [f"{key}={path!r}: cannot use it ({err.strerror})"]
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
        return [f"{key}={path!r}: must be a regular file, not a symlink or directory"]
    if must_own and info.st_uid != os.getuid():
        return [f"{key}={path!r}: must be a file you own"]
    return []


def _image_problems(image: str, cfg: Config) -> list[str]:
    """Pool images must exist in IMAGE_POOL (when visible here) and stay inside it."""
    if image.startswith("/"):
        return _own_file_problems("img", image, must_own=False)
    pool = cfg.IMAGE_POOL
    if not os.path.isdir(pool):
        return []  # not visible on this host: the root hook checks on the node
    real_pool = os.path.realpath(pool)
    for candidate in image_candidates(image, pool):
        if os.path.lexists(candidate):
            real = os.path.realpath(candidate)
            if not real.startswith(real_pool + os.sep) or not os.path.isfile(real):
                return [f"img={image!r}: {candidate} leads outside IMAGE_POOL or to no file"]
            return []
    names = sorted(n.rsplit(".", 1)[0] for n in os.listdir(pool) if n.endswith(IMAGE_SUFFIXES))
    shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "") or "none"
    return [f"img={image!r}: no such image in IMAGE_POOL {pool} (available: {shown})"]


def _metadata_problems(path: str, data: bytes, cfg: Config) -> list[str]:
    from vmwrapper import usermetadata  # noqa: PLC0415  (PyYAML: only jobs with metadata)
    from vmwrapper.errors import RequestError  # noqa: PLC0415

    where = f"metadata={path!r}"
    try:
        document = usermetadata.load(data, cfg.MAX_USER_FILE_KB * 1024, where)
    except RequestError as err:
        return err.problems
    allowed = cfg.USER_METADATA_KEYS
    return [
        f"{where}: key {str(key)[:40]!r} is not allowed (allowed: {', '.join(allowed) or 'none'})"
        for key in document
        if key not in allowed
    ]


def is_regular(fd: int) -> bool:
    return (os.fstat(fd).st_mode & 0o170000) == 0o100000
