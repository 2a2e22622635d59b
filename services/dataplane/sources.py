"""Reading one source: its shards' record index, the deterministic record order, preprocessing.

A source's records are numbered by a sequence number ``seq`` (0, 1, 2, ... for ever). For a file source,
``seq`` maps to (epoch, position) and the position to a record through a chunked shuffle seeded by
(plan seed, source name, epoch): chunks of ``CHUNK_RECORDS`` records are visited in a random order
and each chunk in a random order of its own, so reads stay local to a row group. A generated source
makes record ``seq`` from (seed, source, seq). Nothing here depends on which process reads it, so
any worker (or its replacement) produces the same sample for the same ``seq``.

The index of a JSONL shard is a numpy array of line offsets: flat memory that forked or spawned
readers do not copy as reference counts touch it (Python lists of ints do).
"""

from __future__ import annotations

import json
import mmap
import random
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from services.dataplane.spec import SourceConf

CHUNK_RECORDS = 256


@dataclass
class LoadedSample:
    """One preprocessed sample: where it came from and its tokens."""

    source: int
    """Index of the source in the spec."""
    seq: int
    """Sequence number within the source's stream."""
    record_id: str
    """Stable id of the record (``shard-file:line`` or ``gen:N``)."""
    tokens: np.ndarray
    """Token ids, int32: the prompt/text, then the completion if there is one."""
    prompt_len: int
    """Tokens of ``tokens`` that belong to the prompt (all of them when there is no completion)."""
    text: str
    """Prompt text (RL) or text."""
    reference: str
    """Verifier reference (RL), empty otherwise."""

    @property
    def length(self) -> int:
        """Tokens in the sample."""
        return int(self.tokens.shape[0])


def tokenize_char(text: str) -> np.ndarray:
    """The built-in "char" tokenizer: the UTF-8 bytes of the text, one token each (vocabulary 256)."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)


def load_tokenizer(name: str) -> Callable[[str], np.ndarray]:
    """The tokenizer a spec names: "char" or a local Hugging Face tokenizer directory."""
    if name == "char":
        return tokenize_char
    from transformers import AutoTokenizer  # only for plans that name a tokenizer directory

    tok = AutoTokenizer.from_pretrained(name, local_files_only=True)

    def encode(text: str) -> np.ndarray:
        return np.asarray(tok.encode(text, add_special_tokens=False), dtype=np.int32)

    return encode


def _rng(seed: int, *parts: object) -> random.Random:
    key = ":".join(str(p) for p in (seed, *parts))
    return random.Random(zlib.crc32(key.encode()) * 1_000_003 + len(key))


def gen_arithmetic(seed: int, source: str, seq: int, options: dict[str, str]) -> dict[str, str]:
    """Multi-step arithmetic: ``{"text": "Compute 3 + 4 * 2 - 5.", "answer": "6"}`` (Python precedence)."""
    rng = _rng(seed, source, seq)
    num_terms = int(options.get("num_terms", "3"))
    max_value = int(options.get("max_value", "99"))
    terms = [str(rng.randint(0, max_value))]
    for _ in range(num_terms - 1):
        terms += [rng.choice("+-*"), str(rng.randint(0, max_value))]
    expression = " ".join(terms)
    return {"text": f"Compute {expression}.", "answer": str(eval(expression, {"__builtins__": {}}))}


_WORDS = ("alpha", "beta", "gamma", "delta", "data", "plane", "token", "batch", "rank", "loss", "step")


def gen_synthetic(seed: int, source: str, seq: int, options: dict[str, str]) -> dict[str, str]:
    """Text of a long-tailed (log-normal) length in characters, for load and balance experiments.

    Options: ``median_tokens`` (124), ``sigma`` (1.2), ``min_tokens`` (20), ``max_tokens`` (4000) and
    ``busy_us_per_token`` (0): CPU time spent per token, standing in for an expensive pipeline
    (decoding, filtering) so that cost-aware loader partitioning can be observed.
    """
    rng = _rng(seed, source, seq)
    median = float(options.get("median_tokens", "124"))
    sigma = float(options.get("sigma", "1.2"))
    length = int(rng.lognormvariate(np.log(median), sigma))
    length = max(int(options.get("min_tokens", "20")), min(int(options.get("max_tokens", "4000")), length))
    words: list[str] = []
    size = 0
    while size < length:
        word = _WORDS[rng.randrange(len(_WORDS))]
        words.append(word)
        size += len(word) + 1
    text = " ".join(words)[:length]
    busy_us = float(options.get("busy_us_per_token", "0"))
    if busy_us > 0:
        deadline = time.perf_counter() + busy_us * length / 1e6
        while time.perf_counter() < deadline:
            pass
    return {"text": text}


GENERATORS: dict[str, Callable[[int, str, int, dict[str, str]], dict[str, str]]] = {
    "arithmetic": gen_arithmetic,
    "synthetic": gen_synthetic,
}


def _jsonl_offsets(path: str) -> np.ndarray:
    """Start offsets of the lines of a JSONL file plus the end offset (int64, length records + 1)."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size == 0:
            return np.zeros(1, dtype=np.int64)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            newlines = np.flatnonzero(np.frombuffer(mm, dtype=np.uint8) == 10).astype(np.int64)
    starts = np.concatenate([[0], newlines + 1])
    if starts[-1] >= size:
        starts = starts[:-1]
    return np.concatenate([starts, [size]]).astype(np.int64)


