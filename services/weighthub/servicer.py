"""gRPC servicer of the weight hub: proto <-> domain conversion only; the logic is in ``core``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from seedstack.common.v1 import common_pb2
from seedstack.weighthub.v1 import weighthub_pb2 as pb
from seedstack.weighthub.v1 import weighthub_pb2_grpc

from services.common.errors import NotFound
from services.weighthub.core import PlanResult, VersionInfo, WeightHub
from services.weighthub.planner import Topology
from services.weighthub.versions import Chunk, Manifest, Tensor

_DEADLINE_MARGIN_S = 0.05
"""A plan held open answers this long before the call's deadline."""

_FAILURES = {
    pb.READ_FAILURE_UNSPECIFIED: "unspecified",
    pb.READ_FAILURE_UNREACHABLE: "unreachable",
    pb.READ_FAILURE_TIMEOUT: "timeout",
    pb.READ_FAILURE_HASH_MISMATCH: "hash_mismatch",
    pb.READ_FAILURE_REFUSED: "refused",
}


def manifest_from_proto(message: common_pb2.Manifest) -> Manifest:
    """Domain manifest of a Manifest message (chunk indexes are positions; validation is the core's)."""
    return Manifest(
        model=message.model,
        version=message.version,
        tensors=tuple(
            Tensor(name=t.name, dtype=t.dtype, shape=tuple(t.shape), size_bytes=t.size_bytes) for t in message.tensors
        ),
        chunks=tuple(
            Chunk(
                tensor_name=c.tensor_name,
                index=c.index,
                offset_bytes=c.offset_bytes,
                size_bytes=c.size_bytes,
                hash_hex=c.hash_hex,
                hash_algorithm=c.hash_algorithm,
            )
            for c in message.chunks
        ),
        root_hash=message.root_hash,
        chunk_size_bytes=message.chunk_size_bytes,
    )


def manifest_to_proto(manifest: Manifest) -> common_pb2.Manifest:
    """Manifest message of a domain manifest."""
    return common_pb2.Manifest(
        model=manifest.model,
        version=manifest.version,
        tensors=[
            common_pb2.TensorSpec(name=t.name, dtype=t.dtype, shape=list(t.shape), size_bytes=t.size_bytes)
            for t in manifest.tensors
        ],
        chunks=[
            common_pb2.ChunkSpec(
                tensor_name=c.tensor_name,
                index=c.index,
                offset_bytes=c.offset_bytes,
                size_bytes=c.size_bytes,
                hash_hex=c.hash_hex,
                hash_algorithm=c.hash_algorithm,
            )
            for c in manifest.chunks
        ],
        root_hash=manifest.root_hash,
        chunk_size_bytes=manifest.chunk_size_bytes,
    )


def plan_to_proto(plan: PlanResult) -> pb.GetPlanResponse:
    """GetPlanResponse message of the domain plan."""
    return pb.GetPlanResponse(
        model=plan.model,
        version=plan.version,
        base_version=plan.base_version,
        reads=[
            pb.SourceRead(
                holder_id=r.holder_id,
                offer=common_pb2.TransportOffer(carrier=r.carrier, address=r.address),
                locality=r.locality,  # type: ignore[arg-type]
                chunk_indices=r.chunk_indices,
            )
            for r in plan.reads
        ],
        planned_size_bytes=plan.planned_size_bytes,
        deferred_chunk_indices=plan.deferred_chunk_indices,
    )


def version_info_to_proto(info: VersionInfo) -> pb.VersionInfo:
    """VersionInfo message of the domain record."""
    committed_at = Timestamp()
    committed_at.FromNanoseconds(int(info.committed_at_unix_s * 1e9))
    return pb.VersionInfo(
        model=info.model,
        version=info.version,
        root_hash=info.root_hash,
        size_bytes=info.size_bytes,
        num_chunks=info.num_chunks,
        num_holders=info.num_holders,
        pinned=info.pinned,
        committed_at=committed_at,
    )


