#!/opt/vm-wrapper/venv/bin/python3
"""How a Torque sister gets the job's request, at 1, 16, 128 and 1,024 sister moms.

Each sister reads the request from its OWN job record (mom_priv/jobs/<id><port>.JB, which
pbs_mom writes right after prologue.parallel returns; observed on Torque 6.1): a local
file, so neither its time nor the server's load depends on how many sisters the job has.
For every sister this bench writes a .JB shaped like a real one (the request variable
among the job's other variables, at the size the qsub wrapper sends), then times what the
sister's hook does with it: find the file, read it without following links, parse its
XML, decode and check the request. It also times the real mom_priv/prologue.parallel
shim, which is what pbs_mom waits for: it must return at once, whatever the job.

With VMW_BENCH_QSTAT=/path/to/qstat and VMW_BENCH_JOBID=<a job the server knows> it also
times one `qstat -f -x` (what asking the server instead would cost per sister).

Prints figures; asserts nothing.  Run as root:  bench/sister_request.py
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from vmwrapper import requestblock, torque_files  # noqa: E402

SISTERS = (1, 16, 128, 1024)
RECORD = """<?xml version="1.0"?>
<job>
  <version>131842</version>
  <state>0</state>
  <substate>40</substate>
  <start_time>1796104182</start_time>
  <jobid>{jobid}</jobid>
  <attributes>
    <Job_Name flags="1">vmjob</Job_Name>
    <Job_Owner flags="1">alice@login1</Job_Owner>
    <exec_host flags="1">{exec_host}</exec_host>
    <Variable_List flags="3">PBS_O_QUEUE=batch,PBS_O_HOME=/home/alice,PBS_O_LOGNAME=alice,\
PBS_O_PATH=/usr/local/bin:/usr/bin:/bin,PBS_O_SHELL=/bin/bash,PBS_O_LANG=C.UTF-8,\
{variable},PBS_O_WORKDIR=/home/alice,PBS_O_HOST=login1,PBS_O_SERVER=server</Variable_List>
    <euser flags="1">alice</euser>
  </attributes>
</job>
"""


def request_variable() -> str:
    """A request as the qsub wrapper sends it, with a 4 KB cloud-config embedded."""
    vm = {"img": "debian12", "vcpus": "4", "ram": "8G", "vms_per_node": "1"}
    files = {"metadata": b"packages: [" + b"pkg, " * 800 + b"]\n"}
    text = requestblock.encode_json(vm, files, requestblock.new_submission_id())
    return f"{requestblock.VARIABLE}={requestblock.to_variable(text)}"


def sister_read_times(jobs: Path, count: int, variable: str) -> list[float]:
    hosts = "+".join(f"n{i:04d}/0" for i in range(count + 1))
    paths = []
    for rank in range(1, count + 1):
        path = jobs / f"77.server{15000 + rank}.SC"  # argv 8; only its .JB exists
        record = RECORD.format(jobid="77.server", exec_host=hosts, variable=variable)
        Path(torque_files.record_path(str(path))).write_text(record)
        paths.append(path)
    times = []
    for path in paths:
        start = time.perf_counter()
        block = torque_files.wait_for_job_record(str(path), seconds=1)
        times.append(time.perf_counter() - start)
        assert block is not None and block.vm["img"] == "debian12"
    for path in paths:
        os.unlink(torque_files.record_path(str(path)))
    return times


def shim_return_ms(jobs: Path, samples: int = 10) -> list[float]:
    """pbs_mom's wait for the real prologue.parallel shim (a plain job: its child finds no
    request and exits)."""
    shim = REPO / "mom_priv" / "prologue.parallel"
    times = []
    for i in range(samples):
        script = jobs / f"{90 + i}.server15001.SC"
        Path(torque_files.record_path(str(script))).write_text("<job/>")
        argv = [str(shim), f"{90 + i}.server", "alice", "alice", "vmjob", "nodes=2", "batch", "",
                str(script)]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(argv, env={"PATH": "/bin:/usr/bin"}, check=True)
        times.append((time.perf_counter() - start) * 1000)
    return times


def qstat_ms() -> float | None:
    qstat, jobid = os.environ.get("VMW_BENCH_QSTAT"), os.environ.get("VMW_BENCH_JOBID")
    if not (qstat and jobid):
        return None
    start = time.perf_counter()
    subprocess.run([qstat, "-f", "-x", jobid], capture_output=True, check=True)
    return (time.perf_counter() - start) * 1000


def main() -> None:
    variable = request_variable()
    print(f"request variable: {len(variable)} characters (4 KB cloud-config embedded)")
    with tempfile.TemporaryDirectory(prefix="vmw-bench-jobs-") as tmp:
        jobs = Path(tmp)
        sister_read_times(jobs, 1, variable)  # warm: imports and the page cache
        base = None
        print(f"{'sisters':>8} {'median ms':>10} {'p95 ms':>8} {'max ms':>8} {'vs 1':>6} "
              f"{'server requests':>16}")  # fmt: skip
        for count in SISTERS:
            times = sorted(sister_read_times(jobs, count, variable))
            median = statistics.median(times) * 1000
            base = base or median
            p95 = times[int(0.95 * (len(times) - 1))] * 1000
            print(f"{count:>8} {median:>10.3f} {p95:>8.3f} {times[-1] * 1000:>8.3f} "
                  f"{median / base:>6.2f} {0:>16}")  # fmt: skip
        shim = shim_return_ms(jobs)
        middle, worst = statistics.median(shim), max(shim)
        print(f"prologue.parallel shim returns to pbs_mom in {middle:.1f} ms "
              f"(median of {len(shim)}; max {worst:.1f} ms), any sister count")  # fmt: skip
    asked = qstat_ms()
    if asked is not None:
        print(
            f"for comparison, one qstat -f -x: {asked:.1f} ms and one server request per "
            "sister (1,024 sisters: 1,024 requests at once)"
        )


if __name__ == "__main__":
    main()
