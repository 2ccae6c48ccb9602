"""Build the configured provider, with its credentials from Secrets Manager; one instance per process and
credentials."""

from __future__ import annotations

import functools
import ipaddress
from urllib.parse import urlsplit

from core import clock
from core.providers.base import FailureKind, ProviderError, SmsProvider
from core.providers.kannel import KannelProvider
from core.providers.orange import OrangeProvider
from core.receipts import kannel_dlr_token
from core.secrets import secret_json, secret_text
from core.settings import PROVIDER_ENDPOINTS, ProviderName, Settings


def provider_for(settings: Settings, name: str | None = None) -> SmsProvider:
    """The provider `name` (by default the first in failover order), built once per process for the credentials
    its secrets hold now (read through the secrets' five-minute cache): Orange's token cache lives in the instance,
    and new credentials put in a secret (the runbook for revoked ones) are taken up without a deploy.

    A provider whose endpoint is plain HTTP to a host outside this machine and private networks is not built: each
    request carries its credentials, a family's number and the child's name. The ProviderError holds the provider
    (as a refusal of the whole account does), so the other provider takes the traffic, no attempt is spent, and
    receipts and replies, which need no provider, go on.
    """
    provider = ProviderName(name) if name else settings.primary_provider
    return _build(settings, provider, _credentials(settings, provider))


def _private(host: str) -> bool:
    """Whether `host` is this machine or an address of a private network (a VPC, a VPN): plain HTTP stays there."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name: where it resolves to is not known here
    return address.is_loopback or address.is_private


def _credentials(settings: Settings, name: ProviderName) -> tuple[str, ...]:
    if name is ProviderName.ORANGE:
        orange = secret_json(settings.ORANGE_CREDENTIALS_SECRET, settings)
        return str(orange.get("client_id", "")), str(orange.get("client_secret", ""))
    kannel = secret_json(settings.KANNEL_CREDENTIALS_SECRET, settings)
    token = secret_text(settings.RECEIPT_TOKEN_SECRET, settings)
    return str(kannel.get("username", "")), str(kannel.get("password", "")), token


@functools.lru_cache(maxsize=8)
def _build(settings: Settings, name: ProviderName, credentials: tuple[str, ...]) -> SmsProvider:
    # Checked here, once per built provider (a refusal raises, so it is not cached), not on every request.
    endpoint = getattr(settings, PROVIDER_ENDPOINTS[name])
    if not endpoint.startswith("https://") and not _private(urlsplit(endpoint).hostname or ""):
        raise ProviderError(
            FailureKind.PROVIDER_WIDE,
            "cleartext_endpoint",
            f"{PROVIDER_ENDPOINTS[name]} must be https:// for a host outside this machine and private networks",
        )
    if name is ProviderName.ORANGE:
        client_id, client_secret = credentials
        return OrangeProvider(
            base_url=settings.ORANGE_API_BASE_URL,
            client_id=client_id,
            client_secret=client_secret,
            sender_address=settings.ORANGE_SENDER_ADDRESS,
            sender_name=settings.ORANGE_SENDER_NAME,
            connect_timeout=settings.PROVIDER_CONNECT_TIMEOUT_SECONDS,
            read_timeout=settings.PROVIDER_READ_TIMEOUT_SECONDS,
            clock=clock.INSTALLED,
            country=settings.ORANGE_COUNTRY,
        )
    username, password, token = credentials
    return KannelProvider(
        sendsms_url=settings.KANNEL_SENDSMS_URL,
        username=username,
        password=password,
        sender=settings.KANNEL_SENDER,
        dlr_url_base=f"{settings.RECEIPT_BASE_URL.rstrip('/')}/kannel",
        dlr_token=functools.partial(kannel_dlr_token, token),
        connect_timeout=settings.PROVIDER_CONNECT_TIMEOUT_SECONDS,
        read_timeout=settings.PROVIDER_READ_TIMEOUT_SECONDS,
    )


def reset() -> None:
    """Forget the built providers (tests and the embedded stack change endpoints)."""
    _build.cache_clear()
