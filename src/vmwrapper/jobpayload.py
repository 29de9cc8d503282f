"""The payload the job wrapper script carries to ``vmwrapper job-run`` on the first node.

Format (version 1): base64 of the JSON object::

    {"v": 1, "script": "<base64 of the user's job script bytes>",
     "args": ["-F", "arguments", "split", "on", "blanks"],
     "shell": "<the user's -S value, or empty>", "name": "<job name>"}

The user's script is embedded byte for byte at submit time, so editing the original file
after qsub changes nothing. The job runs as the user, so the payload is no more trusted
than the user; ``decode`` still checks its shape strictly so a damaged wrapper fails with
one clear line instead of a traceback.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from vmwrapper.errors import PermanentJobError

VERSION = 1
MAX_PAYLOAD_CHARS = 16 * 1024 * 1024
_LINE = 76  # base64 line length in the wrapper, like MIME


@dataclass(frozen=True)
class Payload:
    script: bytes
    args: tuple[str, ...]
    shell: str
    name: str
    interactive: bool = False  # qsub -I: a login shell in vm0 instead of the script


def encode(payload: Payload) -> str:
    """Base64 text, wrapped at 76 columns (no trailing newline)."""
    data = {
        "v": VERSION,
        "script": base64.b64encode(payload.script).decode("ascii"),
        "args": list(payload.args),
        "shell": payload.shell,
        "name": payload.name,
    }
    if payload.interactive:
        data["interactive"] = True
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    flat = base64.b64encode(text.encode("ascii")).decode("ascii")
    return "\n".join(flat[i : i + _LINE] for i in range(0, len(flat), _LINE))


def decode(text: str) -> Payload:
    """Parse a payload; raises PermanentJobError naming what is wrong."""
    if len(text) > MAX_PAYLOAD_CHARS:
        raise PermanentJobError("job payload is larger than 16 MiB")
    try:
        raw = base64.b64decode("".join(text.split()), validate=True)
        data = json.loads(raw.decode("ascii"))
    except (binascii.Error, ValueError):
        raise PermanentJobError("job payload is not base64 of JSON; resubmit the job") from None
    keys = {"v", "script", "args", "shell", "name"}
    if not isinstance(data, dict) or not keys <= set(data) <= keys | {"interactive"}:
        raise PermanentJobError("job payload must hold exactly v, script, args, shell, name")
    if data["v"] != VERSION:
        raise PermanentJobError(f"job payload version {data['v']!r} is not {VERSION}")
    args, shell, name = data["args"], data["shell"], data["name"]
    if not (isinstance(args, list) and all(isinstance(a, str) for a in args)):
        raise PermanentJobError("job payload 'args' must be a list of text")
    if not (isinstance(shell, str) and isinstance(name, str) and isinstance(data["script"], str)):
        raise PermanentJobError("job payload 'shell', 'name' and 'script' must be text")
    try:
        script = base64.b64decode(data["script"], validate=True)
    except (binascii.Error, ValueError):
        raise PermanentJobError("job payload 'script' is not valid base64") from None
    interactive = data.get("interactive", False) is True
    return Payload(script=script, args=tuple(args), shell=shell, name=name,
                   interactive=interactive)  # fmt: skip
