"""Admin configuration: one declared schema, a config.sh-style parser that never executes.

A config file is a list of ``KEY=value`` lines (``KEY="value"`` and ``KEY='value'`` too),
blank lines and ``#`` comments, so admins can ``source`` it from their own scripts. We never
run it: we tokenise each line ourselves and refuse anything bash would expand or execute
(``$``, backticks, ``;``, unbalanced quotes, commands), so what we read is what bash reads.

Lookup order: the schema's defaults, then /etc/vm-wrapper/vm-wrapper.conf, then the file
named by VM_WRAPPER_CONF (tests and sites). Later files override earlier ones.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vmwrapper.errors import ConfigError

SYSTEM_CONFIG = Path("/etc/vm-wrapper/vm-wrapper.conf")
ENV_CONFIG = "VM_WRAPPER_CONF"

_KEY_RE = re.compile(r"[A-Z][A-Z0-9_]*\Z")
_UNQUOTED_RE = re.compile(r"[A-Za-z0-9_./:,@%+=-]*\Z")
# ASCII only: under re.IGNORECASE alone, "K" also matches U+212A KELVIN SIGN, which
# upper() turns into a K that is no key of the factor table.
_SIZE_RE = re.compile(r"([0-9]{1,18})([KMGT]?)\Z", re.IGNORECASE | re.ASCII)
_SIZE_FACTOR_KIB = {"K": 1, "M": 1024, "G": 1024**2, "T": 1024**3}


def setting(
    kind: str, default: str, doc: str, *, choices: tuple[str, ...] = (), minimum: int = 0
) -> Any:
    """A schema entry: how to read it, its default as written in the file, and its meaning."""
    meta = {"kind": kind, "default": default, "doc": doc, "choices": choices, "minimum": minimum}
    return field(metadata=meta)


@dataclass(frozen=True)
class Config:
    """Every admin setting, typed. This class is the schema: field order is file order."""

    # -- Site switches --------------------------------------------------------------------
    DISABLE_VM_WRAPPER: bool = setting(
        "bool",
        "false",
        "true: qsub passes every call to the real qsub unparsed; hooks refuse VM jobs.",
    )
    DISABLED_HOSTS_LIST: str = setting(
        "regex", "", "Regex of host names (short) where VM jobs may neither be submitted nor run."
    )
    PARALLEL: bool = setting("bool", "true", "Boot a node's VMs concurrently (true) or one by one.")
    ALLOW_USER_IMAGES: bool = setting(
        "bool", "false", "true: users may name their own image by absolute path (checked by root)."
    )
    IMAGE_POOL: str = setting(
        "path",
        "/var/lib/vm-wrapper/images",
        "Directory of admin images (<name>.qcow2, .img or .raw).",
    )
    HOST_OS_CORE_COUNT: int = setting("int", "1", "Cores per node kept for the host OS.", minimum=0)
    HOST_OS_RAM_MB: int = setting(
        "int", "1024", "RAM per node (MB) kept for the host OS.", minimum=1
    )
    MAX_VMS_PER_NODE: int = setting("int", "4", "Upper limit of vms_per_node.", minimum=1)
    STATIC_IP_MAPPING: bool = setting(
        "bool",
        "true",
        "true: guests get static addresses from VM_ADDRESS_POOL in their seed; false: DHCP "
        "(the site's DHCP must map our deterministic MACs to the same addresses).",
    )
    TIMEOUT: int = setting(
        "int", "240", "Seconds a node may take to boot its VMs until they signal ready.", minimum=5
    )
    SERVER_HOSTNAME: str = setting(
        "str", "", "Short host name of the submission front end (empty: every host is one)."
    )
    REAL_QSUB_ON_SERVER: str = setting("path", "/usr/bin/qsub", "Torque's qsub on the front end.")
    REAL_QSUB_ON_NODES: str = setting("path", "/usr/bin/qsub", "Torque's qsub on compute nodes.")
    REAL_SBATCH: str = setting("path", "/usr/bin/sbatch", "Slurm's sbatch.")
    # -- Devices (reserved: this release has no driver for them) --------------------------
    IOCM_ENABLED: bool = setting(
        "bool", "false", "IOcm dedicated I/O cores. No driver yet: keep false."
    )
    IOCM_MIN_CORES: int = setting("int", "1", "Least IOcm cores a job may ask for.", minimum=0)
    IOCM_MAX_CORES: int = setting("int", "4", "Most IOcm cores a job may ask for.", minimum=0)
    VRDMA_ENABLED: bool = setting("bool", "false", "Virtual RDMA. No driver yet: keep false.")
    VRDMA_NODES: str = setting("regex", "", "Regex of nodes with vRDMA hardware.")
    SNAP_MONITORING_ENABLED: bool = setting(
        "bool", "false", "snap monitoring. No driver yet: keep false."
    )
    # -- Defaults for every -vm key -------------------------------------------------------
    FILESYSTEM_TYPE_DEFAULT: str = setting(
        "choice",
        "sharedfs",
        "Where VM disk overlays live: sharedfs (OVERLAY_DIR) or ramdisk (RAMDISK_DIR).",
        choices=("sharedfs", "ramdisk"),
    )
    IMG_DEFAULT: str = setting("str", "debian12", "Image used when the job names none.")
    DISTRO_DEFAULT: str = setting(
        "choice",
        "debian",
        "Guest OS family of the default image.",
        choices=("debian", "ubuntu", "redhat"),
    )
    ARCH_DEFAULT: str = setting("choice", "x86_64", "Guest CPU architecture.", choices=("x86_64",))
    VCPU_PINNING_DEFAULT: bool = setting("bool", "false", "Pin each vCPU to one host core.")
    VCPUS_DEFAULT: int = setting("int", "1", "vCPUs per VM.", minimum=1)
    RAM_DEFAULT: int = setting("size", "1G", "RAM per VM (plain number = MB; K/M/G/T suffixes).")
    VMS_PER_NODE_DEFAULT: int = setting("int", "1", "VMs per node.", minimum=1)
    DISK_DEFAULT: str = setting(
        "optpath", "", "Persistent user disk for the first VM (empty: none)."
    )
    HYPERVISOR_DEFAULT: str = setting(
        "choice",
        "kvm",
        "kvm (hardware, falls back to qemu if KVM cannot run guests) or qemu (TCG).",
        choices=("kvm", "qemu"),
    )
    VRDMA_ENABLED_DEFAULT: bool = setting("bool", "false", "vrdma when the job does not say.")
    IOCM_ENABLED_DEFAULT: bool = setting("bool", "false", "iocm when the job does not say.")
    IOCM_MIN_CORES_DEFAULT: int = setting("int", "1", "iocm_min_cores when the job does not say.")
    IOCM_MAX_CORES_DEFAULT: int = setting("int", "4", "iocm_max_cores when the job does not say.")
    # -- Limits -----------------------------------------------------------------------------
    MAX_VCPUS_PER_VM: int = setting("int", "64", "Upper limit of vcpus.", minimum=1)
    MAX_RAM_PER_VM: int = setting("size", "256G", "Upper limit of ram.")
    MIN_RAM_PER_VM: int = setting("size", "256M", "Lower limit of ram.")
    QEMU_OVERHEAD_MB: int = setting("int", "256", "Host RAM QEMU itself needs per VM.", minimum=0)
    MAX_USER_FILE_KB: int = setting(
        "int",
        "256",
        "Size limit of a job script, vm_prologue, vm_epilogue or metadata file.",
        minimum=1,
    )
    USER_METADATA_KEYS: tuple[str, ...] = setting(
        "words",
        "packages package_update",
        "cloud-config keys a user's metadata file may set (space-separated).",
    )
    ALLOW_GUEST_SUDO: bool = setting(
        "bool",
        "false",
        "true: the job user gets passwordless sudo in guests. A convenience, not a security "
        "boundary: the VM is the user's, who can always become root in it (their QEMU and "
        "seed are theirs).",
    )
    # -- Node side --------------------------------------------------------------------------
    TORQUE_HOME: str = setting("path", "/var/spool/torque", "Torque's PBS_HOME on compute nodes.")
    TORQUE_QSTAT: str = setting(
        "path",
        "/usr/local/bin/qstat",
        "Torque's qstat on compute nodes: the mother superior asks it for an interactive "
        "job's request when pbs_mom has not written the job's .JB file yet.",
    )
    PROLOGALARM: int = setting(
        "int",
        "300",
        "Torque's $prologalarm; TIMEOUT must end well inside it minus 10 s.",
        minimum=11,
    )
    STATE_DIR: str = setting(
        "path", "/var/lib/vm-wrapper/state", "Root-only per-job state (journal, keys, seeds)."
    )
    OVERLAY_DIR: str = setting(
        "path",
        "/var/lib/vm-wrapper/overlays",
        "Disk-backed directory for qcow2 overlays (sharedfs).",
    )
    RAMDISK_DIR: str = setting(
        "path",
        "/dev/shm",
        "RAM-backed directory (root's, or sticky like /dev/shm) in which each ramdisk job "
        "gets a fresh directory with an unguessable name (fs_type=ramdisk).",
    )
    SITE_SECRET: str = setting(
        "path",
        "/etc/vm-wrapper/secret",
        "Root-only 0600 file, identical on all nodes (like munge.key); job SSH keys derive "
        "from it. tools/setup-node creates it.",
    )
    LIBVIRT_URI: str = setting("str", "qemu:///system", "libvirt connection URI.")
    ACCEL: str = setting(
        "choice",
        "auto",
        "auto: probe whether KVM really runs guests, else TCG; kvm or tcg: force it.",
        choices=("auto", "kvm", "tcg"),
    )
    SHUTDOWN_TIMEOUT: int = setting(
        "int", "20", "Seconds the epilogue waits for a graceful guest shutdown.", minimum=0
    )
    MAX_PROLOGUE_ATTEMPTS: int = setting(
        "int", "3", "Transient boot failures a job may have before it is aborted.", minimum=1
    )
    VM_NETWORK_TYPE: str = setting(
        "choice",
        "bridge",
        "How guests attach: bridge (VM_BRIDGE) or network (libvirt VM_NETWORK).",
        choices=("bridge", "network"),
    )
    VM_BRIDGE: str = setting("name", "vmwbr0", "Host bridge the guests' NIC joins.")
    VM_NETWORK: str = setting("name", "default", "libvirt network the guests' NIC joins.")
    VM_ADDRESS_POOL: str = setting(
        "cidr", "10.77.0.0/16", "CIDR the guests' addresses come from (one block per job)."
    )
    VM_ADDRESS_BLOCK: int = setting(
        "int", "26", "Prefix length of one job's block inside VM_ADDRESS_POOL.", minimum=1
    )
    VM_GATEWAY: str = setting("optip", "", "Guests' default gateway (empty: none).")
    VM_DNS: tuple[str, ...] = setting(
        "words", "", "Guests' name servers (space-separated; empty: none)."
    )
    SHARED_MOUNTS: tuple[str, ...] = setting(
        "paths",
        "/home",
        "Host directories mounted at the same path in every guest (space-separated).",
    )
    USER_MOUNT_ROOTS: tuple[str, ...] = setting(
        "paths", "", "Directories under which users may add their own mounts (space-separated)."
    )
    NODE_PYTHON: str = setting(
        "path", "/opt/vm-wrapper/venv/bin/python3", "Interpreter with vm-wrapper on compute nodes."
    )
    INTERACTIVE_SCRIPT: str = setting(
        "path",
        "/opt/vm-wrapper/libexec/interactive-job",
        "qsub -I -vm runs this (qsub -x) in the interactive session; it must exist at this "
        "path on login and compute nodes (tools/install-deps puts it there).",
    )


SCHEMA: dict[str, dict[str, Any]] = {f.name: dict(f.metadata) for f in fields(Config)}
KEYS: tuple[str, ...] = tuple(SCHEMA)


# ---------------------------------------------------------------------------------------
# Parsing: text -> {KEY: value}. Never executes, never expands.
# ---------------------------------------------------------------------------------------


def _parse_value(text: str) -> str | None:
    """The value of one assignment as bash would see it, or None if bash would do more."""
    if text.startswith("'"):
        end = text.find("'", 1)
        value, rest = (text[1:end], text[end + 1 :]) if end > 0 else ("", None)
    elif text.startswith('"'):
        end = text.find('"', 1)
        value, rest = (text[1:end], text[end + 1 :]) if end > 0 else ("", None)
        if rest is not None and re.search(r"[$`\\!]", value):
            return None  # bash would expand these inside double quotes
    else:
        value, _, tail = text.partition(" ")
        rest = " " + tail if tail else ""
        if not _UNQUOTED_RE.match(value):
            return None
    if rest is None:
        return None
    rest = rest.strip()
    if rest and not rest.startswith("#"):
        return None
    return value


def parse_text(text: str, source: str) -> tuple[dict[str, str], list[str]]:
    """Parse config.sh text. Returns (values, problems); problems name file and line."""
    values: dict[str, str] = {}
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{number}"
        key, eq, rest = line.partition("=")
        if not eq or not _KEY_RE.match(key):
            problems.append(f"{where}: not a KEY=value assignment: {raw.strip()[:60]!r}")
            continue
        value = _parse_value(rest)
        if value is None:
            problems.append(
                f"{where}: {key}: value must be a plain word or quoted text "
                "without $, backticks or commands"
            )
            continue
        if key not in KEYS:
            problems.append(f"{where}: unknown key {key}")
            continue
        values[key] = value
    return values, problems


def _read_file(path: Path) -> tuple[dict[str, str], list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, []
    except (OSError, UnicodeDecodeError) as err:
        return {}, [f"{path}: cannot read: {err.__class__.__name__}"]
    return parse_text(text, str(path))


def config_files(environ: dict[str, str] | None = None) -> list[Path]:
    env = os.environ if environ is None else environ
    files = [SYSTEM_CONFIG]
    if env.get(ENV_CONFIG):
        files.append(Path(env[ENV_CONFIG]))
    return files


def load_text_values(files: list[Path] | None = None) -> tuple[dict[str, str], list[str]]:
    """Defaults overlaid by each file in turn: {KEY: text} and every parse problem."""
    merged = {key: str(meta["default"]) for key, meta in SCHEMA.items()}
    problems: list[str] = []
    for path in config_files() if files is None else files:
        values, file_problems = _read_file(path)
        merged.update(values)
        problems.extend(file_problems)
    return merged, problems


def load(files: list[Path] | None = None) -> Config:
    """The effective, validated config. Raises ConfigError listing every problem."""
    config, problems = load_with_problems(files)
    if problems or config is None:
        raise ConfigError(problems)
    return config


def load_with_problems(files: list[Path] | None = None) -> tuple[Config | None, list[str]]:
    texts, problems = load_text_values(files)
    typed: dict[str, Any] = {}
    for key, meta in SCHEMA.items():
        value, problem = _convert(key, texts[key], meta)
        if problem:
            problems.append(f"{key}={texts[key]!r}: {problem}")
        typed[key] = value
    if problems:
        return None, problems
    config = Config(**typed)
    problems.extend(cross_check(config))
    return (None if problems else config), problems


# ---------------------------------------------------------------------------------------
# Conversions shared by the config and the -vm request grammar.
# ---------------------------------------------------------------------------------------

_TRUE = {"true", "yes", "1", "on", "enabled"}
_FALSE = {"false", "no", "0", "off", "disabled"}


MAX_DIGITS = 18  # below int()'s 4300-digit limit (a ValueError) and any sane setting


def is_whole_number(text: str) -> bool:
    """1 to 18 ASCII digits: str.isdigit() also accepts superscripts such as '²', which
    int() refuses, and int() raises on thousands of digits."""
    return text.isascii() and text.isdigit() and len(text) <= MAX_DIGITS


def parse_bool(text: str) -> bool | None:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    return None


def parse_size_mb(text: str) -> int | None:
    """'2G' -> 2048, '512M' -> 512, '1048576K' -> 1024, a bare number is MB."""
    text = text.strip(" \t")
    if not text.isascii():
        return None
    match = _SIZE_RE.match(text)
    if not match:
        return None
    number, unit = int(match.group(1)), (match.group(2).upper() or "M")
    kib = number * _SIZE_FACTOR_KIB[unit]
    if kib % 1024:
        return None
    return kib // 1024


# ---------------------------------------------------------------------------------------
# Typed conversion of one key, and checks that span keys.
# ---------------------------------------------------------------------------------------

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


def _convert(key: str, text: str, meta: dict[str, Any]) -> tuple[Any, str]:
    """(typed value, problem). The problem is '' when the text is valid."""
    kind = meta["kind"]
    if kind == "bool":
        flag = parse_bool(text)
        return (flag, "") if flag is not None else (False, "expected true or false")
    if kind == "int":
        if not is_whole_number(text):
            return 0, "expected a whole number"
        number = int(text)
        if number < meta["minimum"]:
            return number, f"must be at least {meta['minimum']}"
        return number, ""
    if kind == "size":
        size = parse_size_mb(text)
        return (size, "") if size is not None else (0, "expected a size such as 512M or 4G")
    if kind == "choice":
        ok = text in meta["choices"]
        return text, "" if ok else "expected one of " + ", ".join(meta["choices"])
    if kind == "regex":
        try:
            re.compile(text)
        except re.error as err:
            return text, f"not a valid regular expression ({err})"
        return text, ""
    if kind in ("path", "optpath"):
        if not text and kind == "optpath":
            return text, ""
        return text, "" if text.startswith(
            "/"
        ) and "\x00" not in text else "expected an absolute path"
    if kind == "paths":
        paths = tuple(text.split())
        bad = [p for p in paths if not p.startswith("/")]
        return paths, f"not absolute: {' '.join(bad)}" if bad else ""
    if kind == "words":
        return tuple(text.split()), ""
    if kind == "name":
        return text, "" if _NAME_RE.match(text) else "expected a short name"
    if kind == "cidr":
        return _check_network(text)
    if kind == "optip":
        return _check_address(text)
    return text, ""


def _check_network(text: str) -> tuple[str, str]:
    import ipaddress  # noqa: PLC0415  (lazy: off the qsub fast path)

    try:
        ipaddress.IPv4Network(text, strict=True)
    except ValueError as err:
        return text, f"not an IPv4 network ({err})"
    return text, ""


def _check_address(text: str) -> tuple[str, str]:
    import ipaddress  # noqa: PLC0415

    if not text:
        return text, ""
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return text, "not an IPv4 address"
    return text, ""


def cross_check(config: Config) -> list[str]:
    """Problems that involve several keys."""
    problems: list[str] = []
    if config.IOCM_MIN_CORES > config.IOCM_MAX_CORES:
        problems.append("IOCM_MIN_CORES: must not exceed IOCM_MAX_CORES")
    if config.MIN_RAM_PER_VM > config.MAX_RAM_PER_VM:
        problems.append("MIN_RAM_PER_VM: must not exceed MAX_RAM_PER_VM")
    if config.VMS_PER_NODE_DEFAULT > config.MAX_VMS_PER_NODE:
        problems.append("VMS_PER_NODE_DEFAULT: must not exceed MAX_VMS_PER_NODE")
    if config.VCPUS_DEFAULT > config.MAX_VCPUS_PER_VM:
        problems.append("VCPUS_DEFAULT: must not exceed MAX_VCPUS_PER_VM")
    if not config.MIN_RAM_PER_VM <= config.RAM_DEFAULT <= config.MAX_RAM_PER_VM:
        problems.append("RAM_DEFAULT: must lie within MIN_RAM_PER_VM..MAX_RAM_PER_VM")
    for key in ("IOCM_ENABLED", "VRDMA_ENABLED", "SNAP_MONITORING_ENABLED"):
        if getattr(config, key):
            problems.append(f"{key}: this release has no driver for it; set it to false")
    pool_prefix = int(config.VM_ADDRESS_POOL.rpartition("/")[2])
    if not pool_prefix < config.VM_ADDRESS_BLOCK <= 30:
        problems.append(
            f"VM_ADDRESS_BLOCK: must lie between the pool's prefix /{pool_prefix} and /30"
        )
    return problems


def warnings(config: Config) -> list[str]:
    """Things that work but are probably not what the admin wants."""
    found: list[str] = []
    deadline = config.PROLOGALARM - 10
    if deadline < config.TIMEOUT + config.SHUTDOWN_TIMEOUT + 15:
        found.append(
            f"TIMEOUT: {config.TIMEOUT} s boot + {config.SHUTDOWN_TIMEOUT} s cleanup does not "
            f"fit inside Torque's $prologalarm - 10 s = {deadline} s; raise PROLOGALARM "
            "(and $prologalarm in mom_priv/config) or lower TIMEOUT"
        )
    return found
