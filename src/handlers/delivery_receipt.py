"""delivery_receipt: the Function URL that Orange (POST /orange) and Kannel (GET /kannel) call back with receipts,
and Kannel's sms-service (GET /inbound) with the families' replies."""

from typing import Any

from aws_lambda_powertools.event_handler import LambdaFunctionUrlResolver, Response, content_types
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from core.observability import lambda_entry
from core.receipts import (
    ReceiptRejected,
    Route,
    authenticate,
    authenticate_dlr,
    kannel_receipt,
    orange_receipt,
    refused,
)
from core.replies import handle_inbound
from core.settings import load_settings

app = LambdaFunctionUrlResolver()
REPLY_HEADER = "X-Rappel-Reply"  # what an inbound reply did (opted_out, opted_in, unchanged, unknown_text, ...)


def _answer(status: int, body: str) -> Response[str]:
    return Response(status_code=status, content_type=content_types.TEXT_PLAIN, body=body)


@app.exception_handler(ReceiptRejected)
def _rejected(error: ReceiptRejected) -> Response[str]:
    refused(error)
    return _answer(error.status_code, error.reason)


def _body() -> str:
    try:
        return app.current_event.decoded_body or ""
    except ValueError:  # not base64, or not UTF-8 once decoded
        raise ReceiptRejected(400, "body: not base64-encoded UTF-8 text") from None


@app.post("/orange")
def orange() -> Response[str]:
    settings = load_settings()
    authenticate(app.current_event.get_query_string_value("token"), Route.ORANGE, settings)
    return _answer(200, orange_receipt(_body(), settings).result)


@app.get("/kannel")
def kannel() -> Response[str]:
    settings = load_settings()
    params = dict(app.current_event.query_string_parameters or {})
    authenticate_dlr(params.get("token"), params.get("message_id", ""), settings)
    return _answer(200, kannel_receipt(params, settings).result)


@app.get("/inbound")
def inbound() -> Response[str]:
    settings = load_settings()
    authenticate(app.current_event.get_query_string_value("token"), Route.INBOUND, settings)
    event = app.current_event
    outcome = handle_inbound(dict(event.query_string_parameters or {}), event.raw_query_string, settings)
    # An empty body: Kannel's sms-service sends a non-empty answer back to the family as an SMS (unless its
    # max-messages is 0). What the reply did travels in a header.
    return Response(
        status_code=200, content_type=content_types.TEXT_PLAIN, body="", headers={REPLY_HEADER: outcome.result}
    )


@lambda_entry(correlation_id_path=correlation_paths.LAMBDA_FUNCTION_URL)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Route the receipt to its provider's parser."""
    return app.resolve(event, context)
