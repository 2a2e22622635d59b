"""gRPC servicer of the rollout server: proto <-> domain conversion only.

Every RPC answers UNIMPLEMENTED, naming issue #5, until that issue's logic lands.
"""

from __future__ import annotations

from seedstack.rollout.v1 import rollout_pb2, rollout_pb2_grpc

from services.common.pending import pending_servicer


def create_servicer() -> rollout_pb2_grpc.RolloutServicer:
    """The servicer registered by ``create_server``."""
    return pending_servicer(
        rollout_pb2_grpc.RolloutServicer,
        rollout_pb2.DESCRIPTOR.services_by_name["Rollout"],
        issue=5,
        topic="rollout server and verifiers",
    )
