"""daily_statistics: at 04:00 APP_TIMEZONE, the day before's statistics from the counters, stored and logged."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from core.observability import lambda_entry
from core.settings import load_settings
from core.statistics import daily_statistics


@lambda_entry()
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """One daily report (the schedule's event carries nothing we need)."""
    return daily_statistics(load_settings()).as_dict()
