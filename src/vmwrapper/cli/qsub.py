"""``qsub``: the wrapper users run (via src/scripts/qsub). VM jobs get a job wrapper script.

Fast path (no ``-vm`` anywhere, the common case): read four settings with a tiny reader,
find the script the way Torque does, look for ``-vm`` in its directives, and exec the real
qsub with the very same argv (and, if we had to read the script from stdin, the very same
bytes on stdin). Nothing heavier than ``os`` is imported on that path.

VM path: full config, validation of every input (all problems at once), the job wrapper
script rendered from templates/jobwrapper.sh.j2, then exec of the real qsub with the wrapper
on its stdin. Handing the script over on stdin (a memfd) instead of a temp file means there
is nothing to clean up, the user's shell waits on the real qsub itself (signals, exit code,
job control), and no file is ever left behind, even on SIGKILL. The job name is passed with
``-N`` (the script's basename, or STDIN), so output files stay ``<name>.o<id>``.
"""

from __future__ import annotations

import os
import sys

from vmwrapper.batch import torque

# Not typing.TYPE_CHECKING: importing typing costs ~5 ms (re, collections) on the fast path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import NoReturn

    from vmwrapper.config import Config
    from vmwrapper.request import VmRequest

# The settings the pass-through path needs, with their schema defaults (a test keeps these
# equal to config.SCHEMA). Anything unusual about them sends us to the full parser.
FAST_DEFAULTS: dict[str, str] = {
    "DISABLE_VM_WRAPPER": "false",
    "SERVER_HOSTNAME": "",
    "REAL_QSUB_ON_SERVER": "/usr/bin/qsub",
    "REAL_QSUB_ON_NODES": "/usr/bin/qsub",
}
_TRUE = frozenset({"true", "yes", "1", "on", "enabled"})
_FALSE = frozenset({"false", "no", "0", "off", "disabled"})
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./:,@%+=-")


class Settings:
    __slots__ = ("disabled", "on_nodes", "on_server", "server")

    def __init__(self, disabled: bool, server: str, on_server: str, on_nodes: str) -> None:
        self.disabled, self.server = disabled, server
        self.on_server, self.on_nodes = on_server, on_nodes


def main(args: list[str] | None = None, self_path: str | None = None) -> NoReturn:
    """Entry of src/scripts/qsub: never a traceback, one line per problem."""
    args = sys.argv[1:] if args is None else args
    try:
        code = submit(args, self_path or sys.argv[0], os.environ)
    except KeyboardInterrupt:
        code = 130
    except Exception as err:  # last resort: users never see a traceback
        code = _report(err)
    sys.exit(code)


def run(args: list[str]) -> int:
    """``vm-wrapper qsub ...`` (errors are reported by cli.main.run_guarded)."""
    return submit(args, sys.argv[0], os.environ)


def _report(err: Exception) -> int:
    from vmwrapper.errors import ConfigError, VmWrapperError  # noqa: PLC0415

    if isinstance(err, ConfigError):
        print("vm-wrapper: the site configuration is invalid (tell your admin):", file=sys.stderr)
    if isinstance(err, VmWrapperError):
        for line in err.lines():
            print(f"vm-wrapper: {line}", file=sys.stderr)
        return err.exit_code
    print(
        f"vm-wrapper: internal error ({err.__class__.__name__}: {err}); please report it",
        file=sys.stderr,
    )
    return 70


def submit(args: list[str], self_path: str, environ: Mapping[str, str]) -> int:
    """Pass the job through or submit it as a VM job. Returns only on dry runs."""
    settings = load_settings(environ)
    real = real_qsub(settings, self_path)
    if settings.disabled:
        exec_qsub(real, args, None)
    parsed = torque.parse_argv(args, permute="POSIXLY_CORRECT" not in environ)
    script, on_stdin = read_script(parsed)
    if not wants_vm(parsed, script, environ):
        if parsed.has(torque.DRY_RUN):
            plain = [w for w in args if w != torque.DRY_RUN_OPTION]
            return _print_dry_run(real, plain, script if on_stdin else None)
        exec_qsub(real, args, script if on_stdin else None)
    return submit_vm(args, parsed, script, real, environ)


