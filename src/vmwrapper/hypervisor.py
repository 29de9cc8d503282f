"""libvirt: start transient domains, wait for the guests' own ready signal, stop them.

Readiness is a line ``VMW-READY <nonce>`` that the guest writes, as its last cloud-init step
and after sshd runs, to a virtio-serial port backed by a file only root can read. "The domain
is running" is not readiness, and DHCP leases or ARP tables are never consulted.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmwrapper import proc
from vmwrapper.errors import CommandError, JobGone, NodeError

log = logging.getLogger(__name__)
POLL_SECONDS = 0.25


def _libvirt() -> Any:
    import libvirt  # noqa: PLC0415  (lazy: +30 ms, only VM jobs pay)

    # libvirt prints every error to stderr by default; we report our own one-liners.
    libvirt.registerErrorHandler(lambda *_: None, None)
    return libvirt


class Hypervisor:
    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._conn: Any = None

    @property
    def conn(self) -> Any:
        if self._conn is None:
            libvirt = _libvirt()
            try:
                self._conn = libvirt.open(self.uri)
            except libvirt.libvirtError as err:
                raise NodeError(
                    f"libvirt is not reachable at {self.uri}: {err.get_error_message()}"
                ) from None
        return self._conn

    def start(self, xml: str) -> None:
        libvirt = _libvirt()
        try:
            self.conn.createXML(xml, 0)
        except libvirt.libvirtError as err:
            raise NodeError(f"libvirt could not start a VM: {err.get_error_message()}") from None

    def is_active(self, name: str) -> bool:
        libvirt = _libvirt()
        try:
            return bool(self.conn.lookupByName(name).isActive())
        except libvirt.libvirtError:
            return False

    def our_domains(self) -> dict[str, str]:
        """{domain name: job id} of the domains vm-wrapper started, known by our namespaced
        <metadata> element, not by name: a foreign domain called vmw-* is left alone."""
        from vmwrapper.render import XMLNS  # noqa: PLC0415

        libvirt = _libvirt()
        found: dict[str, str] = {}
        for domain in self.conn.listAllDomains():
            try:
                meta = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, XMLNS, 0)
            except libvirt.libvirtError:
                continue
            jobid = _element_text(meta, "jobid")
            if jobid:
                found[domain.name()] = jobid
        return found

    def stop(self, name: str, grace_seconds: float) -> None:
        """ACPI shutdown, wait up to grace_seconds, then destroy. Gone already is fine."""
        libvirt = _libvirt()
        try:
            domain = self.conn.lookupByName(name)
        except libvirt.libvirtError:
            return
        with contextlib.suppress(libvirt.libvirtError):
            if grace_seconds > 0:
                domain.shutdown()
                deadline = time.monotonic() + grace_seconds
                while time.monotonic() < deadline and self.is_active(name):
                    time.sleep(POLL_SECONDS)
        with contextlib.suppress(libvirt.libvirtError):
            if domain.isActive():
                domain.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            domain.undefine()  # only if someone made it persistent


def _element_text(xml: str, tag: str) -> str:
    """Text of the first <tag> child in a small metadata snippet we wrote ourselves."""
    import xml.etree.ElementTree as ET  # noqa: PLC0415

    try:
        root = ET.fromstring(xml)  # noqa: S314  (our own element, read back from libvirt)
    except ET.ParseError:
        return ""
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == tag:
            return (element.text or "").strip()
    return root.attrib.get(tag, "")


@dataclass
class BootWatch:
    """One VM being waited for."""

    name: str
    ready_file: Path
    console_file: Path
    nonce: str
    hostname: str = ""  # what the user calls it (vm0): for messages
    ready: bool = False
    console_seen: bool = False

    @property
    def label(self) -> str:
        return self.hostname or self.name


def wait_ready(
    hypervisor: Hypervisor,
    watches: list[BootWatch],
    until: float,
    on_event: Callable[[str, str], None],
    gone: Callable[[], bool],
) -> None:
    """Wait until every guest wrote its ready line; fail fast if one dies, the job is
    gone (JobGone) or time runs out (``until``, a time.monotonic())."""
    started = time.monotonic()
    while True:
        for watch in watches:
            _poll(watch, on_event)
        if all(w.ready for w in watches):
            return
        if gone():
            raise JobGone()
        for watch in watches:
            if not watch.ready and not hypervisor.is_active(watch.name):
                raise NodeError(f"VM {watch.label} stopped before it signalled ready")
        if time.monotonic() > until:
            late = ", ".join(w.label for w in watches if not w.ready)
            waited = time.monotonic() - started
            raise NodeError(f"VM(s) {late} not ready within {waited:.0f} s of waiting (TIMEOUT)")
        time.sleep(POLL_SECONDS)


def _poll(watch: BootWatch, on_event: Callable[[str, str], None]) -> None:
    if not watch.console_seen and _size(watch.console_file) > 0:
        watch.console_seen = True
        on_event(watch.name, "first_console_output")
    if watch.ready:
        return
    head = _head(watch.ready_file)
    if f"VMW-READY {watch.nonce}".encode() in head:
        watch.ready = True
        on_event(watch.name, "ready")
    elif f"VMW-FAILED {watch.nonce}".encode() in head:
        # The guest's own check failed (sshd, the user, a share): waiting longer won't help.
        raise NodeError(f"VM {watch.label} reports that its setup failed (see its console log)")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _head(path: Path, limit: int = 4096) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(limit)
    except OSError:
        return b""


# -- KVM or TCG -----------------------------------------------------------------------------

QEMU_SYSTEM = "/usr/bin/qemu-system-x86_64"


def kvm_runs_guests(kernel: Path, seconds: float = 20) -> bool:
    """Does KVM really run a guest here? /dev/kvm opening is not enough (nested PVM hosts
    accept KVM_CREATE_VM and then hang in the guest's first instructions).

    Boots the image's kernel without a root file system under -accel kvm: a working KVM
    prints "Linux version" and panics within seconds; QEMU then exits (-no-reboot).
    """
    if not Path("/dev/kvm").exists():
        return False
    argv = [QEMU_SYSTEM, "-accel", "kvm", "-machine", "q35", "-m", "256", "-nodefaults",
            "-nographic", "-no-reboot", "-serial", "stdio", "-kernel", str(kernel),
            "-append", "console=ttyS0 panic=-1 loglevel=4"]  # fmt: skip
    try:
        result = proc.run(argv, timeout=seconds, ok_codes=range(256))
    except CommandError:
        return False
    return "Linux version" in result.stdout or "Kernel panic" in result.stdout
