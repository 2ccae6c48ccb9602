"""The artifact `sam build` makes, tested as Lambda would run it: what a deployment actually ships.

`sam build` (the deploy command, arm64) is checked for what it holds: each function's folder is the Lambda code
and nothing else, the dependencies layer is exactly the lock file, every compiled wheel is aarch64. An arm64
pydantic-core cannot load on this x86_64 machine, so the same template and requirements are built a second time
for the host (`make build-host`) and that build is executed: every function's handler is imported from the build
folder in an isolated interpreter (standard library only, as `rappel invoke` runs it) and invoked on its events/
sample against the embedded stack (moto's server and the Orange simulator on localhost).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest

from core import clock
from rappel_cli.invoke import InvokeError, built_functions, host_architecture, invoke_built
from rappel_cli.target import write_local_state
from rappel_local.local import FAKE_AWS
from rappel_local.orange_simulator import OrangeSimulator
from rappel_local.stack import create_stack
from tests.e2e.samples import DUE_WHENEVER_THIS_RUNS, EVENTS, PHONE, run_every_sample

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parents[2]
SAM = ROOT / ".venv-sam" / "bin" / "sam"
LOCK = ROOT / "layers" / "dependencies" / "requirements.txt"
FUNCTIONS = {
    "plan_reminders",
    "dispatch_due",
    "follow_up_pass",
    "send_sms",
    "delivery_receipt",
    "health_check",
    "daily_statistics",
    "tally_changes",
}
CREDENTIALS = {"client_id": "rappel-artifact", "client_secret": "artifact-secret-not-real"}


def _run(command: list[str], **kwargs: Any) -> None:
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False, **kwargs)
    assert completed.returncode == 0, (
        f"{' '.join(command)} failed:\n{completed.stdout[-3000:]}{completed.stderr[-3000:]}"
    )


@pytest.fixture(scope="module")
def arm64_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`sam build`, the README's deploy step, into a scratch folder."""
    build_dir = tmp_path_factory.mktemp("arm64") / "build"
    _run([str(SAM), "build", "--build-dir", str(build_dir)])
    return build_dir


