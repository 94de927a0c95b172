"""Run parameters: defaults merged with overrides, checked against a JSON schema.

The schema comes from the deployment (the engine generates it from the flow's
signature); the orchestrator never imports user code to check parameters.
"""

from __future__ import annotations

import functools
from typing import Any

import jsonschema
import msgspec

from shared.errors import InvalidParameters
from shared.models import Deployment


def merge(defaults: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    return {**defaults, **(overrides or {})}


@functools.lru_cache(maxsize=1024)
def _validator(schema_json: bytes) -> jsonschema.protocols.Validator:
    schema = msgspec.json.decode(schema_json)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema)


def check_schema(schema: dict[str, Any]) -> None:
    """Refuse a deployment whose parameter schema is not a valid JSON schema."""
    if not schema:
        return
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InvalidParameters(
            f"parameter_schema is not a valid JSON schema: {exc.message}"
        ) from None


def validate(deployment: Deployment, parameters: dict[str, Any]) -> None:
    """Raise InvalidParameters listing every problem, when the deployment enforces its schema."""
    if not deployment.enforce_parameter_schema or not deployment.parameter_schema:
        return
    validator = _validator(msgspec.json.encode(deployment.parameter_schema))
    problems = []
    for error in sorted(validator.iter_errors(parameters), key=lambda e: list(e.path)):
        where = ".".join(str(p) for p in error.path) or "(parameters)"
        problems.append({"parameter": where, "message": error.message})
    if problems:
        summary = "; ".join(f"{p['parameter']}: {p['message']}" for p in problems)
        raise InvalidParameters(
            f"parameters do not match the schema of {deployment.full_name}: {summary}",
            details={"problems": problems},
        )
