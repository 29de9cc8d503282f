"""The root-only job journal: durable, crash tolerant, and never following symlinks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmwrapper.errors import NodeError
from vmwrapper.state import NodeState, ensure_root_dir, write_file

pytestmark = pytest.mark.needs("root")


def test_journal_keeps_order_and_ignores_a_torn_last_line(tmp_path: Path) -> None:
    state = NodeState(tmp_path / "state", "5.srv", 1)
    state.create()
    state.record("file", "/a")
    state.record("domain", "vmw-5.srv-2")
    with open(state.journal, "a") as handle:
        handle.write('{"kind": "file", "val')  # the hook was killed mid-write
    assert [(e["kind"], e["value"]) for e in state.entries()] == [
        ("file", "/a"),
        ("domain", "vmw-5.srv-2"),
    ]
    assert oct(state.node_dir.stat().st_mode & 0o777) == "0o711"
    assert oct(state.journal.stat().st_mode & 0o777) == "0o600"


def test_attempts_survive_removal_of_the_node_dir(tmp_path: Path) -> None:
    state = NodeState(tmp_path, "6.srv", 0)
    state.create()
    assert state.bump_attempts() == 1
    state.remove_node_dir()
    assert not state.job_dir.exists()
    assert NodeState(tmp_path, "6.srv", 0).bump_attempts() == 2
    state.forget_attempts()
    assert state.attempts() == 0


def test_state_dirs_refuse_symlinks(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    os.symlink(target, tmp_path / "jobs")
    with pytest.raises(NodeError, match="not a link"):
        NodeState(tmp_path, "7.srv", 0).create()


def test_write_file_replaces_a_planted_symlink_instead_of_following_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    ensure_root_dir(tmp_path / "d")
    os.symlink(victim, tmp_path / "d" / "key")
    write_file(tmp_path / "d" / "key", b"new", 0o600, (2000, 2000))
    assert victim.read_text() == "precious"
    info = os.lstat(tmp_path / "d" / "key")
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (2000, 2000, 0o600)
