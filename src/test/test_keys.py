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


SUB_A, SUB_B = "a" * 32, "b" * 32
JOB1 = keys.job_scope("alice", "1.srv", SUB_A)


def test_derivation_is_deterministic_and_job_specific() -> None:
    # The OpenSSH container holds a random check number, so compare the key material.
    one, again = keys.user_key(SECRET, JOB1), keys.user_key(SECRET, JOB1)
    assert one.public_openssh == again.public_openssh
    assert _material(one) == _material(again)
    publics = {
        keys.user_key(SECRET, JOB1).public_openssh.split()[1],
        keys.user_key(SECRET, keys.job_scope("alice", "2.srv", SUB_A)).public_openssh.split()[1],
        keys.user_key(b"t" * 32, JOB1).public_openssh.split()[1],
        keys.host_key(SECRET, JOB1, 0).public_openssh.split()[1],
        keys.host_key(SECRET, JOB1, 1).public_openssh.split()[1],
    }
    assert len(publics) == 5


def test_a_job_id_that_comes_back_gets_new_keys() -> None:
    """Attack (issue 9.6): after a server reset job 1.srv is another submission; the owner
    of the earlier 1.srv still holds its keys, and they must open nothing now."""
    earlier = keys.job_scope("mallory", "1.srv", SUB_A)
    for later in (
        keys.job_scope("alice", "1.srv", SUB_B),
        keys.job_scope("alice", "1.srv", SUB_A),
        keys.job_scope("mallory", "1.srv", SUB_B),
    ):
        assert (
            keys.user_key(SECRET, later).public_openssh
            != keys.user_key(SECRET, earlier).public_openssh
        )
        assert (
            keys.host_key(SECRET, later, 0).public_openssh
            != keys.host_key(SECRET, earlier, 0).public_openssh
        )


@pytest.mark.needs("ssh-keygen")
def test_openssh_reads_the_private_key_and_derives_the_same_public_key(tmp_path: Path) -> None:
    pair = keys.user_key(SECRET, JOB1)
    key_file = tmp_path / "id"
    key_file.write_text(pair.private_openssh)
    key_file.chmod(0o600)
    out = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(key_file)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[:2] == pair.public_openssh.split()[:2]


def test_known_hosts_lines_name_host_and_address() -> None:
    lines = keys.known_hosts_lines(SECRET, JOB1, [(0, "vm0", "10.77.1.1")])
    assert lines[0].startswith("vm0,10.77.1.1 ssh-ed25519 ")
    assert lines[0].split()[2] == keys.host_key(SECRET, JOB1, 0).public_openssh.split()[1]


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
