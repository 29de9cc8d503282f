"""The cloud-init NoCloud seed of one VM: meta-data, user-data, network-config, as an ISO.

Every file is YAML dumped (SafeDumper) from Python data, never pasted text. Commands are argv
lists; the two shell scripts are constants that take every value as a positional argument.
Facts about cloud-init 22.4 (Debian 12) this relies on:
- ``ssh_genkeytypes: []`` fails its schema; with ``ssh_keys`` given it generates nothing anyway;
- ``locale`` must be a string: ``"false"`` disables the module (minbase has no locales);
- ``mounts:`` silently drops a 9p tag (it is neither a block device nor host:path), so shares
  are mounted by runcmd;
- ``users:`` cannot set a gid: the group is created by bootcmd;
- ``ssh_authorized_keys`` writes into the home directory, which may be the user's real,
  shared /home: the job key lives in /etc/vm-wrapper instead, named by an sshd drop-in.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmwrapper.errors import NodeError, PermanentJobError, RequestError
from vmwrapper.request import is_safe_absolute_path
from vmwrapper.vmfiles import READY_CHANNEL, dump_yaml, write_iso

if TYPE_CHECKING:
    from vmwrapper.config import Config
    from vmwrapper.keys import KeyPair
    from vmwrapper.plan import JobPlan, VmSpec
    from vmwrapper.vmfiles import VmPaths

READY_PORT = f"/dev/virtio-ports/{READY_CHANNEL}"
GUEST_DIR = "/etc/vm-wrapper"
NINEP_OPTIONS = "trans=virtio,version=9p2000.L,msize=262144"
SSH_UNITS = {"debian": "ssh", "ubuntu": "ssh", "redhat": "sshd"}
# Reuse the gid's group if the guest has one (gid 100 "users" is common), else create it.
GROUP_SCRIPT = 'getent group "$1" >/dev/null || groupadd -g "$1" "$2"'
# Runs last. Reports READY only if sshd runs, the user exists with its uid and every share is
# mounted; otherwise FAILED, so the host never hands a half-configured VM to the job.
READY_SCRIPT = (
    "port=$1 nonce=$2 unit=$3 user=$4 uid=$5; shift 5; state=READY\n"
    'systemctl is-active --quiet "$unit" || state=FAILED\n'
    '[ "$(id -u "$user" 2>/dev/null)" = "$uid" ] || state=FAILED\n'
    'for dir in "$@"; do mountpoint -q "$dir" || state=FAILED; done\n'
    'printf "VMW-%s %s\\n" "$state" "$nonce" > "$port"\n'
)
# Ids below this are system accounts in the guest (sudo, disk, shadow, ...): mapping a job's
# uid or gid onto one would hand it that account's rights. gid 100 is "users" everywhere.
MIN_ID = 1000
SHARED_GIDS = (100,)
MAX_METADATA_DEPTH = 32
MAX_METADATA_NODES = 100_000  # shared YAML anchors could otherwise expand exponentially
_SCALARS = (str, bytes, bool, int, float, type(None), datetime.date)
_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{8,64}\Z")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\Z")
_TAG_RE = re.compile(r"[A-Za-z0-9_.-]{1,31}\Z")
_LINE_RE = re.compile(r"[\x20-\x7e]{1,8192}\Z")


@dataclass(frozen=True)
class SeedInput:
    """What the caller supplies beyond the plan: keys, the per-boot nonce, shares, metadata."""

    nonce: str  # fresh per boot: part of instance-id and of the ready line
    user_public_key: str  # the job key the user logs in with (one authorized_keys line)
    host_key: KeyPair  # this VM's ed25519 SSH host key, known to the job wrapper in advance
    user_private_key: str = ""  # the job key inside the VM, for ssh between the job's VMs
    known_hosts: tuple[str, ...] = ()  # host keys of every VM of the job
    shares: tuple[tuple[str, str], ...] = ()  # (host dir = guest dir, 9p mount tag)
    user_metadata: Mapping[str, Any] = field(default_factory=dict)


def meta_data(vm: VmSpec, nonce: str) -> dict[str, Any]:
    # A new instance-id per boot makes cloud-init run every per-instance module again.
    return {"instance-id": f"{vm.name}-{nonce}", "local-hostname": vm.hostname}


def network_config(vm: VmSpec, plan: JobPlan, config: Config) -> dict[str, Any]:
    """Netplan v2, matched by MAC and renamed (a name glob breaks cloud-init 22.4)."""
    nic: dict[str, Any] = {"match": {"macaddress": vm.mac}, "set-name": "eth0"}
    if not config.STATIC_IP_MAPPING:
        nic["dhcp4"] = True
        return {"version": 2, "ethernets": {"eth0": nic}}
    nic["addresses"] = [f"{vm.address}/{vm.prefix}"]
    if plan.gateway:
        nic["routes"] = [{"to": "0.0.0.0/0", "via": plan.gateway}]
    if plan.dns:
        nic["nameservers"] = {"addresses": list(plan.dns)}
    return {"version": 2, "ethernets": {"eth0": nic}}


def user_data(plan: JobPlan, config: Config, seed: SeedInput) -> dict[str, Any]:
    """The #cloud-config mapping; the user's metadata joins only under allowed, free keys."""
    _check_inputs(plan, seed)
    alloc = plan.alloc
    data: dict[str, Any] = {
        "bootcmd": [["sh", "-c", GROUP_SCRIPT, "vmw-group", str(alloc.gid), alloc.user]],
        "users": [_user(plan, config)],
        "disable_root": True,
        "ssh_pwauth": False,
        "ssh_deletekeys": True,
        "ssh_keys": {
            "ed25519_private": seed.host_key.private_openssh,
            "ed25519_public": seed.host_key.public_openssh,
        },
        "ssh": {"emit_keys_to_console": False},
        "locale": "false",
        "manage_etc_hosts": False,  # we write the whole file; nothing may rewrite it
        "write_files": _files(plan, seed),
        "runcmd": _runcmd(plan, seed),
    }
    # Every key we set is ours, whatever the admin allows.
    data.update(check_user_metadata(seed.user_metadata, config.USER_METADATA_KEYS, set(data)))
    return data


