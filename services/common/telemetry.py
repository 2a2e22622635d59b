"""OpenTelemetry: one ``init_telemetry(service)`` per process.

The exporter follows the standard variables: ``OTEL_SDK_DISABLED=true`` turns tracing off,
``OTEL_TRACES_EXPORTER`` picks ``otlp`` (endpoint from ``OTEL_EXPORTER_OTLP_*``), ``console`` or
``none``. ``SEEDSTACK_TRACE_FILE=PATH`` adds an exporter that appends one JSON object per span to a
local file — the default of ``seedctl up``, so a trace can be read without a collector. With none
of these set, spans are created (trace ids still cross services and appear in logs) but not exported.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)

logger = logging.getLogger(__name__)

_provider: TracerProvider | None = None


class JsonFileSpanExporter(SpanExporter):
    """Appends each finished span as one JSON line: trace_id, span_id, parent, service, name, times."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for span in spans:
            ctx = span.get_span_context()
            parent = span.parent
            lines.append(
                json.dumps(
                    {
                        "trace_id": format(ctx.trace_id, "032x") if ctx else None,
                        "span_id": format(ctx.span_id, "016x") if ctx else None,
                        "parent_span_id": format(parent.span_id, "016x") if parent else None,
                        "service": span.resource.attributes.get("service.name"),
                        "name": span.name,
                        "kind": span.kind.name,
                        "start_unix_ns": span.start_time,
                        "end_unix_ns": span.end_time,
                        "status": span.status.status_code.name,
                        "attributes": dict(span.attributes or {}),
                    },
                    default=str,
                )
            )
        with self._lock, self.path.open("a") as f:
            f.write("\n".join(lines) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release: every export opens and closes the file."""


def init_telemetry(service: str) -> TracerProvider | None:
    """Install the process's tracer provider for ``service``; returns it (None when disabled)."""
    global _provider
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    if _provider is not None:
        return _provider
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporters: list[SpanExporter] = []
    for name in [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "none").split(",") if n.strip()]:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
        elif name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name != "none":
            logger.warning("OTEL_TRACES_EXPORTER=%s is not supported here; use otlp, console or none", name)
    trace_file = os.environ.get("SEEDSTACK_TRACE_FILE")
    if trace_file:
        exporters.append(JsonFileSpanExporter(Path(trace_file)))
    # A one-second flush keeps local traces readable soon after a call; OTEL_BSP_* still override.
    delay_ms = int(os.environ.get("OTEL_BSP_SCHEDULE_DELAY", "1000"))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=delay_ms))
    trace.set_tracer_provider(provider)
    _provider = provider
    logger.info("telemetry for %s: exporters %s", service, [type(e).__name__ for e in exporters] or "none")
    return provider


def shutdown_telemetry() -> None:
    """Flush and stop the exporters installed by ``init_telemetry``."""
    global _provider
    if _provider is not None:
        _provider.shutdown()
        _provider = None
