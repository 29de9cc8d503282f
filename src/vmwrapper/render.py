"""The one Jinja2 environment, and the libvirt domain XML of one VM.

Every decision is made here in Python; templates only loop and branch over prepared values.
XML templates are autoescaped. jinja2 is imported lazily (+65 ms): hooks of jobs without VMs
never import this module's dependencies.

QEMU runs as the JOB USER (``<seclabel type='static' model='dac' relabel='yes'>`` with
``+uid:+gid``), like pcocc's: a QEMU escape lands in that user's own account instead of a uid
shared by every job's QEMU (which could read all other jobs' overlays), and the user's
persistent disk and 9p shares work with the user's own rights. libvirt relabels (chowns to
the user) only files in root's own directories: the overlay, seed, console log and the
kernel copies. Every path a user can influence (their persistent disk, their own image) and
the shared base image carry a per-source ``relabel='no'``: libvirt, as root, would otherwise
chown whatever the path names at domain start, a window in which the user can swap in a
link to any host file.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from vmwrapper.errors import NodeError, PermanentJobError
from vmwrapper.vmfiles import READY_CHANNEL

if TYPE_CHECKING:
    import jinja2

    from vmwrapper.config import Config
    from vmwrapper.disks import BaseImage
    from vmwrapper.plan import JobPlan, VmSpec
    from vmwrapper.vmfiles import VmPaths

TEMPLATE_PACKAGE = "vmwrapper.templates"
DOMAIN_TEMPLATE = "domain.xml.j2"
# Namespace of our <metadata> element: `reap` finds our domains by it, whatever their name.
XMLNS = "https://vm-wrapper.example/xmlns/1"
ACCELS: tuple[str, ...] = ("kvm", "tcg")
# 9p passthrough keeps host ownership: files the job writes in a shared /home belong to the
# user, as on the host. Its safety depends on who QEMU runs as (see the module's callers).
SHARE_ACCESSMODE = "passthrough"
# Characters XML 1.0 cannot carry even escaped: a value holding one must be refused, not
# silently mangled (reap matches domains by these values).
_XML_ILLEGAL_RE = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _load_template(name: str) -> str | None:
    """Template source from the package data, or None (jinja2 turns that into TemplateNotFound)."""
    if "/" in name or name.startswith("."):
        return None
    resource = resources.files(TEMPLATE_PACKAGE).joinpath(name)
    return resource.read_text(encoding="utf-8") if resource.is_file() else None


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The single environment: strict about undefined values, autoescaping XML.

    Shell templates are not HTML/XML-escaped (that would corrupt them): quote values in them
    with the ``shquote`` filter.
    """
    import jinja2  # noqa: PLC0415  (lazy, see the module docstring)

    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_load_template),
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("xml", "xml.j2"), default_for_string=True, default=False
        ),
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["shquote"] = lambda value: shlex.quote(str(value))
    return env


def render_template(name: str, context: Mapping[str, Any]) -> str:
    return environment().get_template(name).render(context)


def render_domain(
    vm: VmSpec,
    plan: JobPlan,
    paths: VmPaths,
    accel: str,
    *,
    config: Config,
    image: BaseImage | None = None,
    shares: Sequence[tuple[str, str]] = (),
) -> str:
    """Transient libvirt domain XML for one VM. ``accel`` is ``kvm`` or ``tcg``; ``image``
    gives the base image (direct kernel boot, pinned backing chain); ``shares`` are
    (host directory, 9p mount tag) pairs."""
    context = domain_context(vm, plan, paths, accel, config=config, image=image, shares=shares)
    return render_template(DOMAIN_TEMPLATE, context)


