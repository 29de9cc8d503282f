"""NoCloud seeds: golden files, cloud-init's own schema and network parser, the ISO, the
guest-side scripts run for real, and hostile user metadata (including fuzzing).

Regenerate the golden files with ``VMW_REGEN_GOLDEN=1 python -m pytest src/test/test_seed.py``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# pytest puts this directory on sys.path (src/test is not a package): share the job fixture.
from test_render import check_golden, job_plan, site_config

from vmwrapper import config, seed
from vmwrapper.config import Config
from vmwrapper.errors import NodeError, PermanentJobError, RequestError, VmWrapperError
from vmwrapper.keys import KeyPair
from vmwrapper.plan import JobPlan, VmSpec
from vmwrapper.vmfiles import VmPaths, write_iso

NONCE = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
SHARES = (("/home", "vmwshare0"), ("/scratch", "vmwshare1"))
# Placeholders shaped like the real thing: the seed only carries them.
PRIVATE = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAA{n}\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
USER_KEY = KeyPair(
    PRIVATE.format(n="user"), "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIuser vm-wrapper-job-4711"
)


def host_key(index: int) -> KeyPair:
    return KeyPair(
        PRIVATE.format(n=f"host{index}"), f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIh{index} vm{index}"
    )


def known_hosts(plan: JobPlan) -> tuple[str, ...]:
    return tuple(
        f"{vm.hostname},{vm.address} {host_key(vm.index).public_openssh}" for vm in plan.all_vms
    )


def seed_input(plan: JobPlan, vm: VmSpec, **changes: Any) -> seed.SeedInput:
    base = seed.SeedInput(
        nonce=NONCE, user_public_key=USER_KEY.public_openssh, host_key=host_key(vm.index),
        user_private_key=USER_KEY.private_openssh, known_hosts=known_hosts(plan), shares=SHARES,
        user_metadata={"packages": ["htop", "openmpi-bin"], "package_update": False},
    )  # fmt: skip
    return replace(base, **changes)


# Rank 0: defaults (static addresses, no gateway, no sudo). Rank 1: a site with a gateway,
# name servers and guest sudo, and no shares or metadata.
SITE_1 = "VM_GATEWAY=10.77.0.1\nVM_DNS='10.77.0.2 10.77.0.3'\nALLOW_GUEST_SUDO=true\n"


def case(index: int, tmp_path: Path) -> tuple[VmSpec, JobPlan, Config, seed.SeedInput]:
    cfg = site_config(tmp_path, SITE_1 if index >= 2 else "")
    plan = job_plan(cfg, rank=index // 2)
    vm = next(v for v in plan.vms if v.index == index)
    inp = seed_input(plan, vm)
    if index >= 2:
        inp = replace(inp, shares=(), user_metadata={}, user_private_key="")
    return vm, plan, cfg, inp


def files_of(index: int, tmp_path: Path) -> dict[str, str]:
    return seed.seed_files(*case(index, tmp_path))


def user_data_of(index: int, tmp_path: Path) -> dict[str, Any]:
    text = files_of(index, tmp_path)["user-data"]
    assert text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


# -- golden files and cloud-init's own checks ------------------------------------------------


@pytest.mark.parametrize("index", range(4))
@pytest.mark.parametrize("name", ["meta-data", "user-data", "network-config"])
def test_seed_files_match_golden(index: int, name: str, tmp_path: Path) -> None:
    check_golden(f"seed-vm{index}.{name}", files_of(index, tmp_path)[name])


@pytest.mark.needs("cloud-init")
@pytest.mark.parametrize("index", range(4))
def test_user_data_passes_cloud_init_schema(index: int, tmp_path: Path) -> None:
    path = tmp_path / "user-data"
    path.write_text(files_of(index, tmp_path)["user-data"], encoding="utf-8")
    result = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout


def rendered_network(index: int, tmp_path: Path) -> str:
    """cloud-init's own v2 parser and networkd renderer (what the Debian guest runs)."""
    from cloudinit.net import network_state, networkd

    state = network_state.parse_net_config_data(
        yaml.safe_load(files_of(index, tmp_path)["network-config"])
    )
    target = tmp_path / "root"
    networkd.Renderer({}).render_network_state(state, target=str(target))
    (unit,) = (target / "etc/systemd/network").iterdir()
    return unit.read_text()


@pytest.mark.needs("cloud-init")
def test_network_config_parses_and_renders_in_cloud_init(tmp_path: Path) -> None:
    plain, routed = rendered_network(0, tmp_path / "a"), rendered_network(3, tmp_path / "b")
    vm0 = job_plan(config.load([]), 0).vms[0]
    assert f"MACAddress={vm0.mac}" in plain and "Name=eth0" in plain
    assert f"Address={vm0.address}/{vm0.prefix}" in plain
    assert "Gateway" not in plain and "DNS" not in plain
    assert "Gateway=10.77.0.1" in routed
    assert "DNS=10.77.0.2 10.77.0.3" in routed


def test_network_config_dhcp_when_not_static(tmp_path: Path) -> None:
    cfg = site_config(tmp_path, "STATIC_IP_MAPPING=false\n")
    plan = job_plan(cfg, 0)
    nic = seed.network_config(plan.vms[0], plan, cfg)["ethernets"]["eth0"]
    assert nic == {"match": {"macaddress": plan.vms[0].mac}, "set-name": "eth0", "dhcp4": True}


def test_meta_data_instance_id_is_new_per_boot(tmp_path: Path) -> None:
    vm = job_plan(config.load([]), 0).vms[1]
    first, second = seed.meta_data(vm, NONCE), seed.meta_data(vm, "another-nonce-1234")
    assert first["instance-id"] != second["instance-id"]
    assert NONCE in first["instance-id"] and first["local-hostname"] == "vm1"


# -- what the user-data says ------------------------------------------------------------------


def test_user_group_and_login_settings(tmp_path: Path) -> None:
    data = user_data_of(0, tmp_path)
    (user,) = data["users"]
    assert (user["name"], user["uid"], user["primary_group"]) == ("alice", 2000, "2000")
    assert user["lock_passwd"] is True and user["shell"] == "/bin/bash"
    assert "sudo" not in user and "ssh_authorized_keys" not in user
    assert data["bootcmd"] == [["sh", "-c", seed.GROUP_SCRIPT, "vmw-group", "2000", "alice"]]
    assert (data["disable_root"], data["ssh_pwauth"], data["locale"]) == (True, False, "false")
    assert user_data_of(2, tmp_path)["users"][0]["sudo"] == "ALL=(ALL) NOPASSWD:ALL"


def test_host_key_job_key_hosts_and_known_hosts(tmp_path: Path) -> None:
    data = user_data_of(1, tmp_path)
    assert data["ssh_keys"] == {
        "ed25519_private": host_key(1).private_openssh,
        "ed25519_public": host_key(1).public_openssh,
    }
    assert data["ssh_deletekeys"] is True
    files = {f["path"]: f for f in data["write_files"]}
    assert (
        files["/etc/vm-wrapper/authorized_keys/alice"]["content"] == USER_KEY.public_openssh + "\n"
    )
    assert (
        "AuthorizedKeysFile /etc/vm-wrapper/authorized_keys/%u"
        in files["/etc/ssh/sshd_config.d/00-vm-wrapper.conf"]["content"]
    )
    hosts = files["/etc/hosts"]["content"].splitlines()
    plan = job_plan(config.load([]), 0)
    assert [f"{vm.address} {vm.hostname}" for vm in plan.all_vms] == hosts[2:]
    assert files["/etc/ssh/ssh_known_hosts"]["content"].splitlines() == list(known_hosts(plan))
    key = files["/etc/vm-wrapper/id_ed25519"]
    assert (key["owner"], key["permissions"], key["defer"]) == ("alice", "0600", True)


