"""Domain XML: golden files, libvirt's schema, virt-xml-validate, the test driver, hostile values.

Regenerate the golden files with ``VMW_REGEN_GOLDEN=1 python -m pytest src/test/test_render.py``
and review the diff.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import libvirt
import pytest
from lxml import etree

from vmwrapper import config, render, request, xmlcheck
from vmwrapper.config import Config
from vmwrapper.disks import BaseImage, UserDisk
from vmwrapper.errors import NodeError, PermanentJobError
from vmwrapper.plan import Allocation, JobPlan, VmSpec, make_plan
from vmwrapper.vmfiles import VmPaths

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("VMW_REGEN_GOLDEN") == "1"
JOBID = "4711.torque-srv"
SHARES = (("/home", "vmwshare0"), ("/scratch", "vmwshare1"))
POOL = Path("/var/lib/vm-wrapper/images")


def check_golden(name: str, text: str) -> None:
    """Compare with src/test/golden/<name>; VMW_REGEN_GOLDEN=1 rewrites it instead."""
    path = GOLDEN / name
    if REGEN:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    assert path.is_file(), f"no golden file {path}; run with VMW_REGEN_GOLDEN=1"
    expected = path.read_text(encoding="utf-8")
    assert text == expected, f"{name} differs from its golden file (VMW_REGEN_GOLDEN=1 updates)"


def site_config(tmp_path: Path, text: str = "") -> Config:
    """Defaults, plus ``text`` as a site config file when given."""
    if not text:
        return config.load([])
    tmp_path.mkdir(parents=True, exist_ok=True)
    conf = tmp_path / "vm-wrapper.conf"
    conf.write_text(text, encoding="utf-8")
    return config.load([conf])


def job_plan(cfg: Config, rank: int, *, jobid: str = JOBID, user: str = "alice") -> JobPlan:
    """The representative job: 2 nodes x 2 VMs, 2 vCPUs, 2 GiB, pinned, as seen by ``rank``."""
    req = request.validate(
        {"vcpus": "2", "ram": "2G", "vms_per_node": "2", "vcpu_pinning": "true"}, cfg
    )
    alloc = Allocation(
        jobid=jobid, user=user, uid=2000, gid=2000, home="/home/alice",
        num_nodes=2, rank=rank, cores_on_node=8,
    )  # fmt: skip
    return make_plan(req, alloc, cfg, host_cpus=tuple(range(8)))


def vm_paths(vm: VmSpec, with_disk: bool = False) -> VmPaths:
    node = Path(f"/var/lib/vm-wrapper/state/jobs/{JOBID}/node{vm.rank}")
    disk = Path("/home/alice/data.qcow2") if with_disk else None
    base = VmPaths.for_vm(vm, node, Path(f"/var/lib/vm-wrapper/overlays/{JOBID}"))
    return replace(base, disk=disk, disk_format="qcow2")


def image(kernel: bool) -> BaseImage:
    if not kernel:
        return BaseImage(POOL / "debian12.qcow2", "qcow2", None, None, "")
    return BaseImage(
        POOL / "debian12.qcow2", "qcow2", POOL / "debian12.vmlinuz", POOL / "debian12.initrd",
        "root=/dev/vda rw console=ttyS0",
    )  # fmt: skip


# The golden cases: rank 0 boots TCG with a kernel beside the image, a persistent disk on
# vm0 and two shares on a bridge; rank 1 uses KVM, a libvirt network, and boots from disk.
class Case(NamedTuple):
    accel: str
    kernel: bool
    disk: bool
    shares: tuple[tuple[str, str], ...]
    conf: str


NETWORK = "VM_NETWORK_TYPE=network\n"
CASES = {
    0: Case(accel="tcg", kernel=True, disk=True, shares=SHARES, conf=""),
    1: Case(accel="tcg", kernel=True, disk=False, shares=SHARES, conf=""),
    2: Case(accel="kvm", kernel=False, disk=False, shares=(), conf=NETWORK),
    3: Case(accel="kvm", kernel=False, disk=False, shares=(), conf=NETWORK),
}


def render_case(index: int, tmp_path: Path) -> str:
    case = CASES[index]
    cfg = site_config(tmp_path, case.conf)
    plan = job_plan(cfg, rank=index // 2)
    vm = next(v for v in plan.vms if v.index == index)
    return render.render_domain(
        vm, plan, vm_paths(vm, case.disk), case.accel, config=cfg, image=image(case.kernel),
        shares=case.shares,
    )  # fmt: skip


@pytest.fixture(scope="module")
def test_conn() -> Iterator[libvirt.virConnect]:
    libvirt.registerErrorHandler(lambda *_: None, None)  # we assert on exceptions instead
    conn = libvirt.open("test:///default")
    yield conn
    conn.close()


def define_on_test_driver(conn: libvirt.virConnect, xml: str) -> libvirt.virDomain:
    """Define with full schema validation, as virt-manager's test suite does."""
    return conn.defineXMLFlags(xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)