# ---------------------------------------------------------------------------------------
# Settings for the pass-through path
# ---------------------------------------------------------------------------------------


def load_settings(environ: Mapping[str, str]) -> Settings:
    """The four pass-through settings: fast reader, else the full (validating) loader."""
    values = fast_values(environ)
    if values is not None:
        return Settings(
            values["DISABLE_VM_WRAPPER"] in _TRUE,
            values["SERVER_HOSTNAME"],
            values["REAL_QSUB_ON_SERVER"],
            values["REAL_QSUB_ON_NODES"],
        )
    from vmwrapper import config  # noqa: PLC0415  (slow: only for unusual files)

    cfg = config.load()
    return Settings(
        cfg.DISABLE_VM_WRAPPER, cfg.SERVER_HOSTNAME, cfg.REAL_QSUB_ON_SERVER, cfg.REAL_QSUB_ON_NODES
    )


def fast_values(environ: Mapping[str, str]) -> dict[str, str] | None:
    """FAST_DEFAULTS overlaid by the config files, or None if a line needs the full parser."""
    values = dict(FAST_DEFAULTS)
    paths = ["/etc/vm-wrapper/vm-wrapper.conf", environ.get("VM_WRAPPER_CONF", "")]
    for path in filter(None, paths):
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError):
            return None
        for raw in text.splitlines():
            line = raw.strip()
            key, eq, rest = line.partition("=")
            if not line or line.startswith("#") or not any(k in line for k in values):
                continue
            value = plain_value(rest) if eq and key in values else None
            if value is None:
                return None
            values[key] = value
    ok = values["DISABLE_VM_WRAPPER"].lower() in _TRUE | _FALSE and all(
        values[k].startswith("/") for k in ("REAL_QSUB_ON_SERVER", "REAL_QSUB_ON_NODES")
    )
    return {**values, "DISABLE_VM_WRAPPER": values["DISABLE_VM_WRAPPER"].lower()} if ok else None


def plain_value(text: str) -> str | None:
    """An assignment's value if it is plainly a word or quoted text, as config.py reads it."""
    if text[:1] in ("'", '"'):
        end = text.find(text[0], 1)
        if end < 0 or (text[0] == '"' and any(c in text[1:end] for c in "$`\\!")):
            return None
        value, tail = text[1:end], text[end + 1 :]
    else:
        value, _, tail = text.partition(" ")
        if not set(value) <= _PLAIN:
            return None
    tail = tail.strip()
    return value if not tail or tail.startswith("#") else None


def real_qsub(settings: Settings, self_path: str) -> str:
    """Torque's qsub for this host; refuses to point back at this wrapper."""
    host = os.uname().nodename.partition(".")[0].lower()
    on_server = not settings.server or settings.server.partition(".")[0].lower() == host
    key = "REAL_QSUB_ON_SERVER" if on_server else "REAL_QSUB_ON_NODES"
    path = settings.on_server if on_server else settings.on_nodes
    if os.path.realpath(path) == os.path.realpath(self_path):
        from vmwrapper.errors import ConfigError  # noqa: PLC0415

        raise ConfigError([f"{key}={path} is this qsub wrapper itself; set it to Torque's qsub"])
    return path


# ---------------------------------------------------------------------------------------
# The script, and whether this is a VM job
# ---------------------------------------------------------------------------------------


def read_script(parsed: torque.Parsed) -> tuple[bytes | None, bool]:
    """(script bytes or None if unreadable here, whether they came from stdin).

    Like qsub: an interactive job without a script reads no stdin; a script that is not a
    regular file is left for the real qsub to refuse (reading a FIFO would consume it).
    """
    path = parsed.script()
    if path is None:
        if torque.last_value(parsed.options(), "I") is not None:
            return None, False
        stdin = sys.stdin.buffer if sys.stdin is not None else None
        return (stdin.read() if stdin is not None else b""), True
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None, False
    with open(fd, "rb") as handle:
        if not _is_regular(handle.fileno()):
            return None, False
        return handle.read(), False


def _is_regular(fd: int) -> bool:
    return (os.fstat(fd).st_mode & 0o170000) == 0o100000


