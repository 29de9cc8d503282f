"""job-run's Slurm specifics, without VMs (test_slurm_e2e.py runs them for real)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmwrapper import jobrun


def test_slurm_job_runs_where_sbatch_started_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # sbatch -D: the batch script starts here
    slurm = {"SLURM_JOB_ID": "5", "SLURM_SUBMIT_DIR": "/home/u"}
    assert jobrun.job_workdir(slurm) == str(tmp_path)
    assert jobrun.job_workdir({"PBS_O_WORKDIR": "/w", "SLURM_JOB_ID": "5"}) == "/w"
    assert jobrun.job_workdir({"SLURM_SUBMIT_DIR": "/s"}) == "/s"
    assert jobrun.job_workdir({}) == ""
    assert os.getcwd() == str(tmp_path)


def test_ready_test_of_a_booting_vm_is_cloud_inits_marker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ran: list[list[str]] = []

    class Done:
        returncode = 1

    def fake_run(argv: list[str], **_: object) -> Done:
        ran.append(argv)
        return Done()

    monkeypatch.setattr(jobrun.proc, "run", fake_run)
    files = jobrun.JobFiles(tmp_path / "k", tmp_path / "kh", [], tmp_path)
    vm = {"address": "10.77.0.2", "rank": 1}
    assert not jobrun.vm_ready(files, vm, "u")  # boot-finished not there yet
    assert ran[0][-3:] == ["test", "-e", jobrun.BOOT_FINISHED] and "u@10.77.0.2" in ran[0]
