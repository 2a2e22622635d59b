"""What this host offers, and which carrier to use for one reader-holder pair.

The carrier is picked from what the *hardware* offers, not from which Python packages import: a
``ucxx`` that imports but whose UCX was built without verbs (the PyPI wheel) moves bytes over TCP
sockets, slower than our own TCP carrier, so importing it proves nothing. The rules, in order:

1. the destination is CUDA memory and both sides' UCX can move CUDA memory -> ``ucx``;
2. the holder is on this host (same host id) and shared memory works here -> ``shm``;
3. both sides have an RDMA transport: NIXL (bundles a UCX with verbs) if it imports -> ``nixl``,
   else ``ucx`` if this process's UCX lists a verbs transport -> ``ucx``;
4. otherwise -> ``tcp``, which every holder offers.

Every choice comes with a human-readable reason that the reader logs with the transfer, so a run
that silently fell back to TCP can never be mistaken for RDMA.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.transport.errors import CarrierUnavailable
from services.common.transport.meta import CARRIERS, CarrierAddress

logger = logging.getLogger(__name__)

# UCX transport names that ride on RDMA verbs (InfiniBand / RoCE): rc_verbs, rc_mlx5, dc_mlx5,
# ud_verbs, ud_mlx5 ... Anything else (tcp, posix, sysv, cma, self) is not RDMA.
_RDMA_TRANSPORT_PREFIXES = ("rc", "dc", "ud")
_CUDA_TRANSPORT_PREFIXES = ("cuda", "gdr")


@dataclass(frozen=True, kw_only=True)
class HostCapabilities:
    """Facts about this process's host that decide the carrier."""

    host_id: str
    """Processes with equal host ids can share memory and reach each other's Unix sockets."""
    shm: bool
    """memfd + Unix sockets with fd passing are available (Linux)."""
    rdma_devices: tuple[str, ...]
    """RDMA devices with an ACTIVE port under /sys/class/infiniband."""
    cuda_devices: int
    """CUDA devices torch sees."""
    ucx_importable: bool
    """``ucxx`` imports (says nothing about RDMA by itself)."""
    ucx_transports: tuple[str, ...]
    """Transports this process's UCX can use; probed only when RDMA or CUDA hardware is present."""
    nixl_importable: bool
    """``nixl`` imports."""

    @property
    def ucx_rdma(self) -> bool:
        """UCX here can move bytes over RDMA verbs."""
        return any(t.startswith(_RDMA_TRANSPORT_PREFIXES) for t in self.ucx_transports)

    @property
    def ucx_cuda(self) -> bool:
        """UCX here can move CUDA memory directly."""
        return self.cuda_devices > 0 and any(t.startswith(_CUDA_TRANSPORT_PREFIXES) for t in self.ucx_transports)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, for logs and benchmark reports."""
        return {
            "host_id": self.host_id,
            "shm": self.shm,
            "rdma_devices": list(self.rdma_devices),
            "cuda_devices": self.cuda_devices,
            "ucx_importable": self.ucx_importable,
            "ucx_transports": list(self.ucx_transports),
            "ucx_rdma": self.ucx_rdma,
            "nixl_importable": self.nixl_importable,
        }


def default_host_id() -> str:
    """Boot id + network namespace: equal exactly when two processes can share a memfd over an
    abstract Unix socket (same kernel, same network namespace), which is what ``shm`` needs.

    The hostname is not used: containers on one machine may share it without sharing sockets, and
    two machines may carry the same name.
    """
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        netns = os.stat("/proc/self/ns/net").st_ino
        return f"{boot_id}-{netns}"
    except OSError:
        return socket.gethostname()


def rdma_devices(sysfs_root: Path = Path("/sys")) -> tuple[str, ...]:
    """Names of RDMA devices that have at least one ACTIVE port."""
    root = sysfs_root / "class" / "infiniband"
    if not root.is_dir():
        return ()
    active: list[str] = []
    for device in sorted(root.iterdir()):
        ports = device / "ports"
        states = [p / "state" for p in ports.iterdir()] if ports.is_dir() else []
        # A state file reads like "4: ACTIVE"; a device without readable ports is not usable.
        if any(s.is_file() and "ACTIVE" in s.read_text() for s in states):
            active.append(device.name)
    return tuple(active)


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _cuda_device_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken driver install must not break probing
        logger.warning("CUDA probe failed; treating this host as CPU-only", exc_info=True)
        return 0


@functools.lru_cache(maxsize=8)
def probe_host(*, host_id: str | None = None, sysfs_root: Path = Path("/sys")) -> HostCapabilities:
    """Look at the hardware (cached per arguments).

    ``host_id`` overrides :func:`default_host_id`, e.g. to make processes on one machine behave as
    if they were on different hosts (then no shared memory is used between them).
    """
    devices = rdma_devices(sysfs_root)
    cuda = _cuda_device_count()
    ucx_ok = _importable("ucxx")
    transports: tuple[str, ...] = ()
    if ucx_ok and (devices or cuda):
        # Only worth initialising UCX when there is hardware it could use beyond sockets.
        from services.common.transport.ucx import active_transports

        try:
            transports = active_transports()
        except Exception:
            logger.warning("ucxx imports but UCX failed to initialise; not using ucx", exc_info=True)
    caps = HostCapabilities(
        host_id=host_id or default_host_id(),
        shm=sys.platform == "linux" and hasattr(os, "memfd_create") and hasattr(socket, "AF_UNIX"),
        rdma_devices=devices,
        cuda_devices=cuda,
        ucx_importable=ucx_ok,
        ucx_transports=transports,
        nixl_importable=_importable("nixl"),
    )
    if devices and ucx_ok and not caps.ucx_rdma:
        logger.warning(
            "RDMA devices %s found but this UCX has no verbs transport (transports: %s; the PyPI "
            "ucxx-cu12 wheel is built without verbs): ucx will not be chosen for RDMA",
            ",".join(devices),
            ",".join(transports) or "none",
        )
    logger.info("transport probe: %s", caps.to_dict())
    return caps


@dataclass(frozen=True)
class CarrierChoice:
    """The carrier picked for one transfer and why."""

    address: CarrierAddress
    reason: str

    @property
    def carrier(self) -> str:
        """Name of the chosen carrier."""
        return self.address.carrier


def _usable(local: HostCapabilities, offer: CarrierAddress) -> str | None:
    """Why ``offer`` cannot work from this process, or ``None`` if it can."""
    if offer.carrier == "shm":
        if not local.shm:
            return "shared memory is not available on this host"
        if offer.host != local.host_id:
            return f"holder is on host {offer.host!r}, this reader on {local.host_id!r}"
    if offer.carrier == "ucx" and not local.ucx_importable:
        return "ucxx is not installed here (install the 'ucx' extra)"
    if offer.carrier == "nixl" and not local.nixl_importable:
        return "nixl is not installed here"
    return None


def select_carrier(
    local: HostCapabilities,
    offers: Sequence[CarrierAddress],
    *,
    dst_is_cuda: bool = False,
    allowed: Iterable[str] | None = None,
    require: str | None = None,
) -> CarrierChoice:
    """Pick the carrier for reading from a holder that offers ``offers`` (see the module docstring).

    ``allowed`` restricts the candidates; ``require`` names the one carrier to use (tests,
    benchmarks) and raises :class:`CarrierUnavailable` with the reason when it cannot work.
    """
    allowed_set = set(CARRIERS if allowed is None else allowed)
    by_carrier = {o.carrier: o for o in offers if o.carrier in allowed_set}
    if require is not None:
        offer = by_carrier.get(require)
        if offer is None:
            raise CarrierUnavailable(
                f"carrier {require!r} requested but the holder offers {sorted(o.carrier for o in offers)}"
                + ("" if require in allowed_set else f" and this reader allows {sorted(allowed_set)}")
            )
        problem = _usable(local, offer)
        if problem:
            raise CarrierUnavailable(f"carrier {require!r} requested but {problem}")
        return CarrierChoice(offer, f"{require} requested explicitly")

    ucx = by_carrier.get("ucx")
    if dst_is_cuda and ucx and ucx.cuda and local.ucx_cuda and not _usable(local, ucx):
        return CarrierChoice(ucx, "CUDA destination and CUDA-capable UCX on both sides")
    shm = by_carrier.get("shm")
    if shm and not _usable(local, shm):
        return CarrierChoice(shm, f"same host ({local.host_id}): shared memory")
    nixl = by_carrier.get("nixl")
    if nixl and nixl.rdma and local.rdma_devices and not _usable(local, nixl):
        return CarrierChoice(nixl, f"RDMA on both sides (devices {','.join(local.rdma_devices)}): nixl")
    if ucx and ucx.rdma and local.ucx_rdma and not _usable(local, ucx):
        rdma = [t for t in local.ucx_transports if t.startswith(_RDMA_TRANSPORT_PREFIXES)]
        return CarrierChoice(ucx, f"RDMA on both sides (UCX transports {','.join(rdma)}): ucx")
    tcp = by_carrier.get("tcp")
    if tcp:
        why = []
        if shm:
            why.append(_usable(local, shm) or "")
        if not (local.rdma_devices or local.cuda_devices):
            why.append("no RDMA device or GPU on this host")
        elif ucx or nixl:
            why.append("no RDMA/CUDA transport on both sides")
        return CarrierChoice(tcp, "tcp" + (f" ({'; '.join(w for w in why if w)})" if any(why) else ""))
    raise CarrierUnavailable(
        f"no usable carrier: holder offers {sorted(o.carrier for o in offers)}, this reader allows "
        f"{sorted(allowed_set)}"
    )
