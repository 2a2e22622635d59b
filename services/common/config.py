"""Configuration: one frozen dataclass per service, read from environment variables.

Each field of a service's config is read from ``<PREFIX><FIELD>`` (``SEEDSTACK_WEIGHTHUB_PORT``);
a field may name a standard variable instead (``REDIS_URL``) through ``env_field(env=...)``. A
``--config FILE`` (YAML mapping of field names to values) supplies values under the environment.
Bad values stop the service with a message naming the variable and the value.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from services.common.errors import ConfigError

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_field(*, env: str, default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field read from the standard variable ``env`` instead of the prefixed name."""
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata={"env": env})
    return dataclasses.field(default=default, metadata={"env": env})


def env_name(cls: type, prefix: str, field_name: str) -> str:
    """The environment variable that sets ``field_name`` of ``cls``."""
    for f in dataclasses.fields(cls):
        if f.name == field_name:
            return str(f.metadata.get("env", prefix + f.name.upper()))
    raise KeyError(field_name)


def check(ok: bool, field_name: str, value: object, why: str) -> None:
    """Raise a ConfigError for ``field_name`` unless ``ok``; used in ``__post_init__``."""
    if not ok:
        raise ConfigError(f"{field_name}={value!r}: {why}")


def _convert(raw: Any, annotation: Any, var: str) -> Any:
    """Turn a raw string (from env) or YAML value into ``annotation``'s type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if raw is None or (isinstance(raw, str) and raw == ""):
            return None
        return _convert(raw, non_none[0], var)
    if origin is tuple:
        items = raw if isinstance(raw, list | tuple) else [s for s in str(raw).split(",") if s.strip()]
        return tuple(_convert(item.strip() if isinstance(item, str) else item, args[0], var) for item in items)
    try:
        if annotation is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError("expected one of 1/0/true/false/yes/no/on/off")
        if annotation is int:
            if isinstance(raw, bool):
                raise ValueError("expected an integer")
            return int(raw)
        if annotation is float:
            return float(raw)
        if annotation is Path:
            return Path(str(raw)).expanduser()
        if annotation is str:
            return str(raw)
    except ValueError as exc:
        raise ConfigError(f"{var}={raw!r} is not a valid {annotation.__name__}: {exc}") from None
    raise TypeError(f"unsupported config field type {annotation!r} for {var}")


def load_config(
    cls: type[T],
    prefix: str,
    *,
    environ: Mapping[str, str] | None = None,
    file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Build ``cls`` from (lowest first) defaults, ``file``, the environment, then ``overrides``.

    Raises ConfigError naming the variable and the value when one is missing or invalid.
    """
    environ = os.environ if environ is None else environ
    from_file: dict[str, Any] = {}
    if file is not None:
        try:
            loaded = yaml.safe_load(Path(file).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"--config {file}: cannot read: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"--config {file}: expected a mapping of field names to values")
        from_file = loaded
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(from_file) - known)
    if unknown:
        raise ConfigError(f"--config {file}: unknown field(s) {unknown}; known: {sorted(known)}")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        var = str(f.metadata.get("env", prefix + f.name.upper()))
        if overrides and f.name in overrides:
            kwargs[f.name] = overrides[f.name]
        elif var in environ:
            kwargs[f.name] = _convert(environ[var], hints[f.name], var)
        elif f.name in from_file:
            kwargs[f.name] = _convert(from_file[f.name], hints[f.name], f"{file}:{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{var} is required and not set")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        # __post_init__ names the field; say which variable sets it.
        field_name = str(exc).split("=", 1)[0]
        if field_name in known:
            raise ConfigError(f"{env_name(cls, prefix, field_name)}: {exc}") from None
        raise


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Fields every gRPC service has; a service's config extends this one level deep."""

    redis_url: str = env_field(env="REDIS_URL")
    """Redis holding this service's metadata, e.g. ``redis://127.0.0.1:6379/0``."""
    port: int
    """TCP port to serve gRPC on; 0 picks a free one (tests)."""
    host: str = "[::]"
    """Address to bind."""
    advertise_host: str = "127.0.0.1"
    """Host name other processes use to reach this one (written to the service registry)."""
    auth_token: str = env_field(env="SEEDSTACK_AUTH_TOKEN", default="")
    """Shared token every caller must send as ``authorization: Bearer <token>``; empty turns the check off."""
    tls_cert_path: Path | None = env_field(env="SEEDSTACK_TLS_CERT", default=None)
    """PEM certificate chain; with ``tls_key_path`` it turns TLS on."""
    tls_key_path: Path | None = env_field(env="SEEDSTACK_TLS_KEY", default=None)
    """PEM private key of ``tls_cert_path``."""
    tls_client_ca_path: Path | None = env_field(env="SEEDSTACK_TLS_CLIENT_CA", default=None)
    """PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS)."""
    max_message_bytes: int = 16 * 1024 * 1024
    """Largest gRPC message accepted or sent; bulk bytes go through the tensor transport instead."""
    grace_s: float = 5.0
    """Seconds in-flight RPCs get to finish after SIGTERM."""
    registry_ttl_s: float = 10.0
    """Lease of this instance's entry in the service registry; refreshed at a third of it."""

    def __post_init__(self) -> None:
        check(
            self.redis_url.startswith(("redis://", "rediss://", "unix://")),
            "redis_url",
            self.redis_url,
            "expected a redis://, rediss:// or unix:// URL",
        )
        check(0 <= self.port <= 65535, "port", self.port, "must be in 0..65535")
        check(bool(self.host), "host", self.host, "must not be empty")
        check(bool(self.advertise_host), "advertise_host", self.advertise_host, "must not be empty")
        check(
            1024 <= self.max_message_bytes <= 2**31 - 1,
            "max_message_bytes",
            self.max_message_bytes,
            "must be in 1 KiB .. 2 GiB",
        )
        check(self.grace_s >= 0, "grace_s", self.grace_s, "must be >= 0")
        check(self.registry_ttl_s >= 1, "registry_ttl_s", self.registry_ttl_s, "must be >= 1 s")
        check(
            (self.tls_cert_path is None) == (self.tls_key_path is None),
            "tls_cert_path",
            self.tls_cert_path,
            "TLS needs both a certificate and a key",
        )
        for name in ("tls_cert_path", "tls_key_path", "tls_client_ca_path"):
            path = getattr(self, name)
            check(path is None or Path(path).is_file(), name, path, "file does not exist")
        check(
            self.tls_client_ca_path is None or self.tls_cert_path is not None,
            "tls_client_ca_path",
            self.tls_client_ca_path,
            "mutual TLS needs the server's own certificate too",
        )
