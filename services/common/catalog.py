"""The six services in one place: names, proto services, env prefixes, start order, dependencies.

``seedctl``, the deploy checks and the services' own entry points read this table, so a new service
or a renamed variable is changed once.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from services.common.config import ServerConfig


@dataclass(frozen=True)
class ServiceInfo:
    """One service: how it is named, configured and started."""

    name: str
    """Folder under services/ and the name in the registry and in seedctl."""
    proto_service: str
    """Full name of its gRPC service."""
    config_class: str
    """Name of the frozen config dataclass in ``services/<name>/config.py``."""
    depends_on: tuple[str, ...] = ()
    """Services that must be SERVING before this one is."""

    @property
    def env_prefix(self) -> str:
        """Prefix of its environment variables, e.g. ``SEEDSTACK_WEIGHTHUB_``."""
        return f"SEEDSTACK_{self.name.upper()}_"

    def load_config_class(self) -> type[ServerConfig]:
        """Import and return the service's config dataclass."""
        module = importlib.import_module(f"services.{self.name}.config")
        cls: type[ServerConfig] = getattr(module, self.config_class)
        return cls


SERVICES: tuple[ServiceInfo, ...] = (
    ServiceInfo("weighthub", "seedstack.weighthub.v1.WeightHub", "WeightHubConfig"),
    ServiceInfo("dataplane", "seedstack.dataplane.v1.DataPlane", "DataPlaneConfig"),
    ServiceInfo("robustness", "seedstack.robustness.v1.Robustness", "RobustnessConfig"),
    ServiceInfo("gen3d", "seedstack.gen3d.v1.Gen3D", "Gen3DConfig"),
    ServiceInfo("rollout", "seedstack.rollout.v1.Rollout", "RolloutConfig", depends_on=("weighthub", "dataplane")),
    ServiceInfo("trainer", "seedstack.trainer.v1.Trainer", "TrainerConfig", depends_on=("weighthub", "dataplane")),
)
BY_NAME = {s.name: s for s in SERVICES}


def service_info(name: str) -> ServiceInfo:
    """The entry for ``name``; KeyError lists the known names."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown service {name!r}; known: {sorted(BY_NAME)}") from None
