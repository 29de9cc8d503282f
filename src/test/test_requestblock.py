"""The request line inside job scripts: round trip, and hostile input never escapes."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmwrapper import requestblock
from vmwrapper.errors import RequestError

SUBMISSION_ID = "0123456789abcdef0123456789abcdef"
ID = b'"id": "0123456789abcdef0123456789abcdef"'


def test_round_trip_inside_a_script() -> None:
    line = requestblock.encode(
        {"img": "debian12", "vcpus": "2"}, {"metadata": b"packages: [x]"}, SUBMISSION_ID
    )
    script = f"#!/bin/sh\n#PBS -N x\n{line}\necho hi\n".encode()
    block = requestblock.find(script)
    assert block is not None
    assert block.vm == {"img": "debian12", "vcpus": "2"}
    assert block.files == {"metadata": b"packages: [x]"}
    assert block.submission_id == SUBMISSION_ID


def test_a_script_without_the_marker_has_no_request() -> None:
    assert requestblock.find(b"#!/bin/sh\necho no vm\n") is None


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{", "not valid JSON"),
        (b'{"vm": {}}', "exactly 'vm', 'files' and 'id'"),
        (b'{"vm": {}, "files": {}}', "exactly 'vm', 'files' and 'id'"),
        (b'{"vm": {}, "files": {}, "id": "0123"}', "32 lowercase hexadecimal"),
        (b'{"vm": {}, "files": {}, "id": 7}', "32 lowercase hexadecimal"),
        (b'{"vm": {"img": 1}, "files": {}, ' + ID + b"}", "map names to text"),
        (b'{"vm": {"evil": "x"}, "files": {}, ' + ID + b"}", "unknown key"),
        (b'{"vm": {}, "files": {"script": "eA=="}, ' + ID + b"}", "may only hold"),
        (b'{"vm": {}, "files": {"metadata": "!!"}, ' + ID + b"}", "not valid base64"),
        (b"[" * 1500 + b"]" * 1500, "nests deeper than 4"),
        (b'{"vm": {}, "files": {}, "x": ' + b"{" * 100 + b"}" * 100 + b"}", "nests deeper"),
    ],
)
def test_malformed_blocks_are_refused_with_a_reason(payload: bytes, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        requestblock.find(requestblock.MARKER_BYTES + payload)


def test_two_request_lines_are_refused() -> None:
    line = requestblock.encode({}, {}, SUBMISSION_ID).encode()
    with pytest.raises(RequestError, match="2 request lines"):
        requestblock.find(line + b"\n" + line)


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    vm = {"mounts": "/data/[[[[[[{{{{{" + '\\"' + "[[[["}
    line = requestblock.encode(vm, {}, SUBMISSION_ID).encode()
    block = requestblock.find(line)
    assert block is not None and block.vm == vm


def test_each_submission_gets_a_new_id() -> None:
    first, second = requestblock.new_submission_id(), requestblock.new_submission_id()
    assert first != second
    assert requestblock.SUBMISSION_ID_RE.match(first)


@given(st.binary(max_size=400))
def test_arbitrary_bytes_after_the_marker_never_raise_anything_else(tail: bytes) -> None:
    with contextlib.suppress(RequestError):
        requestblock.find(requestblock.MARKER_BYTES + tail)
