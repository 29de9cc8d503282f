"""Job SSH keys derived from the site secret: identical on every node, verified by ssh-keygen."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from vmwrapper import keys
from vmwrapper.errors import NodeError

SECRET = b"s" * 32


def _material(pair: keys.KeyPair) -> bytes:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_ssh_private_key(pair.private_openssh.encode(), password=None)
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def test_derivation_is_deterministic_and_job_specific() -> None:
    # The OpenSSH container holds a random check number, so compare the key material.
    one, again = keys.user_key(SECRET, "1.srv"), keys.user_key(SECRET, "1.srv")
    assert one.public_openssh == again.public_openssh
    assert _material(one) == _material(again)
    publics = {
        keys.user_key(SECRET, "1.srv").public_openssh.split()[1],
        keys.user_key(SECRET, "2.srv").public_openssh.split()[1],
        keys.user_key(b"t" * 32, "1.srv").public_openssh.split()[1],
        keys.host_key(SECRET, "1.srv", 0).public_openssh.split()[1],
        keys.host_key(SECRET, "1.srv", 1).public_openssh.split()[1],
    }
    assert len(publics) == 5


@pytest.mark.needs("ssh-keygen")
def test_openssh_reads_the_private_key_and_derives_the_same_public_key(tmp_path: Path) -> None:
    pair = keys.user_key(SECRET, "7.srv")
    key_file = tmp_path / "id"
    key_file.write_text(pair.private_openssh)
    key_file.chmod(0o600)
    out = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(key_file)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[:2] == pair.public_openssh.split()[:2]


def test_known_hosts_lines_name_host_and_address() -> None:
    lines = keys.known_hosts_lines(SECRET, "7.srv", [(0, "vm0", "10.77.1.1")])
    assert lines[0].startswith("vm0,10.77.1.1 ssh-ed25519 ")
    assert lines[0].split()[2] == keys.host_key(SECRET, "7.srv", 0).public_openssh.split()[1]


@pytest.mark.needs("root")
def test_secret_must_be_root_only_and_not_a_link(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    keys.create_secret(secret)
    assert oct(secret.stat().st_mode & 0o777) == "0o600"
    assert len(keys.read_secret(secret)) == keys.SECRET_BYTES
    with pytest.raises(FileExistsError):
        keys.create_secret(secret)
    secret.chmod(0o644)
    with pytest.raises(NodeError, match="mode 0600"):
        keys.read_secret(secret)
    link = tmp_path / "link"
    os.symlink(secret, link)
    with pytest.raises(NodeError, match="cannot open"):
        keys.read_secret(link)
