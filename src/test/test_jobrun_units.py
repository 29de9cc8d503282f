"""The job wrapper's pure parts: environment rules, node file, the in-VM runner script."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

from vmwrapper import jobenv
from vmwrapper.jobrun import GuestSide, JobFiles, interactive_command, runner_script

VMS = [
    {"hostname": "vm0", "address": "10.77.1.1", "vcpus": 2, "rank": 0},
    {"hostname": "vm1", "address": "10.77.1.2", "vcpus": 1, "rank": 1},
]
FILES = JobFiles(Path("/k"), Path("/kh"), VMS, Path("/u"))
ENV = {
    "PBS_JOBID": "12.srv", "PBS_O_WORKDIR": "/home/a/run dir", "PATH": "/host/bin",
    "LD_PRELOAD": "/evil.so", "HOME": "/home/a", "MYVAR": "it's \"quoted\" $x",
    "BASH_FUNC_module%%": "() { :; }", "PBS_NODEFILE": "/var/spool/aux/12.srv",
}  # fmt: skip


def test_host_specific_variables_stay_on_the_host_and_pbs_ones_are_translated() -> None:
    guest = GuestSide.of(FILES, ENV)
    assert guest.env["MYVAR"] == ENV["MYVAR"]
    for name in ("PATH", "LD_PRELOAD", "HOME", "BASH_FUNC_module%%"):
        assert name not in guest.env
    assert guest.env["PBS_NODEFILE"] == "/tmp/vmw-12.srv/nodefile"
    assert (guest.env["PBS_NP"], guest.env["PBS_NUM_NODES"]) == ("3", "2")
    assert guest.nodefile == "vm0\nvm0\nvm1\n"


def test_slurm_jobs_see_the_vms_as_their_node_list() -> None:
    env = jobenv.guest_environment({"SLURM_JOB_ID": "7"}, nodefile="/n", hostnames=["vm0", "vm1"],
                                   vcpus=[1, 1])  # fmt: skip
    assert env["SLURM_JOB_NODELIST"] == "vm0,vm1" and env["VMW_JOBID"] == "7"


def test_runner_is_valid_sh_and_quotes_every_value(tmp_path: Path) -> None:
    script = b"#!/bin/bash\necho 'hi'\n"
    payload = {"script": base64.b64encode(script).decode(), "args": ["a b", "$c"], "shell": ""}
    text = runner_script(payload, FILES, ENV)
    runner = tmp_path / "runner.sh"
    runner.write_text(text)
    subprocess.run(["sh", "-n", str(runner)], check=True)
    assert "export MYVAR='it'\"'\"'s \"quoted\" $x'" in text
    assert "cd '/home/a/run dir'" in text
    assert "setsid \"$d/job\" 'a b' '$c' </dev/null &" in text
    assert "LD_PRELOAD" not in text and "/host/bin" not in text


def test_interactive_command_is_valid_sh() -> None:
    command = interactive_command(FILES, {**ENV, "TERM": "xterm-256color"})
    subprocess.run(["sh", "-n", "-c", command], check=True)
    assert command.endswith('exec "${SHELL:-/bin/bash}" -l')
    assert "TERM=xterm-256color" in command