def domain_context(
    vm: VmSpec,
    plan: JobPlan,
    paths: VmPaths,
    accel: str,
    *,
    config: Config,
    image: BaseImage | None = None,
    shares: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """Every value the domain template uses, decided and checked."""
    if accel not in ACCELS:
        raise NodeError(f"unknown accelerator {accel!r} (expected kvm or tcg)")
    context: dict[str, Any] = {
        # QEMU without KVM is libvirt's type 'qemu' (TCG); TCG cannot pass the host CPU
        # through, 'maximum' gives it every feature TCG emulates (x86-64-v2 and up).
        "domain_type": "kvm" if accel == "kvm" else "qemu",
        "cpu_mode": "host-passthrough" if accel == "kvm" else "maximum",
        "name": vm.name,
        "namespace": XMLNS,
        "meta": {"jobid": plan.alloc.jobid, "tag": plan.tag, "user": plan.alloc.user,
                 "rank": vm.rank, "index": vm.index},
        "memory_mib": vm.ram_mb,
        "vcpus": vm.vcpus,
        "pins": [{"vcpu": i, "cpu": cpu} for i, cpu in enumerate(vm.cpuset)],
        "kernel": _kernel(image),
        "disks": _disks(paths, image),
        "shares": [{"source": src, "tag": tag, "accessmode": SHARE_ACCESSMODE}
                   for src, tag in shares],
        "nic": _nic(vm, config),
        "console": str(paths.console),
        "qemu_uid": plan.alloc.uid,
        "qemu_gid": plan.alloc.gid,
        "ready": str(paths.ready),
        "ready_channel": READY_CHANNEL,
    }  # fmt: skip
    _check_chars(context, vm.name)
    return context


def _kernel(image: BaseImage | None) -> dict[str, str] | None:
    """Direct kernel boot when the admin ships a kernel and initrd beside the image."""
    if image is None or image.kernel is None or image.initrd is None:
        return None
    return {"kernel": str(image.kernel), "initrd": str(image.initrd), "cmdline": image.cmdline}


def _disks(paths: VmPaths, image: BaseImage | None) -> list[dict[str, Any]]:
    """vda overlay, vdb seed, vdc persistent disk: the seed never shifts the user's disk.

    Every chain is stated in full and ends in an empty <backingStore/>, so libvirt never
    follows a backing file named inside an image (a user's qcow2 could name any host file).
    """
    base_path = str(image.path) if image is not None else ""
    base_format = image.fmt if image is not None else ""
    disks = [
        _disk("vda", paths.overlay, "qcow2", backing=(base_path, base_format)),
        _disk("vdb", paths.seed, "raw", readonly=True),
    ]
    if paths.disk is not None:
        # Stable guest name: /dev/disk/by-id/virtio-vmw-data. The user's own path: libvirt
        # must not chown whatever it names at domain start (it could be swapped for a link
        # to any host file by then); QEMU opens it with the user's rights.
        disks.append(_disk("vdc", paths.disk, paths.disk_format, serial="vmw-data", user_path=True))
    return disks


def _disk(
    target: str, path: object, fmt: str, *, backing: tuple[str, str] = ("", ""),
    readonly: bool = False, serial: str = "", user_path: bool = False,
) -> dict[str, Any]:  # fmt: skip
    return {
        "target": target, "path": str(path), "format": fmt, "readonly": readonly,
        "serial": serial, "backing_path": backing[0], "backing_format": backing[1],
        "relabel": not user_path,
    }  # fmt: skip


def _nic(vm: VmSpec, config: Config) -> dict[str, str]:
    if config.VM_NETWORK_TYPE == "bridge":
        return {"type": "bridge", "source": config.VM_BRIDGE, "mac": vm.mac}
    return {"type": "network", "source": config.VM_NETWORK, "mac": vm.mac}


def _check_chars(value: object, vm_name: str) -> None:
    """Refuse values XML cannot represent (control characters); escaping handles the rest."""
    if isinstance(value, str):
        match = _XML_ILLEGAL_RE.search(value)
        if match:
            raise PermanentJobError(
                f"VM {vm_name[:60]!r}: a value holds control character "
                f"{match.group()!r}, which domain XML cannot carry"
            )
    elif isinstance(value, Mapping):
        for item in value.values():
            _check_chars(item, vm_name)
    elif isinstance(value, list):
        for item in value:
            _check_chars(item, vm_name)
