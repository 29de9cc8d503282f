"""Where each Torque mom finds the request: .SC, .JB or qstat, against real Torque output
(src/test/torque_samples, written by Torque 6.1-dev) and the file behaviour observed."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from vmwrapper import requestblock, torque_files
from vmwrapper.batch import torque_job
from vmwrapper.errors import NodeError, PermanentJobError, RequestError

SAMPLES = Path(__file__).parent / "torque_samples"
SID = "0123456789abcdef0123456789abcdef"
REQUEST = requestblock.encode_json({"img": "debian12", "vcpus": "2"}, {}, SID)
VALUE = requestblock.to_variable(REQUEST)


def record(variables: str) -> bytes:
    """A .JB as a sister writes it, with these variables (taken from a real one)."""
    text = (SAMPLES / "sister-14.vm15003.JB").read_text()
    start = text.index('<Variable_List flags="3">') + len('<Variable_List flags="3">')
    end = text.index("</Variable_List>")
    return (text[:start] + variables + text[end:]).encode()


@pytest.mark.parametrize(
    "name",
    ["sister-14.vm15003.JB", "ms-14.vm15013.JB", "qstat-f-x-14.vm.xml",
     "qstat-f-x-29.vm-interactive.xml"],
)  # fmt: skip
def test_the_request_variable_is_found_in_real_torque_output(name: str) -> None:
    variables = torque_job.variable_list((SAMPLES / name).read_bytes())
    assert variables is not None and variables.startswith("PBS_O_QUEUE=batch,")
    assert torque_job.request_value(variables)


def test_unescaped_commas_and_ampersands_do_not_hide_the_request() -> None:
    # Variable_List escapes no comma (observed: a\\,b became "a,b="), and qstat -x prints
    # '&' as is, which no XML parser accepts.
    text = b"<Data><Job><Variable_List>A=x&y,OTHER=a,b=," + VALUE.encode() + b"</Variable_List>"
    variables = torque_job.variable_list(
        text.replace(VALUE.encode(), b"VMW_REQUEST_V1=" + VALUE.encode())
    )
    assert torque_job.request_value(variables or "") == VALUE


def test_two_request_variables_are_refused_and_none_is_no_vm_job() -> None:
    with pytest.raises(RequestError, match="2 VMW_REQUEST_V1"):
        torque_job.request_value(f"VMW_REQUEST_V1={VALUE},X=1,VMW_REQUEST_V1={VALUE}")
    assert torque_job.request_value("PBS_O_HOME=/home/a,X=VMW_REQUEST_V1=") is None


def test_the_record_sits_beside_argv_8() -> None:
    assert torque_files.record_path("/spool/mom_priv/jobs/14.vm15003.SC") == (
        "/spool/mom_priv/jobs/14.vm15003.JB"
    )


def test_variable_and_script_line_carry_the_same_request() -> None:
    from_line = requestblock.find((requestblock.MARKER + REQUEST).encode())
    assert from_line == requestblock.from_variable(VALUE)
    with pytest.raises(RequestError, match="not valid base64"):
        requestblock.from_variable("!!" + VALUE)


# -- the mother superior: .SC (the job user's), else .JB, else qstat -----------------------


@pytest.fixture
def jobs(tmp_path: Path) -> Path:
    path = tmp_path / "jobs"
    path.mkdir()
    return path


def test_ms_reads_a_script_owned_by_the_job_user_or_root(jobs: Path) -> None:
    script = jobs / "5.vm.SC"
    script.write_text(f"#!/bin/sh\n{requestblock.MARKER}{REQUEST}\n")
    os.chown(script, 4242, 4242)
    block = torque_files.mother_superior_request(str(script), "5.vm", 4242, "/nonexistent")
    assert block is not None and block.vm["vcpus"] == "2"
    os.chown(script, 0, 0)
    assert torque_files.mother_superior_request(str(script), "5.vm", 4242, "/nonexistent")
    os.chown(script, 4343, 4343)
    with pytest.raises(PermanentJobError, match="not a regular file of the job's user or root"):
        torque_files.mother_superior_request(str(script), "5.vm", 4242, "/nonexistent")


def test_ms_of_an_interactive_job_reads_the_record_or_asks_qstat(jobs: Path) -> None:
    script = jobs / "6.vm.SC"  # qsub -I: never exists
    qstat = jobs.parent / "qstat"
    out = jobs.parent / "qstat.out"
    head = b'<?xml version="1.0"?>\n<Data><Job><Job_Id>6.vm</Job_Id><Variable_List>'
    out.write_bytes(head + b"PBS_O_HOME=/h,VMW_REQUEST_V1=" + VALUE.encode() + b"</Variable_List>")
    qstat.write_text(f'#!/bin/sh\n[ "$1 $2 $3" = "-f -x 6.vm" ] && exec cat {out}\nexit 153\n')
    qstat.chmod(0o755)
    block = torque_files.mother_superior_request(str(script), "6.vm", 4242, str(qstat))
    assert block is not None and block.submission_id == SID
    Path(torque_files.record_path(str(script))).write_bytes(record("X=1"))
    assert torque_files.mother_superior_request(str(script), "6.vm", 4242, str(qstat)) is None
    with pytest.raises(NodeError, match="cannot ask Torque"):
        torque_files.mother_superior_request(str(jobs / "7.vm.SC"), "7.vm", 4242, str(qstat))


def test_a_sister_waits_for_its_record(jobs: Path) -> None:
    script = str(jobs / "8.vm15003.SC")
    later = threading.Timer(
        0.2, lambda: Path(torque_files.record_path(script)).write_bytes(
            record(f"PBS_O_HOME=/h,VMW_REQUEST_V1={VALUE}"))
    )  # fmt: skip
    later.start()
    block = torque_files.wait_for_job_record(script, seconds=5)
    assert block is not None and block.vm["img"] == "debian12"
    assert torque_files.wait_for_job_record(str(jobs / "9.vm.SC"), seconds=0.1) is None


def test_a_rewritten_record_is_not_a_gone_job_but_a_removed_one_is(jobs: Path) -> None:
    """job_save: write .JC, unlink .JB, link .JC to .JB, unlink .JC (job_recov.c)."""
    script = str(jobs / "10.vm15003.SC")
    path, copy = Path(torque_files.record_path(script)), jobs / "10.vm15003.JC"
    path.write_bytes(record("X=1"))
    watch = torque_files.RecordWatch(script, poll=0.001)
    for _ in range(200):
        copy.write_bytes(record("X=2"))
        path.unlink()
        os.link(copy, path)
        copy.unlink()
    time.sleep(0.05)
    assert not watch.gone()
    path.unlink()
    deadline = time.monotonic() + 2
    while not watch.gone() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert watch.gone()
    path.write_bytes(record("X=3"))  # a restart's new record: the latch holds
    time.sleep(0.05)
    assert watch.gone()
