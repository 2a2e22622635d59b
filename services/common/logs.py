"""Logging: JSON lines on stderr, each with the service name and the current trace id."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from opentelemetry import trace


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, service, logger, msg, trace_id, span_id, exc."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            entry["trace_id"] = format(ctx.trace_id, "032x")
            entry["span_id"] = format(ctx.span_id, "016x")
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def init_logging(service: str, level: str | None = None) -> None:
    """Send every log record of this process to stderr as JSON lines tagged with ``service``.

    The level comes from ``level``, else ``SEEDSTACK_LOG_LEVEL``, else INFO.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("SEEDSTACK_LOG_LEVEL", "INFO")).upper())