def check_user_metadata(
    metadata: Mapping[Any, Any], allowed: Sequence[str], ours: Collection[str]
) -> dict[str, Any]:
    """The user's cloud-config keys, if every one is allowed, not ours, and plain data."""
    problems = []
    for key, value in metadata.items():
        if not isinstance(key, str) or key not in allowed:
            shown = ", ".join(k for k in allowed if k not in ours) or "none"
            problems.append(f"metadata: key {_short(key)} is not allowed (allowed: {shown})")
        elif key in ours:
            problems.append(f"metadata: key {key!r} is set by vm-wrapper and cannot be changed")
        elif not _is_plain(value, [MAX_METADATA_NODES], MAX_METADATA_DEPTH):
            problems.append(
                f"metadata: {key!r} must be plain YAML data (at most {MAX_METADATA_DEPTH} "
                f"levels and {MAX_METADATA_NODES} values)"
            )
    if problems:
        raise RequestError(problems)
    return dict(metadata)


def seed_files(vm: VmSpec, plan: JobPlan, config: Config, seed: SeedInput) -> dict[str, str]:
    """File name -> text of the three NoCloud files."""
    return {
        "meta-data": dump_yaml(meta_data(vm, seed.nonce)),
        "user-data": "#cloud-config\n" + dump_yaml(user_data(plan, config, seed)),
        "network-config": dump_yaml(network_config(vm, plan, config)),
    }


def write_seed(
    *, vm: VmSpec, plan: JobPlan, config: Config, paths: VmPaths, nonce: str,
    user_public_key: str, host_key: KeyPair, user_private_key: str = "",
    known_hosts: Sequence[str] = (), shares: Sequence[tuple[str, str]] = (),
    user_metadata: Mapping[str, Any] | None = None, owner: tuple[int, int] | None = None,
) -> None:  # fmt: skip
    """Build the seed of ``vm`` and write it to ``paths.seed``, mode 0600, owned by ``owner``
    (QEMU's uid and gid, which must read it) or by us."""
    seed = SeedInput(
        nonce=nonce, user_public_key=user_public_key, host_key=host_key,
        user_private_key=user_private_key, known_hosts=tuple(known_hosts),
        shares=tuple(shares), user_metadata=user_metadata or {},
    )  # fmt: skip
    write_iso(Path(paths.seed), seed_files(vm, plan, config, seed), owner=owner)


def _user(plan: JobPlan, config: Config) -> dict[str, Any]:
    alloc = plan.alloc
    user: dict[str, Any] = {
        "name": alloc.user,
        "uid": alloc.uid,
        "primary_group": str(alloc.gid),  # useradd --gid takes a number; bootcmd made it
        "no_user_group": True,
        "homedir": alloc.home,
        "shell": "/bin/bash",
        "lock_passwd": True,
    }
    if config.ALLOW_GUEST_SUDO:
        user["sudo"] = "ALL=(ALL) NOPASSWD:ALL"
    return user


