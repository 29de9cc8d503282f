"""Torque hook argv/env parsing and the mapping of outcomes onto Torque's exit codes."""

from __future__ import annotations

import dataclasses

import pytest

from vmwrapper.batch import torque_hooks as th
from vmwrapper.errors import PermanentJobError

PRO = ["12.vm", "alice", "alice", "job", "nodes=2:ppn=3", "batch", "", "/spool/12.vm.SC"]
EPI = [
    "12.vm",
    "alice",
    "alice",
    "job",
    "4242",
    "nodes=2",
    "cput=0",
    "batch",
    "",
    "271",
    "/spool/12.vm.SC",
]
ENV = {"PBS_NODENUM": "1", "PBS_NUM_NODES": "2", "PBS_NUM_PPN": "3", "PATH": "/bin:/usr/bin"}


def test_prologue_parallel_reads_the_recorded_argv_and_env() -> None:
    ctx = th.parse("prologue.parallel", PRO, ENV)
    assert (ctx.event, ctx.jobid, ctx.user, ctx.script_path) == (
        "prologue",
        "12.vm",
        "alice",
        "/spool/12.vm.SC",
    )
    assert (ctx.rank, ctx.num_nodes, ctx.cores_on_node, ctx.first_node) == (1, 2, 3, False)


def test_epilogue_reads_exit_status_and_script_from_11_args() -> None:
    ctx = th.parse("epilogue", EPI, {"PBS_NUM_NODES": "2"})
    assert (ctx.event, ctx.exit_status, ctx.script_path, ctx.rank) == (
        "epilogue",
        271,
        "/spool/12.vm.SC",
        0,
    )
    assert not ctx.rerun_expected
    requeued = th.parse("epilogue", [*EPI[:9], "-14", EPI[10]], {})
    assert requeued.rerun_expected
    aborted = th.parse("epilogue", [*EPI[:9], "-2", EPI[10]], {})
    assert not aborted.rerun_expected


def test_sister_epilogue_without_nodenum_has_unknown_rank() -> None:
    assert th.parse("epilogue.parallel", EPI, {}).rank is None


@pytest.mark.parametrize("argv", [PRO[:7], []])
def test_short_argv_is_refused(argv: list[str]) -> None:
    with pytest.raises(PermanentJobError, match="expected 8 arguments"):
        th.parse("prologue", argv, ENV)


def test_malformed_environment_is_a_clear_error() -> None:
    with pytest.raises(PermanentJobError, match="PBS_NUM_PPN"):
        th.parse("prologue", PRO, {"PBS_NUM_PPN": "x"})


def test_boot_budget_ends_well_inside_prologalarm() -> None:
    """pbs_mom SIGKILLs the prologue's session at $prologalarm - 10 s (observed)."""
    from vmwrapper.config import load

    config = load([])
    assert th.boot_budget(config) == min(config.TIMEOUT, config.PROLOGALARM - 10 - 15)
    short = dataclasses.replace(config, TIMEOUT=600, PROLOGALARM=60)
    assert th.boot_budget(short) == 35


def test_non_ascii_digits_are_not_numbers() -> None:
    with pytest.raises(PermanentJobError, match="PBS_NUM_PPN"):
        th.parse("prologue", PRO, {"PBS_NUM_PPN": "²"})
    assert th.parse("prologue.parallel", PRO, {"PBS_NODENUM": "\u0661"}).rank is None
