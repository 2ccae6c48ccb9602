"""tally_changes: the messages and ops tables' change streams, in batches, added to the statistics counters."""

from dataclasses import asdict
from typing import Any

from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.parser.models import DynamoDBStreamModel
from aws_lambda_powertools.utilities.typing import LambdaContext

from core.observability import lambda_entry
from core.settings import load_settings
from core.tally import tally_changes


@lambda_entry()
@event_parser(model=DynamoDBStreamModel)
def lambda_handler(event: DynamoDBStreamModel, context: LambdaContext) -> dict[str, Any]:
    """Tally one batch of item changes (a failure fails the batch, which Lambda retries with the same records)."""
    return asdict(tally_changes(event, load_settings()))
