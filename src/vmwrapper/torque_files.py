"""The node side of a Torque VM job: where each mom finds the job's request (root).

- Mother superior, batch job: the job script copy (argv 8), which pbs_mom has chowned to
  the job user: accepted when owned by that user or by root, refused otherwise.
- Mother superior, interactive job: no script; the job's ``.JB`` when pbs_mom has written
  it already, else one ``qstat -f -x`` (one query per job, from this node only).
- Sister: its own ``.JB``, which appears right after ``prologue.parallel`` returns; the
  detached boot waits for it. 1,024 sisters put no load on the server.

Every file is read by node.read_batch_file (once, O_NOFOLLOW, checked through the
descriptor); its content is user data, re-validated as a request like any other.
"""

from __future__ import annotations

import os
import threading
import time

from vmwrapper import proc, requestblock
from vmwrapper.batch import torque_job
from vmwrapper.errors import CommandError, NodeError
from vmwrapper.node import read_batch_file
from vmwrapper.requestblock import RequestBlock


class RecordWatch:
    """Latches "gone" once the job's .JB is missing from this mom.

    pbs_mom rewrites the .JB as ``.JC`` + unlink + link (job_save, src/server/job_recov.c),
    so it has a new inode after every save and is missing for microseconds meanwhile; a
    requeue removes it and a restart writes a new one some 40-200 ms later (observed). So a
    thread looks every 20 ms, and counts the record gone only when it is still missing,
    with no .JC either, 10 ms later.
    """

    def __init__(self, script_path: str, poll: float = 0.02) -> None:
        self.record = record_path(script_path)
        self.copy = torque_job.job_file(script_path, ".JC")
        self.poll, self._gone = poll, threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def gone(self) -> bool:
        return self._gone.is_set()

    def _missing(self) -> bool:
        return not os.path.lexists(self.record) and not os.path.lexists(self.copy)

    def _watch(self) -> None:
        while not self._gone.is_set():
            if self._missing():
                time.sleep(0.01)
                if self._missing():
                    self._gone.set()
                    return
            time.sleep(self.poll)


def record_path(script_path: str) -> str:
    """The job's .JB beside argv 8."""
    return torque_job.job_file(script_path, ".JB")


def request_in_job_record(xml_text: bytes) -> RequestBlock | None:
    variables = torque_job.variable_list(xml_text)
    value = torque_job.request_value(variables or "")
    return None if value is None else requestblock.from_variable(value)


def mother_superior_request(
    script_path: str, jobid: str, uid: int, qstat: str
) -> RequestBlock | None:
    """The request as the mother superior's prologue finds it (see the module docstring)."""
    try:
        script = read_batch_file(script_path, (uid, 0))
        return requestblock.find(script)
    except FileNotFoundError:
        pass  # qsub -I: no script
    try:
        record = read_batch_file(record_path(script_path))
    except FileNotFoundError:
        record = _ask_server(qstat, jobid)
    return request_in_job_record(record)


def _ask_server(qstat: str, jobid: str) -> bytes:
    try:
        result = proc.run([qstat, "-f", "-x", jobid], timeout=20)
    except CommandError as err:
        raise NodeError(f"cannot ask Torque for the job's request: {err.message}") from None
    return result.stdout.encode("utf-8", "surrogateescape")


def wait_for_job_record(
    script_path: str, seconds: float, poll: float = 0.01
) -> RequestBlock | None:
    """A sister's request: its .JB appears about 2 ms after prologue.parallel returned.
    None if it never appears (the job was gone before it started here) or holds none."""
    path = record_path(script_path)
    deadline = time.monotonic() + seconds
    while True:
        try:
            return request_in_job_record(read_batch_file(path))
        except FileNotFoundError:
            if time.monotonic() > deadline:
                return None
            time.sleep(poll)
