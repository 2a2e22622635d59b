"""The declarative plan: a mixture spec parsed from a mapping (YAML or a proto turned into a dict) and checked.

Every error names the field path and the bad value (``sources[1].weight=-0.5: must be >= 0``), so a
user fixes the spec without reading the code. The resolved spec (defaults filled in, paths expanded)
is a plain dict in the proto's field names, so it round-trips through ``MixtureSpec`` and JSON.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.common.errors import InvalidArgument

FORMATS = ("jsonl", "parquet", "generated")
VERIFIERS = ("unspecified", "arithmetic", "math", "code")
DEFAULT_LOOKAHEAD_BATCHES = 4
DEFAULT_COST_ALPHA = 1.0
DEFAULT_COST_BETA = 1.0 / 4096
_EXTENSIONS = {"jsonl": (".jsonl", ".json", ".jsonl.gz"), "parquet": (".parquet", ".pq")}

_TOP_KEYS = {
    "sources",
    "schedule",
    "length_bucket_bounds_tokens",
    "global_batch_size",
    "seed",
    "num_ranks",
    "tokenizer",
    "balance",
    "rl",
}
_SOURCE_KEYS = {
    "name",
    "format",
    "path",
    "generator",
    "generator_options",
    "weight",
    "preprocessing",
    "num_loader_workers",
}
_PRE_KEYS = {"text_field", "completion_field", "reference_field", "verifier", "max_length_tokens", "pack"}
_BALANCE_KEYS = {"cost_alpha", "cost_beta", "lookahead_batches"}
_RL_KEYS = {"group_size", "max_staleness_versions", "dynamic_sampling", "max_buffered_samples"}


@dataclass(frozen=True)
class Preprocessing:
    """How a source's records become samples."""

    text_field: str = "text"
    completion_field: str = ""
    reference_field: str = ""
    verifier: str = "unspecified"
    max_length_tokens: int = 0
    pack: bool = False


@dataclass(frozen=True)
class SourceConf:
    """One source of the mixture, checked; ``shards`` are the resolved files (empty when generated)."""

    name: str
    format: str
    shards: tuple[str, ...]
    generator: str
    generator_options: dict[str, str]
    weight: float
    preprocessing: Preprocessing
    num_loader_workers: int


@dataclass(frozen=True)
class RlConf:
    """RL mode settings."""

    group_size: int
    max_staleness_versions: int
    dynamic_sampling: bool
    max_buffered_samples: int


@dataclass(frozen=True)
class Plan:
    """A checked mixture spec."""

    sources: tuple[SourceConf, ...]
    schedule: tuple[tuple[int, dict[str, float]], ...]
    length_bucket_bounds_tokens: tuple[int, ...]
    global_batch_size: int
    seed: int
    num_ranks: int
    tokenizer: str
    cost_alpha: float
    cost_beta: float
    lookahead_batches: int
    rl: RlConf | None
    resolved: dict[str, Any] = field(compare=False, repr=False)

    @property
    def source_names(self) -> list[str]:
        """Source names in spec order."""
        return [s.name for s in self.sources]

    def weights_at(self, step: int) -> list[float]:
        """Normalised source weights in force at global ``step`` (the curriculum applied)."""
        weights = {s.name: s.weight for s in self.sources}
        for start, changes in self.schedule:
            if start > step:
                break
            weights.update(changes)
        raw = [weights[s.name] for s in self.sources]
        total = sum(raw)
        return [w / total for w in raw]

    def stage_start(self, step: int) -> int:
        """First step of the schedule stage that ``step`` belongs to (0 before any change)."""
        start = 0
        for s, _ in self.schedule:
            if s <= step:
                start = s
        return start

    def next_stage_start(self, step: int) -> int | None:
        """First step of the stage after ``step``'s, or None when it is the last."""
        for s, _ in self.schedule:
            if s > step:
                return s
        return None


def _fail(path: str, value: object, why: str) -> InvalidArgument:
    return InvalidArgument(f"{path}={value!r}: {why}")