def script_lines(script: bytes) -> list[str]:
    """Physical lines as qsub's fgets sees them; undecodable bytes survive (surrogates)."""
    return [
        line.removesuffix("\r") for line in script.decode("utf-8", "surrogateescape").split("\n")
    ]


def wants_vm(parsed: torque.Parsed, script: bytes | None, environ: Mapping[str, str]) -> bool:
    """-vm (or --vm-dry-run with -vm) on the command line or in a directive."""
    if parsed.has(torque.VM):
        return True
    if script is None or b"-vm" not in script:  # the cheap test settles almost every job
        return False
    prefix = torque.directive_prefix(parsed, environ)
    directives, _ = torque.find_directives(script_lines(script), prefix)
    return any(d.parsed.has(torque.VM) for d in directives)


# ---------------------------------------------------------------------------------------
# Handing over to the real qsub
# ---------------------------------------------------------------------------------------


def exec_qsub(real: str, args: Sequence[str], stdin_data: bytes | None) -> NoReturn:
    """Become the real qsub with ``args`` unchanged; optionally feed it ``stdin_data``."""
    if stdin_data is not None:
        _stdin_from(stdin_data)
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    try:
        os.execv(real, [real, *args])  # noqa: S606  (argv list, no shell)
    except OSError as err:
        from vmwrapper.errors import CommandError  # noqa: PLC0415

        raise CommandError(
            f"cannot run the real qsub {real}: {err.strerror}", argv=[real], returncode=None
        ) from None


def _stdin_from(data: bytes) -> None:
    """Put ``data`` on fd 0 as a rewound anonymous file (memfd; unlinked temp file else)."""
    try:
        fd = os.memfd_create("qsub-stdin")
    except (AttributeError, OSError):
        import tempfile  # noqa: PLC0415

        fd = os.dup(tempfile.TemporaryFile().fileno())  # noqa: SIM115
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    os.dup2(fd, 0)
    os.close(fd)


def _print_dry_run(real: str, args: Sequence[str], stdin_data: bytes | None) -> int:
    import shlex  # noqa: PLC0415

    out = sys.stdout.buffer
    out.write(b"# vm-wrapper dry run (nothing submitted). The real qsub would run as:\n")
    command = " ".join(shlex.quote(word) for word in [real, *args])
    out.write(command.encode("utf-8", "surrogateescape") + b"\n")
    if stdin_data is not None:
        out.write(b"# with this job script on its stdin:\n" + stdin_data)
    out.flush()
    return 0


# ---------------------------------------------------------------------------------------
# VM jobs (everything below is off the fast path and may import freely)
# ---------------------------------------------------------------------------------------

INTERACTIVE_UNSUPPORTED = "interactive VM jobs (-I) are not supported yet; submit a batch script"
PAYLOAD_END = "VMW_PAYLOAD_END"


def submit_vm(
    args: list[str],
    parsed: torque.Parsed,
    script: bytes | None,
    real: str,
    environ: Mapping[str, str],
) -> int:
    """Validate everything, then exec the real qsub with the job wrapper on its stdin."""
    _enable_site()
    from vmwrapper import config  # noqa: PLC0415
    from vmwrapper.errors import RequestError  # noqa: PLC0415

    cfg = config.load()
    _refuse_disabled_host(cfg)
    job = VmJob(args, parsed, script, cfg, environ)
    problems = job.analyse()
    if problems:
        raise RequestError(problems)
    if job.interactive:
        raise RequestError([INTERACTIVE_UNSUPPORTED])
    wrapper = job.wrapper()
    for note in job.notes:
        print(f"vm-wrapper: {note}", file=sys.stderr)
    if parsed.has(torque.DRY_RUN):
        return _print_dry_run(real, job.real_argv(), wrapper)
    exec_qsub(real, job.real_argv(), wrapper)


def _enable_site() -> None:
    """The shim runs python -S for speed; VM jobs need site-packages (jinja2, yaml)."""
    if sys.flags.no_site and "site" not in sys.modules:
        import site  # noqa: PLC0415

        site.main()


