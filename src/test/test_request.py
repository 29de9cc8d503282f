"""The -vm grammar and policy validation: every key valid, invalid, beyond limits."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmwrapper import config
from vmwrapper.errors import RequestError
from vmwrapper.request import VM_KEYS, parse_vm_option, validate

DEFAULTS = config.load(files=[])


def problems_of(raw: dict[str, str], cfg: config.Config = DEFAULTS) -> list[str]:
    with pytest.raises(RequestError) as caught:
        validate(raw, cfg)
    return caught.value.problems


def test_defaults_come_from_config() -> None:
    request = validate({}, DEFAULTS)
    assert (request.img, request.vcpus, request.ram_mb, request.vms_per_node) == (
        "debian12",
        1,
        1024,
        1,
    )
    assert (request.distro, request.hypervisor, request.fs_type) == ("debian", "kvm", "sharedfs")
    assert not (request.vrdma or request.iocm or request.vcpu_pinning)


def test_parse_keys_are_case_insensitive_and_repeatable() -> None:
    assert parse_vm_option("IMG=a,VCpus=4") == {"img": "a", "vcpus": "4"}
    assert parse_vm_option("vcpus=1,vcpus=2") == {"vcpus": "2"}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("foo=1", "unknown key 'foo'"),
        ("img", "expected key=value"),
        ("img=", "img: empty value"),
        ("img=a b", "img: empty value or blanks"),
        ("=x", "expected key=value"),
    ],
)
def test_parse_refuses_bad_items(text: str, needle: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_vm_option(text)
    assert needle in caught.value.problems[0]


VALID = [
    ("img", "ubuntu22", "img", "ubuntu22"),
    ("img", "centos.qcow2", "img", "centos.qcow2"),
    ("distro", "UBUNTU", "distro", "ubuntu"),
    ("arch", "x86_64", "arch", "x86_64"),
    ("vcpus", "64", "vcpus", 64),
    ("ram", "512M", "ram_mb", 512),
    ("ram", "2G", "ram_mb", 2048),
    ("ram", "1048576K", "ram_mb", 1024),
    ("ram", "2048", "ram_mb", 2048),
    ("vms_per_node", "4", "vms_per_node", 4),
    ("disk", "/home/u/data.qcow2", "disk", "/home/u/data.qcow2"),
    ("vcpu_pinning", "yes", "vcpu_pinning", True),
    ("fs_type", "ramdisk", "fs_type", "ramdisk"),
    ("vm_prologue", "/home/u/pro.sh", "vm_prologue", "/home/u/pro.sh"),
    ("vm_epilogue", "/home/u/epi.sh", "vm_epilogue", "/home/u/epi.sh"),
    ("metadata", "/home/u/meta.yaml", "metadata", "/home/u/meta.yaml"),
    ("hypervisor", "qemu", "hypervisor", "qemu"),
    ("vrdma", "false", "vrdma", False),
    ("iocm", "no", "iocm", False),
    ("mounts", "", "mounts", ()),
]


@pytest.mark.parametrize(("key", "value", "field", "expected"), VALID)
def test_every_key_valid(key: str, value: str, field: str, expected: object) -> None:
    assert getattr(validate({key: value}, DEFAULTS), field) == expected


INVALID = [
    ("img", "../etc/passwd", "img='../etc/passwd': expected an image name"),
    ("img", "/abs/own.qcow2", "own images are not allowed here"),
    ("distro", "windows", "allowed: debian, ubuntu, redhat"),
    ("arch", "arm64", "allowed: x86_64"),
    ("vcpus", "0", "allowed: 1 to 64 (site limit)"),
    ("vcpus", "65", "allowed: 1 to 64 (site limit)"),
    ("vcpus", "two", "expected a whole number from 1 to 64"),
    ("ram", "1T", "allowed: 256M to 262144M (site limit)"),
    ("ram", "100M", "allowed: 256M to 262144M (site limit)"),
    ("ram", "lots", "expected a size such as 4G or 512M"),
    ("vms_per_node", "5", "allowed: 1 to 4 (site limit)"),
    ("disk", "relative.img", "expected an absolute path"),
    ("disk", "/home/../etc/shadow", "expected an absolute path of plain names (no '..')"),
    ("vcpu_pinning", "maybe", "expected true or false"),
    ("fs_type", "nfs", "allowed: sharedfs, ramdisk"),
    ("vm_prologue", "pro.sh", "expected an absolute path"),
    ("vm_epilogue", "/a/../b", "expected an absolute path"),
    ("metadata", "/x;rm", "expected an absolute path"),
    ("hypervisor", "xen", "allowed: kvm, qemu"),
    ("vrdma", "true", "this device option is not enabled on this site"),
    ("iocm", "true", "this device option is not enabled on this site"),
    ("iocm_min_cores", "1", "needs iocm=true, which is not enabled on this site"),
    ("iocm_max_cores", "2", "needs iocm=true, which is not enabled on this site"),
    ("mounts", "/work/x", "not inside an allowed directory: none"),
]


@pytest.mark.parametrize(("key", "value", "needle"), INVALID)
def test_every_key_invalid_names_key_and_allowed_values(key: str, value: str, needle: str) -> None:
    problems = problems_of({key: value})
    assert len(problems) == 1
    assert problems[0].startswith(f"{key}=") and needle in problems[0]


def test_every_key_is_covered_by_these_tests() -> None:
    assert {k for k, *_ in VALID} | {k for k, *_ in INVALID} == set(VM_KEYS)


def test_every_problem_reported_at_once() -> None:
    problems = problems_of({"vcpus": "999", "ram": "1T", "distro": "x", "vrdma": "yes"})
    assert sorted(p.split("=")[0] for p in problems) == ["distro", "ram", "vcpus", "vrdma"]


def test_user_images_need_the_admin_switch() -> None:
    allowed = dataclasses.replace(DEFAULTS, ALLOW_USER_IMAGES=True)
    assert validate({"img": "/home/u/own.qcow2"}, allowed).img == "/home/u/own.qcow2"
    assert "expected an absolute path" in problems_of({"img": "/home/u/../x.img"}, allowed)[0]


def test_iocm_cores_within_site_range_when_enabled() -> None:
    # IOCM_ENABLED has no driver in this release (cross_check refuses it), so build the
    # Config directly to test the rule that will apply once it has one.
    enabled = dataclasses.replace(DEFAULTS, IOCM_ENABLED=True, IOCM_MIN_CORES=1, IOCM_MAX_CORES=4)
    request = validate({"iocm": "true", "iocm_min_cores": "2", "iocm_max_cores": "4"}, enabled)
    assert (request.iocm, request.iocm_min_cores, request.iocm_max_cores) == (True, 2, 4)
    problems = problems_of({"iocm": "true", "iocm_max_cores": "9"}, enabled)
    assert problems == ["iocm_max_cores='9': allowed: 1 to 4 (site limit)"]


def test_host_needs_include_reserve_and_overhead() -> None:
    request = validate({"vcpus": "2", "vms_per_node": "2", "ram": "2G"}, DEFAULTS)
    assert request.host_cores_needed(DEFAULTS) == 1 + 2 * 2
    assert request.host_ram_needed_mb(DEFAULTS) == 1024 + 2 * (2048 + 256)


@given(st.text(max_size=80))
def test_fuzzed_vm_strings_fail_only_with_request_errors(text: str) -> None:
    try:
        validate(parse_vm_option(text), DEFAULTS)
    except RequestError as err:
        assert err.problems and all("\n" not in p for p in err.problems)


@given(st.dictionaries(st.sampled_from(VM_KEYS), st.text(max_size=20), max_size=6))
def test_fuzzed_raw_requests_fail_only_with_request_errors(raw: dict[str, str]) -> None:
    try:
        validate(raw, DEFAULTS)
    except RequestError as err:
        assert err.problems


def test_user_mounts_only_inside_the_admin_roots() -> None:
    from dataclasses import replace

    cfg = replace(DEFAULTS, USER_MOUNT_ROOTS=("/work", "/scratch/"))
    request = validate({"mounts": "/work/p1:/scratch/me/run"}, cfg)
    assert request.mounts == ("/work/p1", "/scratch/me/run")
    assert validate(request.to_raw(), cfg) == request
    for bad, needle in [
        ("/workshop", "not inside"),
        ("/etc", "not inside"),
        ("/work/../etc", "no '..'"),
        (":".join(["/work/x"] * 9), "at most 8"),
    ]:
        problems = problems_of({"mounts": bad}, cfg)
        assert len(problems) == 1 and needle in problems[0], problems