def test_runcmd_mounts_shares_and_signals_ready_last(tmp_path: Path) -> None:
    runcmd = user_data_of(0, tmp_path)["runcmd"]
    assert ["mount", "-t", "9p", "-o", seed.NINEP_OPTIONS, "vmwshare0", "/home"] in runcmd
    assert runcmd[-2] == ["systemctl", "reload-or-restart", "ssh"]
    assert runcmd[-1][:9] == [
        "sh",
        "-c",
        seed.READY_SCRIPT,
        "vmw-ready",
        seed.READY_PORT,
        NONCE,
        "ssh",
        "alice",
        "2000",
    ]
    assert runcmd[-1][9:] == ["/home", "/scratch"]
    assert all(isinstance(c, list) for c in runcmd)  # argv lists, never shell strings


def test_redhat_guests_restart_sshd(tmp_path: Path) -> None:
    _vm, plan, cfg, inp = case(0, tmp_path)
    plan = replace(plan, request=replace(plan.request, distro="redhat"))
    assert seed.user_data(plan, cfg, inp)["runcmd"][-2][-1] == "sshd"


# -- the two guest scripts, run for real with cloud-init's own shellify ------------------------


def fake_tools(tmp_path: Path, tools: dict[str, str]) -> dict[str, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, body in tools.items():
        (bindir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bindir / name).chmod(0o755)
    return {"PATH": f"{bindir}:/usr/bin:/bin"}


def run_as_cloud_init(command: list[str], env: dict[str, str]) -> None:
    from cloudinit.util import shellify

    subprocess.run(["sh", "-c", shellify([command])], env=env, check=True, timeout=10)


@pytest.mark.needs("cloud-init")
@pytest.mark.parametrize(
    ("sshd", "mounted", "expect"), [(0, 0, "READY"), (3, 0, "FAILED"), (0, 1, "FAILED")]
)
def test_ready_script_reports_the_truth(
    sshd: int, mounted: int, expect: str, tmp_path: Path
) -> None:
    env = fake_tools(tmp_path, {"systemctl": f"exit {sshd}", "mountpoint": f"exit {mounted}"})
    port = tmp_path / "port"
    me = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    command = [
        "sh",
        "-c",
        seed.READY_SCRIPT,
        "vmw-ready",
        str(port),
        NONCE,
        "ssh",
        me,
        str(os.getuid()),
        "/home",
    ]
    run_as_cloud_init(command, env)
    assert port.read_text() == f"VMW-{expect} {NONCE}\n"


@pytest.mark.needs("cloud-init")
@pytest.mark.parametrize(("exists", "expect"), [(True, ""), (False, "-g 2000 alice\n")])
def test_group_script_creates_only_a_missing_gid(exists: bool, expect: str, tmp_path: Path) -> None:
    log = tmp_path / "groupadd.log"
    env = fake_tools(
        tmp_path, {"getent": f"exit {0 if exists else 2}", "groupadd": f'echo "$@" >> {log}'}
    )
    run_as_cloud_init(["sh", "-c", seed.GROUP_SCRIPT, "vmw-group", "2000", "alice"], env)
    assert (log.read_text() if log.exists() else "") == expect


# -- the ISO -----------------------------------------------------------------------------------


def iso_text(iso: Path, name: str) -> str:
    return subprocess.run(
        ["isoinfo", "-R", "-i", str(iso), "-x", f"/{name}"], capture_output=True, check=True
    ).stdout.decode()


@pytest.mark.needs("genisoimage", "isoinfo")
def test_write_seed_makes_a_private_cidata_iso(tmp_path: Path) -> None:
    vm, plan, cfg, inp = case(0, tmp_path)
    paths = VmPaths.for_vm(vm, tmp_path, tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    paths.seed.symlink_to(victim)  # a planted link is replaced, never followed
    seed.write_seed(
        vm=vm, plan=plan, config=cfg, paths=paths, nonce=NONCE, user_public_key=inp.user_public_key,
        host_key=inp.host_key, user_private_key=inp.user_private_key, known_hosts=inp.known_hosts,
        shares=inp.shares, user_metadata=inp.user_metadata,
    )  # fmt: skip
    assert victim.read_text() == "untouched"
    info = os.lstat(paths.seed)
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    label = subprocess.run(
        ["isoinfo", "-d", "-i", str(paths.seed)], capture_output=True, text=True, check=True
    )
    assert "Volume id: cidata" in label.stdout
    for name, text in seed.seed_files(vm, plan, cfg, inp).items():
        assert iso_text(paths.seed, name) == text
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["victim", paths.seed.name])


@pytest.mark.needs("genisoimage", "root")
def test_write_iso_hands_the_seed_to_qemus_user(tmp_path: Path) -> None:
    iso = tmp_path / "seed.iso"
    write_iso(iso, {"meta-data": "{}\n"}, owner=(64055, 64056))
    info = os.stat(iso)
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (64055, 64056, 0o600)


@pytest.mark.needs("genisoimage")
def test_write_iso_refuses_a_shared_directory(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(NodeError, match="writable only by us"):
        write_iso(shared / "seed.iso", {"meta-data": "{}\n"})
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    with pytest.raises(NodeError):
        write_iso(link / "seed.iso", {"meta-data": "{}\n"})


# -- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["runcmd", "users", "bootcmd", "write_files", "ssh_keys", "mounts", 7]
)
def test_disallowed_metadata_keys_are_refused_by_name(key: object, tmp_path: Path) -> None:
    _vm, plan, cfg, inp = case(0, tmp_path)
    with pytest.raises(RequestError) as err:
        seed.user_data(plan, cfg, replace(inp, user_metadata={key: ["x"]}))
    assert repr(key) in str(err.value) and "not allowed" in str(err.value)
    assert "\n" not in str(err.value)


def test_metadata_can_never_replace_our_keys_even_if_allowed(tmp_path: Path) -> None:
    cfg = site_config(tmp_path, "USER_METADATA_KEYS='packages runcmd'\n")
    plan = job_plan(cfg, 0)
    inp = seed_input(plan, plan.vms[0], user_metadata={"runcmd": [["reboot"]]})
    with pytest.raises(RequestError, match="'runcmd' is set by vm-wrapper"):
        seed.user_data(plan, cfg, inp)


def test_metadata_must_be_plain_bounded_data(tmp_path: Path) -> None:
    _vm, plan, cfg, inp = case(0, tmp_path)
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    wide: list[Any] = ["x"] * 10
    for _ in range(12):  # 10**12 values if expanded: shared YAML anchors do exactly this
        wide = [wide] * 10
    deep: list[Any] = []
    for _ in range(40):
        deep = [deep]
    for value in (cyclic, wide, deep, object(), {1, 2}, {"a": b"x".decode}):
        with pytest.raises(RequestError, match="plain YAML data"):
            seed.user_data(plan, cfg, replace(inp, user_metadata={"packages": value}))


def test_metadata_strings_cannot_inject_yaml(tmp_path: Path) -> None:
    vm, plan, cfg, inp = case(0, tmp_path)
    evil = "htop\nruncmd: [[reboot]]\n#cloud-config\n- {users: root}\n'\"&*!|>%@`"
    files = seed.seed_files(vm, plan, cfg, replace(inp, user_metadata={"packages": [evil]}))
    data = yaml.safe_load(files["user-data"])
    assert data["packages"] == [evil]
    assert data["runcmd"] == seed.user_data(plan, cfg, inp)["runcmd"]


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("user", "../../etc/x", PermanentJobError),
        ("user", "al ice", PermanentJobError),
        ("user", "alice\nroot", PermanentJobError),
        ("uid", 0, PermanentJobError),
        ("uid", 999, PermanentJobError),
        ("gid", 27, PermanentJobError),  # Debian's sudo group
        ("home", "/home/../root", PermanentJobError),
    ],
)
def test_unusable_accounts_are_refused(
    field: str, value: object, error: type, tmp_path: Path
) -> None:
    _vm, plan, cfg, inp = case(0, tmp_path)
    plan = replace(plan, alloc=replace(plan.alloc, **{field: value}))
    with pytest.raises(error):
        seed.user_data(plan, cfg, inp)


