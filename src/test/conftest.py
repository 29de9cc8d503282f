"""Shared pytest plumbing.

Tests that need real components declare them with ``@pytest.mark.needs("virsh", ...)``.
A missing component skips the test on a developer machine, but with ``--require-tools``
(what CI passes) it fails: a skipped real-component test must never pass silently.
A need is a command on PATH, an absolute path, or a named probe from PROBES.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from torque_harness import JobUser, ensure_job_user, site_root  # noqa: E402


def _libvirtd_up() -> bool:
    return Path("/run/libvirt/libvirt-sock").exists()


def _root() -> bool:
    return os.geteuid() == 0


def _vmnet() -> bool:
    """We run where the guests' bridge is (inside the vmw netns for tests)."""
    return Path("/sys/class/net/vmwbr0").exists()


def _guest_image() -> bool:
    return Path("/var/lib/vm-wrapper/images/debian12.qcow2").is_file()


PROBES: dict[str, Callable[[], bool]] = {
    "libvirtd": _libvirtd_up,
    "root": _root,
    "vmnet": _vmnet,
    "guest-image": _guest_image,
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--require-tools",
        action="store_true",
        help="fail (instead of skip) tests whose real components are missing",
    )


def _missing(need: str) -> bool:
    if need in PROBES:
        return not PROBES[need]()
    if need.startswith("/"):
        return not Path(need).exists()
    return shutil.which(need) is None


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers(name="needs"):
        missing = [need for need in mark.args if _missing(need)]
        if not missing:
            continue
        text = "missing real component(s): " + ", ".join(missing)
        if item.config.getoption("--require-tools"):
            pytest.fail(text + " (--require-tools)", pytrace=False)
        pytest.skip(text)


# -- the job user and a pbs_mom imitation's home, for the tests that boot VMs through it --


@pytest.fixture
def user() -> JobUser:
    return ensure_job_user()


@pytest.fixture
def site_base() -> Iterator[Path]:
    with site_root() as root:
        yield root
