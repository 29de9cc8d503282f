#!/usr/bin/env python3
"""Added wall time of the qsub wrapper over a bare stub qsub (prints figures, never fails).

(a) a job without -vm (the pass-through fast path);
(b) a VM job: 4 -vm keys on the command line and 3 #PBS lines in the script.

Each case runs the stub directly and through src/scripts/qsub, interleaved so that load
from other processes hits both alike; the figure is median(wrapper) - median(bare).
Targets on a 2-core machine: (a) <= 15 ms, (b) <= 80 ms.

    python3 bench/submit.py [--runs 60]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIM = REPO / "src" / "scripts" / "qsub"
PYTHON = os.environ.get("VM_WRAPPER_PYTHON", "/opt/vm-wrapper/venv/bin/python3")
VM_KEYS = "img=debian12,vcpus=2,ram=2G,vms_per_node=1"
SCRIPT = "#!/bin/sh\n#PBS -l walltime=00:10:00\n#PBS -N bench\n#PBS -j oe\nhostname\n"


def make_site(root: Path) -> dict[str, str]:
    stub = root / "stub-qsub"
    stub.write_text("#!/bin/sh\necho 1.bench\n")
    stub.chmod(0o755)
    (root / "pool").mkdir()
    (root / "pool" / "debian12.qcow2").write_bytes(b"")
    conf = root / "vm-wrapper.conf"
    conf.write_text(f"REAL_QSUB_ON_SERVER={stub}\nIMAGE_POOL={root / 'pool'}\n")
    (root / "job.sh").write_text(SCRIPT)
    return {**os.environ, "VM_WRAPPER_CONF": str(conf), "VM_WRAPPER_PYTHON": PYTHON}


def once(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {done.stderr.decode(errors='replace').strip()}")
    return elapsed


def case(args: list[str], env: dict[str, str], root: Path, runs: int) -> tuple[float, float]:
    bare, wrapped = [], []
    stub = str(root / "stub-qsub")
    once([str(SHIM), *args], env, root)  # warm the page cache and __pycache__
    for _ in range(runs):
        bare.append(once([stub, *args], env, root))
        wrapped.append(once([str(SHIM), *args], env, root))
    return statistics.median(bare) * 1000, statistics.median(wrapped) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory(prefix="vmw-bench-") as tmp:
        root = Path(tmp)
        env = make_site(root)
        cases = {
            "(a) non-VM job": ["-l", "nodes=1", "job.sh"],
            "(b) VM job, 4 -vm keys, 3 #PBS lines": ["-vm", VM_KEYS, "-l", "nodes=1", "job.sh"],
        }
        print(f"python {PYTHON}, {runs} runs per case, {os.cpu_count()} CPUs")
        for name, args in cases.items():
            bare, wrapped = case(args, env, root, runs)
            print(
                f"{name:<38} bare {bare:6.1f} ms  wrapper {wrapped:6.1f} ms"
                f"  added {wrapped - bare:6.1f} ms"
            )


if __name__ == "__main__":
    main()
