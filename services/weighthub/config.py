"""Configuration of the weight hub: environment variables prefixed ``SEEDSTACK_WEIGHTHUB_``."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import ServerConfig, check


@dataclass(frozen=True, kw_only=True)
class WeightHubConfig(ServerConfig):
    """Settings of the weight hub service."""

    port: int = 50051
    """TCP port to serve gRPC on; 0 picks a free one."""
    default_lease_ttl_s: float = 10.0
    """Holder lease granted when a holder asks for 0; a holder that misses it is removed."""
    max_lease_ttl_s: float = 300.0
    """Longest holder lease granted; longer requests are cut to it."""
    default_max_concurrent_reads: int = 4
    """Concurrent readers per holder when a holder registers with 0."""
    keep_last_versions: int = 2
    """Committed versions per model kept available (pinned ones come on top); older ones retire."""
    read_lease_ttl_s: float = 120.0
    """Longest a planned read keeps its lease on a holder without the reader reporting."""
    request_ttl_s: float = 3600.0
    """How long the answer to a request id is kept for retries."""
    watch_poll_s: float = 0.5
    """WatchVersions re-reads Redis at least this often (commits made through another hub instance);
    a GetPlan held open while every source is busy re-plans at least this often too."""
    shm_max_concurrent_reads: int = 8
    """Readers a holder serves at once over shared memory at least, whatever its own bound: on one
    host the reader makes the copy, the holder's NIC carries nothing (its bound is about the NIC)."""
    plan_max_wait_s: float = 30.0
    """Longest a GetPlan is held open while every suitable source is busy (the request's own bound
    and deadline apply first)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.default_lease_ttl_s > 0, "default_lease_ttl_s", self.default_lease_ttl_s, "must be > 0")
        check(
            self.max_lease_ttl_s >= self.default_lease_ttl_s,
            "max_lease_ttl_s",
            self.max_lease_ttl_s,
            "must be >= default_lease_ttl_s",
        )
        check(
            1 <= self.default_max_concurrent_reads <= 4096,
            "default_max_concurrent_reads",
            self.default_max_concurrent_reads,
            "must be in 1..4096",
        )
        check(
            0 <= self.shm_max_concurrent_reads <= 4096,
            "shm_max_concurrent_reads",
            self.shm_max_concurrent_reads,
            "must be in 0..4096",
        )
        check(1 <= self.keep_last_versions <= 1000, "keep_last_versions", self.keep_last_versions, "must be in 1..1000")
        check(self.read_lease_ttl_s > 0, "read_lease_ttl_s", self.read_lease_ttl_s, "must be > 0")
        check(self.request_ttl_s > 0, "request_ttl_s", self.request_ttl_s, "must be > 0")
        check(0 < self.watch_poll_s <= 60, "watch_poll_s", self.watch_poll_s, "must be in (0, 60]")
        check(0 <= self.plan_max_wait_s <= 3600, "plan_max_wait_s", self.plan_max_wait_s, "must be in [0, 3600]")
