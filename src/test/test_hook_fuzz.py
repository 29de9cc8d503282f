"""Forged requests through the real Torque hook entry, in-process for speed.

``vm-wrapper hook torque prologue ARGV`` gets pbs_mom's argv and environment; the job
script copy carries a request line written by an attacker, not by our wrapper. Every run
must end in exit 0 (the job wrapper then prints the refusal, since Torque keeps a failed
prologue's output in its spool) or 1, with every line one of ours: never a requeue (exit
2, which pbs_sched turns into an endless loop), never a traceback.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Iterator
from contextlib import redirect_stderr
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torque_harness import JobUser, ensure_job_user

from vmwrapper import requestblock
from vmwrapper.cli import hook
from vmwrapper.request import FILE_KEYS, VM_KEYS

pytestmark = pytest.mark.needs("root")
EXAMPLES = int(os.environ.get("VMW_FUZZ_EXAMPLES", "10000"))
JOBID = "77.fuzz"


def run_hook(argv: list[str]) -> tuple[int, str]:
    """The hook in-process, as pbs_mom runs it; the process umask (the hook sets 077) and
    stderr are put back for the tests that follow."""
    err, umask = io.StringIO(), os.umask(0o022)
    try:
        with redirect_stderr(err):
            return hook.run(["torque", "prologue", *argv]), err.getvalue()
    finally:
        os.umask(umask)


class HookSite:
    def __init__(self, root: Path, user: JobUser) -> None:
        self.root, self.user = root, user
        self.script = root / "jobs" / f"{JOBID}.SC"
        self.state = root / "state"

    def run(self, script: bytes) -> tuple[int, list[str]]:
        self.script.write_bytes(script)
        for counter in (self.state / "attempts").glob("*"):
            counter.unlink()  # every example is a first attempt
        argv = [JOBID, self.user.name, self.user.name, "STDIN", "nodes=1:ppn=2", "batch", "",
                str(self.script)]  # fmt: skip
        rc, err = run_hook(argv)
        return rc, err.splitlines()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HookSite]:
    root = tmp_path_factory.mktemp("fuzz")
    for sub in ("jobs", "pool", "overlays", "logs"):
        (root / sub).mkdir(mode=0o711)
    conf = root / "vm-wrapper.conf"
    conf.write_text(
        f"STATE_DIR={root}/state\nOVERLAY_DIR={root}/overlays\nIMAGE_POOL={root}/pool\n"
        "LIBVIRT_URI=test:///default\nMAX_PROLOGUE_ATTEMPTS=2\nUSER_METADATA_KEYS=packages\n"
    )
    patch = pytest.MonkeyPatch()
    env = {
        "PATH": "/bin:/usr/bin",
        "LANG": "C.UTF-8",
        "PBS_NODENUM": "0",
        "PBS_NUM_NODES": "1",
        "PBS_NUM_PPN": "2",
        "PBS_NP": "2",
        "PBS_MSHOST": "vm",
        "VM_WRAPPER_CONF": str(conf),
    }
    patch.setattr(os, "environ", env)  # pbs_mom's nearly empty environment
    patch.setattr(hook, "LOG_DIR", root / "logs")
    yield HookSite(root, ensure_job_user())
    patch.undo()


text = st.text(max_size=40)
values = st.one_of(
    text,
    st.from_regex(r"[0-9]{1,30}[KMGTkmgt\u212a\u0138]?", fullmatch=True),
    st.sampled_from(["debian12", "/etc/shadow", "../x", "true", "ramdisk", "-1", "0x10", "1e3"]),
)
vm_dicts = st.dictionaries(st.one_of(st.sampled_from(VM_KEYS), text), values, max_size=6)
yaml_docs = st.one_of(
    st.binary(max_size=60),
    st.just(b"packages: " + b"[" * 200 + b"]" * 200),
    st.just(b"packages: &a [x]\nruncmd: *a\n"),
    st.from_regex(rb"[a-z_]{1,12}: [\[\]{}a-z0-9,: -]{0,40}", fullmatch=True),
)
encoded = yaml_docs.map(lambda blob: base64.b64encode(blob).decode())
files = st.dictionaries(st.one_of(st.sampled_from(FILE_KEYS), text), encoded | text, max_size=2)
ids = st.one_of(st.just("ab" * 16), text)


@st.composite
def forged_lines(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["shaped", "raw", "json"]))
    if kind == "raw":
        return requestblock.MARKER_BYTES + draw(st.binary(max_size=200))
    if kind == "json":
        nested = draw(
            st.recursive(st.none() | text, lambda c: st.lists(c) | st.dictionaries(text, c))
        )
        return requestblock.MARKER_BYTES + json.dumps(nested).encode()
    data = {"vm": draw(vm_dicts), "files": draw(files), "id": draw(ids)}
    return (requestblock.MARKER + json.dumps(data)).encode()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(line=forged_lines())
def test_forged_requests_end_in_run_or_a_one_line_refusal(site: HookSite, line: bytes) -> None:
    rc, lines = site.run(b"#!/bin/sh\n" + line + b"\n/bin/true\n")
    assert rc in (0, 1), lines
    if lines:
        assert lines, "a refusal must say why"
        assert all(ln.startswith(f"vm-wrapper: job {JOBID}: ") for ln in lines), lines
        assert not any("internal error" in ln or "Traceback" in ln for ln in lines), lines
        assert len(lines) <= hook.MAX_REPORT_LINES + 1, lines


def test_an_unexpected_exception_is_a_counted_attempt(
    site: HookSite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before issue 9 a KeyError was taken as transient before the attempt was counted:
    exit 2 on every run, and pbs_sched restarted the job forever."""
    from vmwrapper import node

    def broken(*_args: object) -> None:
        raise KeyError("K")

    monkeypatch.setattr(node, "prologue", broken)
    for counter in (site.state / "attempts").glob("*"):
        counter.unlink()
    site.script.write_bytes(b"#!/bin/sh\n" + requestblock.encode({}, {}, "ab" * 16).encode())
    argv = [JOBID, site.user.name, site.user.name, "STDIN", "nodes=1:ppn=2", "batch", "",
            str(site.script)]  # fmt: skip
    codes = []
    for _ in range(3):
        codes.append(run_hook(argv)[0])
    # Requeued once; then the job starts and its wrapper prints why (Torque would keep
    # a failed prologue's output in its spool).
    assert codes == [2, 0, 0]
    failure = site.state / "jobs" / JOBID / "user" / "failure"
    text = failure.read_text()
    assert text.startswith("attempt 1: internal error") and "giving up after 3 attempts" in text
