"""The VM request as it travels inside the submitted job script.

One marked comment line carries versioned JSON data, nothing executable::

    #%VMW-REQUEST-V1 {"files":{"metadata":"<base64>"},"id":"<32 hex>","vm":{"img":...}}

The qsub wrapper writes it; the root hook reads it from the batch system's own copy of the
script and treats every byte as hostile: size and nesting limits before parsing, strict
shape, then ``request.validate``. ``id`` is a fresh random submission id: the job's SSH
keys derive from it, so a job id that comes back (server reset, id wrap) never brings an
earlier job's keys with it.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from vmwrapper.errors import RequestError
from vmwrapper.request import FILE_KEYS, VM_KEYS

MARKER = "#%VMW-REQUEST-V1 "
# The same request as a job variable (qsub -v): Torque hands every mom the job's variables
# (a sister has no job script), and interactive jobs have no script at all.
VARIABLE = "VMW_REQUEST_V1"
MARKER_BYTES = MARKER.encode()
MAX_BLOCK_BYTES = 4 * 1024 * 1024
MAX_NESTING = 4  # the shape below needs 2; json.loads recurses, so deeper is refused unparsed
SUBMISSION_ID_RE = re.compile(r"[0-9a-f]{32}\Z")
_JSON_STRING_RE = re.compile(rb'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET_RE = re.compile(rb"[\[\]{}]")


@dataclass(frozen=True)
class RequestBlock:
    """Raw (not yet validated) request text and the user files embedded at submit time."""

    vm: dict[str, str]
    files: dict[str, bytes]
    submission_id: str


def new_submission_id() -> str:
    return os.urandom(16).hex()


def encode_json(vm: Mapping[str, str], files: Mapping[str, bytes], submission_id: str) -> str:
    """The request as compact JSON: what follows the marker, and what VARIABLE carries."""
    data = {
        "vm": dict(vm),
        "files": {key: base64.b64encode(blob).decode("ascii") for key, blob in files.items()},
        "id": submission_id,
    }
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def encode(vm: Mapping[str, str], files: Mapping[str, bytes], submission_id: str) -> str:
    """The marker line (without newline) for a request."""
    return MARKER + encode_json(vm, files, submission_id)


def to_variable(request_json: str) -> str:
    """The value of the job variable VARIABLE: base64 has no comma, which Torque's
    Variable_List cannot escape."""
    return base64.b64encode(request_json.encode("utf-8")).decode("ascii")


def from_variable(value: str) -> RequestBlock:
    if len(value) > MAX_BLOCK_BYTES:
        raise RequestError([f"{VARIABLE} is larger than 4 MiB"])
    try:
        payload = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError([f"{VARIABLE} is not valid base64"]) from None
    return decode(payload)


def find(script: bytes) -> RequestBlock | None:
    """The request in a job script, None if it has none. Raises RequestError if malformed."""
    if MARKER_BYTES not in script:
        return None
    lines = [line for line in script.splitlines() if line.startswith(MARKER_BYTES)]
    if len(lines) != 1:
        raise RequestError([f"job script has {len(lines)} request lines; expected exactly one"])
    if len(lines[0]) > MAX_BLOCK_BYTES:
        raise RequestError(["request line is larger than 4 MiB"])
    return decode(lines[0][len(MARKER_BYTES) :])


def decode(payload: bytes) -> RequestBlock:
    if _nesting(payload) > MAX_NESTING:
        raise RequestError([f"request line nests deeper than {MAX_NESTING} levels"])
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise RequestError([f"request line is not valid JSON ({err.__class__.__name__})"]) from None
    if not isinstance(data, dict) or set(data) != {"vm", "files", "id"}:
        raise RequestError(["request line must hold exactly 'vm', 'files' and 'id'"])
    vm, files, submission_id = data["vm"], data["files"], data["id"]
    if not isinstance(submission_id, str) or not SUBMISSION_ID_RE.match(submission_id):
        raise RequestError(["request 'id' must be 32 lowercase hexadecimal digits"])
    if not isinstance(vm, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in vm.items()
    ):
        raise RequestError(["request 'vm' must map names to text"])
    unknown = sorted(set(vm) - set(VM_KEYS))
    if unknown:
        raise RequestError([f"unknown key {key[:40]!r} in request" for key in unknown])
    if not isinstance(files, dict) or not set(files) <= set(FILE_KEYS):
        raise RequestError(["request 'files' may only hold " + ", ".join(FILE_KEYS)])
    decoded: dict[str, bytes] = {}
    for key, text in files.items():
        try:
            decoded[key] = base64.b64decode(str(text), validate=True)
        except (binascii.Error, ValueError):
            raise RequestError([f"{key}: embedded file is not valid base64"]) from None
    return RequestBlock(vm=vm, files=decoded, submission_id=submission_id)


def _nesting(payload: bytes) -> int:
    """How deep JSON arrays and objects nest, strings skipped (their brackets are text)."""
    depth = deepest = 0
    for bracket in _JSON_BRACKET_RE.findall(_JSON_STRING_RE.sub(b'""', payload)):
        depth += 1 if bracket in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest
