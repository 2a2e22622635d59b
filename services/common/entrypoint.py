"""``python -m services.<name>``: logging -> config -> telemetry -> dependencies -> serve."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from services.common.catalog import service_info
from services.common.config import ServerConfig, load_config
from services.common.errors import ConfigError
from services.common.logs import init_logging
from services.common.server import GrpcServer, run_service
from services.common.telemetry import init_telemetry, shutdown_telemetry

logger = logging.getLogger(__name__)


def service_main(
    name: str, create_server: Callable[[Any], Awaitable[GrpcServer]], argv: list[str] | None = None
) -> int:
    """Run service ``name`` until SIGTERM; a bad configuration exits 2 with the variable named."""
    info = service_info(name)
    parser = argparse.ArgumentParser(
        prog=f"python -m services.{name}", description=f"Run the {name} service ({info.proto_service})."
    )
    parser.add_argument("--config", type=Path, help="YAML file of config fields (environment variables win)")
    parser.add_argument("--port", type=int, help=f"port to serve on (default: ${info.env_prefix}PORT)")
    args = parser.parse_args(argv)
    init_logging(name)
    try:
        config: ServerConfig = load_config(
            info.load_config_class(),
            info.env_prefix,
            file=args.config,
            overrides={"port": args.port} if args.port is not None else None,
        )
    except ConfigError as exc:
        print(f"{name}: invalid configuration: {exc}", file=sys.stderr)
        return 2
    init_telemetry(name)
    try:
        asyncio.run(run_service(name, config, create_server))
    finally:
        shutdown_telemetry()
    return 0
