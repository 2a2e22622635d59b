"""``python -m services.common.healthprobe ADDRESS``: exit 0 when the server at ADDRESS is SERVING.

A container health check through the standard gRPC health protocol (``grpc.health.v1.Health/Check``),
for images that cannot ship ``grpc_health_probe``: docker compose runs it as each service's
healthcheck, and Kubernetes can run it as an exec probe where native ``grpc:`` probes are not
available (they cannot speak TLS, for one). It prints one line and exits 0 or 1.

``--alive`` asks a weaker question — does the server answer health checks at all, whatever the
status — which is what a liveness probe wants: a service is NOT_SERVING while Redis or a peer it
depends on is down, and restarting it then would not help.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = "SERVING"


def check_health(
    address: str,
    *,
    service: str = "",
    timeout_s: float = 5.0,
    tls_ca_path: Path | None = None,
    tls_server_name: str | None = None,
) -> str:
    """The health status name (SERVING, NOT_SERVING, ...) that ``address`` reports for ``service``.

    ``service`` "" asks about the server as a whole. Raises ``grpc.RpcError`` when no answer comes
    within ``timeout_s`` or the server refuses the check (NOT_FOUND for an unknown service).
    """
    if tls_ca_path is None:
        channel = grpc.insecure_channel(address)
    else:
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(tls_ca_path).read_bytes())
        options = [("grpc.ssl_target_name_override", tls_server_name)] if tls_server_name else []
        channel = grpc.secure_channel(address, credentials, options=options)
    with channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def main(argv: list[str] | None = None) -> int:
    """Probe once; 0 when SERVING (with ``--alive``: when the server answers at all), else 1."""
    parser = argparse.ArgumentParser(
        prog="python -m services.common.healthprobe",
        description="Exit 0 when a gRPC server reports SERVING through the standard health protocol.",
    )
    parser.add_argument("address", help="host:port of the server, e.g. 127.0.0.1:50051")
    parser.add_argument(
        "--service", default="", help="health service name, e.g. seedstack.weighthub.v1.WeightHub (default: server)"
    )
    parser.add_argument("--timeout-s", type=float, default=5.0, help="deadline of the check (default: 5)")
    parser.add_argument("--tls-ca", type=Path, help="PEM CA bundle: connect with TLS and verify the server with it")
    parser.add_argument("--tls-server-name", help="name to check the server certificate against (with --tls-ca)")
    parser.add_argument(
        "--alive", action="store_true", help="succeed on any health answer, NOT_SERVING included (liveness)"
    )
    args = parser.parse_args(argv)
    target = f"{args.address} ({args.service or 'server'})"
    try:
        status = check_health(
            args.address,
            service=args.service,
            timeout_s=args.timeout_s,
            tls_ca_path=args.tls_ca,
            tls_server_name=args.tls_server_name,
        )
    except grpc.RpcError as exc:
        if isinstance(exc, grpc.Call):
            print(f"{target}: no health answer: {exc.code().name}: {exc.details()}")
        else:
            print(f"{target}: no health answer: {exc}")
        return 1
    except OSError as exc:
        print(f"{target}: cannot read the TLS CA bundle: {exc}")
        return 1
    print(f"{target}: {status}")
    return 0 if status == SERVING or args.alive else 1


if __name__ == "__main__":
    sys.exit(main())
