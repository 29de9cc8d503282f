"""SSH keys of a job, derived from a root-only site secret.

Every node must agree on the job user's key pair (its public half goes into every VM's seed)
and on every VM's host key (so the job wrapper and the VMs themselves can verify hosts
instead of disabling host-key checking). Deriving them with HMAC-SHA256 from a secret that
only root holds, identical on all nodes like munge.key, gives every node the same keys
without any communication. Whoever reads the secret could derive any job's keys, so it is
root-only (0600) and is never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from vmwrapper.errors import NodeError

SECRET_BYTES = 32


@dataclass(frozen=True)
class KeyPair:
    private_openssh: str  # "-----BEGIN OPENSSH PRIVATE KEY-----..."
    public_openssh: str  # "ssh-ed25519 AAAA... comment"


def read_secret(path: Path) -> bytes:
    """The site secret; it must be a root-owned 0600 regular file, not a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise NodeError(f"cannot open the site secret {path}: {err.strerror}") from None
    try:
        info = os.fstat(fd)
        if info.st_uid != 0 or info.st_mode & 0o077:
            raise NodeError(f"site secret {path} must be owned by root with mode 0600")
        secret = os.read(fd, 4096)
    finally:
        os.close(fd)
    if len(secret) < SECRET_BYTES:
        raise NodeError(f"site secret {path} is shorter than {SECRET_BYTES} bytes")
    return secret


def create_secret(path: Path) -> None:
    """Create a new random site secret (admin setup). Refuses to overwrite one."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, os.urandom(SECRET_BYTES))
    finally:
        os.close(fd)


def _derive(secret: bytes, purpose: str, comment: str) -> KeyPair:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 (lazy)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PrivateKey,
    )

    seed = hmac.new(secret, purpose.encode(), hashlib.sha256).digest()
    key = Ed25519PrivateKey.from_private_bytes(seed)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return KeyPair(private_openssh=private, public_openssh=f"{public} {comment}")


def job_scope(user: str, jobid: str, submission_id: str) -> str:
    """What a job's keys derive from. The submission id is fresh for every submission, so
    a job id that comes back (a server reset, Slurm's id wrap) gets new keys; the user name
    keeps two users' jobs apart even if one copies the other's id. NUL separates the parts:
    none of them can hold one."""
    return f"{user}\0{jobid}\0{submission_id}"


def user_key(secret: bytes, scope: str) -> KeyPair:
    """The key the job user logs into the job's VMs with."""
    jobid = scope.split("\0")[1]
    return _derive(secret, f"vm-wrapper/user/{scope}", f"vm-wrapper-job-{jobid}")


def host_key(secret: bytes, scope: str, vm_index: int) -> KeyPair:
    """The SSH host key of VM ``vm_index`` of the job."""
    return _derive(secret, f"vm-wrapper/host/{scope}/{vm_index}", f"vm{vm_index}")


def known_hosts_lines(secret: bytes, scope: str, hosts: list[tuple[int, str, str]]) -> list[str]:
    """known_hosts lines for (vm_index, hostname, address) of every VM of the job."""
    lines = []
    for index, hostname, address in hosts:
        algo, blob = host_key(secret, scope, index).public_openssh.split()[:2]
        lines.append(f"{hostname},{address} {algo} {blob}")
    return lines
