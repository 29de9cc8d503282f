"""The admin config: hostile lines, every problem at once, lookup order, check-config."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmwrapper import config, submitcore
from vmwrapper.cli import admin, qsub, sbatch
from vmwrapper.errors import ConfigError

HOSTILE = [
    "IMAGE_POOL=$(rm -rf /)",
    "IMAGE_POOL=`id`",
    'IMAGE_POOL="$HOME/images"',
    "source /tmp/evil.sh",
    ". /tmp/evil.sh",
    "IMAGE_POOL=/a; rm -rf /",
    'IMAGE_POOL="/unbalanced',
    "IMAGE_POOL='/unbalanced",
    "export TIMEOUT=1",
    "rm -rf /",
    "TIMEOUT=1 && reboot",
    "IMAGE_POOL=/a|/b",
]


@pytest.mark.parametrize("line", HOSTILE)
def test_hostile_line_is_refused_with_file_and_line(line: str) -> None:
    values, problems = config.parse_text(f"# ok\nTIMEOUT=60\n{line}\n", "/etc/x.conf")
    assert len(problems) == 1 and problems[0].startswith("/etc/x.conf:3: ")
    assert values == {"TIMEOUT": "60"}  # nothing from the hostile line


def test_hostile_file_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    conf = tmp_path / "c.conf"
    conf.write_text(f"IMAGE_POOL=$(touch {marker})\nTIMEOUT=`touch {marker}`\n")
    _, problems = config.load_with_problems([conf])
    assert len(problems) == 2 and not marker.exists()


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text("TIMEOUT=soon\nNOT_A_KEY=1\nMAX_VMS_PER_NODE=0\nACCEL=warp\nsource x\n")
    with pytest.raises(ConfigError) as caught:
        config.load([conf])
    text = "\n".join(caught.value.problems)
    needles = [
        "c.conf:2: unknown key NOT_A_KEY",
        "c.conf:5: not a KEY=value",
        "TIMEOUT='soon'",
        "MAX_VMS_PER_NODE='0': must be at least 1",
        "ACCEL='warp': expected one of",
    ]
    for needle in needles:
        assert needle in text
    assert len(caught.value.problems) == 5


def test_quoting_forms_bash_would_read_the_same() -> None:
    values, problems = config.parse_text(
        "IMAGE_POOL='/srv/my images'\nVM_DNS=\"10.0.0.1 10.0.0.2\"\nTIMEOUT=90 # c\n", "f"
    )
    assert problems == []
    assert values == {
        "IMAGE_POOL": "/srv/my images",
        "VM_DNS": "10.0.0.1 10.0.0.2",
        "TIMEOUT": "90",
    }


def test_lookup_order_defaults_then_system_then_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system, site = tmp_path / "system.conf", tmp_path / "site.conf"
    system.write_text("TIMEOUT=100\nHOST_OS_CORE_COUNT=2\n")
    site.write_text("TIMEOUT=200\n")
    monkeypatch.setattr(config, "SYSTEM_CONFIG", system)
    monkeypatch.setenv("VM_WRAPPER_CONF", str(site))
    assert config.config_files() == [system, site]
    cfg = config.load()
    assert (cfg.TIMEOUT, cfg.HOST_OS_CORE_COUNT, cfg.MAX_VMS_PER_NODE) == (200, 2, 4)
    monkeypatch.delenv("VM_WRAPPER_CONF")
    assert config.load().TIMEOUT == 100


def test_check_config_prints_values_sources_and_exit_code(tmp_path: Path) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text("# site\nTIMEOUT=100\nIMAGE_POOL='/srv/my images'\n")
    out, err = io.StringIO(), io.StringIO()
    assert admin.check_config(out, err, [conf]) == 0
    lines = out.getvalue().splitlines()
    assert f"TIMEOUT=100  # {conf}:2" in lines
    assert f"IMAGE_POOL='/srv/my images'  # {conf}:3" in lines
    assert "MAX_VMS_PER_NODE=4  # default" in lines
    assert len(lines) == len(config.KEYS)
    conf.write_text("TIMEOUT=soon\nfoo\n")
    err = io.StringIO()
    assert admin.check_config(io.StringIO(), err, [conf]) == 1
    assert "problem: TIMEOUT='soon'" in err.getvalue() and f"problem: {conf}:2" in err.getvalue()
    assert "2 problem(s)" in err.getvalue()


def test_check_config_reports_warnings_without_failing(tmp_path: Path) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text("TIMEOUT=290\n")  # does not fit in $prologalarm 300 - 10
    err = io.StringIO()
    assert admin.check_config(io.StringIO(), err, [conf]) == 0
    assert "warning: TIMEOUT:" in err.getvalue()


def test_check_config_command_exits_non_zero_on_problems(tmp_path: Path) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text("TIMEOUT=$(reboot)\n")
    env = {**os.environ, "VM_WRAPPER_CONF": str(conf)}
    done = subprocess.run(
        [sys.executable, "-m", "vmwrapper", "check-config"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert f"problem: {conf}:1: TIMEOUT: value must be a plain word" in done.stderr
    assert "Traceback" not in done.stderr


# -- the qsub/sbatch fast paths read a few keys themselves; they must agree with the full parser


FAST_KEYS = {**qsub.FAST_DEFAULTS, **sbatch.FAST_DEFAULTS}


@pytest.mark.parametrize("defaults", [qsub.FAST_DEFAULTS, sbatch.FAST_DEFAULTS])
def test_fast_defaults_equal_schema_defaults(defaults: dict[str, str]) -> None:
    assert {k: config.SCHEMA[k]["default"] for k in defaults} == defaults


def test_fast_reader_reads_plain_files(tmp_path: Path) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text("REAL_QSUB_ON_SERVER='/opt/torque/bin/qsub' # c\nDISABLE_VM_WRAPPER=Yes\n")
    values = submitcore.fast_values({"VM_WRAPPER_CONF": str(conf)}, FAST_KEYS)
    assert values is not None
    assert values["REAL_QSUB_ON_SERVER"] == "/opt/torque/bin/qsub"
    assert values["DISABLE_VM_WRAPPER"] == "yes"


@pytest.mark.parametrize(
    "line",
    [
        "REAL_QSUB_ON_SERVER=$(x)",
        "export DISABLE_VM_WRAPPER=true",
        "DISABLE_VM_WRAPPER=maybe",
        "REAL_QSUB_ON_NODES=qsub",
        "REAL_SBATCH=sbatch",
        'SERVER_HOSTNAME="a$b"',
        "X=1 SERVER_HOSTNAME=a",
    ],
)
def test_fast_reader_defers_anything_unusual_to_the_full_parser(tmp_path: Path, line: str) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text(line + "\n")
    assert submitcore.fast_values({"VM_WRAPPER_CONF": str(conf)}, FAST_KEYS) is None


VALUE_TEXT = st.text(alphabet=st.sampled_from(list("ab/ \"'$`#\\!;.-=")), max_size=12)


@given(st.sampled_from(sorted(FAST_KEYS)), VALUE_TEXT)
def test_fast_reader_agrees_with_full_parser(key: str, value: str) -> None:
    line = f"{key}={value}"
    fast = submitcore.plain_value(value)
    values, problems = config.parse_text(line, "f")
    if fast is not None:  # whatever the fast reader accepts, the full parser reads alike
        assert problems == [] and values == {key: fast}
