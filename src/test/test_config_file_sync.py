"""config/vm-wrapper.conf documents every key of the schema with its default."""

from __future__ import annotations

import re

from conftest import REPO

from vmwrapper import config
from vmwrapper.cli import admin

SHIPPED = REPO / "config" / "vm-wrapper.conf"


def test_shipped_file_is_generated_from_the_schema() -> None:
    assert SHIPPED.read_text() == admin.default_config_text(), (
        "config/vm-wrapper.conf is stale: regenerate it with "
        "`vm-wrapper check-config --print-default > config/vm-wrapper.conf`"
    )


def test_every_key_is_listed_once_commented_with_its_doc() -> None:
    text = SHIPPED.read_text()
    keys = re.findall(r"^#([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE)
    assert keys == list(config.KEYS)
    for key, meta in config.SCHEMA.items():
        assert f"# {key} (" in text
        assert meta["doc"].split()[0] in text


def test_uncommented_file_parses_to_exactly_the_defaults() -> None:
    lines = [line[1:] for line in SHIPPED.read_text().splitlines() if re.match(r"#[A-Z]", line)]
    values, problems = config.parse_text("\n".join(lines), str(SHIPPED))
    assert problems == []
    assert values == {key: str(meta["default"]) for key, meta in config.SCHEMA.items()}


def test_shipped_file_alone_gives_a_valid_config() -> None:
    cfg, problems = config.load_with_problems([SHIPPED])
    assert problems == [] and cfg == config.load(files=[])