@pytest.mark.parametrize("index", sorted(CASES))
def test_domain_matches_golden_file(index: int, tmp_path: Path) -> None:
    check_golden(f"domain-vm{index}.xml", render_case(index, tmp_path))


@pytest.mark.parametrize("index", sorted(CASES))
def test_domain_is_valid_for_lxml_rng(index: int, tmp_path: Path) -> None:
    xmlcheck.validate_domain(render_case(index, tmp_path))


@pytest.mark.needs("virt-xml-validate")
@pytest.mark.parametrize("index", sorted(CASES))
def test_domain_passes_virt_xml_validate(index: int, tmp_path: Path) -> None:
    path = tmp_path / "domain.xml"
    path.write_text(render_case(index, tmp_path), encoding="utf-8")
    result = subprocess.run(
        ["virt-xml-validate", str(path), "domain"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("index", sorted(CASES))
def test_test_driver_accepts_domain_and_reap_finds_it(
    index: int, tmp_path: Path, test_conn: libvirt.virConnect
) -> None:
    domain = define_on_test_driver(test_conn, render_case(index, tmp_path))
    try:
        # What reap asks libvirt for; libvirt hands the element back without its prefix.
        job = etree.fromstring(domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, render.XMLNS))
        assert job.findtext("jobid") == JOBID
        assert job.findtext("tag") == JOBID
        assert job.findtext("index") == str(index)
        assert job.findtext("rank") == str(index // 2)
        domain.create()  # the test driver "boots" it too
        assert domain.isActive()
        domain.destroy()
    finally:
        domain.undefine()


def parsed(index: int, tmp_path: Path) -> etree._Element:
    return etree.fromstring(render_case(index, tmp_path).encode())


def test_tcg_and_kvm_choose_domain_type_and_cpu(tmp_path: Path) -> None:
    tcg, kvm = parsed(0, tmp_path), parsed(2, tmp_path)
    assert (tcg.get("type"), tcg.find("cpu").get("mode")) == ("qemu", "maximum")
    assert (kvm.get("type"), kvm.find("cpu").get("mode")) == ("kvm", "host-passthrough")
    for root in (tcg, kvm):
        assert root.find("os/type").get("machine") == "q35"
        assert root.find("features/acpi") is not None
        assert root.findtext("on_reboot") == "destroy"
        assert root.find("devices/graphics") is None
        # QEMU runs as the job user; the shared base image is exempt from relabelling.
        label = root.find("seclabel")
        assert label.attrib == {"type": "static", "model": "dac", "relabel": "yes"}
        assert label.findtext("label") == "+2000:+2000"


def test_kernel_boot_or_disk_boot(tmp_path: Path) -> None:
    direct, disk = parsed(0, tmp_path), parsed(2, tmp_path)
    assert direct.findtext("os/kernel") == str(POOL / "debian12.vmlinuz")
    assert direct.findtext("os/cmdline") == "root=/dev/vda rw console=ttyS0"
    assert direct.find("os/boot") is None
    assert disk.find("os/kernel") is None and disk.find("os/boot").get("dev") == "hd"


def test_disks_pin_every_backing_chain(tmp_path: Path) -> None:
    disks = parsed(0, tmp_path).findall("devices/disk")
    assert [d.find("target").get("dev") for d in disks] == ["vda", "vdb", "vdc"]
    overlay, seed, user = disks
    assert overlay.find("backingStore/source").get("file") == str(POOL / "debian12.qcow2")
    assert overlay.find("backingStore/backingStore") is not None  # base ends the chain
    assert seed.find("readonly") is not None and seed.find("driver").get("type") == "raw"
    assert user.find("driver").get("type") == "qcow2"  # as passed in, never probed
    assert user.find("backingStore") is not None and len(user.find("backingStore")) == 0
    assert user.findtext("serial") == "vmw-data"


def test_only_the_first_vm_gets_the_persistent_disk(tmp_path: Path) -> None:
    plan = job_plan(config.load([]), rank=0)
    user_disk = UserDisk(Path("/home/alice/d.raw"), "raw", device=1, inode=2, size=1 << 20)
    first, second = (VmPaths.for_vm(vm, tmp_path, tmp_path, user_disk) for vm in plan.vms)
    assert (first.disk, first.disk_format) == (Path("/home/alice/d.raw"), "raw")
    assert second.disk is None


def test_pinning_network_shares_and_channel(tmp_path: Path) -> None:
    vm0, vm2 = parsed(0, tmp_path), parsed(2, tmp_path)
    pins = [(p.get("vcpu"), p.get("cpuset")) for p in vm0.findall("cputune/vcpupin")]
    assert pins == [("0", "1"), ("1", "2")]
    assert vm0.find("devices/interface").get("type") == "bridge"
    assert vm0.find("devices/interface/source").get("bridge") == "vmwbr0"
    assert vm2.find("devices/interface/source").get("network") == "default"
    tags = [fs.find("target").get("dir") for fs in vm0.findall("devices/filesystem")]
    assert tags == ["vmwshare0", "vmwshare1"]
    channel = vm0.find("devices/channel/target")
    assert channel.get("name") == "org.vm-wrapper.ready"
    assert vm0.find("devices/serial").get("type") == "file"


def test_no_pinning_without_cpuset(tmp_path: Path) -> None:
    cfg = config.load([])
    plan = job_plan(cfg, 0)
    vm = replace(plan.vms[0], cpuset=())
    xml = render.render_domain(vm, plan, vm_paths(vm), "tcg", config=cfg)
    assert "<cputune>" not in xml
    xmlcheck.validate_domain(xml)


NASTY = "x'\"<>&]]>\n<bogus/>&amp;"


def test_hostile_job_id_and_user_are_escaped(tmp_path: Path, test_conn: libvirt.virConnect) -> None:
    cfg = config.load([])
    plan = job_plan(cfg, 0, jobid="42" + NASTY, user="bob" + NASTY)
    vm = plan.vms[0]
    assert vm.name.startswith("vmw-42x_")  # the planner sanitises names...
    xml = render.render_domain(vm, plan, vm_paths(vm), "tcg", config=cfg)
    xmlcheck.validate_domain(xml)  # ...and what it keeps verbatim is escaped
    root = etree.fromstring(xml.encode())
    ns = {"vmw": render.XMLNS}
    assert root.findtext("metadata/vmw:job/vmw:jobid", namespaces=ns) == "42" + NASTY
    assert root.findtext("metadata/vmw:job/vmw:user", namespaces=ns) == "bob" + NASTY
    assert root.find(".//bogus") is None
    define_on_test_driver(test_conn, xml).undefine()


def test_hostile_paths_and_names_rendered_directly_stay_valid(
    tmp_path: Path, test_conn: libvirt.virConnect
) -> None:
    cfg = config.load([])
    plan = job_plan(cfg, 0)
    vm = replace(plan.vms[0], name="vmw-x'\"<>&]]>&amp;")  # libvirt forbids only '/' in names
    odd = Path("/srv/" + NASTY.replace("\n", ""))
    paths = VmPaths(overlay=odd / "o", seed=odd / "s", console=odd / "c", ready=odd / "r",
                    disk=odd / "d")  # fmt: skip
    xml = render.render_domain(vm, plan, paths, "tcg", config=cfg, shares=[(str(odd), "t")])
    xmlcheck.validate_domain(xml)
    root = etree.fromstring(xml.encode())
    assert root.findtext("name") == vm.name
    assert root.find("devices/disk/source").get("file") == str(odd / "o")
    assert root.find("devices/filesystem/source").get("dir") == str(odd)
    define_on_test_driver(test_conn, xml).undefine()


@pytest.mark.parametrize("bad", ["\x00", "\x1b[31m", "\x7f\x01", "\ud800"])
def test_control_characters_are_refused_not_mangled(bad: str) -> None:
    cfg = config.load([])
    plan = job_plan(cfg, 0)
    plan = replace(plan, alloc=replace(plan.alloc, jobid="42" + bad))
    with pytest.raises(PermanentJobError, match="control character"):
        render.render_domain(plan.vms[0], plan, vm_paths(plan.vms[0]), "tcg", config=cfg)


def test_unknown_accelerator_is_refused() -> None:
    cfg = config.load([])
    plan = job_plan(cfg, 0)
    with pytest.raises(NodeError, match="accelerator"):
        render.render_domain(plan.vms[0], plan, vm_paths(plan.vms[0]), "hvf", config=cfg)


def test_xmlcheck_rejects_malformed_and_unknown_elements() -> None:
    good = render_case(1, Path("/nonexistent"))
    with pytest.raises(xmlcheck.DomainXmlError, match="malformed") as malformed:
        xmlcheck.validate_domain(good[:-20])
    bogus = good.replace("<devices>", "<devices><bogus/>")
    with pytest.raises(xmlcheck.DomainXmlError, match="schema") as invalid:
        xmlcheck.validate_domain(bogus)
    for err in (malformed.value, invalid.value):
        assert "\n" not in str(err)
    assert "devices" in invalid.value.detail  # libxml2 names the element that failed


def test_xmlcheck_missing_schema_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(xmlcheck.DomainXmlError, match="cannot load libvirt's schema"):
        xmlcheck.validate_domain("<domain/>", str(tmp_path / "none.rng"))


def test_environment_is_strict_and_escapes_only_xml() -> None:
    env = render.environment()
    assert env is render.environment()  # one per process
    with pytest.raises(Exception, match="undefined"):
        env.from_string("{{ missing }}").render()
    assert env.from_string("{{ v }}").render(v="<a&'>") == "&lt;a&amp;&#39;&gt;"
    shell = env.from_string("{% autoescape false %}{{ v|shquote }}{% endautoescape %}")
    assert shell.render(v="a b'c") == "'a b'\"'\"'c'"


def test_unknown_template_is_not_found() -> None:
    import jinja2

    with pytest.raises(jinja2.TemplateNotFound):
        render.render_template("../render.py", {})
    with pytest.raises(jinja2.TemplateNotFound):
        render.render_template("nope.xml.j2", {})


def test_importing_the_modules_does_not_import_heavy_libraries() -> None:
    code = (
        "import sys, vmwrapper.render, vmwrapper.seed, vmwrapper.xmlcheck, vmwrapper.vmfiles\n"
        "print(sorted(m for m in ('jinja2', 'yaml', 'lxml', 'libvirt') if m in sys.modules))"
    )
    src = str(Path(__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": src},
    )  # fmt: skip
    assert out.stdout.strip() == "[]"