def test_gid_100_users_is_allowed(tmp_path: Path) -> None:
    _vm, plan, cfg, inp = case(0, tmp_path)
    plan = replace(plan, alloc=replace(plan.alloc, gid=100))
    assert seed.user_data(plan, cfg, inp)["users"][0]["primary_group"] == "100"


@pytest.mark.parametrize(
    "changes",
    [
        {"nonce": "short"},
        {"nonce": "x; reboot #" + "a" * 10},
        {"user_public_key": "ssh-ed25519 AAAA\nssh-ed25519 BBBB"},
        {"known_hosts": ("vm0 ssh-ed25519 AAAA\n",)},
        {"shares": (("/home", "tag with space"),)},
        {"shares": (("relative", "t"),)},
    ],
)
def test_malformed_caller_inputs_are_refused(changes: dict[str, Any], tmp_path: Path) -> None:
    _vm, plan, cfg, inp = case(0, tmp_path)
    with pytest.raises(NodeError):
        seed.user_data(plan, cfg, replace(inp, **changes))


# -- fuzzing -----------------------------------------------------------------------------------

SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
KEYS = (
    st.sampled_from(["packages", "package_update", "runcmd", "users", "ssh"])
    | st.text()
    | st.integers()
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(metadata=st.dictionaries(KEYS, VALUES, max_size=4))
def test_fuzzed_metadata_gives_valid_yaml_or_our_error(
    metadata: dict[Any, Any], tmp_path: Path
) -> None:
    vm, plan, cfg, inp = case(0, tmp_path)
    try:
        files = seed.seed_files(vm, plan, cfg, replace(inp, user_metadata=metadata))
    except VmWrapperError as err:
        assert isinstance(err, RequestError) and "\n" not in str(err)
        return
    data = yaml.safe_load(files["user-data"])
    assert set(metadata) <= {"packages", "package_update"}
    for key, value in metadata.items():
        assert data[key] == value
    assert data["runcmd"][-1][3] == "vmw-ready"


# -- real guests -------------------------------------------------------------------------------
# Boots the admin image (tools/build-guest-image) with our XML and seeds under QEMU TCG through
# qemu:///embed, inside a network namespace of its own with bridge vmwbr0: nothing touches the
# host's network or a shared libvirtd. About 70-100 s for two guests.

IMAGE_POOL = "/var/lib/vm-wrapper/images"
READY_DEADLINE = 400


@pytest.mark.slow
@pytest.mark.needs(
    "root", "unshare", "ip", "ssh", "qemu-system-x86_64", "genisoimage", "qemu-img",
    f"{IMAGE_POOL}/debian12.qcow2",
)  # fmt: skip
def test_real_guests_signal_ready_and_accept_the_job_key() -> None:
    # Not tmp_path: pytest's base directory is 0700 and QEMU's user must reach our files.
    work = Path(tempfile.mkdtemp(prefix="vmw-boot-", dir="/var/tmp"))
    work.chmod(0o711)
    src = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{src}:{src / 'test'}"}
    try:
        run = subprocess.run(
            ["unshare", "-n", sys.executable, __file__, str(work)],
            capture_output=True, text=True, timeout=READY_DEADLINE + 120, env=env, check=False,
        )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-4000:]
    for line in ("READY vmw-9001.e2e-0", "READY vmw-9001.e2e-1", "uid=2000(alice) gid=2000(alice)"):
        assert line in report, report[-4000:]
    assert "\nvm1\n" in report and "NO-SUDO" in report and "status: done" in report