def _check_keys(data: Mapping[str, Any], allowed: set[str], path: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InvalidArgument(f"{path or 'spec'}: unknown field(s) {unknown}; known: {sorted(allowed)}")


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(path, value, "expected a mapping")
    return value


def _int(value: Any, path: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool):
        raise _fail(path, value, "expected an integer")
    try:
        number = int(value)
        if isinstance(value, float) and value != number:
            raise ValueError
    except (TypeError, ValueError):
        raise _fail(path, value, "expected an integer") from None
    if minimum is not None and number < minimum:
        raise _fail(path, value, f"must be >= {minimum}")
    return number


def _float(value: Any, path: str, *, minimum: float | None = None) -> float:
    if isinstance(value, bool):
        raise _fail(path, value, "expected a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _fail(path, value, "expected a number") from None
    if not math.isfinite(number):
        raise _fail(path, value, "must be finite")
    if minimum is not None and number < minimum:
        raise _fail(path, value, f"must be >= {minimum:g}")
    return number


def _str(value: Any, path: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _fail(path, value, "expected a string")
    return value


def _enum(value: Any, path: str, prefix: str, allowed: tuple[str, ...]) -> str:
    text = _str(value, path).lower()
    text = text.removeprefix(prefix.lower())
    if text not in allowed:
        raise _fail(path, value, f"expected one of {list(allowed)}")
    return text


def resolve_shards(pattern: str, fmt: str, path: str) -> tuple[str, ...]:
    """The files a source path names: a file, a directory (its files of the format) or a glob."""
    if not pattern:
        raise _fail(path, pattern, f"a {fmt} source needs a path")
    expanded = os.path.expanduser(pattern)
    if any(c in expanded for c in "*?["):
        files = sorted(f for f in glob.glob(expanded) if os.path.isfile(f))
    elif os.path.isdir(expanded):
        files = sorted(str(p) for p in Path(expanded).iterdir() if p.is_file() and p.name.endswith(_EXTENSIONS[fmt]))
    elif os.path.isfile(expanded):
        files = [expanded]
    else:
        raise _fail(path, pattern, "no such file or directory")
    if not files:
        raise _fail(path, pattern, f"matches no {fmt} files")
    for f in files:
        if not os.access(f, os.R_OK):
            raise _fail(path, f, "file is not readable")
    return tuple(os.path.abspath(f) for f in files)


def _source(data: Any, index: int, generators: set[str]) -> tuple[SourceConf, dict[str, Any]]:
    path = f"sources[{index}]"
    data = _mapping(data, path)
    _check_keys(data, _SOURCE_KEYS, path)
    name = _str(data.get("name"), f"{path}.name")
    if not name or any(c in name for c in " :/\n\t"):
        raise _fail(f"{path}.name", name, "must be non-empty without spaces, ':' or '/'")
    fmt = _enum(data.get("format", ""), f"{path}.format", "source_format_", FORMATS)
    generator = _str(data.get("generator"), f"{path}.generator")
    options_raw = _mapping(data.get("generator_options"), f"{path}.generator_options")
    options = {str(k): str(v) for k, v in options_raw.items()}
    shards: tuple[str, ...] = ()
    if fmt == "generated":
        if generator not in generators:
            raise _fail(f"{path}.generator", generator, f"unknown generator; known: {sorted(generators)}")
        if data.get("path"):
            raise _fail(f"{path}.path", data.get("path"), "a generated source takes no path")
    else:
        if generator or options:
            raise _fail(f"{path}.generator", generator, f"only generated sources take a generator, not {fmt}")
        shards = resolve_shards(_str(data.get("path"), f"{path}.path"), fmt, f"{path}.path")
    weight = _float(data.get("weight", 1.0), f"{path}.weight", minimum=0.0)
    pre_raw = _mapping(data.get("preprocessing"), f"{path}.preprocessing")
    _check_keys(pre_raw, _PRE_KEYS, f"{path}.preprocessing")
    pre = Preprocessing(
        text_field=_str(pre_raw.get("text_field"), f"{path}.preprocessing.text_field") or "text",
        completion_field=_str(pre_raw.get("completion_field"), f"{path}.preprocessing.completion_field"),
        reference_field=_str(pre_raw.get("reference_field"), f"{path}.preprocessing.reference_field"),
        verifier=_enum(
            pre_raw.get("verifier") or "unspecified", f"{path}.preprocessing.verifier", "verifier_kind_", VERIFIERS
        ),
        max_length_tokens=_int(
            pre_raw.get("max_length_tokens", 0), f"{path}.preprocessing.max_length_tokens", minimum=0
        ),
        pack=bool(pre_raw.get("pack", False)),
    )
    if pre.pack and pre.max_length_tokens == 0:
        raise _fail(f"{path}.preprocessing.pack", True, "packing needs max_length_tokens > 0")
    workers = _int(data.get("num_loader_workers", 0), f"{path}.num_loader_workers", minimum=0)
    if workers > 64:
        raise _fail(f"{path}.num_loader_workers", workers, "must be <= 64")
    conf = SourceConf(name, fmt, shards, generator, options, weight, pre, workers)
    resolved = {
        "name": name,
        "format": f"SOURCE_FORMAT_{fmt.upper()}",
        "path": _str(data.get("path"), f"{path}.path"),
        "generator": generator,
        "generator_options": options,
        "weight": weight,
        "preprocessing": {
            "text_field": pre.text_field,
            "completion_field": pre.completion_field,
            "reference_field": pre.reference_field,
            "verifier": f"VERIFIER_KIND_{pre.verifier.upper()}",
            "max_length_tokens": pre.max_length_tokens,
            "pack": pre.pack,
        },
        "num_loader_workers": workers,
    }
    return conf, resolved


def parse_yaml(text: str) -> Mapping[str, Any]:
    """The mapping in a YAML spec; InvalidArgument with the parser's position when it is malformed."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"mixture_yaml is not valid YAML: {exc}") from None
    if not isinstance(data, Mapping):
        raise InvalidArgument(f"mixture_yaml must be a mapping of spec fields, got {type(data).__name__}")
    return data


def parse_plan(data: Mapping[str, Any], generators: set[str]) -> Plan:
    """Check a spec mapping and return the plan; InvalidArgument names the first wrong field."""
    data = _mapping(data, "spec")
    _check_keys(data, _TOP_KEYS, "")
    raw_sources = data.get("sources") or []
    if not isinstance(raw_sources, list) or not raw_sources:
        raise _fail("sources", raw_sources, "need a list of at least one source")
    parsed = [_source(s, i, generators) for i, s in enumerate(raw_sources)]
    sources = tuple(p[0] for p in parsed)
    names = [s.name for s in sources]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise _fail("sources[].name", dupes, "names must be unique")
    if sum(s.weight for s in sources) <= 0:
        raise _fail("sources[].weight", [s.weight for s in sources], "at least one weight must be > 0")

    schedule: list[tuple[int, dict[str, float]]] = []
    raw_schedule = data.get("schedule") or []
    if not isinstance(raw_schedule, list):
        raise _fail("schedule", raw_schedule, "expected a list")
    weights = {s.name: s.weight for s in sources}
    previous = -1
    for i, entry in enumerate(raw_schedule):
        path = f"schedule[{i}]"
        entry = _mapping(entry, path)
        _check_keys(entry, {"start_step", "weights"}, path)
        start = _int(entry.get("start_step", 0), f"{path}.start_step", minimum=0)
        if start <= previous:
            raise _fail(f"{path}.start_step", start, f"must be after the previous entry's start_step {previous}")
        previous = start
        changes: dict[str, float] = {}
        for name, value in _mapping(entry.get("weights"), f"{path}.weights").items():
            if name not in weights:
                raise _fail(f"{path}.weights", name, f"unknown source; sources: {names}")
            changes[str(name)] = _float(value, f"{path}.weights.{name}", minimum=0.0)
        if not changes:
            raise _fail(f"{path}.weights", {}, "a schedule entry must change at least one weight")
        weights.update(changes)
        if sum(weights.values()) <= 0:
            raise _fail(f"{path}.weights", changes, "leaves every source with weight 0")
        schedule.append((start, changes))

    buckets_raw = data.get("length_bucket_bounds_tokens") or []
    if not isinstance(buckets_raw, list):
        raise _fail("length_bucket_bounds_tokens", buckets_raw, "expected a list")
    buckets = tuple(_int(b, f"length_bucket_bounds_tokens[{i}]", minimum=1) for i, b in enumerate(buckets_raw))
    if list(buckets) != sorted(set(buckets)):
        raise _fail("length_bucket_bounds_tokens", list(buckets), "bounds must ascend strictly")

    batch = _int(data.get("global_batch_size", 0), "global_batch_size", minimum=1)
    if batch > 1_000_000:
        raise _fail("global_batch_size", batch, "must be <= 1000000")
    seed = _int(data.get("seed", 0), "seed", minimum=0)
    num_ranks = _int(data.get("num_ranks", 0), "num_ranks", minimum=1)
    if num_ranks > 4096:
        raise _fail("num_ranks", num_ranks, "must be <= 4096")
    tokenizer = _str(data.get("tokenizer"), "tokenizer") or "char"
    if tokenizer not in ("char",) and not os.path.isdir(os.path.expanduser(tokenizer)):
        raise _fail("tokenizer", tokenizer, "expected 'char' or an existing local tokenizer directory")

    balance = _mapping(data.get("balance"), "balance")
    _check_keys(balance, _BALANCE_KEYS, "balance")
    alpha = _float(balance.get("cost_alpha", 0.0), "balance.cost_alpha", minimum=0.0)
    beta = _float(balance.get("cost_beta", 0.0), "balance.cost_beta", minimum=0.0)
    if alpha == 0 and beta == 0:
        alpha, beta = DEFAULT_COST_ALPHA, DEFAULT_COST_BETA
    lookahead = _int(balance.get("lookahead_batches", 0), "balance.lookahead_batches", minimum=0)
    lookahead = lookahead or DEFAULT_LOOKAHEAD_BATCHES
    if lookahead > 64:
        raise _fail("balance.lookahead_batches", lookahead, "must be <= 64")

    rl: RlConf | None = None
    resolved_rl: dict[str, Any] | None = None
    if data.get("rl") is not None:
        rl_raw = _mapping(data.get("rl"), "rl")
        _check_keys(rl_raw, _RL_KEYS, "rl")
        group = _int(rl_raw.get("group_size", 0), "rl.group_size", minimum=1)
        if group > 1024:
            raise _fail("rl.group_size", group, "must be <= 1024")
        staleness = _int(rl_raw.get("max_staleness_versions", 0), "rl.max_staleness_versions", minimum=0)
        buffered = _int(rl_raw.get("max_buffered_samples", 0), "rl.max_buffered_samples", minimum=0)
        buffered = buffered or 8 * batch
        if buffered < batch:
            raise _fail("rl.max_buffered_samples", buffered, f"must hold at least one global batch ({batch})")
        rl = RlConf(group, staleness, bool(rl_raw.get("dynamic_sampling", False)), buffered)
        resolved_rl = {
            "group_size": group,
            "max_staleness_versions": staleness,
            "dynamic_sampling": rl.dynamic_sampling,
            "max_buffered_samples": buffered,
        }
        for i, s in enumerate(sources):
            if s.preprocessing.pack:
                raise _fail(f"sources[{i}].preprocessing.pack", True, "RL plans hand out prompts; packing is for SFT")

    resolved: dict[str, Any] = {
        "sources": [p[1] for p in parsed],
        "schedule": [{"start_step": s, "weights": w} for s, w in schedule],
        "length_bucket_bounds_tokens": list(buckets),
        "global_batch_size": batch,
        "seed": seed,
        "num_ranks": num_ranks,
        "tokenizer": tokenizer,
        "balance": {"cost_alpha": alpha, "cost_beta": beta, "lookahead_batches": lookahead},
    }
    if resolved_rl is not None:
        resolved["rl"] = resolved_rl
    return Plan(
        sources=sources,
        schedule=tuple(schedule),
        length_bucket_bounds_tokens=buckets,
        global_batch_size=batch,
        seed=seed,
        num_ranks=num_ranks,
        tokenizer=tokenizer,
        cost_alpha=alpha,
        cost_beta=beta,
        lookahead_batches=lookahead,
        rl=rl,
        resolved=resolved,
    )
