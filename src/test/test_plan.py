"""The planner: deterministic, collision-free names, MACs and addresses; allocation fit."""

from __future__ import annotations

import ipaddress

import pytest

from vmwrapper import config as config_mod
from vmwrapper.errors import PermanentJobError
from vmwrapper.plan import Allocation, job_addresses, job_number, job_tag, mac_for, make_plan
from vmwrapper.request import validate

CFG = config_mod.load([])


def alloc(jobid: str = "42.server", rank: int = 0, nodes: int = 2, cores: int = 8) -> Allocation:
    return Allocation(jobid, "alice", 2000, 2000, "/home/alice", nodes, rank, cores)


def test_every_node_computes_the_same_plan() -> None:
    request = validate({"vcpus": "2", "vms_per_node": "2"}, CFG)
    first = make_plan(request, alloc(rank=0), CFG, (0, 1, 2, 3))
    second = make_plan(request, alloc(rank=1), CFG, (0, 1, 2, 3))
    assert first.all_vms == second.all_vms
    assert [vm.index for vm in first.vms] == [0, 1]
    assert [vm.index for vm in second.vms] == [2, 3]
    assert [vm.hostname for vm in first.all_vms] == ["vm0", "vm1", "vm2", "vm3"]
    assert first.all_vms[3].name == "vmw-42.server-3"
    assert len({vm.mac for vm in first.all_vms}) == 4
    assert len({vm.address for vm in first.all_vms}) == 4


def test_addresses_stay_in_pool_and_skip_the_host_block() -> None:
    pool = ipaddress.IPv4Network(CFG.VM_ADDRESS_POOL)
    host_block = next(pool.subnets(new_prefix=CFG.VM_ADDRESS_BLOCK))
    for jobid in ("0.s", "1.s", "1022.s", "1023.s", "99999.s", "7[3].s"):
        addresses, prefix = job_addresses(jobid, 4, CFG)
        assert prefix == pool.prefixlen
        for text in addresses:
            address = ipaddress.IPv4Address(text)
            assert address in pool
            assert address not in host_block


def test_consecutive_jobs_never_share_addresses() -> None:
    seen: set[str] = set()
    for number in range(1000, 2023):  # one full cycle of blocks
        addresses, _ = job_addresses(f"{number}.server", 8, CFG)
        assert not seen.intersection(addresses)
        seen.update(addresses)


def test_mac_is_locally_administered_unicast_and_follows_address() -> None:
    mac = mac_for("10.77.1.2")
    assert mac == "02:56:0a:4d:01:02"
    first_octet = int(mac.split(":")[0], 16)
    assert first_octet & 0b10 and not first_octet & 0b01


@pytest.mark.parametrize(
    ("jobid", "tag"),
    [
        ("12.srv", "12.srv"),
        ("12[3].srv", "12_3_.srv"),
        ("../../etc", "_.._etc"),
        ("a/b c'", "a_b_c_"),
    ],
)
def test_job_tag_is_file_and_xml_safe(jobid: str, tag: str) -> None:
    assert job_tag(jobid) == tag


def test_job_number_hashes_non_numeric_ids_stably() -> None:
    assert job_number("123.server") == 123
    assert job_number("abc") == job_number("abc") != job_number("abd")


def test_too_few_cores_is_a_permanent_error_naming_ppn() -> None:
    request = validate({"vcpus": "4", "vms_per_node": "2"}, CFG)
    with pytest.raises(PermanentJobError, match="ppn=9"):
        make_plan(request, alloc(cores=8), CFG, ())


def test_more_vms_than_a_block_holds_is_refused() -> None:
    with pytest.raises(PermanentJobError, match="at most 62"):
        job_addresses("5.s", 63, CFG)


def test_pinning_uses_cores_after_the_host_reserve() -> None:
    request = validate({"vcpus": "2", "vms_per_node": "2", "vcpu_pinning": "true"}, CFG)
    plan = make_plan(request, alloc(nodes=1), CFG, (0, 1, 2, 3, 4))
    assert [vm.cpuset for vm in plan.vms] == [(1, 2), (3, 4)]
    unpinned = make_plan(validate({}, CFG), alloc(nodes=1), CFG, (0, 1))
    assert unpinned.vms[0].cpuset == ()


def test_canonical_request_revalidates_to_the_same_request() -> None:
    request = validate({"img": "debian12", "vcpus": "2", "ram": "2G", "disk": ""}, CFG)
    raw = request.to_raw()
    assert "iocm_min_cores" not in raw and "disk" not in raw
    assert validate(raw, CFG) == request


def test_job_ids_with_undecodable_bytes_still_name_files() -> None:
    jobid = b"9\xff.srv".decode("utf-8", "surrogateescape")
    assert job_tag(jobid) == "9_.srv"
    assert job_number("x\udcff") == job_number("x\udcff")
