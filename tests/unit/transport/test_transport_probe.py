"""The hardware probe and the carrier choice it drives."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.transport import CarrierAddress, CarrierUnavailable, HostCapabilities, select_carrier
from services.common.transport.holder import default_carriers
from services.common.transport.probe import default_host_id, probe_host, rdma_devices


def caps(**overrides: object) -> HostCapabilities:
    fields: dict[str, object] = {
        "host_id": "host-a",
        "shm": True,
        "rdma_devices": (),
        "cuda_devices": 0,
        "ucx_importable": True,
        "ucx_transports": (),
        "nixl_importable": False,
    }
    fields.update(overrides)
    return HostCapabilities(**fields)  # type: ignore[arg-type]


def offers(host: str = "host-a", *, ucx_rdma: bool = False, ucx_cuda: bool = False) -> list[CarrierAddress]:
    return [
        CarrierAddress(carrier="tcp", address="10.0.0.1:4000", host=host),
        CarrierAddress(carrier="shm", address="@seg", host=host),
        CarrierAddress(carrier="ucx", address="10.0.0.1:4001", host=host, rdma=ucx_rdma, cuda=ucx_cuda),
    ]


def _fake_ib_device(root: Path, name: str, state: str) -> None:
    port = root / "class" / "infiniband" / name / "ports" / "1"
    port.mkdir(parents=True)
    (port / "state").write_text(state)


def test_rdma_devices_count_only_active_ports(tmp_path: Path) -> None:
    _fake_ib_device(tmp_path, "mlx5_0", "4: ACTIVE\n")
    _fake_ib_device(tmp_path, "mlx5_1", "1: DOWN\n")
    assert rdma_devices(tmp_path) == ("mlx5_0",)
    assert rdma_devices(tmp_path / "nowhere") == ()


def test_probe_of_this_host(tmp_path: Path) -> None:
    found = probe_host(host_id="pinned", sysfs_root=tmp_path)
    assert found.host_id == "pinned"
    assert found.rdma_devices == ()
    # Without RDMA or GPUs UCX is not even initialised: importing it proves nothing.
    if found.cuda_devices == 0:
        assert found.ucx_transports == ()
    assert default_host_id() == default_host_id()
    assert set(found.to_dict()) >= {"host_id", "rdma_devices", "ucx_rdma"}


def test_same_host_reads_through_shared_memory() -> None:
    choice = select_carrier(caps(), offers())
    assert choice.carrier == "shm"
    assert "same host" in choice.reason


def test_other_host_without_rdma_uses_tcp_and_says_why() -> None:
    choice = select_carrier(caps(), offers(host="host-b", ucx_rdma=True))
    assert choice.carrier == "tcp"
    assert "host-b" in choice.reason and "no RDMA device" in choice.reason


def test_rdma_devices_without_a_verbs_ucx_do_not_pass_as_rdma() -> None:
    # The PyPI ucxx wheel: imports fine, RDMA NICs present, but UCX only has socket transports.
    local = caps(rdma_devices=("mlx5_0",), ucx_transports=("cma", "posix", "tcp"))
    assert not local.ucx_rdma
    choice = select_carrier(local, offers(host="host-b", ucx_rdma=True))
    assert choice.carrier == "tcp"
    assert "no RDMA/CUDA transport" in choice.reason


def test_rdma_on_both_sides_uses_ucx() -> None:
    local = caps(rdma_devices=("mlx5_0",), ucx_transports=("rc_mlx5", "tcp", "ud_verbs"))
    choice = select_carrier(local, offers(host="host-b", ucx_rdma=True))
    assert choice.carrier == "ucx"
    assert "rc_mlx5" in choice.reason
    # ...but not when the holder's side has no RDMA.
    assert select_carrier(local, offers(host="host-b", ucx_rdma=False)).carrier == "tcp"


def test_nixl_preferred_for_rdma_when_installed() -> None:
    local = caps(rdma_devices=("mlx5_0",), nixl_importable=True)
    nixl = CarrierAddress(carrier="nixl", address="10.0.0.1:4002", host="host-b", rdma=True)
    assert select_carrier(local, [*offers(host="host-b"), nixl]).carrier == "nixl"


def test_cuda_destination_prefers_cuda_capable_ucx() -> None:
    local = caps(cuda_devices=1, ucx_transports=("cuda_copy", "cuda_ipc", "tcp"))
    assert select_carrier(local, offers(ucx_cuda=True), dst_is_cuda=True).carrier == "ucx"
    assert select_carrier(local, offers(ucx_cuda=True), dst_is_cuda=False).carrier == "shm"


def test_required_carrier_must_really_work() -> None:
    with pytest.raises(CarrierUnavailable, match="host-b"):
        select_carrier(caps(), offers(host="host-b"), require="shm")
    with pytest.raises(CarrierUnavailable, match="ucxx is not installed"):
        select_carrier(caps(ucx_importable=False), offers(), require="ucx")
    with pytest.raises(CarrierUnavailable, match="offers"):
        select_carrier(caps(), offers(), require="nixl")
    assert select_carrier(caps(), offers(), require="tcp").reason == "tcp requested explicitly"


def test_allowed_carriers_restrict_the_choice() -> None:
    assert select_carrier(caps(), offers(), allowed=["tcp"]).carrier == "tcp"
    with pytest.raises(CarrierUnavailable, match="no usable carrier"):
        select_carrier(caps(), offers(host="host-b"), allowed=["shm"])


def test_holder_defaults_follow_the_hardware() -> None:
    assert default_carriers(caps()) == ["tcp", "shm"]
    assert default_carriers(caps(rdma_devices=("mlx5_0",), ucx_transports=("tcp",))) == ["tcp", "shm"]
    assert default_carriers(caps(rdma_devices=("mlx5_0",), ucx_transports=("rc_mlx5",))) == ["tcp", "shm", "ucx"]
