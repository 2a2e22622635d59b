"""The ranks' links to other services: the weight hub's Publisher and the data plane's batches.

The training loop is synchronous torch code; these wrap the async clients on one event loop in a
background thread per rank, so a call is a plain blocking function to the engine.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from opentelemetry import context as otel_context

from services.common.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument
from services.trainer.spec import RunSpec

if TYPE_CHECKING:
    from services.trainer.engine import Engine, TrainSample

logger = logging.getLogger(__name__)
T = TypeVar("T")

NEXT_BATCH_WAIT_S = 2.0
"""Colocated: how long NextBatch waits once the ranks' samples should fill the batch."""
MAX_FILL_ROUNDS = 200
"""Colocated: rounds one fill may take (a round refused on some ranks makes fewer groups than a full one;
at 5 % of groups kept a batch of 16 groups takes ~20 full rounds) before the step fails."""
MAX_BATCH_ATTEMPTS = 50
"""NextBatch calls one batch may take (each after a fill, colocated) before the step fails."""


async def _in_context(coro: Coroutine[Any, Any, T], ctx: otel_context.Context) -> T:
    # The loop runs in another thread: carry the step's span over so its RPCs join the step's trace.
    token = otel_context.attach(ctx)
    try:
        return await coro
    finally:
        otel_context.detach(token)


class LoopThread:
    """An event loop in a daemon thread; ``call`` runs a coroutine on it and waits for the result."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = 300.0) -> T:
        """Run ``coro`` on the loop, inside the caller's trace context; its exception is raised here."""
        return asyncio.run_coroutine_threadsafe(_in_context(coro, otel_context.get_current()), self.loop).result(
            timeout_s
        )

    def close(self) -> None:
        """Stop the loop and the thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


class HubSink:
    """Publishes each version through ``clients.weighthub.Publisher``: every rank its shard of the tensors.

    The model is replicated, so each rank could serve all of it; publishing a disjoint shard per rank
    (tensor names dealt round-robin) makes every rank a holder, spreads the readers' load over the
    ranks and keeps each rank's copy into its publish buffers at 1/N of the model.
    """

    def __init__(self, address: str, model: str, rank: int, world: int, bind_host: str = "0.0.0.0") -> None:
        from clients.weighthub import Publisher

        async def start() -> Publisher:
            publisher = Publisher(
                address,
                model=model,
                shard_index=rank,
                num_shards=world,
                holder_id=f"trainer-{model}-{rank}-{uuid.uuid4().hex[:8]}",
                transport_bind_host=bind_host,
            )
            await publisher.start()
            return publisher

        self._address, self._model = address, model
        self._loop = LoopThread(f"publisher-{rank}")
        self._publisher = self._loop.call(start())

    def latest_version(self) -> int:
        """The hub's latest committed version of the model; 0 when it has none."""
        from seedstack.weighthub.v1 import weighthub_pb2 as wh

        from clients.base import RPCError
        from clients.weighthub import WeightHubClient

        async def latest() -> int:
            async with WeightHubClient(self._address) as client:
                try:
                    reply = await client.get_manifest(wh.GetManifestRequest(model=self._model, version=0))
                except RPCError as exc:
                    if exc.code.name == "NOT_FOUND":
                        return 0
                    raise
                return int(reply.manifest.version)

        return self._loop.call(latest())

    def publish(self, version: int, tensors: dict[str, torch.Tensor]) -> None:
        """Publish ``version``; returns when the hub committed it (every rank's shard in)."""
        self._loop.call(self._publisher.publish(version, tensors))

    def close(self) -> None:
        """Withdraw from the hub."""
        try:
            self._loop.call(self._publisher.close(), timeout_s=30)
        finally:
            self._loop.close()


