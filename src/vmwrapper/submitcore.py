"""What the qsub and sbatch wrappers share before they know that a job is a VM job.

This is the pass-through path of every job a user submits, so it imports nothing beyond
``os`` and ``sys``: read the few settings with a tiny reader, read the script the way the
batch system would, and exec the real command with the very same argv (and, if the script
came on stdin, the very same bytes on stdin).
"""

from __future__ import annotations

import os
import sys

# Not typing.TYPE_CHECKING: importing typing costs ~5 ms (re, collections) on the fast path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import NoReturn

_TRUE = frozenset({"true", "yes", "1", "on", "enabled"})
_FALSE = frozenset({"false", "no", "0", "off", "disabled"})
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./:,@%+=-")


def run_main(submit: Callable[[], int]) -> NoReturn:
    """Entry of a src/scripts shim: never a traceback, one line per problem."""
    try:
        code = submit()
    except KeyboardInterrupt:
        code = 130
    except Exception as err:  # last resort: users never see a traceback
        code = report(err)
    sys.exit(code)


def report(err: Exception) -> int:
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


def enable_site() -> None:
    """The shims run python -S for speed; VM jobs need site-packages (jinja2, yaml)."""
    if sys.flags.no_site and "site" not in sys.modules:
        import site  # noqa: PLC0415

        site.main()


# ---------------------------------------------------------------------------------------
# Settings for the pass-through path
# ---------------------------------------------------------------------------------------


def is_true(text: str) -> bool:
    return text.lower() in _TRUE


def load_settings(environ: Mapping[str, str], defaults: Mapping[str, str]) -> dict[str, str]:
    """The few pass-through settings: fast reader, else the full (validating) loader."""
    values = fast_values(environ, defaults)
    if values is not None:
        return values
    from vmwrapper import config  # noqa: PLC0415  (slow: only for unusual files)

    cfg = config.load()
    full = {key: getattr(cfg, key) for key in defaults}
    return {key: str(v).lower() if isinstance(v, bool) else str(v) for key, v in full.items()}


def fast_values(environ: Mapping[str, str], defaults: Mapping[str, str]) -> dict[str, str] | None:
    """``defaults`` overlaid by the config files, or None if a line needs the full parser.
    Booleans must read as one; REAL_* commands must be absolute paths."""
    values = dict(defaults)
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
    disabled = values["DISABLE_VM_WRAPPER"].lower()
    ok = disabled in _TRUE | _FALSE and all(
        values[k].startswith("/") for k in values if k.startswith("REAL_")
    )
    return {**values, "DISABLE_VM_WRAPPER": disabled} if ok else None


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


def refuse_self(key: str, path: str, self_path: str, command: str) -> str:
    """``path`` unless it leads back to this wrapper (an endless exec loop)."""
    if os.path.realpath(path) == os.path.realpath(self_path):
        from vmwrapper.errors import ConfigError  # noqa: PLC0415

        why = f"{key}={path} is this {command} wrapper itself; set it to the real {command}"
        raise ConfigError([why])
    return path


# ---------------------------------------------------------------------------------------
# The script
# ---------------------------------------------------------------------------------------


def read_script(path: str | None, *, stdin_ok: bool = True) -> tuple[bytes | None, bool]:
    """(script bytes or None if unreadable here, whether they came from stdin).

    ``path`` None: the script is on stdin (unless ``stdin_ok`` is false: an interactive job
    reads none). A script that is not a regular file is left for the batch system to refuse
    (reading a FIFO would consume it).
    """
    if path is None:
        if not stdin_ok:
            return None, False
        stdin = sys.stdin.buffer if sys.stdin is not None else None
        return (stdin.read() if stdin is not None else b""), True
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None, False
    if (os.fstat(fd).st_mode & 0o170000) != 0o100000:  # before open(): it refuses directories
        os.close(fd)
        return None, False
    with open(fd, "rb") as handle:
        return handle.read(), False


def script_lines(script: bytes) -> list[str]:
    """Physical lines as fgets sees them; undecodable bytes survive (surrogates)."""
    return [
        line.removesuffix("\r") for line in script.decode("utf-8", "surrogateescape").split("\n")
    ]


# ---------------------------------------------------------------------------------------
# Handing over to the real command
# ---------------------------------------------------------------------------------------


def exec_real(command: str, real: str, args: Sequence[str], stdin_data: bytes | None) -> NoReturn:
    """Become the real ``command`` with ``args`` unchanged; optionally feed it ``stdin_data``."""
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
            f"cannot run the real {command} {real}: {err.strerror}", argv=[real], returncode=None
        ) from None


def _stdin_from(data: bytes) -> None:
    """Put ``data`` on fd 0 as a rewound anonymous file (memfd; unlinked temp file else)."""
    fd = _anonymous_file(data)
    os.dup2(fd, 0)
    os.close(fd)


def inherited_file(data: bytes) -> str:
    """``data`` in an anonymous file the exec'd command inherits, as a /dev/fd path: for a
    script that must be named on the command line while stdin stays the terminal."""
    fd = _anonymous_file(data)
    os.set_inheritable(fd, True)
    return f"/dev/fd/{fd}"


def _anonymous_file(data: bytes) -> int:
    """A rewound anonymous file holding ``data`` (memfd; an unlinked temp file else)."""
    try:
        fd = os.memfd_create("vmw-job")
    except (AttributeError, OSError):
        import tempfile  # noqa: PLC0415

        fd = os.dup(tempfile.TemporaryFile().fileno())  # noqa: SIM115
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def print_dry_run(command: str, real: str, args: Sequence[str], stdin_data: bytes | None) -> int:
    import shlex  # noqa: PLC0415

    out = sys.stdout.buffer
    head = f"# vm-wrapper dry run (nothing submitted). The real {command} would run as:\n"
    out.write(head.encode())
    line = " ".join(shlex.quote(word) for word in [real, *args])
    out.write(line.encode("utf-8", "surrogateescape") + b"\n")
    if stdin_data is not None:
        out.write(b"# with this job script on its stdin:\n" + stdin_data)
    out.flush()
    return 0
