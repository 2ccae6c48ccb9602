"""plan_reminders: EventBridge clinic events (source rappel.clinic) -> reminder messages."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from core.observability import lambda_entry
from core.planning import handle_clinic_event
from core.settings import load_settings


@lambda_entry(correlation_id_path="id")
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Apply one clinic event; a refused event is reported in the result, not retried."""
    result = handle_clinic_event(event, load_settings())
    return {
        "applied": result.applied,
        "ignored": result.ignored,
        "rejected": result.rejected,
        "created": result.created,
        "cancelled": result.cancelled,
        "replanned": result.replanned,
        "errors": result.errors,
    }
