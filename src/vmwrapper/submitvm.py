"""The VM side of submission, shared by the qsub and sbatch wrappers.

A backend parses its own argv and directives; everything after that is the same for every
batch system: collect the ``-vm``/``--vm`` texts into one request (every problem at once),
check the user's files, explain resource changes, and render the job wrapper script from
templates/jobwrapper.sh.tmpl with the request and the user's script embedded.

Import it after submitcore.enable_site(): its imports need site-packages (yaml, jinja2).
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import NoReturn

from vmwrapper import jobpayload, requestblock, submitcore
from vmwrapper.config import Config
from vmwrapper.errors import RequestError, VmWrapperError
from vmwrapper.request import VmRequest, parse_vm_option, validate
from vmwrapper.userfiles import check_user_files

PAYLOAD_END = "VMW_PAYLOAD_END"
WRAPPER_TEMPLATE = "jobwrapper.sh.tmpl"
MAX_PROBLEM_LINES = 10  # then "... and N more problems"
MAX_PROBLEM_CHARS = 300  # a hostile value must not make one problem a screenful
MAX_VALUE_CHARS = 4096  # request.parse_vm_option's limit, named here for a clear message


class VmJob(ABC):
    """One VM submission: collects every problem, then builds the job wrapper. A backend
    (cli/qsub.py, cli/sbatch.py) supplies what depends on its batch system."""

    def __init__(self, script: bytes | None, cfg: Config) -> None:
        self.script, self.cfg = script, cfg
        self.problems: list[str] = []
        self.notes: list[str] = []  # what changed in the request, for the user's stderr
        self.draft: VmRequestDraft | None = None
        self._request_json = ""

    def request_json(self) -> str:
        """The validated request as JSON, with this submission's fresh random id (the
        job's SSH keys derive from it): made once, the same in every place it travels."""
        assert self.draft is not None, "analyse() first"
        if not self._request_json:
            sid = requestblock.new_submission_id()
            self._request_json = requestblock.encode_json(self.draft.raw, self.draft.files, sid)
        return self._request_json

    def analyse(self) -> list[str]:
        """Every problem with the job, its request and the user's files, at once."""
        self.check_script()
        self.problems += check_script_size(self.script, self.cfg)
        self.check_shape()
        self.draft = VmRequestDraft(self.vm_texts(), self.cfg)
        self.problems += self.draft.problems
        request = self.draft.request
        if request is not None:
            cfg = self.cfg
            self.raise_resources(request, request.host_cores_needed(cfg),
                                 request.host_ram_needed_mb(cfg))  # fmt: skip
        return self.problems

    def wrapper(self) -> bytes:
        """The job wrapper script, checked to read back exactly as intended."""
        assert self.draft is not None, "analyse() first"
        kept = self.kept_directives()
        payload = jobpayload.Payload(
            script=self.script or b"", args=self.script_args(), shell=self.shell(),
            name=self.job_name(), interactive=self.is_interactive(),
        )  # fmt: skip
        wrapper = job_wrapper(kept, requestblock.MARKER + self.request_json(), payload, self.cfg)
        problem = self.read_back_problem(wrapper, kept)
        if problem or requestblock.find(wrapper) is None:
            raise RequestError([problem or "the job wrapper carries no request; please report"])
        return wrapper

    def is_interactive(self) -> bool:
        """An interactive job (qsub -I): the user gets a shell in vm0."""
        return False

    @abstractmethod
    def check_script(self) -> None:
        """Add problems with the job script (self.script None: unreadable)."""

    @abstractmethod
    def check_shape(self) -> None:
        """Add problems with the options and directives."""

    @abstractmethod
    def vm_texts(self) -> list[str]:
        """Every -vm value, directives first: later ones win."""

    @abstractmethod
    def raise_resources(self, request: VmRequest, cores: int, node_mb: int) -> None:
        """Grow the request to ``cores`` and ``node_mb`` per node; say so in self.notes."""

    @abstractmethod
    def kept_directives(self) -> list[str]:
        """The user's directive lines, minus ours, for the wrapper."""

    @abstractmethod
    def read_back_problem(self, wrapper: bytes, kept: list[str]) -> str:
        """'' if the batch system reads exactly ``kept`` (and no -vm) from ``wrapper``."""

    @abstractmethod
    def script_args(self) -> tuple[str, ...]: ...

    @abstractmethod
    def shell(self) -> str: ...

    @abstractmethod
    def job_name(self) -> str: ...

    @abstractmethod
    def real_argv(self) -> list[str]:
        """The real command's argv: the user's options minus ours, plus ours."""


def submit(
    job: VmJob,
    command: str,
    real: str,
    dry_run: bool,
    exec_real: Callable[[str, Sequence[str], bytes | None], NoReturn],
) -> int:
    """Every problem at once, or the real command with the job wrapper on its stdin."""
    problems = job.analyse()
    if problems:
        raise RequestError(summarize(problems))
    if job.is_interactive():  # no script: the terminal stays stdin (see real_argv)
        for note in job.notes:
            print(f"vm-wrapper: {note}", file=sys.stderr)
        if dry_run:
            return submitcore.print_dry_run(command, real, job.real_argv(), None)
        exec_real(real, job.real_argv(), None)
    wrapper = job.wrapper()
    for note in job.notes:
        print(f"vm-wrapper: {note}", file=sys.stderr)
    if dry_run:
        return submitcore.print_dry_run(command, real, job.real_argv(), wrapper)
    exec_real(real, job.real_argv(), wrapper)


