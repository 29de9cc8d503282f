"""The ``-vm key=value[,key=value]`` grammar and its validation against admin policy.

The same ``validate`` runs twice: in the qsub wrapper (as the user, for quick feedback) and in
the root hook (as if the wrapper did not exist). It is pure: file-system checks live in the
callers, because the user and root must check files differently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath

from vmwrapper.config import Config, is_whole_number, parse_bool, parse_size_mb
from vmwrapper.errors import RequestError

VM_KEYS: tuple[str, ...] = (
    "img", "distro", "arch", "vcpus", "ram", "vms_per_node", "disk", "vcpu_pinning",
    "fs_type", "vm_prologue", "vm_epilogue", "metadata", "hypervisor", "vrdma", "iocm",
    "iocm_min_cores", "iocm_max_cores", "mounts",
)  # fmt: skip
FILE_KEYS: tuple[str, ...] = ("vm_prologue", "vm_epilogue", "metadata")
DISTROS: tuple[str, ...] = ("debian", "ubuntu", "redhat")
FS_TYPES: tuple[str, ...] = ("sharedfs", "ramdisk")
HYPERVISORS: tuple[str, ...] = ("kvm", "qemu")
IMAGE_SUFFIXES: tuple[str, ...] = (".qcow2", ".img", ".raw")
MAX_USER_MOUNTS = 8

_IMAGE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}\Z")
_USER_PATH_RE = re.compile(r"/[A-Za-z0-9._+/@-]{1,4095}\Z")
_VALUE_RE = re.compile(r"[\x21-\x7e]{1,4096}\Z")  # printable, no blanks or control chars


@dataclass(frozen=True)
class VmRequest:
    """A validated VM request. Every value is within admin policy."""

    img: str
    distro: str
    arch: str
    vcpus: int
    ram_mb: int
    vms_per_node: int
    disk: str
    vcpu_pinning: bool
    fs_type: str
    vm_prologue: str
    vm_epilogue: str
    metadata: str
    hypervisor: str
    vrdma: bool
    iocm: bool
    iocm_min_cores: int
    iocm_max_cores: int
    mounts: tuple[str, ...] = ()  # user's host directories, each inside USER_MOUNT_ROOTS

    def to_raw(self) -> dict[str, str]:
        """Canonical key=value text form: what travels in the job script."""
        raw: dict[str, str] = {}
        for key, value in asdict(self).items():
            name = "ram" if key == "ram_mb" else key
            if value in ("", ()) or (key.startswith("iocm_") and not self.iocm):
                continue  # not applicable: re-validation must not see it as a request
            if isinstance(value, tuple):
                raw[name] = ":".join(value)
            elif isinstance(value, bool):
                raw[name] = "true" if value else "false"
            elif key == "ram_mb":
                raw[name] = f"{value}M"
            else:
                raw[name] = str(value)
        return raw

    def host_cores_needed(self, config: Config) -> int:
        """Cores a node must have for this request: host reserve + vCPUs (+ IOcm)."""
        iocm = self.iocm_max_cores if self.iocm else 0
        return config.HOST_OS_CORE_COUNT + self.vcpus * self.vms_per_node + iocm

    def host_ram_needed_mb(self, config: Config) -> int:
        """RAM a node must have: host reserve + guests + QEMU's own overhead."""
        per_vm = self.ram_mb + config.QEMU_OVERHEAD_MB
        return config.HOST_OS_RAM_MB + per_vm * self.vms_per_node


def parse_vm_option(text: str) -> dict[str, str]:
    """``'img=a,VCPUS=4'`` -> ``{'img': 'a', 'vcpus': '4'}``. Raises RequestError."""
    found: dict[str, str] = {}
    problems: list[str] = []
    for item in text.split(","):
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not eq or not key:
            problems.append(f"-vm: expected key=value, got {item.strip()[:40]!r}")
        elif key not in VM_KEYS:
            problems.append(f"-vm: unknown key {key!r} (known: {', '.join(VM_KEYS)})")
        elif not _VALUE_RE.match(value):
            problems.append(f"{key}: empty value or blanks/control characters in {value[:40]!r}")
        else:
            found[key] = value
    if problems:
        raise RequestError(problems)
    return found


def validate(raw: Mapping[str, str], config: Config) -> VmRequest:
    """Apply defaults and admin policy to raw key=value text. Raises RequestError."""
    checker = _Checker(raw, config)
    request = checker.build()
    if checker.problems:
        raise RequestError(checker.problems)
    return request