def _refuse_disabled_host(cfg: Config) -> None:
    import re  # noqa: PLC0415

    host = os.uname().nodename.partition(".")[0]
    if cfg.DISABLED_HOSTS_LIST and re.fullmatch(cfg.DISABLED_HOSTS_LIST, host):
        from vmwrapper.errors import VmWrapperError  # noqa: PLC0415

        raise VmWrapperError(
            f"VM jobs cannot be submitted on {host} (DISABLED_HOSTS_LIST); "
            "use another login node, or submit without -vm"
        )


class VmJob:
    """One VM submission: collects every problem, then builds argv and the job wrapper."""

    def __init__(
        self,
        args: list[str],
        parsed: torque.Parsed,
        script: bytes | None,
        cfg: Config,
        environ: Mapping[str, str],
    ) -> None:
        self.args, self.parsed, self.script, self.cfg = args, parsed, script, cfg
        self.prefix = torque.directive_prefix(parsed, environ)
        self.lines = script_lines(script) if script is not None else []
        self.directives, self.problems = torque.find_directives(self.lines, self.prefix)
        self.problems[:0] = parsed.problems
        for directive in self.directives:
            line = directive.first + 1
            self.problems += [f"script line {line}: {p}" for p in directive.parsed.problems]
        options = [opt for d in self.directives for opt in d.parsed.options()]
        self.options = options + parsed.options()  # later wins: the command line
        self.interactive = torque.last_value(self.options, "I") is not None
        self.raw: dict[str, str] = {}
        self.files: dict[str, bytes] = {}
        self.notes: list[str] = []
        self.extra_l = ""
        self.request: VmRequest | None = None

    def analyse(self) -> list[str]:
        self._check_script()
        self._check_shape()
        self._parse_vm()
        failed = self._validate()
        self.problems += check_user_files(self.raw, self.cfg, failed, self.files)
        if self.request is not None:
            self._raise_resources(self.request)
        return self.problems

    def _check_script(self) -> None:
        limit = self.cfg.MAX_USER_FILE_KB
        if self.script is None and not self.interactive:
            name = self.parsed.script()
            self.problems.append(f"job script {name!r}: not a readable regular file")
        elif self.script is not None and len(self.script) > limit * 1024:
            self.problems.append(f"job script: larger than {limit} KB (MAX_USER_FILE_KB)")

    def _check_shape(self) -> None:
        if len(self.parsed.operands()) > 1:
            self.problems.append("qsub takes one job script; pass its arguments with -F")
        if self.directives and not self.prefix.startswith("#"):
            self.problems.append(f"directive prefix {self.prefix!r}: VM jobs need one starting #")
        letters = [letter for letter, _ in self.options]
        self.problems += torque.whole_node_problems(self._resources(), letters)

    def _resources(self) -> dict[str, str]:
        return torque.merge_resources(v or "" for letter, v in self.options if letter == "l")

    def _parse_vm(self) -> None:
        from vmwrapper.errors import RequestError  # noqa: PLC0415
        from vmwrapper.request import parse_vm_option  # noqa: PLC0415

        texts = [v for d in self.directives for v in d.parsed.vm_values()]
        for text in texts + self.parsed.vm_values():  # the command line wins
            for item in text.split(","):  # item by item: one bad key hides no other problem
                try:
                    self.raw.update(parse_vm_option(item))
                except RequestError as err:
                    self.problems += err.problems

    def _validate(self) -> set[str]:
        """Validate against policy; returns the keys that failed (files are not checked)."""
        from vmwrapper.errors import RequestError  # noqa: PLC0415
        from vmwrapper.request import validate  # noqa: PLC0415

        try:
            self.request = validate(self.raw, self.cfg)
        except RequestError as err:
            self.problems += err.problems
            return {problem.partition("=")[0] for problem in err.problems}
        return set()

    def _raise_resources(self, request: VmRequest) -> None:
        cfg = self.cfg
        cores, node_mb = request.host_cores_needed(cfg), request.host_ram_needed_mb(cfg)
        result = torque.raise_resources(self._resources(), cores, node_mb)
        self.problems += result.problems
        self.extra_l = result.option_value()
        vms = f"{request.vms_per_node} VM(s)"
        why = {
            "nodes": f"each node needs {cores} cores: {cfg.HOST_OS_CORE_COUNT} for the host OS"
            f" + {vms} x {request.vcpus} vCPU(s)"
            + (f" + {request.iocm_max_cores} IOcm cores" if request.iocm else ""),
            "mem": f"{result.nodes} node(s) x {node_mb} MB: {cfg.HOST_OS_RAM_MB} MB for the host"
            f" OS + {vms} x ({request.ram_mb} MB + {cfg.QEMU_OVERHEAD_MB} MB QEMU overhead)",
        }
        for name, old, new in result.changes:
            change = f"raised -l {name}={old} to" if old is not None else "added -l"
            self.notes.append(f"{change} {name}={new}: {why[name]}")

    # -- output ---------------------------------------------------------------------------

    def job_name(self) -> str:
        name = torque.last_value(self.options, "N")
        if name is not None:
            return name
        path = self.parsed.script()
        return "STDIN" if path is None else path.rpartition("/")[2]

    def real_argv(self) -> list[str]:
        """The user's options minus -vm (and the script), plus ours; later options win."""
        keep = [item for item in self.parsed.items if item.kind == torque.OPTIONS]
        argv = [word for item in keep for word in self.args[item.start : item.stop]]
        argv += ["-S", "/bin/sh"]
        if torque.last_value(self.options, "N") is None:
            argv += ["-N", self.job_name()]
        return argv + (["-l", self.extra_l] if self.extra_l else [])

    def wrapper(self) -> bytes:
        """The job wrapper script, checked to read back exactly as intended."""
        from vmwrapper import jobpayload, requestblock  # noqa: PLC0415

        payload = jobpayload.Payload(
            script=self.script or b"",
            args=tuple((torque.last_value(self.options, "F") or "").split()),
            shell=torque.last_value(self.options, "S") or "",
            name=self.job_name(),
        )
        kept = torque.kept_directive_lines(self.directives, self.lines, self.prefix)
        text = render_wrapper(
            kept, requestblock.encode(self.raw, self.files), jobpayload.encode(payload), self.cfg
        )
        wrapper = text.encode("utf-8", "surrogateescape")
        self._check_wrapper(wrapper, len(kept))
        return wrapper

    def _check_wrapper(self, wrapper: bytes, directives: int) -> None:
        """Torque must see exactly our directive lines, and root exactly one request."""
        from vmwrapper import requestblock  # noqa: PLC0415
        from vmwrapper.errors import RequestError  # noqa: PLC0415

        found, problems = torque.find_directives(script_lines(wrapper), self.prefix)
        block = requestblock.find(wrapper)
        clean = not any(d.parsed.has(torque.VM) for d in found)
        if problems or len(found) != directives or not clean or block is None:
            why = f"directive prefix {self.prefix!r} clashes with vm-wrapper's own lines"
            raise RequestError([why + "; choose another -C or PBS_DPREFIX"])


