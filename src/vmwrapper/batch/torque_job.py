"""What Torque tells each mom about a job, as text: the paths of its files and the request
among its variables. Pure: text in, values out (the node side reads the files).

Observed on Torque 6.1-dev with two moms (DESIGN.md section 4, "Torque corrections"):
- ``mom_priv/jobs/<id>[<port>].SC``, prologue argv 8, exists on the mother superior only
  (owned by the job user, 0700), and not at all for ``qsub -I``.
- ``<same stem>.JB`` is XML, root 0644, with ``<Variable_List>`` holding every ``-v``
  variable. A sister writes it about 2 ms after ``prologue.parallel`` returns and removes
  it when the job ends, is aborted or requeued (no hook runs then). On the mother superior
  it is there during the prologue only sometimes (not for the first job after an idle spell).
- ``qstat -f -x JOBID`` prints ``<Data><Job>...<Variable_List>...`` on one line, with
  values unescaped (src/cmds/qstat.c via MXMLSetVal: ``&`` as is, ``<`` as byte 0x0E).
- Variable_List joins ``NAME=value`` with commas and escapes nothing: a comma inside a
  value cannot be told from a separator. The request is base64, which has no comma.
"""

from __future__ import annotations

import re

from vmwrapper.errors import RequestError
from vmwrapper.requestblock import VARIABLE

_VARIABLE_LIST_RE = re.compile(rb"<Variable_List(?: [^>]*)?>([^<]*)</Variable_List>")


def job_file(script_path: str, suffix: str) -> str:
    """The job's other file beside argv 8: ``...<id>[<port>].SC`` -> ``....JB``."""
    stem = script_path[:-3] if script_path.endswith(".SC") else script_path
    return stem + suffix


def variable_list(xml_text: bytes) -> str | None:
    """The text of the first <Variable_List> in a .JB file or in ``qstat -f -x`` output;
    None if there is none. Found by pattern, not parsed: qstat prints values unescaped (an
    ``&`` in any variable makes its output invalid XML), and neither can hold a raw ``<``."""
    match = _VARIABLE_LIST_RE.search(xml_text)
    return None if match is None else match.group(1).decode("utf-8", "replace")


def request_value(variables: str) -> str | None:
    """The request variable's value, None if the job has none (not a VM job)."""
    prefix = VARIABLE + "="
    values = [item[len(prefix) :] for item in variables.split(",") if item.startswith(prefix)]
    if len(values) > 1:
        raise RequestError([f"the job has {len(values)} {VARIABLE} variables; expected one"])
    return values[0] if values else None