class _Checker:
    """Collects every problem of one request so the user sees them all at once."""

    def __init__(self, raw: Mapping[str, str], config: Config) -> None:
        unknown = sorted(set(raw) - set(VM_KEYS))
        self.problems = [f"unknown key {key!r} (known: {', '.join(VM_KEYS)})" for key in unknown]
        self.raw = raw
        self.config = config

    def build(self) -> VmRequest:
        cfg = self.config
        iocm = self._bool("iocm", cfg.IOCM_ENABLED_DEFAULT, enabled=cfg.IOCM_ENABLED)
        return VmRequest(
            img=self._image(),
            distro=self._choice("distro", cfg.DISTRO_DEFAULT, DISTROS),
            arch=self._choice("arch", cfg.ARCH_DEFAULT, ("x86_64",)),
            vcpus=self._int("vcpus", cfg.VCPUS_DEFAULT, 1, cfg.MAX_VCPUS_PER_VM),
            ram_mb=self._ram(),
            vms_per_node=self._int("vms_per_node", cfg.VMS_PER_NODE_DEFAULT, 1,
                                   cfg.MAX_VMS_PER_NODE),
            disk=self._path("disk", cfg.DISK_DEFAULT),
            vcpu_pinning=self._bool("vcpu_pinning", cfg.VCPU_PINNING_DEFAULT, enabled=True),
            fs_type=self._choice("fs_type", cfg.FILESYSTEM_TYPE_DEFAULT, FS_TYPES),
            vm_prologue=self._path("vm_prologue", ""),
            vm_epilogue=self._path("vm_epilogue", ""),
            metadata=self._path("metadata", ""),
            hypervisor=self._choice("hypervisor", cfg.HYPERVISOR_DEFAULT, HYPERVISORS),
            vrdma=self._bool("vrdma", cfg.VRDMA_ENABLED_DEFAULT, enabled=cfg.VRDMA_ENABLED),
            iocm=iocm,
            iocm_min_cores=self._iocm_cores("iocm_min_cores", cfg.IOCM_MIN_CORES_DEFAULT, iocm),
            iocm_max_cores=self._iocm_cores("iocm_max_cores", cfg.IOCM_MAX_CORES_DEFAULT, iocm),
            mounts=self._mounts(),
        )  # fmt: skip

    def _fail(self, key: str, value: str, why: str) -> None:
        self.problems.append(f"{key}={value[:80]!r}: {why}")

    def _choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.raw.get(key, default)
        if value.lower() not in choices:
            self._fail(key, value, "allowed: " + ", ".join(choices))
            return default
        return value.lower()

    def _int(self, key: str, default: int, low: int, high: int) -> int:
        value = self.raw.get(key)
        if value is None:
            return default
        if not is_whole_number(value) or len(value) > 9:
            self._fail(key, value, f"expected a whole number from {low} to {high}")
            return default
        if not low <= int(value) <= high:
            self._fail(key, value, f"allowed: {low} to {high} (site limit)")
            return default
        return int(value)

    def _bool(self, key: str, default: bool, *, enabled: bool) -> bool:
        value = self.raw.get(key)
        if value is None:
            return default and enabled
        flag = parse_bool(value)
        if flag is None:
            self._fail(key, value, "expected true or false")
            return False
        if flag and not enabled:
            self._fail(key, value, "this device option is not enabled on this site")
            return False
        return flag

    def _iocm_cores(self, key: str, default: int, iocm: bool) -> int:
        if key in self.raw and not iocm:
            self._fail(key, self.raw[key], "needs iocm=true, which is not enabled on this site")
            return default
        cfg = self.config
        return self._int(key, default, cfg.IOCM_MIN_CORES, cfg.IOCM_MAX_CORES)

    def _ram(self) -> int:
        cfg = self.config
        value = self.raw.get("ram")
        if value is None:
            return cfg.RAM_DEFAULT
        size = parse_size_mb(value) if len(value) <= 12 else None
        limits = f"{cfg.MIN_RAM_PER_VM}M to {cfg.MAX_RAM_PER_VM}M"
        if size is None:
            self._fail("ram", value, f"expected a size such as 4G or 512M ({limits})")
            return cfg.RAM_DEFAULT
        if not cfg.MIN_RAM_PER_VM <= size <= cfg.MAX_RAM_PER_VM:
            self._fail("ram", value, f"allowed: {limits} (site limit)")
            return cfg.RAM_DEFAULT
        return size

    def _path(self, key: str, default: str) -> str:
        value = self.raw.get(key, default)
        if value and not is_safe_absolute_path(value):
            self._fail(key, value, "expected an absolute path of plain names (no '..')")
            return ""
        return value

    def _mounts(self) -> tuple[str, ...]:
        """mounts=/work/a:/scratch/b: host directories inside the admin's USER_MOUNT_ROOTS.
        QEMU runs as the job user, so a share never gives more than the user already has."""
        value = self.raw.get("mounts", "")
        paths = tuple(p for p in value.split(":") if p)
        roots = self.config.USER_MOUNT_ROOTS
        allowed = " ".join(roots) or "none (USER_MOUNT_ROOTS is empty)"
        if len(paths) > MAX_USER_MOUNTS:
            self._fail("mounts", value, f"at most {MAX_USER_MOUNTS} directories")
            return ()
        for path in paths:
            if not is_safe_absolute_path(path):
                self._fail("mounts", path, "expected absolute paths of plain names (no '..')")
                return ()
            if not any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots):
                self._fail("mounts", path, f"not inside an allowed directory: {allowed}")
                return ()
        return paths

    def _image(self) -> str:
        value = self.raw.get("img", self.config.IMG_DEFAULT)
        if _IMAGE_NAME_RE.match(value) and ".." not in value:
            return value
        if value.startswith("/"):
            if not self.config.ALLOW_USER_IMAGES:
                self._fail("img", value, "own images are not allowed here; use an image name")
            elif not is_safe_absolute_path(value):
                self._fail("img", value, "expected an absolute path of plain names (no '..')")
            return value
        self._fail("img", value, "expected an image name (letters, digits, . _ + -)")
        return value


def is_safe_absolute_path(value: str) -> bool:
    """Absolute, plain characters, no '.', '..' or empty components."""
    if not _USER_PATH_RE.match(value):
        return False
    parts = PurePosixPath(value).parts[1:]
    return all(part not in (".", "..") for part in parts) and "//" not in value


def image_candidates(name: str, pool: str) -> list[str]:
    """Pool files an image name may refer to, in lookup order."""
    if name.endswith(IMAGE_SUFFIXES):
        return [f"{pool}/{name}"]
    return [f"{pool}/{name}{suffix}" for suffix in IMAGE_SUFFIXES]
