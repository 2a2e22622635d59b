"""The gRPC contract: committed code matches the protos, everything is documented, RPCs are as agreed."""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from services.common.protogen import PROTO_ROOT, generate, generated_files, load_descriptors

UNARY = "unary"
SERVER_STREAM = "server stream"
CLIENT_STREAM = "client stream"

SERVICES: dict[str, tuple[str, dict[str, str]]] = {
    "weighthub": (
        "WeightHub",
        {
            "RegisterHolder": UNARY,
            "UnregisterHolder": UNARY,
            "Heartbeat": UNARY,
            "Publish": UNARY,
            "GetManifest": UNARY,
            "GetPlan": UNARY,
            "ReportHeld": UNARY,
            "ReportProgress": UNARY,
            "ReportReadFailure": UNARY,
            "Pin": UNARY,
            "Unpin": UNARY,
            "WatchVersions": SERVER_STREAM,
            "ListVersions": UNARY,
        },
    ),
    "dataplane": (
        "DataPlane",
        {
            "SubmitPlan": UNARY,
            "ClosePlan": UNARY,
            "NextPrompts": UNARY,
            "PutSamples": CLIENT_STREAM,
            "NextBatch": UNARY,
            "Checkpoint": UNARY,
            "Restore": UNARY,
            "Stats": UNARY,
        },
    ),
    "robustness": (
        "Robustness",
        {
            "RegisterAgent": UNARY,
            "Report": CLIENT_STREAM,
            "WatchCommands": SERVER_STREAM,
            "ListIncidents": UNARY,
            "GetEttr": UNARY,
        },
    ),
    "rollout": (
        "Rollout",
        {
            "Generate": SERVER_STREAM,
            "Verify": UNARY,
            "StartRollout": UNARY,
            "StopRollout": UNARY,
            "UpdateWeights": UNARY,
            "Pause": UNARY,
            "Resume": UNARY,
            "Stats": UNARY,
        },
    ),
    "trainer": ("Trainer", {"StartRun": UNARY, "GetRun": UNARY, "StopRun": UNARY}),
    "gen3d": (
        "Gen3D",
        {
            "UploadImage": CLIENT_STREAM,
            "SubmitJob": UNARY,
            "SubmitScene": UNARY,
            "GetJob": UNARY,
            "WatchJob": SERVER_STREAM,
            "FetchAsset": SERVER_STREAM,
        },
    ),
}
"""Per service module: the service name and every RPC with its streaming kind."""

MUTATING: dict[str, set[str]] = {
    "weighthub": {
        "RegisterHolder",
        "UnregisterHolder",
        "Publish",
        "GetPlan",
        "ReportHeld",
        "ReportProgress",
        "ReportReadFailure",
        "Pin",
        "Unpin",
    },
    "dataplane": {"SubmitPlan", "ClosePlan", "NextPrompts", "Checkpoint", "Restore"},
    "robustness": {"RegisterAgent"},
    "rollout": {"StartRollout", "StopRollout", "UpdateWeights", "Pause", "Resume"},
    "trainer": {"StartRun", "StopRun"},
    "gen3d": {"SubmitJob", "SubmitScene"},
}
"""Unary RPCs that change state and so take ``string request_id = 1``. The others are reads, or
idempotent by content (Heartbeat renews a lease; streamed samples, reports and uploads are
deduplicated by their own identity)."""

ERROR_FIELD_NAMES = {"error", "errors", "error_message", "error_code", "ok", "success", "status"}

# Paths into FileDescriptorProto / DescriptorProto / EnumDescriptorProto / ServiceDescriptorProto
# (their field numbers), as SourceCodeInfo.Location.path uses them.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MSG_FIELD, _MSG_NESTED, _MSG_ENUM, _MSG_ONEOF = 2, 3, 4, 8
_ENUM_VALUE = 2
_SERVICE_METHOD = 2


@pytest.fixture(scope="module")
def contract() -> list[descriptor_pb2.FileDescriptorProto]:
    """Descriptors, with comments, of the contract's own files (not the well-known types)."""
    files = [f for f in load_descriptors().file if f.name.startswith("seedstack/")]
    assert len(files) == len(SERVICES) + 1, [f.name for f in files]
    return files


