"""gRPC servicer of the data plane: proto <-> domain conversion only.

Every RPC answers UNIMPLEMENTED, naming issue #4, until that issue's logic lands.
"""

from __future__ import annotations

from seedstack.dataplane.v1 import dataplane_pb2, dataplane_pb2_grpc

from services.common.pending import pending_servicer


def create_servicer() -> dataplane_pb2_grpc.DataPlaneServicer:
    """The servicer registered by ``create_server``."""
    return pending_servicer(
        dataplane_pb2_grpc.DataPlaneServicer,
        dataplane_pb2.DESCRIPTOR.services_by_name["DataPlane"],
        issue=4,
        topic="data plane",
    )