class DataPlaneFeed:
    """RL batches from a data-plane plan: NextBatch(rank, step, policy_version).

    With ``rollout.colocated`` the ranks also stand in for rollout servers: before asking for its
    share each rank draws prompts (NextPrompts), generates and scores a group per prompt with its
    current policy and streams them in (PutSamples), so the plan's experience buffer, staleness bound
    and dynamic sampling apply to them. Otherwise rollout servers fill the plan and the ranks only read.
    """

    def __init__(self, address: str, plan_id: str, rank: int, colocated: bool) -> None:
        from clients.dataplane import DataPlaneClient

        async def connect() -> DataPlaneClient:
            return DataPlaneClient(address)  # channels belong to the loop they are made on

        self._loop = LoopThread(f"dataplane-{rank}")
        self._client = self._loop.call(connect())
        self._plan_id = plan_id
        self._rank = rank
        self._colocated = colocated
        self._ready_estimate = 0.0
        """Colocated: samples all ranks put that the buffer keeps and no batch took yet (an estimate:
        it starts at 0 after a restart, so the first batch may be over-filled by one round)."""
        self.batch_timeouts = 0
        """Colocated: NextBatch calls that ran out their deadline (each idles the step for
        ``NEXT_BATCH_WAIT_S``) because the estimate above was wrong."""

    def _produce(self, engine: Engine, step: int, round_no: int) -> int | None:
        """One colocated round: draw this rank's prompts, generate, put; the samples the buffer keeps
        (in groups with more than one reward when dynamic sampling drops the others); None when the
        buffer is full."""
        from seedstack.common.v1 import common_pb2
        from seedstack.dataplane.v1 import dataplane_pb2 as dp

        from clients.base import RPCError

        r = engine.spec.rollout
        per_rank = max(1, r.prompts_per_step // engine.comm.world)
        try:
            reply = self._loop.call(
                self._client.next_prompts(
                    dp.NextPromptsRequest(
                        request_id=f"trainer-{self._plan_id}-{self._rank}-{step}-{round_no}-{uuid.uuid4().hex[:6]}",
                        plan_id=self._plan_id,
                        consumer_id=f"trainer-rank-{self._rank}",
                        num_prompts=per_rank,
                    )
                )
            )
        except RPCError as exc:
            if exc.code.name == "RESOURCE_EXHAUSTED":
                return None
            raise
        if not reply.prompts:
            return 0
        from services.trainer.engine import _seeded

        prompts = list(reply.prompts)
        samples = engine.generate_groups(
            [p.text for p in prompts],
            [p.group_id for p in prompts],
            [p.reference for p in prompts],
            int(reply.group_size),
            _seeded(engine.spec.seed, "dataplane", step, round_no, self._rank),
        )
        by_group: dict[str, int] = {}
        messages = []
        prompt_of = {p.group_id: p for p in prompts}
        for s in samples:
            index = by_group.get(s.group_id, 0)
            by_group[s.group_id] = index + 1
            n = len(s.completion_ids)
            messages.append(
                common_pb2.Sample(
                    prompt_id=prompt_of[s.group_id].prompt_id,
                    group_id=s.group_id,
                    sample_index=index,
                    prompt_token_ids=s.prompt_ids,
                    completion_token_ids=s.completion_ids,
                    behaviour_logprobs=s.behaviour_logprobs,
                    version_spans=[
                        common_pb2.VersionSpan(start_index=0, end_index=n, weight_version=max(engine.version, 1))
                    ],
                    completion_text=engine.tokenizer.decode(s.completion_ids),
                    reward=s.reward,
                    finished=True,
                    finish_reason=common_pb2.FINISH_REASON_STOP if s.finished else common_pb2.FINISH_REASON_LENGTH,
                )
            )
        self._loop.call(self._client.put_sample_list(self._plan_id, f"trainer-rank-{self._rank}", messages))
        rewards: dict[str, set[float]] = {}
        for s in samples:
            rewards.setdefault(s.group_id, set()).add(s.reward)
        return sum(
            by_group[g]
            for g, seen in rewards.items()
            if by_group[g] == int(reply.group_size) and (len(seen) > 1 or not engine.spec.dapo.dynamic_sampling)
        )

    def _fill(self, engine: Engine, step: int) -> None:
        """Colocated: rounds on every rank until the samples kept since the last batch fill one (the
        ranks agree on the count, so they leave together; a round that could not fill a batch is not
        followed by a NextBatch that would wait for samples nobody is making).

        A rank refused prompts (buffer full) while another rank's prompts took the room does not end
        the filling: every rank puts its groups before the round's count, so the next round finds the
        room that the uniform groups among them left. Only a round in which every rank was refused
        goes to NextBatch (the buffer then holds a batch, or prompts issued before a restart that will
        be reissued). Ending on the first refusal made a synchronous step wait out NextBatch's deadline
        whenever dynamic sampling dropped many groups (2 s each time, most of a step at low reward).
        """
        r = engine.spec.rollout
        batch = r.prompts_per_step * r.group_size
        for round_no in range(MAX_FILL_ROUNDS):
            if self._ready_estimate >= batch:
                return
            produced = self._produce(engine, step, round_no)
            kept, num_full = engine.comm.sum_floats([float(produced or 0), float(produced is None)])
            self._ready_estimate += kept
            if num_full >= engine.comm.world:
                return  # no rank had room: NextBatch waits for what is in it (or the prompts reissued)
        raise DeadlineExceeded(
            f"dataplane plan {self._plan_id}: batch {step} not filled after {MAX_FILL_ROUNDS} rounds"
        )

    def collect(self, engine: Engine, step: int) -> list[TrainSample]:
        """This rank's share of batch ``step``, producing samples first when colocated."""
        from seedstack.dataplane.v1 import dataplane_pb2 as dp

        from clients.base import RPCError
        from services.trainer.engine import TrainSample

        for _ in range(MAX_BATCH_ATTEMPTS):
            if self._colocated:
                self._fill(engine, step)
            try:
                reply = self._loop.call(
                    self._client.next_batch(
                        dp.NextBatchRequest(
                            plan_id=self._plan_id, rank=self._rank, step=step, policy_version=engine.version
                        ),
                        timeout_s=NEXT_BATCH_WAIT_S if self._colocated else 60.0,
                    )
                )
                break
            except RPCError as exc:
                if exc.code.name != "DEADLINE_EXCEEDED":
                    raise
                self.batch_timeouts += 1
                self._ready_estimate = 0.0  # the estimate was wrong (samples dropped as stale): fill anew
        else:
            raise DeadlineExceeded(
                f"dataplane plan {self._plan_id}: batch {step} not filled after {MAX_BATCH_ATTEMPTS} NextBatch calls"
            )
        if self._colocated:
            r = engine.spec.rollout
            self._ready_estimate = max(0.0, self._ready_estimate - r.prompts_per_step * r.group_size)
        out = []
        for i, s in enumerate(reply.samples):
            if not s.HasField("reward"):
                raise InvalidArgument(f"samples[{i}].reward: unset (group {s.group_id})")
            meta = s.metadata
            out.append(
                TrainSample(
                    prompt_ids=list(s.prompt_token_ids),
                    completion_ids=list(s.completion_token_ids),
                    behaviour_logprobs=list(s.behaviour_logprobs),
                    reward=float(s.reward),
                    group_id=s.group_id,
                    finished=s.finish_reason != 2,
                    group_mean=float(meta["group_reward_mean"]) if "group_reward_mean" in meta else None,
                    group_std=float(meta["group_reward_std"]) if "group_reward_std" in meta else None,
                    version=min((v.weight_version for v in s.version_spans), default=0),
                    metadata=dict(meta),
                )
            )
        return out

    def checkpoint(self, step: int) -> None:
        """Record the plan's cursors at ``step`` (rank 0 only)."""
        if self._rank != 0:
            return
        from seedstack.dataplane.v1 import dataplane_pb2 as dp

        self._loop.call(
            self._client.checkpoint(
                dp.CheckpointRequest(
                    request_id=f"trainer-ckpt-{self._plan_id}-{step}", plan_id=self._plan_id, step=step
                )
            )
        )

    def restore(self, step: int, num_ranks: int) -> None:
        """Rewind the plan to ``step`` for ``num_ranks`` consumers (rank 0 only)."""
        if self._rank != 0:
            return
        from seedstack.dataplane.v1 import dataplane_pb2 as dp

        self._loop.call(
            self._client.restore(
                dp.RestoreRequest(
                    request_id=f"trainer-restore-{self._plan_id}-{step}-{num_ranks}",
                    plan_id=self._plan_id,
                    step=step,
                    num_ranks=num_ranks,
                )
            )
        )

    def close(self) -> None:
        """Close the channel and the loop."""
        try:
            self._loop.call(self._client.close(), timeout_s=10)
        finally:
            self._loop.close()


def connect_sink(spec: RunSpec, rank: int, world: int) -> HubSink | None:
    """The Publisher of this rank, or None when the run does not publish."""
    if not spec.weighthub_model:
        return None
    if not spec.weighthub_address:
        raise FailedPrecondition("weighthub_address: empty, but weighthub_model is set")
    return HubSink(spec.weighthub_address, spec.weighthub_model, rank, world, spec.publish_bind_host)


def connect_feed(spec: RunSpec, rank: int) -> DataPlaneFeed | None:
    """The data-plane feed of this rank, or None for colocated generation from the task."""
    if not spec.dataplane_plan_id:
        return None
    if not spec.dataplane_address:
        raise FailedPrecondition("dataplane_address: empty, but dataplane_plan_id is set")
    return DataPlaneFeed(spec.dataplane_address, spec.dataplane_plan_id, rank, spec.rollout.colocated)