def test_committed_code_matches_protos(tmp_path: Path) -> None:
    generate(tmp_path)
    fresh, committed = generated_files(tmp_path), generated_files(PROTO_ROOT)
    drifting = sorted(fresh ^ committed) + sorted(
        rel for rel in fresh & committed if (tmp_path / rel).read_bytes() != (PROTO_ROOT / rel).read_bytes()
    )
    assert not drifting, (
        f"generated code differs from what the protos generate: {', '.join(map(str, drifting))}; run `make protos`"
    )


def _documented(
    locations: dict[tuple[int, ...], descriptor_pb2.SourceCodeInfo.Location], path: tuple[int, ...]
) -> bool:
    loc = locations.get(path)
    return loc is not None and bool(loc.leading_comments.strip() or loc.trailing_comments.strip())


def _undocumented_in_message(
    msg: descriptor_pb2.DescriptorProto,
    path: tuple[int, ...],
    prefix: str,
    locations: dict[tuple[int, ...], descriptor_pb2.SourceCodeInfo.Location],
) -> Iterator[str]:
    name = f"{prefix}.{msg.name}"
    # Request/response messages are named for their RPC, which carries the comment.
    if not msg.name.endswith(("Request", "Response")) and not _documented(locations, path):
        yield f"message {name}"
    for i, field in enumerate(msg.field):
        if not _documented(locations, (*path, _MSG_FIELD, i)):
            yield f"field {name}.{field.name}"
    for i, oneof in enumerate(msg.oneof_decl):
        synthetic = any(f.proto3_optional and f.oneof_index == i for f in msg.field)
        if not synthetic and not _documented(locations, (*path, _MSG_ONEOF, i)):
            yield f"oneof {name}.{oneof.name}"
    for i, enum in enumerate(msg.enum_type):
        yield from _undocumented_in_enum(enum, (*path, _MSG_ENUM, i), name, locations)
    for i, nested in enumerate(msg.nested_type):
        if not nested.options.map_entry:
            yield from _undocumented_in_message(nested, (*path, _MSG_NESTED, i), name, locations)


def _undocumented_in_enum(
    enum: descriptor_pb2.EnumDescriptorProto,
    path: tuple[int, ...],
    prefix: str,
    locations: dict[tuple[int, ...], descriptor_pb2.SourceCodeInfo.Location],
) -> Iterator[str]:
    name = f"{prefix}.{enum.name}"
    if not _documented(locations, path):
        yield f"enum {name}"
    for i, value in enumerate(enum.value):
        if not _documented(locations, (*path, _ENUM_VALUE, i)):
            yield f"enum value {name}.{value.name}"


def test_every_rpc_field_and_enum_value_has_a_comment(contract: list[descriptor_pb2.FileDescriptorProto]) -> None:
    missing: list[str] = []
    for f in contract:
        locations = {tuple(loc.path): loc for loc in f.source_code_info.location}
        for i, service in enumerate(f.service):
            if not _documented(locations, (_FILE_SERVICE, i)):
                missing.append(f"service {f.package}.{service.name}")
            for j, method in enumerate(service.method):
                if not _documented(locations, (_FILE_SERVICE, i, _SERVICE_METHOD, j)):
                    missing.append(f"rpc {f.package}.{service.name}.{method.name}")
        for i, msg in enumerate(f.message_type):
            missing.extend(_undocumented_in_message(msg, (_FILE_MESSAGE, i), f.package, locations))
        for i, enum in enumerate(f.enum_type):
            missing.extend(_undocumented_in_enum(enum, (_FILE_ENUM, i), f.package, locations))
    assert not missing, "undocumented (add a // comment):\n  " + "\n  ".join(missing)


def _all_messages(f: descriptor_pb2.FileDescriptorProto) -> Iterator[descriptor_pb2.DescriptorProto]:
    stack = list(f.message_type)
    while stack:
        msg = stack.pop()
        stack.extend(msg.nested_type)
        yield msg


def _all_enums(f: descriptor_pb2.FileDescriptorProto) -> Iterator[descriptor_pb2.EnumDescriptorProto]:
    yield from f.enum_type
    for msg in _all_messages(f):
        yield from msg.enum_type


def _upper_snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).upper()


