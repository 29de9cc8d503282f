"""The user's cloud-config (``metadata=``): YAML read with its limits checked first.

PyYAML builds Python objects recursively, so a document nested a few thousand levels deep
raises RecursionError inside ``safe_load``. Its event parser is not recursive: we walk the
events first and stop at the first level past the limit, before anything is composed.
Used as the user at submission and as root on the node, with the same limits.
"""

from __future__ import annotations

from typing import Any

from vmwrapper.errors import RequestError

MAX_DEPTH = 32  # nested mappings and sequences; cloud-config needs a handful


def load(blob: bytes, limit_bytes: int, where: str = "metadata") -> dict[str, Any]:
    """The document as a mapping ({} when empty). RequestError (one line) when it is too
    large, too deep, not UTF-8, not YAML or not a mapping."""
    if len(blob) > limit_bytes:
        raise RequestError([f"{where}: larger than {limit_bytes // 1024} KB (MAX_USER_FILE_KB)"])
    import yaml  # noqa: PLC0415  (~20 ms: only jobs that pass metadata pay for it)

    try:
        text = blob.decode("utf-8")
        _check_depth(yaml.parse(text), where)
        data = yaml.safe_load(text)
    except UnicodeDecodeError:
        raise RequestError([f"{where}: not UTF-8 text"]) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise RequestError([f"{where}: not valid YAML{line}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RequestError([f"{where}: must be a YAML mapping of cloud-config keys"])
    return data


def _check_depth(events: Any, where: str) -> None:
    import yaml  # noqa: PLC0415

    opening = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
    closing = (yaml.MappingEndEvent, yaml.SequenceEndEvent)
    depth = 0
    for event in events:
        if isinstance(event, opening):
            depth += 1
            if depth > MAX_DEPTH:
                raise RequestError([f"{where}: nests deeper than {MAX_DEPTH} levels"])
        elif isinstance(event, closing):
            depth -= 1
