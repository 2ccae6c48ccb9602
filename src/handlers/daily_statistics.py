"""daily_statistics: at 00:00 APP_TIMEZONE, compute the day's statistics from the counters, store and log them."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from core.observability import lambda_entry
from core.settings import load_settings
from core.statistics import daily_statistics


@lambda_entry()
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """One daily report (the schedule's event carries nothing we need)."""
    return daily_statistics(load_settings()).as_dict()
