"""follow_up_pass: every FOLLOW_UP_PASS_MINUTES, look at the families whose time has come and publish the
FollowUpNeeded / FollowUpClosed events the clinic system turns into tasks."""

from dataclasses import asdict
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from core.followup import run_pass
from core.observability import lambda_entry
from core.settings import load_settings


@lambda_entry()
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """One follow-up pass (the schedule's event carries nothing we need)."""
    return asdict(run_pass(load_settings(), context.get_remaining_time_in_millis))
