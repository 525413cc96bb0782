"""The wire form of a payload: the JSON request body, serialised once."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from typing import Any

__all__ = ["serialise"]


def _orjson_dumps() -> Callable[[Any], bytes] | None:
    try:
        dumps: Callable[[Any], bytes] = importlib.import_module("orjson").dumps
    except ImportError:
        return None
    return dumps


_ORJSON_DUMPS = _orjson_dumps()


def serialise(payload: dict[str, Any]) -> bytes:
    """The request body: compact UTF-8 JSON, serialised once.

    With orjson installed (a default dependency; the stdlib json is the fallback) the
    bytes come out directly: same output, ~30x less CPU, and no intermediate ``str`` (one
    copy less of a 20 MiB attachment).
    """
    if _ORJSON_DUMPS is not None:
        return _ORJSON_DUMPS(payload)
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
