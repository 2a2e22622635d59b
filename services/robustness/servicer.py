"""gRPC servicer of the robustness monitor: proto <-> domain conversion only.

Every RPC answers UNIMPLEMENTED, naming issue #7, until that issue's logic lands.
"""

from __future__ import annotations

from seedstack.robustness.v1 import robustness_pb2, robustness_pb2_grpc

from services.common.pending import pending_servicer


def create_servicer() -> robustness_pb2_grpc.RobustnessServicer:
    """The servicer registered by ``create_server``."""
    return pending_servicer(
        robustness_pb2_grpc.RobustnessServicer,
        robustness_pb2.DESCRIPTOR.services_by_name["Robustness"],
        issue=7,
        topic="robustness monitor",
    )
