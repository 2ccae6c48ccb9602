"""send_sms: consume the send queue in batches; only failed records are retried (ReportBatchItemFailures)."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from core.observability import lambda_entry
from core.sending import process_send_batch
from core.settings import load_settings


@lambda_entry()
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> Any:
    """Send each queued message once, reporting the records to retry."""
    return process_send_batch(event, context, load_settings())
