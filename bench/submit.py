#!/usr/bin/env python3
"""Added wall time of the qsub and sbatch wrappers over bare stubs (prints figures only).

(a) a job without -vm / --vm (the pass-through fast path);
(b) a VM job: 4 -vm (--vm) keys on the command line and 3 #PBS (#SBATCH) lines.

Each case runs the stub directly and through src/scripts/qsub or src/scripts/sbatch,
interleaved so that load from other processes hits both alike; the figure is
median(wrapper) - median(bare). Targets on a 2-core machine: (a) <= 15 ms, (b) <= 80 ms.

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
SCRIPTS = REPO / "src" / "scripts"
PYTHON = os.environ.get("VM_WRAPPER_PYTHON", "/opt/vm-wrapper/venv/bin/python3")
VM_KEYS = "img=debian12,vcpus=2,ram=2G,vms_per_node=1"
SCRIPT = "#!/bin/sh\n#PBS -l walltime=00:10:00\n#PBS -N bench\n#PBS -j oe\nhostname\n"
SLURM_SCRIPT = "#!/bin/sh\n#SBATCH -t 10\n#SBATCH -J bench\n#SBATCH -o out-%j\nhostname\n"
CASES = {
    "qsub (a) non-VM job": ("qsub", ["-l", "nodes=1", "job.sh"]),
    "qsub (b) VM job, 4 -vm keys, 3 #PBS": ("qsub", ["-vm", VM_KEYS, "-l", "nodes=1", "job.sh"]),
    "sbatch (a) non-VM job": ("sbatch", ["-N1", "sjob.sh"]),
    "sbatch (b) VM job, 4 --vm keys, 3 #SBATCH": ("sbatch", ["--vm", VM_KEYS, "-N1", "sjob.sh"]),
}


def make_site(root: Path) -> dict[str, str]:
    for name, says in (("qsub", "1.bench"), ("sbatch", "Submitted batch job 1")):
        stub = root / f"stub-{name}"
        stub.write_text(f"#!/bin/sh\necho {says}\n")
        stub.chmod(0o755)
    (root / "pool").mkdir()
    (root / "pool" / "debian12.qcow2").write_bytes(b"")
    conf = root / "vm-wrapper.conf"
    conf.write_text(
        f"REAL_QSUB_ON_SERVER={root / 'stub-qsub'}\nREAL_SBATCH={root / 'stub-sbatch'}\n"
        f"IMAGE_POOL={root / 'pool'}\n"
    )
    (root / "job.sh").write_text(SCRIPT)
    (root / "sjob.sh").write_text(SLURM_SCRIPT)
    return {**os.environ, "VM_WRAPPER_CONF": str(conf), "VM_WRAPPER_PYTHON": PYTHON}


def once(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {done.stderr.decode(errors='replace').strip()}")
    return elapsed


def case(
    command: str, args: list[str], env: dict[str, str], root: Path, runs: int
) -> tuple[float, float]:
    bare, wrapped = [], []
    stub, shim = str(root / f"stub-{command}"), str(SCRIPTS / command)
    once([shim, *args], env, root)  # warm the page cache and __pycache__
    for _ in range(runs):
        bare.append(once([stub, *args], env, root))
        wrapped.append(once([shim, *args], env, root))
    return statistics.median(bare) * 1000, statistics.median(wrapped) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory(prefix="vmw-bench-") as tmp:
        root = Path(tmp)
        env = make_site(root)
        print(f"python {PYTHON}, {runs} runs per case, {os.cpu_count()} CPUs")
        for name, (command, args) in CASES.items():
            bare, wrapped = case(command, args, env, root, runs)
            print(
                f"{name:<44} bare {bare:6.1f} ms  wrapper {wrapped:6.1f} ms"
                f"  added {wrapped - bare:6.1f} ms"
            )


if __name__ == "__main__":
    main()