def render_wrapper(directives: list[str], request_line: str, payload: str, cfg: Config) -> str:
    import shlex  # noqa: PLC0415

    import jinja2  # noqa: PLC0415

    from vmwrapper import __version__  # noqa: PLC0415

    # A shell script, not HTML: values are quoted (shlex) or data-only lines by construction.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_dir()),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701
    )
    return env.get_template("jobwrapper.sh.j2").render(
        directive_block="".join(line + "\n" for line in directives),
        request_line=request_line,
        version=__version__,
        node_python=shlex.quote(cfg.NODE_PYTHON),
        payload=payload,
        end_marker=PAYLOAD_END,
    )


def template_dir() -> str:
    """src/templates in a source tree, vmwrapper/templates when installed as a wheel."""
    import vmwrapper  # noqa: PLC0415

    package = os.path.dirname(vmwrapper.__file__ or "")
    for candidate in (os.path.join(package, "templates"), os.path.join(package, "..", "templates")):
        if os.path.isfile(os.path.join(candidate, "jobwrapper.sh.j2")):
            return os.path.normpath(candidate)
    from vmwrapper.errors import VmWrapperError  # noqa: PLC0415

    raise VmWrapperError("jobwrapper.sh.j2 is missing from this vm-wrapper installation")


# ---------------------------------------------------------------------------------------
# User files, checked now, as the user (root checks again on the node)
# ---------------------------------------------------------------------------------------


