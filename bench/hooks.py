#!/opt/vm-wrapper/venv/bin/python3
"""Node-side benchmarks. Prints figures; asserts nothing (timing asserts are flaky here).

P3  prologue + epilogue of a job WITHOUT a VM request, through the real mom_priv shims
    (env -i, Torque argv): the price every job pays.
P4  node overhead of a one-VM prologue beyond the guest's own boot, with the ~2 GiB guest
    image and a 20 GiB (sparse) variant of it: prologue wall time minus the guest's boot
    (from its domain start to its ready line). Needs libvirtd, the vmw netns, root.
P5  the same pre-boot overhead for 8 VMs on one node: start of the prologue until all 8
    domains run (8 TCG guests cannot finish booting on 2 cores in useful time, so the
    prologue is given a short TIMEOUT and the teardown time is reported too).

Run as root inside the netns:  ip netns exec vmw bench/hooks.py [p3|p4|p5 ...]
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "src" / "test"))

from vmtest import request_script, system_config  # noqa: E402

from vmwrapper.node import node_state  # noqa: E402

POOL = Path("/var/lib/vm-wrapper/images")
ENV = ["env", "-i", "PATH=/bin:/usr/bin", "PBS_NODENUM=0", "PBS_NUM_NODES=1"]


def hook(name: str, jobid: str, script: Path, ppn: int = 2) -> float:
    argv = [*ENV, f"PBS_NUM_PPN={ppn}", str(REPO / "mom_priv" / name), jobid, "vmwtest",
            "vmwtest", "bench"]  # fmt: skip
    if name == "prologue":
        argv += [f"nodes=1:ppn={ppn}", "batch", "", str(script)]
    else:
        argv += ["1", f"nodes=1:ppn={ppn}", "cput=0", "batch", "", "0", str(script)]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0 and name == "prologue":
        print(f"  ({name} exit {done.returncode}: {done.stderr.strip()[-200:]})")
    return elapsed


def script_file(directory: Path, jobid: str, text: str) -> Path:
    path = directory / f"{jobid}.SC"
    path.write_text(text)
    path.chmod(0o600)
    return path


def p3(directory: Path, runs: int = 40) -> None:
    script = script_file(directory, "1.bench", "#!/bin/sh\n#PBS -N plain\necho plain job\n")
    times = []
    for _ in range(runs):
        times.append(hook("prologue", "1.bench", script) + hook("epilogue", "1.bench", script))
    print(f"P3 non-VM prologue+epilogue: median {statistics.median(times) * 1000:.1f} ms "
          f"(min {min(times) * 1000:.1f}, {runs} runs; target <= 20 ms)")  # fmt: skip


def boot_overhead(directory: Path, jobid: str, image: str) -> None:
    script = script_file(directory, jobid, request_script(img=image))
    wall = hook("prologue", jobid, script)
    with system_config() as config:
        pass
    timeline = json.loads(node_state(config, jobid, 0).timeline_file.read_text())
    name = next(k.split(":")[0] for k in timeline if k.endswith(":define"))
    guest = timeline[f"{name}:ready"] - timeline[f"{name}:define"]
    teardown = hook("epilogue", jobid, script)
    print(f"P4 {image}: prologue {wall:.2f} s, guest boot {guest:.2f} s, node overhead "
          f"{wall - guest:.2f} s (target <= 0.5 s); epilogue {teardown:.2f} s")  # fmt: skip


def p4(directory: Path) -> None:
    big = POOL / "bench20g.qcow2"
    if not big.exists():  # standalone and sparse: 20 GiB virtual, ~0.75 GB allocated
        subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(POOL / "debian12.qcow2"),
                        str(big)], check=True)  # fmt: skip
        subprocess.run(["qemu-img", "resize", "-q", str(big), "20G"], check=True)
        for suffix in ("vmlinuz", "initrd", "cmdline"):
            (POOL / f"bench20g.{suffix}").write_bytes((POOL / f"debian12.{suffix}").read_bytes())
    for number, image in ((2, "debian12"), (3, "bench20g")):
        boot_overhead(directory, f"{number}.bench", image)


def p5(directory: Path) -> None:
    script = script_file(directory, "4.bench", request_script(vms_per_node="8"))
    with system_config() as config:
        timeline_file = node_state(config, "4.bench", 0).timeline_file
    seen: dict[str, float] = {}
    start = time.time()

    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            with contextlib.suppress(OSError, ValueError):
                seen.update(json.loads(timeline_file.read_text()))
            time.sleep(0.05)

    thread = threading.Thread(target=sample)
    thread.start()
    wall = hook("prologue", "4.bench", script, ppn=9)  # fails at TIMEOUT, then tears down
    done.set()
    thread.join()
    defines = [v for k, v in seen.items() if k.endswith(":define")]
    if len(defines) == 8:
        print(f"P5 8 VMs: all 8 domains running {max(defines) - start:.2f} s after the "
              f"prologue started (target <= 1.0 s); whole prologue incl. TIMEOUT and "
              f"teardown {wall:.2f} s")  # fmt: skip
    else:
        print(f"P5: only {len(defines)} domains seen started; prologue {wall:.2f} s")


def main() -> None:
    wanted = sys.argv[1:] or ["p3", "p4", "p5"]
    with tempfile.TemporaryDirectory(prefix="vmw-bench-") as tmp:
        directory = Path(tmp)
        os.chmod(directory, 0o755)
        settings = {"MAX_VMS_PER_NODE": "8", "TIMEOUT": "200"}
        for name in wanted:
            with system_config(**(settings if name != "p5" else {**settings, "TIMEOUT": "8"})):
                {"p3": p3, "p4": p4, "p5": p5}[name](directory)


if __name__ == "__main__":
    main()
