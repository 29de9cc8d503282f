"""Slurm Prolog/Epilog environment parsing and the mapping of outcomes onto Slurm semantics.

The environments are the ones observed on Slurm 22.05.8 (reference/batch.md 1.3, and
re-captured by a dumper Prolog on the two-node cluster of tools/slurm-cluster).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmwrapper.batch import slurm_hooks as sh
from vmwrapper.errors import PermanentJobError

# captured from a real `sbatch -N2 --comment=vm-wrapper` Prolog on n1
PROLOG_ENV = {
    "PWD": "/",
    "SLURMD_NODENAME": "n1",
    "SLURM_CLUSTER_NAME": "vmwcl",
    "SLURM_CONF": "/etc/slurm/slurm.conf",
    "SLURM_JOBID": "1",
    "SLURM_JOB_COMMENT": "vm-wrapper",
    "SLURM_JOB_CPUS_PER_NODE": "1(x2)",
    "SLURM_JOB_GID": "2000",
    "SLURM_JOB_ID": "1",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_JOB_PARTITION": "debug",
    "SLURM_JOB_RESTART_COUNT": "0",
    "SLURM_JOB_UID": "2000",
    "SLURM_JOB_USER": "vmwtest",
    "SLURM_NODELIST": "n[1-2]",
    "SLURM_SCRIPT_CONTEXT": "prolog_slurmd",
    "SLURM_UID": "2000",
}


@pytest.mark.parametrize(
    ("text", "hosts"),
    [
        ("n1", ["n1"]),
        ("n[1-2]", ["n1", "n2"]),
        ("n[01-03,12]", ["n01", "n02", "n03", "n12"]),
        ("n[08-10]", ["n08", "n09", "n10"]),
        ("a1,b[3-4]", ["a1", "b3", "b4"]),
        ("gpu[1-2]-ib,login", ["gpu1-ib", "gpu2-ib", "login"]),
        ("node-7.cluster", ["node-7.cluster"]),
    ],
)
def test_hostlist_expansion(text: str, hosts: list[str]) -> None:
    assert sh.expand_hostlist(text) == hosts


@pytest.mark.parametrize(
    "text",
    ["", "n[1-2", "n1-2]", "n[2-1]", "n[a-b]", "n[1-2]x[3]", "a,,b", "n[[1]]", "n[1-999999]"],
)
def test_malformed_or_huge_hostlists_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        sh.expand_hostlist(text)


@given(
    st.from_regex(r"[a-z]{1,5}", fullmatch=True),
    st.lists(st.integers(0, 9999), min_size=1, max_size=30, unique=True),
)
def test_bracket_list_expands_to_its_members_in_order(prefix: str, numbers: list[int]) -> None:
    text = f"{prefix}[{','.join(map(str, numbers))}]"
    assert sh.expand_hostlist(text) == [f"{prefix}{n}" for n in numbers]


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("2", [2]), ("1(x2)", [1, 1]), ("4,2(x3)", [4, 2, 2, 2]), ("8(x2),1", [8, 8, 1])],
)
def test_cpus_per_node_forms(text: str, cpus: list[int]) -> None:
    assert sh.expand_cpus_per_node(text) == cpus


@pytest.mark.parametrize("text", ["", "x", "2(x)", "2(x0)", "2,,1", "-1", "1(x999999)"])
def test_malformed_cpus_per_node_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        sh.expand_cpus_per_node(text)


def test_prolog_env_of_the_first_node() -> None:
    ctx = sh.parse("prolog", PROLOG_ENV)
    assert (ctx.backend, ctx.event, ctx.jobid, ctx.user, ctx.script_path) == (
        "slurm",
        "prologue",
        "1",
        "vmwtest",
        "",
    )
    assert (ctx.rank, ctx.num_nodes, ctx.cores_on_node, ctx.first_node) == (0, 2, 1, True)
    assert ctx.exit_status is None


def test_rank_and_cores_come_from_the_node_position() -> None:
    env = {
        **PROLOG_ENV,
        "SLURMD_NODENAME": "c12",
        "SLURM_NODELIST": "b1,c[10-12]",
        "SLURM_JOB_NUM_NODES": "4",
        "SLURM_JOB_CPUS_PER_NODE": "4,2(x2),6",
    }
    ctx = sh.parse("prolog", env)
    assert (ctx.rank, ctx.cores_on_node, ctx.first_node, ctx.num_nodes) == (3, 6, False, 4)


def test_epilog_reads_the_exit_code() -> None:
    env = {**PROLOG_ENV, "SLURMD_NODENAME": "n2", "SLURM_JOB_EXIT_CODE": "256"}
    ctx = sh.parse("epilog", env)
    assert (ctx.event, ctx.rank, ctx.exit_status, ctx.job_ran) == ("epilogue", 1, 256, True)
    assert sh.parse("epilog", PROLOG_ENV).exit_status is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"SLURM_JOB_ID": ""}, "SLURM_JOB_ID"),
        ({"SLURM_JOB_ID": "1;rm"}, "SLURM_JOB_ID"),
        ({"SLURMD_NODENAME": "n9"}, "not in the job's list"),
        ({"SLURM_NODELIST": "n[1-"}, "unbalanced"),
        ({"SLURM_JOB_CPUS_PER_NODE": "two"}, "CPUs-per-node"),
        ({"SLURM_JOB_NUM_NODES": "2x"}, "SLURM_JOB_NUM_NODES"),
    ],
)
def test_bad_environment_is_a_clear_error(change: dict[str, str], message: str) -> None:
    with pytest.raises(PermanentJobError, match=message):
        sh.parse("prolog", {**PROLOG_ENV, **change})


def test_unknown_event_is_refused() -> None:
    with pytest.raises(PermanentJobError, match="unknown Slurm hook"):
        sh.parse("taskprolog", PROLOG_ENV)


def test_restart_count() -> None:
    assert sh.restart_count(PROLOG_ENV) == 0
    assert sh.restart_count({"SLURM_JOB_RESTART_COUNT": "2"}) == 2
    assert sh.restart_count({}) == 0


def test_request_problem_fails_the_job_and_keeps_the_node() -> None:
    for attempt in (1, 5):
        verdict = sh.prolog_verdict(permanent=True, attempt=attempt, max_attempts=3)
        assert verdict == sh.Verdict(sh.RUN, fail_job=True)


def test_node_fault_drains_until_the_attempts_run_out_then_fails_the_job() -> None:
    assert sh.prolog_verdict(permanent=False, attempt=1, max_attempts=3) == sh.Verdict(
        sh.DRAIN, fail_job=False
    )
    # a job that failed on 3 nodes is cancelled, and the 3rd node is kept (exit 0): Slurm
    # would requeue a cancelled job whose Prolog exits non-zero
    assert sh.prolog_verdict(permanent=False, attempt=3, max_attempts=3) == sh.Verdict(
        sh.RUN, fail_job=True
    )


def test_failure_comment_is_one_tagged_bounded_line() -> None:
    text = sh.failure_comment("img='x': no such image\nsecond line " + "y" * 400)
    assert text.startswith("vm-wrapper: img='x': no such image second line")
    assert "\n" not in text
    assert len(text) == sh.MAX_COMMENT


def test_failure_comment_keeps_the_users_own_comment() -> None:
    reason = "img='x': no such image"
    assert sh.failure_comment(reason, "vm-wrapper; my run") == (
        "vm-wrapper: img='x': no such image [your comment: my run]"
    )
    assert sh.failure_comment(reason, "vm-wrapper") == "vm-wrapper: img='x': no such image"
    text = sh.failure_comment("y" * 400, "vm-wrapper; " + "z" * 400)
    assert len(text) == sh.MAX_COMMENT and text.endswith("z" * 100 + "]")


@pytest.mark.parametrize(
    ("code", "out", "err", "active"),
    [
        (0, "RUNNING\n", "", True),
        (0, "CONFIGURING\n", "", True),
        (0, "COMPLETING\n", "", True),
        (0, "PENDING\n", "", True),
        (0, "COMPLETED\n", "", False),
        (0, "CANCELLED\n", "", False),
        (0, "", "", False),  # finished: squeue hides terminal states by default
        (1, "", "slurm_load_jobs error: Invalid job id specified", False),  # purged
        (1, "", "slurm_load_jobs error: Unable to contact slurm controller", True),
    ],
)
def test_job_activity_from_squeue(code: int, out: str, err: str, active: bool) -> None:
    assert sh.job_active_from_squeue(code, out, err) is active


def test_slurm_client_env_is_fixed_and_keeps_the_site_conf() -> None:
    env = sh.slurm_env({"SLURM_CONF": "/etc/slurm-alt/slurm.conf", "LD_PRELOAD": "x.so"})
    assert env == {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LC_ALL": "C.UTF-8",
        "SLURM_CONF": "/etc/slurm-alt/slurm.conf",
    }
    assert "SLURM_CONF" not in sh.slurm_env({"SLURM_CONF": "relative.conf"})