@pytest.fixture(scope="module")
def host_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make build-host`: the same template and lock, for this machine's architecture."""
    build_dir = tmp_path_factory.mktemp("host") / "build"
    _run(["make", "-s", "build-host", f"HOST_BUILD_DIR={build_dir}"])
    return build_dir


def _locked() -> set[str]:
    pins = [line.split("==") for line in LOCK.read_text().splitlines() if line and not line.startswith("#")]
    return {f"{name.split('[')[0]}=={version}" for name, version in pins}


def _installed(layer: Path) -> set[str]:
    found = set()
    for info in layer.glob("*.dist-info"):
        name, version = info.name.removesuffix(".dist-info").rsplit("-", 1)
        found.add(f"{name.lower().replace('_', '-')}=={version}")
    return found


def _wheel_tags(layer: Path) -> set[str]:
    return {
        line.removeprefix("Tag: ").strip()
        for wheel in layer.glob("*.dist-info/WHEEL")
        for line in wheel.read_text().splitlines()
        if line.startswith("Tag: ")
    }


def test_pyproject_and_the_lock_pin_the_same_direct_dependencies() -> None:
    import tomllib

    direct = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = {line for line in LOCK.read_text().splitlines() if line and not line.startswith("#")}
    assert set(direct) <= lines, f"run `make lock`: {sorted(set(direct) - lines)} not in {LOCK.name}"
    assert all("==" in line for line in lines), "every package of the lock is pinned"


def test_the_deploy_build_ships_lambda_code_and_locked_aarch64_dependencies_only(arm64_build: Path) -> None:
    functions = built_functions(arm64_build)
    assert set(functions) == FUNCTIONS
    for function in functions.values():
        assert function.architecture == "arm64"
        assert sorted(p.name for p in function.code_dir.iterdir()) == ["core", "handlers"], function.logical_id
        assert (function.code_dir / "core" / "texts").is_dir()  # the SMS texts travel with the code
        assert [p.parent.name for p in function.layer_dirs] == ["DependenciesLayer"]

    layer = arm64_build / "DependenciesLayer" / "python"
    assert _installed(layer) == _locked()
    assert not {"moto", "typer", "rich", "pytest"} & {p.split("==")[0] for p in _installed(layer)}
    compiled = {tag for tag in _wheel_tags(layer) if not tag.endswith("-none-any")}
    assert compiled, "pydantic-core at least is a compiled wheel"
    assert all("aarch64" in tag for tag in compiled), compiled
    assert not [p for p in layer.rglob("*.so") if "x86_64" in p.name]


def test_sam_package_uploads_one_layer_and_one_code_zip_and_writes_the_deployable_template(
    arm64_build: Path, embedded_stack, tmp_path: Path
) -> None:
    """`sam package` (what `sam deploy` does first), with S3 on the embedded stack's endpoint."""
    environment, _, _, session = embedded_stack
    s3 = session.client("s3", region_name="us-east-1", endpoint_url=environment["AWS_ENDPOINT_URL"])
    s3.create_bucket(Bucket="rappel-artifacts")
    packaged = tmp_path / "packaged.yaml"
    command = [str(SAM), "package", "--template-file", str(arm64_build / "template.yaml"), "--no-progressbar"]
    _run(
        [*command, "--s3-bucket", "rappel-artifacts", "--output-template-file", str(packaged)],
        env={**os.environ, **FAKE_AWS, "AWS_ENDPOINT_URL": environment["AWS_ENDPOINT_URL"]},
    )
    from rappel_local.stack import load_template

    resources = load_template(packaged)["Resources"]
    code = {r["Properties"]["CodeUri"] for r in resources.values() if r["Type"] == "AWS::Serverless::Function"}
    layer = resources["DependenciesLayer"]["Properties"]["ContentUri"]
    assert len(code) == 1 and next(iter(code)).startswith("s3://rappel-artifacts/")  # seven functions, one code zip
    assert layer.startswith("s3://rappel-artifacts/")
    sizes = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket="rappel-artifacts")["Contents"]}
    code_zip, layer_zip = sizes[next(iter(code)).rsplit("/", 1)[1]], sizes[layer.rsplit("/", 1)[1]]
    assert code_zip < 1_000_000 < layer_zip  # the code is small; the dependencies are uploaded once, in the layer


def test_the_host_build_comes_from_the_same_template_and_lock(host_build: Path) -> None:
    functions = built_functions(host_build)
    assert set(functions) == FUNCTIONS
    assert {f.architecture for f in functions.values()} == {host_architecture()}
    assert _installed(host_build / "DependenciesLayer" / "python") == _locked()


def test_an_arm64_build_is_not_executed_on_another_architecture(arm64_build: Path) -> None:
    if host_architecture() == "arm64":
        pytest.skip("on an arm64 machine the deploy build runs as it is")
    with pytest.raises(InvokeError, match="built for arm64"):
        invoke_built(built_functions(arm64_build)["health_check"], {}, {})


@pytest.fixture(scope="module")
def embedded_stack() -> Any:
    """moto's server, the stack's resources and the Orange simulator, all on localhost; the functions' environment."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    session = boto3.session.Session(
        aws_access_key_id=FAKE_AWS["AWS_ACCESS_KEY_ID"], aws_secret_access_key=FAKE_AWS["AWS_SECRET_ACCESS_KEY"]
    )
    stack = create_stack(prefix="artifact", endpoint_url=endpoint, orange_credentials=CREDENTIALS, session=session)
    simulator = OrangeSimulator(clock=clock.SystemClock(), **CREDENTIALS).start()
    environment = {
        **FAKE_AWS,
        **stack.environment(),
        "AWS_ENDPOINT_URL": endpoint,
        "ORANGE_API_BASE_URL": simulator.base_url,
        "RECEIPT_BASE_URL": "http://127.0.0.1:9/",
        **DUE_WHENEVER_THIS_RUNS,
    }
    yield environment, stack, simulator, session
    simulator.stop()
    server.stop()


def test_every_built_function_runs_its_sample_event_against_the_embedded_stack(
    host_build: Path, embedded_stack
) -> None:
    environment, stack, simulator, session = embedded_stack
    functions = built_functions(host_build)
    logs: list[str] = []

    def invoke(function: str, event: dict[str, Any]) -> Any:
        result = invoke_built(functions[function], event, environment)
        assert result.error is None, f"{function}: {result.error}\n{result.logs[-3000:]}"
        logs.append(result.logs)
        return result.response

    session_clients = {
        service: session.client(service, region_name="us-east-1", endpoint_url=environment["AWS_ENDPOINT_URL"])
        for service in ("sqs", "dynamodb")
    }
    run_every_sample(invoke, **session_clients, stack=stack, simulator=simulator)

    everything = "".join(logs)
    assert PHONE not in everything
    assert '"_aws"' in everything  # the metrics went out as EMF
    assert "SmsSent" in everything


def test_rappel_invoke_runs_a_built_handler_against_the_local_stack(
    host_build: Path, embedded_stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    environment, *_ = embedded_stack
    monkeypatch.chdir(tmp_path)  # `rappel local up` records the stack in .rappel/local.json of its working directory
    write_local_state(environment, {"pid": os.getpid()})
    command = [sys.executable, "-m", "rappel_cli", "invoke", "health_check", str(EVENTS / "schedule_health.json")]
    completed = subprocess.run(
        [*command, "--local", "--build-dir", str(host_build)], capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["healthy"] is True
    assert '"function_name":"rappel-HealthCheckFunction"' in completed.stderr  # the function's own log lines

    missing = subprocess.run(
        [*command, "--local", "--build-dir", str(tmp_path / "nowhere")], capture_output=True, text=True, check=False
    )
    assert missing.returncode == 2 and "run `make build-host` first" in " ".join(missing.stderr.split())
