"""gRPC servicer of image-to-3D generation of simulation-ready assets: proto <-> domain conversion only.

Every RPC answers UNIMPLEMENTED, naming issue #8, until that issue's logic lands.
"""

from __future__ import annotations

from seedstack.gen3d.v1 import gen3d_pb2, gen3d_pb2_grpc

from services.common.pending import pending_servicer


def create_servicer() -> gen3d_pb2_grpc.Gen3DServicer:
    """The servicer registered by ``create_server``."""
    return pending_servicer(
        gen3d_pb2_grpc.Gen3DServicer, gen3d_pb2.DESCRIPTOR.services_by_name["Gen3D"], issue=8, topic="3D generation"
    )
