"""Pure planning: request + config + allocation -> every VM of the job, deterministically.

Names, MACs and addresses follow from the job id, the node rank and the VM slot alone, so
every node (and the job wrapper) computes the same answer without asking anyone.

Addresses: VM_ADDRESS_POOL is cut into blocks of /VM_ADDRESS_BLOCK. Block 0 is kept for the
hosts (bridge address, gateway). A job's block is 1 + (job number mod (blocks - 1)); job
numbers are sequential, so two running jobs share a block only if their numbers are a whole
cycle apart (1023 jobs with the defaults). Guests use the pool's prefix, so all VMs of all
jobs share one L2 subnet, like the cluster network they stand in for.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass

from vmwrapper.config import Config
from vmwrapper.errors import PermanentJobError
from vmwrapper.request import VmRequest

_JOB_NUMBER_RE = re.compile(r"([0-9]{1,12})(?:\.|\Z)")
_UNSAFE_RE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class Allocation:
    """What the batch system gave this job, as far as planning needs it."""

    jobid: str
    user: str
    uid: int
    gid: int
    home: str
    num_nodes: int
    rank: int  # this node's rank: 0 is the mother superior / first node
    cores_on_node: int  # cores the job holds on this node


@dataclass(frozen=True)
class VmSpec:
    name: str  # libvirt domain name, unique on the host
    hostname: str  # guest host name, unique within the job
    index: int  # rank * vms_per_node + slot
    rank: int
    slot: int
    vcpus: int
    ram_mb: int
    mac: str
    address: str
    prefix: int
    cpuset: tuple[int, ...]  # host cores for vCPU pinning; empty: no pinning


@dataclass(frozen=True)
class JobPlan:
    alloc: Allocation
    request: VmRequest
    tag: str  # file-system and domain-name safe job id
    vms: tuple[VmSpec, ...]  # this node's VMs
    all_vms: tuple[VmSpec, ...]  # every VM of the job, in index order
    gateway: str
    dns: tuple[str, ...]


def job_tag(jobid: str) -> str:
    """A job id made safe for file and domain names: '12[3].srv' -> '12_3_.srv'."""
    tag = _UNSAFE_RE.sub("_", jobid)[:48].lstrip(".")  # also replaces surrogates from argv
    if not tag:
        raise PermanentJobError(f"job id {jobid[:40]!r} cannot name files")
    return tag


def job_number(jobid: str) -> int:
    """Sequential number of a plain job id; a stable hash for anything else (arrays)."""
    match = _JOB_NUMBER_RE.match(jobid)
    if match:
        return int(match.group(1))
    digest = hashlib.sha256(jobid.encode("utf-8", "surrogateescape")).hexdigest()
    return int(digest[:12], 16)


def job_addresses(jobid: str, count: int, config: Config) -> tuple[list[str], int]:
    """`count` guest addresses of a job and the prefix length guests use."""
    pool = ipaddress.IPv4Network(config.VM_ADDRESS_POOL)
    blocks = list(pool.subnets(new_prefix=config.VM_ADDRESS_BLOCK))
    usable = blocks[0].num_addresses - 2
    if count > usable:
        raise PermanentJobError(
            f"the job asks for {count} VMs; at most {usable} fit in one address block "
            f"(VM_ADDRESS_BLOCK=/{config.VM_ADDRESS_BLOCK})"
        )
    block = blocks[1 + job_number(jobid) % (len(blocks) - 1)]
    first = int(block.network_address) + 1
    return [str(ipaddress.IPv4Address(first + i)) for i in range(count)], pool.prefixlen


def mac_for(address: str) -> str:
    """Locally administered unicast MAC derived from the (unique) IPv4 address."""
    octets = ipaddress.IPv4Address(address).packed
    return "02:56:" + ":".join(f"{b:02x}" for b in octets)


def make_plan(
    request: VmRequest, alloc: Allocation, config: Config, host_cpus: tuple[int, ...]
) -> JobPlan:
    """Every VM of the job; this node's are those of rank ``alloc.rank``."""
    check_fits(request, alloc, config)
    per_node = request.vms_per_node
    total = alloc.num_nodes * per_node
    addresses, prefix = job_addresses(alloc.jobid, total, config)
    tag = job_tag(alloc.jobid)
    specs = tuple(
        VmSpec(
            name=f"vmw-{tag}-{index}",
            hostname=f"vm{index}",
            index=index,
            rank=index // per_node,
            slot=index % per_node,
            vcpus=request.vcpus,
            ram_mb=request.ram_mb,
            mac=mac_for(addresses[index]),
            address=addresses[index],
            prefix=prefix,
            cpuset=_cpuset(request, index % per_node, config, host_cpus),
        )
        for index in range(total)
    )
    return JobPlan(
        alloc=alloc,
        request=request,
        tag=tag,
        vms=tuple(vm for vm in specs if vm.rank == alloc.rank),
        all_vms=specs,
        gateway=config.VM_GATEWAY,
        dns=config.VM_DNS,
    )


def check_fits(request: VmRequest, alloc: Allocation, config: Config) -> None:
    """The node's allocation must hold the VMs plus the host reserve."""
    if not 0 <= alloc.rank < alloc.num_nodes:
        raise PermanentJobError(f"node rank {alloc.rank} is outside 0..{alloc.num_nodes - 1}")
    need = request.host_cores_needed(config)
    if alloc.cores_on_node < need:
        raise PermanentJobError(
            f"the job holds {alloc.cores_on_node} cores on this node but its VMs need {need} "
            f"({config.HOST_OS_CORE_COUNT} for the host + {request.vcpus} vCPUs x "
            f"{request.vms_per_node} VMs); ask for ppn={need}"
        )


def _cpuset(
    request: VmRequest, slot: int, config: Config, host_cpus: tuple[int, ...]
) -> tuple[int, ...]:
    if not request.vcpu_pinning or not host_cpus:
        return ()
    usable = host_cpus[config.HOST_OS_CORE_COUNT :] or host_cpus
    start = slot * request.vcpus
    return tuple(usable[(start + i) % len(usable)] for i in range(request.vcpus))
