"""Build the configured provider, with its credentials from Secrets Manager; one instance per process."""

from __future__ import annotations

import functools

from core import clock
from core.providers.base import SmsProvider
from core.providers.kannel import KannelProvider
from core.providers.orange import OrangeProvider
from core.secrets import secret_json, secret_text
from core.settings import ProviderName, Settings


def provider_for(settings: Settings, name: str | None = None) -> SmsProvider:
    """The provider `name` (by default the first in failover order), built once per process: Orange's token cache
    lives in the instance."""
    return _build(settings, ProviderName(name) if name else settings.primary_provider)


@functools.cache
def _build(settings: Settings, name: ProviderName) -> SmsProvider:
    if name is ProviderName.ORANGE:
        credentials = secret_json(settings.ORANGE_CREDENTIALS_SECRET, settings)
        return OrangeProvider(
            base_url=settings.ORANGE_API_BASE_URL,
            client_id=str(credentials.get("client_id", "")),
            client_secret=str(credentials.get("client_secret", "")),
            sender_address=settings.ORANGE_SENDER_ADDRESS,
            sender_name=settings.ORANGE_SENDER_NAME,
            connect_timeout=settings.PROVIDER_CONNECT_TIMEOUT_SECONDS,
            read_timeout=settings.PROVIDER_READ_TIMEOUT_SECONDS,
            clock=clock.INSTALLED,
            country=settings.ORANGE_COUNTRY,
        )
    credentials = secret_json(settings.KANNEL_CREDENTIALS_SECRET, settings)
    token = secret_text(settings.RECEIPT_TOKEN_SECRET, settings)
    return KannelProvider(
        sendsms_url=settings.KANNEL_SENDSMS_URL,
        username=str(credentials.get("username", "")),
        password=str(credentials.get("password", "")),
        sender=settings.KANNEL_SENDER,
        dlr_url_base=f"{settings.RECEIPT_BASE_URL.rstrip('/')}/kannel?token={token}",
        connect_timeout=settings.PROVIDER_CONNECT_TIMEOUT_SECONDS,
        read_timeout=settings.PROVIDER_READ_TIMEOUT_SECONDS,
    )


def reset() -> None:
    """Forget the built providers (tests and the embedded stack change endpoints)."""
    _build.cache_clear()
