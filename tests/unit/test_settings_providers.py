"""SMS_PROVIDERS at start-up: the failover order, and a clear error naming the variable for a bad list."""

from __future__ import annotations

import pytest

from core.settings import ConfigurationError, ProviderName, build_settings


def test_the_failover_order_defaults_to_sms_provider_alone() -> None:
    assert build_settings().providers == (ProviderName.ORANGE,)
    assert build_settings(SMS_PROVIDER="kannel").providers == (ProviderName.KANNEL,)
    both = build_settings(SMS_PROVIDERS=" kannel , orange ")
    assert (both.providers, both.primary_provider) == ((ProviderName.KANNEL, ProviderName.ORANGE), ProviderName.KANNEL)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"SMS_PROVIDERS": "orange,smpp"}, "SMS_PROVIDERS: Value error, unknown provider(s) smpp"),
        ({"SMS_PROVIDERS": "orange,orange"}, "SMS_PROVIDERS: Value error, a provider is named twice"),
        (
            {"SMS_PROVIDERS": "orange,kannel", "KANNEL_SENDSMS_URL": ""},
            "SMS_PROVIDERS names kannel, whose KANNEL_SENDSMS_URL is not an http(s) URL",
        ),
        (
            {"SMS_PROVIDER": "orange", "ORANGE_API_BASE_URL": "api.orange.com"},
            "SMS_PROVIDERS names orange, whose ORANGE_API_BASE_URL is not an http(s) URL",
        ),
    ],
)
def test_a_bad_provider_list_stops_start_up_naming_the_variable(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        build_settings(**overrides)
    assert message in str(raised.value)


@pytest.mark.parametrize("region", ["UK", "XX"])
def test_a_default_region_phonenumbers_does_not_know_stops_start_up_naming_the_variable(region: str) -> None:
    """ "UK" matched the two-letter pattern, and then every national-format number in clinic events was refused at
    run time with an error that named no setting (the United Kingdom is "GB")."""
    with pytest.raises(ConfigurationError, match="SMS_DEFAULT_REGION"):
        build_settings(SMS_DEFAULT_REGION=region)
    assert build_settings(SMS_DEFAULT_REGION="GB").SMS_DEFAULT_REGION == "GB"


@pytest.mark.parametrize("sender", ["", " ", "RAPPEL-SANTE-CI", "+"])
def test_a_kannel_sender_kannel_would_refuse_stops_start_up_naming_the_variable(sender: str) -> None:
    """An empty sender passed the settings and the template: smsbox then answered every request 400 "Sender missing
    and no global set, rejected", each reminder failed for good."""
    with pytest.raises(ConfigurationError, match="KANNEL_SENDER"):
        build_settings(KANNEL_SENDER=sender)
    assert build_settings(KANNEL_SENDER="+2250000").KANNEL_SENDER == "+2250000"
