"""The config loader: env vars with a prefix, standard variables, a YAML file, clear errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from services.common.config import ServerConfig, check, load_config
from services.common.errors import ConfigError


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoConfig(ServerConfig):
    port: int = 50099
    """Port."""
    num_workers: int = 2
    """Workers."""
    ratio: float = 0.5
    """A ratio."""
    tags: tuple[str, ...] = ()
    """Tags."""
    verbose: bool = False
    """Verbose."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.num_workers >= 1, "num_workers", self.num_workers, "must be >= 1")


ENV = {"REDIS_URL": "redis://127.0.0.1:1/0"}


def test_reads_prefixed_and_standard_variables() -> None:
    cfg = load_config(
        DemoConfig,
        "SEEDSTACK_DEMO_",
        environ={
            **ENV,
            "SEEDSTACK_DEMO_NUM_WORKERS": "7",
            "SEEDSTACK_DEMO_RATIO": "0.25",
            "SEEDSTACK_DEMO_TAGS": "a, b",
            "SEEDSTACK_DEMO_VERBOSE": "yes",
            "SEEDSTACK_AUTH_TOKEN": "s3cret",
        },
    )
    assert (cfg.num_workers, cfg.ratio, cfg.tags, cfg.verbose) == (7, 0.25, ("a", "b"), True)
    assert cfg.redis_url == ENV["REDIS_URL"] and cfg.auth_token == "s3cret" and cfg.port == 50099
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.port = 1  # type: ignore[misc]


def test_missing_required_variable_is_named() -> None:
    with pytest.raises(ConfigError, match="REDIS_URL is required"):
        load_config(DemoConfig, "SEEDSTACK_DEMO_", environ={})


def test_unparsable_value_names_variable_and_value() -> None:
    with pytest.raises(ConfigError, match=r"SEEDSTACK_DEMO_NUM_WORKERS='many' is not a valid int"):
        load_config(DemoConfig, "SEEDSTACK_DEMO_", environ={**ENV, "SEEDSTACK_DEMO_NUM_WORKERS": "many"})


def test_out_of_range_value_names_variable_and_value() -> None:
    with pytest.raises(ConfigError, match=r"SEEDSTACK_DEMO_NUM_WORKERS: num_workers=0: must be >= 1"):
        load_config(DemoConfig, "SEEDSTACK_DEMO_", environ={**ENV, "SEEDSTACK_DEMO_NUM_WORKERS": "0"})
    with pytest.raises(ConfigError, match=r"SEEDSTACK_DEMO_PORT: port=70000"):
        load_config(DemoConfig, "SEEDSTACK_DEMO_", environ={**ENV, "SEEDSTACK_DEMO_PORT": "70000"})
    with pytest.raises(ConfigError, match=r"REDIS_URL: redis_url='http://x'"):
        load_config(DemoConfig, "SEEDSTACK_DEMO_", environ={"REDIS_URL": "http://x"})


def test_tls_needs_existing_cert_and_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"SEEDSTACK_TLS_CERT: .*both a certificate and a key"):
        load_config(DemoConfig, "SEEDSTACK_DEMO_", environ={**ENV, "SEEDSTACK_TLS_CERT": str(tmp_path / "c")})
    with pytest.raises(ConfigError, match="file does not exist"):
        load_config(
            DemoConfig,
            "SEEDSTACK_DEMO_",
            environ={**ENV, "SEEDSTACK_TLS_CERT": str(tmp_path / "c"), "SEEDSTACK_TLS_KEY": str(tmp_path / "k")},
        )


def test_file_values_sit_under_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("num_workers: 3\nratio: 0.75\n")
    cfg = load_config(DemoConfig, "SEEDSTACK_DEMO_", environ={**ENV, "SEEDSTACK_DEMO_RATIO": "0.1"}, file=path)
    assert (cfg.num_workers, cfg.ratio) == (3, 0.1)
    path.write_text("num_wrokers: 3\n")
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['num_wrokers'\]"):
        load_config(DemoConfig, "SEEDSTACK_DEMO_", environ=ENV, file=path)
