"""gRPC servicer of the weight hub: proto <-> domain conversion only.

Every RPC answers UNIMPLEMENTED, naming issue #3, until that issue's logic lands.
"""

from __future__ import annotations

from seedstack.weighthub.v1 import weighthub_pb2, weighthub_pb2_grpc

from services.common.pending import pending_servicer


def create_servicer() -> weighthub_pb2_grpc.WeightHubServicer:
    """The servicer registered by ``create_server``."""
    return pending_servicer(
        weighthub_pb2_grpc.WeightHubServicer,
        weighthub_pb2.DESCRIPTOR.services_by_name["WeightHub"],
        issue=3,
        topic="weight hub",
    )