def _files(plan: JobPlan, seed: SeedInput) -> list[dict[str, Any]]:
    user = plan.alloc.user
    sshd = f"AuthorizedKeysFile {GUEST_DIR}/authorized_keys/%u\nPasswordAuthentication no\n"
    files = [
        _file("/etc/hosts", _hosts(plan)),
        # 00- sorts first and sshd keeps the first value it reads: ours win.
        _file("/etc/ssh/sshd_config.d/00-vm-wrapper.conf", sshd),
        _file(f"{GUEST_DIR}/authorized_keys/{user}", seed.user_public_key + "\n"),
    ]
    if seed.known_hosts:
        files.append(_file("/etc/ssh/ssh_known_hosts", "\n".join(seed.known_hosts) + "\n"))
    if seed.user_private_key:
        hosts = " ".join(name for vm in plan.all_vms for name in (vm.hostname, vm.address))
        config = f"Host {hosts}\n    IdentityFile {GUEST_DIR}/id_ed25519\n"
        files.append(_file("/etc/ssh/ssh_config.d/vm-wrapper.conf", config))
        key = _file(f"{GUEST_DIR}/id_ed25519", seed.user_private_key, "0600", owner=user)
        files.append({**key, "defer": True})  # the user exists only after users-groups
    return files


def _file(path: str, content: str, mode: str = "0644", owner: str = "root:root") -> dict[str, Any]:
    return {"path": path, "content": content, "owner": owner, "permissions": mode}


def _hosts(plan: JobPlan) -> str:
    lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
    lines += [f"{vm.address} {vm.hostname}" for vm in plan.all_vms]
    return "\n".join(lines) + "\n"


def _runcmd(plan: JobPlan, seed: SeedInput) -> list[list[str]]:
    unit = SSH_UNITS[plan.request.distro]
    commands: list[list[str]] = []
    for directory, tag in seed.shares:
        commands.append(["mkdir", "-p", directory])
        commands.append(["mount", "-t", "9p", "-o", NINEP_OPTIONS, tag, directory])
    commands.append(["systemctl", "reload-or-restart", unit])  # rereads our sshd drop-in
    alloc = plan.alloc
    commands.append(
        ["sh", "-c", READY_SCRIPT, "vmw-ready", READY_PORT, seed.nonce, unit, alloc.user,
         str(alloc.uid), *(directory for directory, _ in seed.shares)]
    )  # fmt: skip
    return commands


def _check_inputs(plan: JobPlan, seed: SeedInput) -> None:
    """Values that become guest file names, hosts entries or ids: refuse anything odd."""
    alloc = plan.alloc
    if not _NAME_RE.match(alloc.user):
        raise PermanentJobError(f"user name {alloc.user[:40]!r} cannot be used inside a VM")
    if alloc.uid < MIN_ID or (alloc.gid < MIN_ID and alloc.gid not in SHARED_GIDS):
        raise PermanentJobError(
            f"uid {alloc.uid} / gid {alloc.gid}: VM jobs need a uid and gid of at least "
            f"{MIN_ID} (or gid 100); lower ids are system accounts in the guest"
        )
    if not is_safe_absolute_path(alloc.home):
        raise PermanentJobError(f"home directory {alloc.home[:60]!r} cannot be used in a VM")
    for directory, tag in seed.shares:
        if not is_safe_absolute_path(directory) or not _TAG_RE.match(tag):
            raise NodeError(f"share {directory[:60]!r} (tag {tag[:40]!r}) is not usable")
    if not _NONCE_RE.match(seed.nonce):
        raise NodeError("the boot nonce must be 8-64 letters, digits, '-' or '_'")
    for text in (seed.user_public_key, seed.host_key.public_openssh, *seed.known_hosts):
        if not _LINE_RE.match(text):
            raise NodeError("an SSH public key or known_hosts entry is not one printable line")


def _is_plain(value: object, budget: list[int], depth: int) -> bool:
    """Only YAML scalars, lists and mappings; ``budget`` counts values seen (shared ones too)."""
    budget[0] -= 1
    if budget[0] < 0 or depth < 0:
        return False
    if isinstance(value, _SCALARS):
        return True
    if isinstance(value, list):
        return all(_is_plain(item, budget, depth - 1) for item in value)
    if isinstance(value, dict):
        return all(
            isinstance(key, _SCALARS) and _is_plain(item, budget, depth - 1)
            for key, item in value.items()
        )
    return False


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
