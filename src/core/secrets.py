"""Secrets (provider credentials, the receipt token) from AWS Secrets Manager through Powertools Parameters.

Values are cached in the function for five minutes (Powertools' default); they never go to logs or metrics.
"""

from __future__ import annotations

import functools
from typing import Any

import boto3
from aws_lambda_powertools.utilities.parameters import SecretsProvider

from core.settings import Settings


@functools.cache
def _provider(region: str, endpoint: str) -> SecretsProvider:
    return SecretsProvider(
        boto3_client=boto3.client("secretsmanager", region_name=region, endpoint_url=endpoint or None)
    )


def secret_text(name: str, settings: Settings) -> str:
    """A secret's string value."""
    value = _provider(settings.AWS_REGION, settings.AWS_ENDPOINT_URL).get(name, max_age=300)
    if isinstance(value, bytes):
        return value.decode()
    if not isinstance(value, str):
        raise ValueError(f"secret {name!r} must hold text")
    return value


def secret_json(name: str, settings: Settings) -> dict[str, Any]:
    """A secret holding a JSON object; raises ValueError naming the secret (never its content) otherwise."""
    value = _provider(settings.AWS_REGION, settings.AWS_ENDPOINT_URL).get(name, max_age=300, transform="json")
    if not isinstance(value, dict):
        raise ValueError(f"secret {name!r} must hold a JSON object")
    return value


def reset() -> None:
    """Drop cached clients and values (the embedded stack and tests start new endpoints)."""
    _provider.cache_clear()
