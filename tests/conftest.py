"""Shared fixtures: a real redis-server, moto's S3 server over HTTP, real worker processes.

Everything listens on loopback ports chosen at run time and is stopped at the end.
"""

from __future__ import annotations

import csv
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path

import boto3
import numpy as np
import pytest

from devstack.processes import RedisServer, WorkerProcess, free_port

REPO = Path(__file__).resolve().parent.parent
# Test data only, never committed: see ../shared/models/README.md
YUNET = REPO.parent / "shared" / "models" / "face_detection_yunet.onnx"
needs_yunet = pytest.mark.skipif(
    not YUNET.is_file(), reason=f"YuNet weights not found at {YUNET} (test data beside the checkout)"
)
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
os.environ.update(AWS_ENV)  # moto accepts any credentials; never real ones in tests
# No test picks up model files someone fetched on this machine (`faceq models fetch`): an
# empty model folder, unless a test installs into its own.
NO_MODEL_DIR = str(REPO / "build" / "tests-no-model-files")
os.environ["FACEQ_MODEL_DIR"] = NO_MODEL_DIR


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> RedisServer:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        os.environ["FACEQ_BROKER_URL"] = server.url  # celeryconfig reads it on first use
        yield server


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def s3_client(s3_endpoint):
    return boto3.client("s3", endpoint_url=s3_endpoint)


@pytest.fixture
def bucket(s3_client, request) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower())[:40].strip("-")
    name = f"t-{slug}-{free_port()}"
    s3_client.create_bucket(Bucket=name)
    return name


def worker_env(broker_url: str, storage_url: str, s3_endpoint: str | None = None, **extra: str) -> dict[str, str]:
    """Environment of a worker or producer process in the tests (tiny network, small chunks)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEQ_")}
    env.update(AWS_ENV)
    env.update(
        FACEQ_BROKER_URL=broker_url,
        FACEQ_STORAGE_URL=storage_url,
        FACEQ_MODEL_ARCH="ir_se_tiny",
        FACEQ_MAX_BATCH="16",
        FACEQ_CHUNK_SIZE="32",
        FACEQ_MODEL_DIR=NO_MODEL_DIR,
        PYTHONPATH=str(REPO),
    )
    if s3_endpoint:
        env["FACEQ_S3_ENDPOINT_URL"] = s3_endpoint
    if YUNET.is_file():
        env["FACEQ_DETECTOR_WEIGHTS"] = str(YUNET)
    else:
        env["FACEQ_MODES"] = "crop"
    env.update(extra)
    return env


def start_worker(env: dict[str, str], tmp_path: Path, name: str) -> WorkerProcess:
    return WorkerProcess(env, tmp_path / f"{name}.log", hostname=f"{name}-{free_port()}@localhost").start()


@contextmanager
def redis_and_worker(tmp_path: Path, name: str, storage_url: str, s3_endpoint: str | None = None, **extra: str):
    """A private redis-server and one worker process on it; yields (the worker's environment, the worker)."""
    with RedisServer(tmp_path / "redis") as redis_server:
        env = worker_env(redis_server.url, storage_url, s3_endpoint, **extra)
        worker = start_worker(env, tmp_path, name)
        try:
            yield env, worker
        finally:
            worker.stop()


def job_rows(storage, job_id: str):
    """A finished job's result rows: the parts of the run its summary names."""
    import json

    import pyarrow as pa

    from faceq.job import spec as jobs
    from faceq.outputs.results import read_parquet

    prefix = json.loads(storage.get_bytes(jobs.summary_key(job_id)))["outputs"]["results"]
    return pa.concat_tables(read_parquet(storage.get_bytes(k)) for k in storage.list_keys(prefix))


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    """A CSV manifest for a test job."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def assert_embedding_ok(embedding) -> None:
    vector = np.asarray(embedding, dtype=np.float32)
    assert vector.shape == (512,)
    assert np.isfinite(vector).all()
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4


@pytest.fixture
def python() -> str:
    return sys.executable


def not_yunet_onnx(folder: Path) -> Path:
    """A valid ONNX network that is not YuNet (an Identity), as ``folder/other.onnx``."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "not-yunet",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, None, None])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, None, None])])
    path = folder / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


# -- make test: pytest-xdist ---------------------------------------------------------------------
# `make test` runs the suite on several pytest-xdist workers (`-n`), then the tests marked `serial`
# on their own (they measure what other processes on the machine would disturb: /dev/shm, memory
# peaks). The tests of a module run on one xdist worker, one after another, so that its
# module-scoped fixtures (a stack of worker processes, a loaded model) are set up once; the tests of
# SPREAD (long fault tests, each with its own stack) are scheduled one by one. The slowest modules
# go first (SLOWEST_FIRST, from `--durations`), so that no long test starts last and runs on alone.
# (xdist's own `--dist loadgroup` cannot do this with pytest 9: it renames node ids, which pytest 9
# no longer lets a plugin do.)
SPREAD = {"test_chaos", "test_redis_restarts", "test_bench", "test_item_progress", "test_placeholders"}
SLOWEST_FIRST = ["test_redis_restarts", "test_chaos", "test_bench", "test_detect_engines", "test_parity",
                 "test_engine", "test_end_to_end", "test_hostile", "test_placeholders", "test_item_progress",
                 "test_detect_paths_worker", "test_crop_pool", "test_device_detect_path", "test_everyday",
                 "test_review", "test_client", "test_review_security", "test_device_align", "test_readers"]


def pytest_configure(config):
    config.addinivalue_line("markers", "serial: run alone, not beside other tests (make test runs it after the rest)")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Slowest modules first (on an xdist worker only: the scheduler takes the workers' order)."""
    if hasattr(config, "workerinput"):
        rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
        position = {id(item): i for i, item in enumerate(items)}
        items.sort(key=lambda item: (rank.get(item.path.stem, len(rank)), position[id(item)]))


def pytest_xdist_make_scheduler(config, log):
    """Whole modules as units of work, less SPREAD's tests: one unit each; in the workers' order."""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return nodeid if Path(module).stem in SPREAD else module

    config.option.loadscopereorder = False  # keep SLOWEST_FIRST (xdist would sort by number of tests)
    return ModuleScheduling(config, log)
