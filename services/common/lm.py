"""Building a small Hugging Face Llama from ``ModelSpec.config_json``, shared by trainer and rollout.

Both sides must build the same architecture from the same JSON, or the trainer's published weights would
not load on the rollout servers; one function keeps their validation and error messages the same.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from services.common.errors import InvalidArgument


def llama_config(config_json: str, defaults: Mapping[str, Any]) -> Any:
    """A ``LlamaConfig`` from JSON, ``defaults`` where the JSON is silent or empty; InvalidArgument if bad."""
    from transformers import LlamaConfig

    fields = dict(defaults)
    if config_json:
        try:
            given = json.loads(config_json)
        except ValueError as exc:
            raise InvalidArgument(f"model.config_json: not JSON: {exc}") from None
        if not isinstance(given, dict):
            raise InvalidArgument("model.config_json: expected a JSON object")
        fields.update(given)
    if fields.get("model_type", "llama") != "llama":
        raise InvalidArgument(f"model.config_json: model_type={fields['model_type']!r}, only 'llama' is built in")
    fields.pop("model_type", None)
    try:
        return LlamaConfig(**fields)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"model.config_json: {exc}") from None
