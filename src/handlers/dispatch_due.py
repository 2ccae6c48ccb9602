"""dispatch_due: every SMS_PROCESSING_INTERVAL_MINUTES, claim due messages and enqueue what can be sent."""

from dataclasses import asdict
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from core.dispatch import dispatch_due
from core.observability import lambda_entry
from core.settings import load_settings


@lambda_entry()
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """One dispatcher run (the schedule's event carries nothing we need)."""
    return asdict(dispatch_due(load_settings()))