def _boot_two_guests(work: Path) -> None:  # runs as __main__ inside the private netns
    import pwd
    import secrets
    import threading
    import time

    import libvirt

    from vmwrapper import disks, keys, render, xmlcheck

    for args in (
        ["link", "set", "lo", "up"],
        ["link", "add", "vmwbr0", "type", "bridge"],
        ["addr", "add", "10.77.0.1/16", "dev", "vmwbr0"],
        ["link", "set", "vmwbr0", "up"],
    ):
        subprocess.run(["ip", *args], check=True)  # fmt: skip
    qemu_user = pwd.getpwnam("libvirt-qemu")
    owner = (qemu_user.pw_uid, qemu_user.pw_gid)
    cfg = config.load([])
    plan = job_plan(cfg, 0, jobid="9001.e2e")  # this node's two VMs, small and unpinned
    vms = tuple(replace(vm, vcpus=1, ram_mb=1024, cpuset=()) for vm in plan.vms)
    alloc = replace(plan.alloc, home=str(work / "home" / "alice"))
    plan = replace(plan, vms=vms, all_vms=vms, alloc=alloc)
    (work / "home" / "alice").mkdir(parents=True)
    os.chown(work / "home" / "alice", 2000, 2000)
    secret = secrets.token_bytes(32)
    scope = keys.job_scope("alice", "9001.e2e", secrets.token_hex(16))
    user_key = keys.user_key(secret, scope)
    known = keys.known_hosts_lines(
        secret, scope, [(v.index, v.hostname, v.address) for v in plan.vms]
    )
    image = disks.resolve_admin_image("debian12", IMAGE_POOL)
    shares = ((str(work / "home"), "vmwshare0"),)
    libvirt.virEventRegisterDefaultImpl()
    threading.Thread(
        target=lambda: [libvirt.virEventRunDefaultImpl() for _ in iter(int, 1)], daemon=True
    ).start()
    libvirt.registerErrorHandler(lambda *_: None, None)
    conn = libvirt.open(f"qemu:///embed?root={work / 'libvirt'}")
    watch = {}
    for vm in plan.vms:
        paths = VmPaths.for_vm(vm, work, work)
        disks.create_overlay(image, paths.overlay, owner)
        nonce = secrets.token_hex(16)
        seed.write_seed(
            vm=vm, plan=plan, config=cfg, paths=paths, nonce=nonce,
            user_public_key=user_key.public_openssh, user_private_key=user_key.private_openssh,
            host_key=keys.host_key(secret, scope, vm.index), known_hosts=known, shares=shares,
            owner=owner,
        )  # fmt: skip
        xml = render.render_domain(vm, plan, paths, "tcg", config=cfg, image=image, shares=shares)
        xmlcheck.validate_domain(xml)
        conn.createXML(xml, 0)
        watch[vm.name] = (paths, f"VMW-READY {nonce}")
    try:
        deadline = time.monotonic() + READY_DEADLINE
        while watch and time.monotonic() < deadline:
            for name, (paths, line) in list(watch.items()):
                if paths.ready.exists() and line in paths.ready.read_text():
                    print("READY", name, flush=True)
                    del watch[name]
            time.sleep(1)
        assert not watch, f"not ready: {sorted(watch)}"
        keyfile, known_file = work / "id", work / "known_hosts"
        keyfile.write_text(user_key.private_openssh)
        keyfile.chmod(0o600)
        known_file.write_text("\n".join(known) + "\n")
        remote = ("id; ssh -o BatchMode=yes vm1 hostname; sudo -n true 2>/dev/null && echo SUDO "
                  "|| echo NO-SUDO; cloud-init status")  # fmt: skip
        ssh = subprocess.run(
            ["ssh", "-i", str(keyfile), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
             "-o", f"UserKnownHostsFile={known_file}", "-o", "ConnectTimeout=20",
             f"alice@{plan.vms[0].address}", remote],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        print(ssh.stdout, ssh.stderr, flush=True)
        assert ssh.returncode == 0
    finally:
        for name in (vm.name for vm in plan.vms):
            with contextlib.suppress(libvirt.libvirtError):
                conn.lookupByName(name).destroy()


if __name__ == "__main__":
    _boot_two_guests(Path(sys.argv[1]))
