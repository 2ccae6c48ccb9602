"""health_check: every SMS_HEALTH_CHECK_INTERVAL_MINUTES, measure the scheduler's health and emit its metrics."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from core.health import run_health_check
from core.observability import lambda_entry
from core.settings import load_settings


@lambda_entry()
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """One health check (the schedule's event carries nothing we need)."""
    return run_health_check(load_settings()).as_dict()
