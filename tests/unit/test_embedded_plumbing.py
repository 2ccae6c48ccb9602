"""The embedded stack's plumbing that changes speed only (rappel_local.embedded)."""

from __future__ import annotations

import botocore.session
import pytest

from rappel_local.embedded import shared_service_models

pytestmark = pytest.mark.unit


def test_sessions_in_the_block_share_their_service_models_and_none_after_it() -> None:
    original = botocore.session.create_loader
    with shared_service_models():
        first, second = botocore.session.get_session(), botocore.session.get_session()
        assert first.get_component("data_loader") is second.get_component("data_loader")
        one = first.create_client("dynamodb", region_name="us-east-1")
        other = second.create_client("dynamodb", region_name="us-east-1")
        assert one.meta.service_model.operation_names == other.meta.service_model.operation_names
    assert botocore.session.create_loader is original
    outside = botocore.session.get_session().get_component("data_loader")
    assert outside is not first.get_component("data_loader")
