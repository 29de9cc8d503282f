"""Node checks before any VM exists: the persistent-disk lock."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmwrapper.boot import lock_disk
from vmwrapper.disks import UserDisk
from vmwrapper.errors import NodeError
from vmwrapper.state import NodeState

pytestmark = pytest.mark.needs("root")


def test_a_persistent_disk_serves_one_job_at_a_time(tmp_path: Path) -> None:
    disk = UserDisk(path=Path("/home/a/data.raw"), fmt="raw", device=7, inode=42, size=1 << 20)
    first = NodeState(tmp_path, "1.srv", 0)
    first.create()
    lock_disk(disk, "1.srv", first)
    second = NodeState(tmp_path, "2.srv", 0)
    second.create()
    with pytest.raises(NodeError, match=r"in use by job 1\.srv"):
        lock_disk(disk, "2.srv", second)
    # The lock is the first job's: its journal has it, the second job's does not.
    assert [e["kind"] for e in first.entries()] == ["file"]
    assert second.entries() == []
    Path(first.entries()[0]["value"]).unlink()  # what teardown does
    lock_disk(disk, "2.srv", second)


def test_local_job_ids_are_unique_when_started_together(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from vmwrapper.batch.local import next_jobid

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda _: next_jobid(str(tmp_path)), range(40)))
    assert len(set(ids)) == 40
    assert sorted(int(i.split(".")[0]) for i in ids) == list(range(1, 41))
