"""FACEQ_MODEL_ARCH=null: the zero-cost stand-in loads nothing, costs nothing and says what it is."""

import json
import logging

import numpy as np
import pytest

from faceq.errors import ModelError
from faceq.settings import Settings
from faceq.models.null import NULL_MODEL_ID
from faceq.models.weights import load_model
from faceq.workers.engine import Engine
from faceq.workers.health import Heartbeat


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(load_model(None, "null"), "cpu", "fp32", max_batch=8)


def _crops(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)


def test_the_stand_in_is_named_unmistakably_and_loads_no_network(caplog):
    with caplog.at_level(logging.WARNING, logger="faceq.models.weights"):
        loaded = load_model(None, "null")
    assert loaded.stand_in and not loaded.random_weights
    assert loaded.model_id == NULL_MODEL_ID == "null-standin-NOT-A-MODEL"
    assert not hasattr(loaded.model, "parameters")  # no torch module at all
    assert "ZERO-COST STAND-IN, NOT A MODEL" in caplog.text


def test_the_stand_in_refuses_a_checkpoint(tmp_path):
    weights = tmp_path / "pytorch_model.pt"
    weights.write_bytes(b"not read")
    with pytest.raises(ModelError, match="FACEQ_MODEL_ARCH=null .* loads no checkpoint.*FACEQ_MODEL_WEIGHTS="):
        load_model(str(weights), "null")


def test_embeddings_are_unit_length_deterministic_and_batch_independent(engine):
    crops = _crops(20)
    embeddings, quality = engine.infer(crops)  # 20 crops through batches of 8
    assert embeddings.shape == (20, 512) and embeddings.dtype == np.float32
    assert quality.dtype == np.float32 and np.all((quality >= 0) & (quality <= 1))
    assert np.isfinite(embeddings).all()
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    again, _ = Engine(load_model(None, "null"), "cpu", "fp32", max_batch=3).infer(crops)
    np.testing.assert_array_equal(again, embeddings)  # same crops, any engine, any batching
    alone, _ = engine.infer(crops[7:8])
    np.testing.assert_array_equal(alone[0], embeddings[7])
    (black, white), quality = engine.infer(np.stack([np.zeros((112, 112, 3), np.uint8),
                                                     np.full((112, 112, 3), 255, np.uint8)]))
    assert float(black @ white) < 0.999  # different pixels, different vectors
    assert quality.tolist() == [0.0, 1.0]  # quality is the mean brightness: dark crops get flagged


def test_the_engine_warms_up_and_batches_the_same_vectors(engine):
    from faceq.workers.batcher import MicroBatcher

    assert engine.info.stand_in and engine.info.model_id == NULL_MODEL_ID and engine.info.warm_memory_bytes is None
    crops = _crops(256, seed=3)
    batcher = MicroBatcher(engine.infer, 64, max_delay_ms=1)
    try:
        embeddings, _ = batcher.infer(crops)  # the cross-task path works
    finally:
        batcher.close()
    # its cost is measured by `python -m bench pipeline` (a timed assertion here failed on a busy box)
    np.testing.assert_allclose(embeddings, engine.infer(crops)[0], atol=0)


def test_the_heartbeat_says_it_is_a_stand_in(engine):
    status = Heartbeat(None, "w@host", Settings(), engine, None).status()
    assert status["stand_in"] is True and status["model_id"] == NULL_MODEL_ID
    json.dumps(status)  # what `python -m faceq.producer workers` prints


@pytest.mark.integration
def test_a_null_worker_says_so_in_its_log_heartbeat_and_rows(tmp_path):
    import subprocess
    import sys

    from devstack.processes import RedisServer
    from faceq.storage.store import open_storage
    from devstack.samples import write_sample_set
    from tests.conftest import assert_embedding_ok, job_rows, start_worker, worker_env

    write_sample_set(tmp_path / "photos", n_good=12)
    storage_url = (tmp_path / "store").as_uri()
    with RedisServer(tmp_path / "redis") as redis_server:
        env = worker_env(redis_server.url, storage_url, FACEQ_MODEL_ARCH="null", FACEQ_MODES="crop")
        worker = start_worker(env, tmp_path, "null-worker")
        try:
            done = subprocess.run([sys.executable, "-m", "faceq.producer", "audit", str(tmp_path / "photos"), "--mode",
                                   "crop", "--job-id", "null-job", "--wait", "--no-progress", "--timeout", "120"],
                                  env=env, capture_output=True, text=True, timeout=180)
            assert done.returncode == 0, done.stderr[-2000:]
            assert "stand-in" in done.stdout.lower()  # the CLI warns under the summary
            listed = subprocess.run([sys.executable, "-m", "faceq.producer", "workers"], env=env, capture_output=True,
                                    text=True, timeout=60)
            (beat,) = json.loads(listed.stdout)
            assert beat["stand_in"] is True and beat["model_id"] == NULL_MODEL_ID
        finally:
            worker.stop()
    assert "ZERO-COST STAND-IN, NOT A MODEL" in worker.log_text()
    rows = job_rows(open_storage(storage_url), "null-job").to_pylist()
    ok = [row for row in rows if row["status"] == "ok"]
    assert len(ok) == 12 and {row["model_id"] for row in rows} == {NULL_MODEL_ID}
    for row in ok:
        assert_embedding_ok(row["embedding"])
        assert 0 < row["quality"] < 1
