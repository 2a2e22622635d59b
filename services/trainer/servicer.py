"""gRPC servicer of the trainer: proto <-> domain conversion only.

Every RPC answers UNIMPLEMENTED, naming issue #6, until that issue's logic lands.
"""

from __future__ import annotations

from seedstack.trainer.v1 import trainer_pb2, trainer_pb2_grpc

from services.common.pending import pending_servicer


def create_servicer() -> trainer_pb2_grpc.TrainerServicer:
    """The servicer registered by ``create_server``."""
    return pending_servicer(
        trainer_pb2_grpc.TrainerServicer, trainer_pb2.DESCRIPTOR.services_by_name["Trainer"], issue=6, topic="trainer"
    )