class WeightHubServicer(weighthub_pb2_grpc.WeightHubServicer):
    """Delegates every RPC to :class:`WeightHub`."""

    def __init__(self, hub: WeightHub) -> None:
        self.hub = hub

    async def RegisterHolder(self, request: pb.RegisterHolderRequest, context: Any) -> pb.RegisterHolderResponse:
        ttl_s = await self.hub.register_holder(
            request_id=request.request_id,
            holder_id=request.holder_id,
            offers=[(o.carrier, o.address) for o in request.offers],
            topology=Topology(
                host=request.topology.host, rack=request.topology.rack, datacenter=request.topology.datacenter
            ),
            transport_host_id=request.transport_host_id,
            lease_ttl_s=request.lease_ttl_s,
            max_concurrent_reads=request.max_concurrent_reads,
        )
        return pb.RegisterHolderResponse(lease_ttl_s=ttl_s)

    async def UnregisterHolder(self, request: pb.UnregisterHolderRequest, context: Any) -> pb.UnregisterHolderResponse:
        await self.hub.unregister_holder(request_id=request.request_id, holder_id=request.holder_id)
        return pb.UnregisterHolderResponse()

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Any) -> pb.HeartbeatResponse:
        ttl_s, states = await self.hub.heartbeat(holder_id=request.holder_id)
        return pb.HeartbeatResponse(
            lease_ttl_s=ttl_s,
            held_versions=[
                pb.HeldVersion(model=s.model, version=s.version, num_active_reads=s.num_active_reads, retired=s.retired)
                for s in states
            ],
        )

    async def Publish(self, request: pb.PublishRequest, context: Any) -> pb.PublishResponse:
        result = await self.hub.publish(
            request_id=request.request_id,
            holder_id=request.holder_id,
            manifest=manifest_from_proto(request.manifest),
            shard_index=request.shard_index,
            num_shards=request.num_shards,
        )
        return pb.PublishResponse(
            committed=result.committed,
            num_shards_registered=result.num_shards_registered,
            root_hash=result.root_hash,
        )

    async def GetManifest(self, request: pb.GetManifestRequest, context: Any) -> pb.GetManifestResponse:
        manifest = await self.hub.get_manifest(model=request.model, version=request.version)
        return pb.GetManifestResponse(manifest=manifest_to_proto(manifest))

    async def GetPlan(self, request: pb.GetPlanRequest, context: Any) -> pb.GetPlanResponse:
        max_wait_s = request.max_wait_s
        remaining_s = context.time_remaining()
        if remaining_s is not None:
            # Answer before the caller's deadline, with time left for the answer to travel.
            max_wait_s = max(0.0, min(max_wait_s, remaining_s - _DEADLINE_MARGIN_S))
        plan = await self.hub.get_plan(
            request_id=request.request_id,
            reader_id=request.reader_id,
            model=request.model,
            version=request.version,
            held_version=request.held_version,
            chunk_indices=list(request.chunk_indices),
            max_wait_s=max_wait_s,
            allow_partial=request.allow_partial,
            max_chunks=request.max_chunks,
            serve_in_flight=request.serve_in_flight,
        )
        return plan_to_proto(plan)

    async def ReportHeld(self, request: pb.ReportHeldRequest, context: Any) -> pb.ReportHeldResponse:
        active = await self.hub.report_held(
            request_id=request.request_id,
            holder_id=request.holder_id,
            model=request.model,
            version=request.version,
            held=request.held,
            root_hash=request.root_hash,
        )
        return pb.ReportHeldResponse(num_active_reads=active)

    async def ReportProgress(self, request: pb.ReportProgressRequest, context: Any) -> pb.ReportProgressResponse:
        num_chunks = await self.hub.report_progress(
            request_id=request.request_id,
            holder_id=request.holder_id,
            model=request.model,
            version=request.version,
            chunk_indices=list(request.chunk_indices),
            finished_holder_ids=list(request.finished_holder_ids),
        )
        return pb.ReportProgressResponse(num_chunks_held=num_chunks)

    async def ReportReadFailure(
        self, request: pb.ReportReadFailureRequest, context: Any
    ) -> pb.ReportReadFailureResponse:
        await self.hub.report_read_failure(
            request_id=request.request_id,
            reader_id=request.reader_id,
            holder_id=request.holder_id,
            model=request.model,
            version=request.version,
            failure=_FAILURES.get(request.failure, "unspecified"),
            detail=request.detail,
        )
        return pb.ReportReadFailureResponse()

    async def Pin(self, request: pb.PinRequest, context: Any) -> pb.PinResponse:
        await self.hub.pin(
            request_id=request.request_id, model=request.model, version=request.version, owner=request.owner
        )
        return pb.PinResponse()

    async def Unpin(self, request: pb.UnpinRequest, context: Any) -> pb.UnpinResponse:
        await self.hub.unpin(
            request_id=request.request_id, model=request.model, version=request.version, owner=request.owner
        )
        return pb.UnpinResponse()

    async def WatchVersions(
        self, request: pb.WatchVersionsRequest, context: Any
    ) -> AsyncIterator[pb.WatchVersionsResponse]:
        async for info in self.hub.watch(model=request.model, after_version=request.after_version):
            manifest = None
            if request.include_manifest:
                with contextlib.suppress(NotFound):  # retired since: the reader asks GetManifest and learns why
                    manifest = manifest_to_proto(await self.hub.get_manifest(model=info.model, version=info.version))
            plan = None
            if request.plan_reader_id:
                first = await self.hub.first_plan(
                    reader_id=request.plan_reader_id,
                    model=info.model,
                    version=info.version,
                    max_chunks=request.plan_max_chunks,
                )
                plan = plan_to_proto(first) if first is not None else None
            yield pb.WatchVersionsResponse(version_info=version_info_to_proto(info), manifest=manifest, plan=plan)

    async def ListVersions(self, request: pb.ListVersionsRequest, context: Any) -> pb.ListVersionsResponse:
        infos = await self.hub.list_versions(model=request.model)
        return pb.ListVersionsResponse(versions=[version_info_to_proto(i) for i in infos])
