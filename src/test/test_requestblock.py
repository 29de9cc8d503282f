"""The request line inside job scripts: round trip, and hostile input never escapes."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmwrapper import requestblock
from vmwrapper.errors import RequestError


def test_round_trip_inside_a_script() -> None:
    line = requestblock.encode({"img": "debian12", "vcpus": "2"}, {"metadata": b"packages: [x]"})
    script = f"#!/bin/sh\n#PBS -N x\n{line}\necho hi\n".encode()
    block = requestblock.find(script)
    assert block is not None
    assert block.vm == {"img": "debian12", "vcpus": "2"}
    assert block.files == {"metadata": b"packages: [x]"}


def test_a_script_without_the_marker_has_no_request() -> None:
    assert requestblock.find(b"#!/bin/sh\necho no vm\n") is None


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{", "not valid JSON"),
        (b'{"vm": {}}', "exactly the objects"),
        (b'{"vm": {"img": 1}, "files": {}}', "map names to text"),
        (b'{"vm": {"evil": "x"}, "files": {}}', "unknown key"),
        (b'{"vm": {}, "files": {"script": "eA=="}}', "may only hold"),
        (b'{"vm": {}, "files": {"metadata": "!!"}}', "not valid base64"),
    ],
)
def test_malformed_blocks_are_refused_with_a_reason(payload: bytes, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        requestblock.find(requestblock.MARKER_BYTES + payload)


def test_two_request_lines_are_refused() -> None:
    line = requestblock.encode({}, {}).encode()
    with pytest.raises(RequestError, match="2 request lines"):
        requestblock.find(line + b"\n" + line)


@given(st.binary(max_size=400))
def test_arbitrary_bytes_after_the_marker_never_raise_anything_else(tail: bytes) -> None:
    with contextlib.suppress(RequestError):
        requestblock.find(requestblock.MARKER_BYTES + tail)