class SourceReader:
    """Reads and preprocesses records of one source by sequence number (inside a loader worker)."""

    def __init__(self, conf: SourceConf, index: int, seed: int, tokenizer: str) -> None:
        self.conf = conf
        self.index = index
        self.seed = seed
        self.encode = load_tokenizer(tokenizer)
        self._offsets: list[np.ndarray] = []
        self._parquet: list[object] = []
        self._row_groups: list[np.ndarray] = []
        self._cached_group: tuple[int, int, dict[str, list[object]]] | None = None
        counts: list[int] = []
        if conf.format == "jsonl":
            for shard in conf.shards:
                offsets = _jsonl_offsets(shard)
                self._offsets.append(offsets)
                counts.append(len(offsets) - 1)
        elif conf.format == "parquet":
            import pyarrow.parquet as pq

            for shard in conf.shards:
                pf = pq.ParquetFile(shard)
                self._parquet.append(pf)
                sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
                self._row_groups.append(np.cumsum([0, *sizes]).astype(np.int64))
                counts.append(pf.metadata.num_rows)
        self.shard_starts = np.cumsum([0, *counts]).astype(np.int64)
        self.num_records = int(self.shard_starts[-1]) if conf.format != "generated" else -1
        self._perm_epoch = -1
        self._perm = np.zeros(0, dtype=np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            n = self.num_records
            rng = np.random.default_rng([self.seed, zlib.crc32(self.conf.name.encode()), epoch])
            num_chunks = (n + CHUNK_RECORDS - 1) // CHUNK_RECORDS
            parts = []
            for chunk in rng.permutation(num_chunks):
                start = int(chunk) * CHUNK_RECORDS
                stop = min(n, start + CHUNK_RECORDS)
                parts.append(start + rng.permutation(stop - start))
            self._perm = np.concatenate(parts).astype(np.int64)
            self._perm_epoch = epoch
        return self._perm

    def record_of(self, seq: int) -> int:
        """Global record number of sequence number ``seq`` (generated sources: ``seq`` itself)."""
        if self.num_records < 0:
            return seq
        epoch, position = divmod(seq, self.num_records)
        return int(self._permutation(epoch)[position])

    def _read(self, record: int) -> tuple[str, dict[str, object]]:
        """(record id, record mapping); raises ValueError with the place when it does not parse."""
        if self.conf.format == "generated":
            return f"gen:{record}", dict(
                GENERATORS[self.conf.generator](self.seed, self.conf.name, record, self.conf.generator_options)
            )
        shard = int(np.searchsorted(self.shard_starts, record, side="right") - 1)
        local = record - int(self.shard_starts[shard])
        name = self.conf.shards[shard].rsplit("/", 1)[-1]
        if self.conf.format == "jsonl":
            offsets = self._offsets[shard]
            with open(self.conf.shards[shard], "rb") as f:
                f.seek(int(offsets[local]))
                raw = f.read(int(offsets[local + 1] - offsets[local]))
            where = f"{name}:{local + 1}"
            try:
                value = json.loads(raw)
            except ValueError as exc:
                raise ValueError(f"{where}: not JSON: {exc}") from None
            if not isinstance(value, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(value).__name__}")
            return where, value
        groups = self._row_groups[shard]
        group = int(np.searchsorted(groups, local, side="right") - 1)
        if self._cached_group is None or self._cached_group[:2] != (shard, group):
            table = self._parquet[shard].read_row_group(group)  # type: ignore[attr-defined]
            self._cached_group = (shard, group, table.to_pydict())
        columns = self._cached_group[2]
        row = local - int(groups[group])
        return f"{name}:row{local}", {k: v[row] for k, v in columns.items()}

    def _field(self, record: dict[str, object], name: str, where: str) -> str:
        if name not in record:
            raise ValueError(f"{where}: no field {name!r}")
        value = record[name]
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"{where}: field {name!r} is {type(value).__name__}, expected text")

    def load(self, seq: int) -> LoadedSample:
        """The preprocessed sample of ``seq``; ValueError naming the record when it cannot be used."""
        record_no = self.record_of(seq)
        where, record = self._read(record_no)
        pre = self.conf.preprocessing
        text = self._field(record, pre.text_field, where)
        tokens = self.encode(text)
        prompt_len = len(tokens)
        if pre.completion_field:
            completion = self.encode(self._field(record, pre.completion_field, where))
            tokens = np.concatenate([tokens, completion])
        reference = self._field(record, pre.reference_field, where) if pre.reference_field else ""
        if pre.max_length_tokens and len(tokens) > pre.max_length_tokens:
            tokens = tokens[: pre.max_length_tokens]
            prompt_len = min(prompt_len, pre.max_length_tokens)
        if len(tokens) == 0:
            raise ValueError(f"{where}: empty text")
        return LoadedSample(self.index, seq, where, tokens.astype(np.int32), prompt_len, text, reference)
