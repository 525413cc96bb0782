"""AhaSend's OpenAPI spec as JSON-Schema validators for request and response bodies."""

from __future__ import annotations

import functools
from typing import Any

import jsonschema
import yaml

from tests.paths import SPEC


@functools.cache
def _spec() -> dict[str, Any]:
    with SPEC.open(encoding="utf-8") as fh:
        spec: dict[str, Any] = yaml.safe_load(fh)
    return spec


@functools.cache
def validator(schema_name: str) -> jsonschema.Draft202012Validator:
    """A validator for ``#/components/schemas/<schema_name>`` with the spec's $refs resolvable."""
    spec = _spec()
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": spec["components"]}
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def errors(schema_name: str, body: Any) -> list[str]:
    """Human-readable violations of ``schema_name`` by ``body`` (empty when valid)."""
    found = validator(schema_name).iter_errors(body)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in found]


def assert_valid_request(body: Any) -> None:
    """Fail unless ``body`` is a valid ``CreateConversationMessageRequest``."""
    problems = errors("CreateConversationMessageRequest", body)
    assert not problems, problems
