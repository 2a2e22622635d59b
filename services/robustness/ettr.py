"""ETTR accounting: productive training time / wall time, cumulative and over trailing windows.

Productive time is the time between consecutive step completions of one incarnation of the job,
counted only while those steps are kept: a rollback to step c takes back the time spent on steps
after c (interpolated inside a segment), and the first step after a restart is not counted (its
time holds the restart). Memory is bounded: at most ``max_segments`` segments are kept, older ones
folded into a running total that only the cumulative figure uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class EttrTracker:
    """ETTR of one job; times are seconds on one clock (the controller's)."""

    start_s: float
    end_s: float | None = None
    segments: list[list[float]] = field(default_factory=list)
    """[t0, t1, s0, s1]: steps s0 -> s1 completed between t0 and t1, all kept."""
    folded_productive_s: float = 0.0
    folded_until_s: float = 0.0
    marker: tuple[int, float] | None = None
    """(step, time) of the last completion in this incarnation, None right after an interruption."""
    max_segments: int = 4096

    def on_step(self, step: int, now_s: float) -> None:
        """The job completed ``step`` at ``now_s``."""
        if self.marker is not None and step > self.marker[0]:
            last = self.segments[-1] if self.segments else None
            if last is not None and last[1] == self.marker[1] and last[3] == self.marker[0]:
                last[1], last[3] = now_s, float(step)
            else:
                self.segments.append([self.marker[1], now_s, float(self.marker[0]), float(step)])
                self._fold()
        if self.marker is None or step > self.marker[0]:
            self.marker = (step, now_s)

    def interrupt(self) -> None:
        """A fault or restart: the next completion starts a new segment."""
        self.marker = None

    def rollback(self, to_step: int) -> None:
        """Work after ``to_step`` is lost: take its time back."""
        kept: list[list[float]] = []
        for t0, t1, s0, s1 in self.segments:
            if s1 <= to_step:
                kept.append([t0, t1, s0, s1])
            elif s0 < to_step:
                kept.append([t0, t0 + (t1 - t0) * (to_step - s0) / (s1 - s0), s0, float(to_step)])
        self.segments = kept
        self.marker = None

    def finish(self, now_s: float) -> None:
        """The job ended: wall time stops here."""
        self.end_s = now_s

    def figure(self, now_s: float, window_s: float | None = None) -> tuple[float, float]:
        """(wall_s, productive_s) since the start, or over the trailing ``window_s``."""
        end = self.end_s if self.end_s is not None else now_s
        begin = self.start_s if window_s is None else max(self.start_s, end - window_s)
        productive = sum(max(0.0, min(t1, end) - max(t0, begin)) for t0, t1, _, _ in self.segments)
        if window_s is None:
            productive += self.folded_productive_s
        return max(0.0, end - begin), min(productive, max(0.0, end - begin))

    def _fold(self) -> None:
        while len(self.segments) > self.max_segments:
            t0, t1, _, _ = self.segments.pop(0)
            self.folded_productive_s += t1 - t0
            self.folded_until_s = t1

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "start_s": self.start_s,
            "end_s": self.end_s,
            "segments": self.segments,
            "folded_productive_s": self.folded_productive_s,
            "folded_until_s": self.folded_until_s,
            "marker": list(self.marker) if self.marker else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EttrTracker:
        """The inverse of ``to_json``."""
        marker = data.get("marker")
        return cls(
            start_s=data["start_s"],
            end_s=data.get("end_s"),
            segments=[list(s) for s in data.get("segments", [])],
            folded_productive_s=data.get("folded_productive_s", 0.0),
            folded_until_s=data.get("folded_until_s", 0.0),
            marker=(int(marker[0]), float(marker[1])) if marker else None,
        )
