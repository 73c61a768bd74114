"""docker-compose.yml stays in step with the code (no Docker engine runs here to try it)."""

import re
from pathlib import Path

import pytest
import yaml

from faceq.settings import ENV_VARS

ROOT = Path(__file__).resolve().parent.parent
AWS_VARS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _workers(compose):
    return {name: s for name, s in compose["services"].items() if name.startswith("worker-")}


def test_the_stack_has_every_service_with_healthchecks(compose):
    services = compose["services"]
    assert {"redis", "minio", "minio-init", "worker-gpu0", "flower"} <= set(services)
    for name in ("redis", "minio", "worker-gpu0", "flower"):
        assert services[name]["healthcheck"]["test"], name
    assert "mc mb --ignore-existing local/faceq" in services["minio-init"]["command"][0]


def test_each_worker_owns_one_gpu_and_binds_to_it(compose):
    workers = _workers(compose)
    assert len(workers) >= 2  # the 2-GPU layout is written out, not just described
    gpus = []
    for name, service in workers.items():
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"] and len(device["device_ids"]) == 1
        gpus.append(device["device_ids"][0])
        command = service["command"]
        assert command[:3] == ["python", "-m", "faceq.workers"]
        assert command[command.index("--device") + 1] == "cuda:0"  # the one reserved GPU
        assert service["environment"]["WORKER_NAME"].split("@")[0] in command[command.index("--hostname") + 1]
    assert len(set(gpus)) == len(gpus)


def test_worker_settings_are_ones_the_code_reads(compose):
    for name, service in _workers(compose).items():
        env = service["environment"]
        unknown = {k for k in env if k not in ENV_VARS and k not in AWS_VARS and k != "WORKER_NAME"}
        assert not unknown, f"{name} sets variables faceq never reads: {unknown}"
        assert env["FACEQ_BROKER_URL"].startswith("redis://:${REDIS_PASSWORD")  # never an open broker
        assert env["FACEQ_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert env["FACEQ_STORAGE_URL"].startswith("s3://faceq/")


def test_no_secret_is_written_in_the_file(compose):
    text = (ROOT / "docker-compose.yml").read_text()
    for match in re.finditer(r"(\w*(?:PASSWORD|SECRET|ACCESS_KEY|USER|AUTH)\w*):\s*(\S+)", text):
        key, value = match.groups()
        assert value.startswith("${"), f"{key} has a literal value in docker-compose.yml"
    example = {line.split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines()
               if line and not line.startswith("#")}
    referenced = set(re.findall(r"\$\{(\w+)", text))
    assert referenced - {"FACEQ_PRECISION", "FACEQ_MAX_BATCH"} <= example


def test_redis_requires_a_password_and_keeps_its_queue(compose):
    redis = compose["services"]["redis"]
    assert "--requirepass" in redis["command"][-1] and "--appendonly yes" in redis["command"][-1]
    assert compose["services"]["flower"]["environment"]["FACEQ_BROKER_URL"].startswith("redis://:${REDIS_PASSWORD")


def test_workers_serve_metrics_and_their_healthcheck_asks_readyz(compose):
    host_ports = []
    for name, service in _workers(compose).items():
        env = service["environment"]
        port = int(env["FACEQ_METRICS_PORT"])
        assert env["FACEQ_METRICS_ADDRESS"] == "0.0.0.0"  # inside the container network
        check = " ".join(service["healthcheck"]["test"])
        assert "/readyz" in check and "$$FACEQ_METRICS_PORT" in check and "-f" in check, name
        (published,) = service["ports"]
        host, host_port, container_port = published.split(":")
        assert host == "127.0.0.1" and int(container_port) == port, name
        host_ports.append(host_port)
    assert len(set(host_ports)) == len(host_ports)


def test_nothing_is_published_beyond_the_hosts_loopback(compose):
    """Flower's /metrics and /healthcheck have no auth (Flower 2.2); workers' /metrics name jobs."""
    for name, service in compose["services"].items():
        for published in service.get("ports", []):
            assert str(published).startswith("127.0.0.1:"), f"{name} publishes {published} on every interface"