def load_config() -> Config:
    """The full config, and this host must be allowed to submit VM jobs."""
    from vmwrapper import config  # noqa: PLC0415

    cfg = config.load()
    host = os.uname().nodename.partition(".")[0]
    if cfg.DISABLED_HOSTS_LIST and re.fullmatch(cfg.DISABLED_HOSTS_LIST, host):
        raise VmWrapperError(
            f"VM jobs cannot be submitted on {host} (DISABLED_HOSTS_LIST); "
            "use another login node, or submit without -vm"
        )
    return cfg


class VmRequestDraft:
    """The request as the user wrote it (later texts win), its problems, and the files."""

    def __init__(self, texts: Iterable[str], cfg: Config) -> None:
        self.raw: dict[str, str] = {}
        self.files: dict[str, bytes] = {}
        self.problems: list[str] = []
        self.request: VmRequest | None = None
        for text in texts:
            if not text:
                continue  # the grammar said: -vm needs a value
            for item in text.split(","):  # item by item: one bad key hides no other problem
                problem = item_problem(item)
                if problem:
                    self.problems.append(problem)
                    continue
                try:
                    self.raw.update(parse_vm_option(item))
                except RequestError as err:
                    self.problems += err.problems
        failed = self._validate(cfg)
        self.problems += check_user_files(self.raw, cfg, failed, self.files)

    def _validate(self, cfg: Config) -> set[str]:
        """Validate against policy; returns the keys that failed (files are not checked)."""
        try:
            self.request = validate(self.raw, cfg)
        except RequestError as err:
            self.problems += err.problems
            return {problem.partition("=")[0] for problem in err.problems}
        return set()


def item_problem(item: str) -> str:
    """'' or what is wrong with one key=value item, before request.parse_vm_option sees it
    (its key.strip() dropped a leading '\\r', and it calls a value over MAX_VALUE_CHARS
    'blanks'). An item is printable ASCII, spaces allowed: a control character could hide
    text, a look-alike such as U+212A KELVIN SIGN passes for K. And it is not empty."""
    bad = next((c for c in item if not " " <= c <= "~"), None)
    if bad is not None:
        if "\udc80" <= bad <= "\udcff":  # os.fsdecode's stand-in for a byte
            what = f"byte \\x{ord(bad) - 0xDC00:02x} that is not UTF-8"
        else:
            kind = "control" if bad < " " or "\x7f" <= bad <= "\x9f" else "non-ASCII"
            what = f"{kind} character {bad!a}"
        return f"-vm {item[:60]!a}: {what}; use plain ASCII"
    if not item.strip():
        return "empty item in -vm (stray comma?)"
    key, _, value = item.partition("=")
    if len(value) > MAX_VALUE_CHARS:
        return f"{key.strip()[:40]}: value longer than {MAX_VALUE_CHARS} characters"
    return ""


def summarize(problems: list[str]) -> list[str]:
    """Each problem once, each on one short line, and at most MAX_PROBLEM_LINES of them."""
    cut = MAX_PROBLEM_CHARS
    lines = list(dict.fromkeys(p if len(p) <= cut else p[: cut - 3] + "..." for p in problems))
    if len(lines) <= MAX_PROBLEM_LINES + 1:
        return lines
    more = len(lines) - MAX_PROBLEM_LINES
    return [*lines[:MAX_PROBLEM_LINES], f"... and {more} more problems"]


def cores_why(request: VmRequest, cfg: Config) -> str:
    """Why a node needs request.host_cores_needed(cfg) cores, for the user's stderr."""
    iocm = f" + {request.iocm_max_cores} IOcm cores" if request.iocm else ""
    return (
        f"{cfg.HOST_OS_CORE_COUNT} for the host OS"
        f" + {request.vms_per_node} VM(s) x {request.vcpus} vCPU(s){iocm}"
    )


def ram_why(request: VmRequest, cfg: Config) -> str:
    """Why a node needs request.host_ram_needed_mb(cfg) MB, for the user's stderr."""
    return (
        f"{cfg.HOST_OS_RAM_MB} MB for the host OS + {request.vms_per_node} VM(s) x "
        f"({request.ram_mb} MB + {cfg.QEMU_OVERHEAD_MB} MB QEMU overhead)"
    )


def check_script_size(script: bytes | None, cfg: Config) -> list[str]:
    limit = cfg.MAX_USER_FILE_KB
    if script is not None and len(script) > limit * 1024:
        return [f"job script: larger than {limit} KB (MAX_USER_FILE_KB)"]
    return []


def job_wrapper(
    directives: list[str], request_line: str, payload: jobpayload.Payload, cfg: Config
) -> bytes:
    """The job wrapper script: the kept directives, the request line, the payload."""
    text = render_wrapper(directives, request_line, jobpayload.encode(payload), cfg)
    return text.encode("utf-8", "surrogateescape")


def render_wrapper(directives: list[str], request_line: str, payload: str, cfg: Config) -> str:
    """templates/jobwrapper.sh.tmpl, a template without logic (string.Template): on the
    qsub/sbatch path, Jinja2 and render.py's imports would cost ~20 ms per VM submission.
    A shell script: values are quoted (shlex) or data-only lines by construction."""
    from importlib import resources  # noqa: PLC0415
    from string import Template  # noqa: PLC0415

    from vmwrapper import __version__  # noqa: PLC0415

    values = {
        "directive_block": "".join(line + "\n" for line in directives),
        "request_line": request_line,
        "version": __version__,
        "node_python": shlex.quote(cfg.NODE_PYTHON),
        "payload": payload,
        "end_marker": PAYLOAD_END,
    }
    template = resources.files("vmwrapper.templates").joinpath(WRAPPER_TEMPLATE)
    return Template(template.read_text(encoding="utf-8")).substitute(values)