def check_user_files(
    raw: Mapping[str, str], cfg: Config, skip: set[str], files: dict[str, bytes]
) -> list[str]:
    """Problems with img, disk and the embedded files; fills ``files`` with their bytes."""
    from vmwrapper.request import FILE_KEYS  # noqa: PLC0415

    problems: list[str] = []
    image = raw.get("img", cfg.IMG_DEFAULT)
    if "img" not in skip:
        problems += _image_problems(image, cfg)
    if raw.get("disk") and "disk" not in skip:
        problems += _disk_problems(raw["disk"])
    for key in FILE_KEYS:
        if raw.get(key) and key not in skip:
            data, why = read_user_file(raw[key], cfg.MAX_USER_FILE_KB)
            if data is None:
                problems.append(f"{key}={raw[key]!r}: {why}")
            else:
                files[key] = data
    if "metadata" in files:
        problems += _metadata_problems(raw["metadata"], files["metadata"], cfg)
    return problems


def read_user_file(path: str, limit_kb: int) -> tuple[bytes | None, str]:
    """(bytes, '') or (None, why): a regular file, not a symlink, at most limit_kb."""
    import errno  # noqa: PLC0415

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return None, "is a symlink; name the file itself"
        return None, f"cannot open it ({err.strerror})"
    with open(fd, "rb") as handle:
        if not _is_regular(handle.fileno()):
            return None, "not a regular file"
        data = handle.read(limit_kb * 1024 + 1)
    if len(data) > limit_kb * 1024:
        return None, f"larger than {limit_kb} KB (MAX_USER_FILE_KB)"
    return data, ""


def _disk_problems(path: str) -> list[str]:
    import stat  # noqa: PLC0415

    try:
        info = os.lstat(path)
    except OSError as err:
        return [f"disk={path!r}: cannot use it ({err.strerror})"]
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
        return [f"disk={path!r}: must be a regular file, not a symlink or directory"]
    if info.st_uid != os.getuid():
        return [f"disk={path!r}: must be a file you own"]
    return []


def _image_problems(image: str, cfg: Config) -> list[str]:
    """Pool images must exist in IMAGE_POOL (when visible here) and stay inside it."""
    from vmwrapper.request import IMAGE_SUFFIXES, image_candidates  # noqa: PLC0415

    if image.startswith("/"):
        return [p.replace("disk=", "img=", 1) for p in _own_image_problems(image)]
    pool = cfg.IMAGE_POOL
    if not os.path.isdir(pool):
        return []  # not visible on this host: the root hook checks on the node
    real_pool = os.path.realpath(pool)
    for candidate in image_candidates(image, pool):
        if os.path.lexists(candidate):
            real = os.path.realpath(candidate)
            if not real.startswith(real_pool + os.sep) or not os.path.isfile(real):
                return [f"img={image!r}: {candidate} leads outside IMAGE_POOL or to no file"]
            return []
    names = sorted(n.rsplit(".", 1)[0] for n in os.listdir(pool) if n.endswith(IMAGE_SUFFIXES))
    shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "") or "none"
    return [f"img={image!r}: no such image in IMAGE_POOL {pool} (available: {shown})"]


def _own_image_problems(path: str) -> list[str]:
    import stat  # noqa: PLC0415

    try:
        info = os.lstat(path)
    except OSError as err:
        return [f"img={path!r}: cannot use it ({err.strerror})"]
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
        return [f"img={path!r}: must be a regular file, not a symlink or directory"]
    return []


def _metadata_problems(path: str, data: bytes, cfg: Config) -> list[str]:
    import yaml  # noqa: PLC0415

    where = f"metadata={path!r}"
    try:
        document = yaml.safe_load(data)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        return [f"{where}: not valid YAML{line}"]
    if not isinstance(document, dict):
        return [f"{where}: must be a YAML mapping of cloud-config keys"]
    allowed = cfg.USER_METADATA_KEYS
    return [
        f"{where}: key {str(key)[:40]!r} is not allowed (allowed: {', '.join(allowed) or 'none'})"
        for key in document
        if key not in allowed
    ]
