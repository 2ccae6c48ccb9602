"""SMS providers behind one interface: Orange's SMS API and Kannel."""

from core.providers.base import (
    Accepted,
    Balance,
    ErrorBody,
    FailureKind,
    ProviderError,
    SmsProvider,
    classify_http,
    classify_transport,
    parse_error_body,
    parse_retry_after,
    redact,
)
from core.providers.kannel import KannelProvider
from core.providers.orange import OrangeProvider

__all__ = [
    "Accepted",
    "Balance",
    "ErrorBody",
    "FailureKind",
    "KannelProvider",
    "OrangeProvider",
    "ProviderError",
    "SmsProvider",
    "classify_http",
    "classify_transport",
    "parse_error_body",
    "parse_retry_after",
    "redact",
]
