"""The embedded stack's plumbing that changes speed only (rappel_local.embedded)."""

from __future__ import annotations

import boto3
import botocore.loaders
import botocore.session
import pytest

from rappel_local.embedded import shared_service_models

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def unshared(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's own loader factory, not the one the test session shares."""
    monkeypatch.setattr(botocore.session, "create_loader", botocore.loaders.create_loader)


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


def test_boto3_sessions_in_the_block_do_not_grow_the_shared_loaders_search_paths() -> None:
    # boto3 appends its own data path to the loader of each session it opens: shared, that list grew by one path per
    # session, thousands over a test run.
    with shared_service_models():
        for _ in range(5):
            session = boto3.session.Session(region_name="us-east-1")
        paths = session._loader.search_paths
        assert len(paths) == len(set(paths)), paths
        assert session.resource("dynamodb").meta.service_name == "dynamodb"