def test_enums_start_with_unspecified_and_prefix_their_values(
    contract: list[descriptor_pb2.FileDescriptorProto],
) -> None:
    bad: list[str] = []
    for f in contract:
        for enum in _all_enums(f):
            prefix = _upper_snake(enum.name) + "_"
            first = enum.value[0]
            if first.number != 0 or first.name != prefix + "UNSPECIFIED":
                bad.append(f"{enum.name}: first value {first.name} = {first.number}")
            bad.extend(
                f"{enum.name}.{v.name}: not prefixed {prefix}" for v in enum.value if not v.name.startswith(prefix)
            )
    assert not bad, bad


def test_fields_are_snake_case_and_responses_carry_no_errors(
    contract: list[descriptor_pb2.FileDescriptorProto],
) -> None:
    bad: list[str] = []
    for f in contract:
        for msg in _all_messages(f):
            for field in msg.field:
                if not re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", field.name):
                    bad.append(f"{msg.name}.{field.name}: not snake_case")
                if msg.name.endswith("Response") and field.name in ERROR_FIELD_NAMES:
                    bad.append(f"{msg.name}.{field.name}: errors are gRPC statuses, not response fields")
    assert not bad, bad


def test_every_message_and_enum_is_used(contract: list[descriptor_pb2.FileDescriptorProto]) -> None:
    defined: set[str] = set()
    used: set[str] = set()
    for f in contract:
        for service in f.service:
            for method in service.method:
                used.update((method.input_type, method.output_type))
        stack = [(f".{f.package}", msg) for msg in f.message_type]
        defined.update(f".{f.package}.{enum.name}" for enum in f.enum_type)
        while stack:
            scope, msg = stack.pop()
            name = f"{scope}.{msg.name}"
            if not msg.options.map_entry:
                defined.add(name)
            defined.update(f"{name}.{enum.name}" for enum in msg.enum_type)
            stack.extend((name, nested) for nested in msg.nested_type)
            used.update(field.type_name for field in msg.field if field.type_name)
    assert not defined - used, f"defined but never used: {sorted(defined - used)}"


@pytest.mark.parametrize("module", sorted(SERVICES))
def test_rpcs_use_their_own_messages_and_mutations_take_a_request_id(
    module: str, contract: list[descriptor_pb2.FileDescriptorProto]
) -> None:
    (proto,) = [f for f in contract if f.package == f"seedstack.{module}.v1"]
    messages = {m.name: m for m in proto.message_type}
    (service,) = proto.service
    problems: list[str] = []
    for method in service.method:
        request, response = f".{proto.package}.{method.name}Request", f".{proto.package}.{method.name}Response"
        if (method.input_type, method.output_type) != (request, response):
            problems.append(f"{method.name}: takes {method.input_type} and returns {method.output_type}")
            continue
        by_name = {field.name: field for field in messages[f"{method.name}Request"].field}
        request_id = by_name.get("request_id")
        if method.name in MUTATING[module]:
            if request_id is None or request_id.number != 1 or request_id.type != request_id.TYPE_STRING:
                problems.append(f"{method.name}: mutating, needs `string request_id = 1`")
        elif request_id is not None:
            problems.append(f"{method.name}: has request_id but is not listed as mutating")
    assert not problems, problems


@pytest.mark.parametrize("module", sorted(SERVICES))
def test_service_module_imports_with_every_rpc(module: str) -> None:
    service_name, expected = SERVICES[module]
    pb2 = importlib.import_module(f"seedstack.{module}.v1.{module}_pb2")
    pb2_grpc = importlib.import_module(f"seedstack.{module}.v1.{module}_pb2_grpc")
    service = pb2.DESCRIPTOR.services_by_name[service_name]
    kinds = {
        (False, False): UNARY,
        (False, True): SERVER_STREAM,
        (True, False): CLIENT_STREAM,
    }
    actual = {m.name: kinds.get((m.client_streaming, m.server_streaming), "bidi stream") for m in service.methods}
    assert actual == expected
    for attr in (f"{service_name}Stub", f"{service_name}Servicer", f"add_{service_name}Servicer_to_server"):
        assert hasattr(pb2_grpc, attr), attr


def test_common_messages_import() -> None:
    common = importlib.import_module("seedstack.common.v1.common_pb2")
    for name in (
        "TopologyLabels",
        "TransportOffer",
        "TensorSpec",
        "ChunkSpec",
        "Manifest",
        "TransferRef",
        "ModelSpec",
        "Prompt",
        "VersionSpan",
        "Sample",
    ):
        assert name in common.DESCRIPTOR.message_types_by_name, name
