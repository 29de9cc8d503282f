"""The one exception tree. Every message is a single line meant for the user."""

from __future__ import annotations


class VmWrapperError(Exception):
    """Base of every error vm-wrapper raises on purpose.

    ``str(err)`` is one line for the user; ``detail`` goes to the log only.
    """

    exit_code = 1

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def lines(self) -> list[str]:
        return [self.message]


class ProblemList(VmWrapperError):
    """Several independent problems, reported together (one line each)."""

    def __init__(self, problems: list[str], *, what: str) -> None:
        super().__init__(f"{what}: " + "; ".join(problems))
        self.problems = problems

    def lines(self) -> list[str]:
        return list(self.problems)


class ConfigError(ProblemList):
    """The admin configuration is unusable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems, what="invalid configuration")


class RequestError(ProblemList):
    """A user's VM request (or qsub command line) is invalid or against policy.

    This is permanent: retrying the same job cannot succeed.
    """

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems, what="invalid VM request")


class CommandError(VmWrapperError):
    """An external command failed or timed out (see proc.py)."""

    def __init__(
        self, message: str, *, argv: list[str], returncode: int | None, stderr: str = ""
    ) -> None:
        super().__init__(message, detail=stderr)
        self.argv = argv
        self.returncode = returncode


class NodeError(VmWrapperError):
    """A fault of this node (libvirtd down, disk full, boot timeout): may succeed on retry."""


class PermanentJobError(VmWrapperError):
    """The job can never run here as requested (image gone, policy changed)."""


class JobGone(VmWrapperError):
    """The job ended (qdel, abort, requeue) while its VMs were still booting."""

    def __init__(self) -> None:
        super().__init__("the job ended while its VMs were booting")
