"""The warm engine: precision and device checks, batching that does not change results."""

import numpy as np
import pytest

from faceq.errors import ModelError
from faceq.models.weights import load_model
from faceq.workers.engine import Engine


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(load_model(None, "ir_se_tiny", seed=1), "cpu", "fp32", max_batch=4)


def test_warm_engine_reports_what_it_runs(engine):
    assert engine.info.device == "cpu" and engine.info.max_batch == 4
    assert engine.info.model_id == "rts-ir_se_tiny-random-seed1" and engine.info.random_weights


def test_inputs_larger_than_a_batch_are_split_without_changing_results(engine):
    crops = np.random.default_rng(0).integers(0, 256, (10, 112, 112, 3), dtype=np.uint8)
    embeddings, quality = engine.infer(crops)
    assert embeddings.shape == (10, 512) and embeddings.dtype == np.float32 and quality.shape == (10,)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    for i in (0, 5, 9):
        alone_embedding, alone_quality = engine.infer(crops[i : i + 1])
        np.testing.assert_allclose(alone_embedding[0], embeddings[i], atol=1e-5)
        np.testing.assert_allclose(alone_quality[0], quality[i], rtol=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_on_cpu_stays_close_to_fp32(engine, precision):
    reduced = Engine(load_model(None, "ir_se_tiny", seed=1), "cpu", precision, max_batch=4)
    crops = np.random.default_rng(1).integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)
    (e32, q32), (e16, q16) = engine.infer(crops), reduced.infer(crops)
    assert e16.dtype == np.float32 and q16.dtype == np.float32
    assert (e32 * e16).sum(axis=1).min() > 0.99
    np.testing.assert_allclose(q16, q32, rtol=0.05)


def test_wrong_input_shapes_are_refused(engine):
    with pytest.raises(ValueError, match="uint8 crops"):
        engine.infer(np.zeros((2, 64, 64, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("device", "precision", "message"),
    [
        ("cpu", "fp64", "choose auto, fp32, fp16 or bf16"),
        ("tpu", "fp32", "is not a device|only cpu and cuda"),
    ],
)
def test_impossible_settings_are_refused_with_a_reason(device, precision, message):
    with pytest.raises(ModelError, match=message):
        Engine(load_model(None, "ir_se_tiny"), device, precision, max_batch=2)


def test_a_missing_gpu_is_refused():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelError, match="no CUDA"):
        Engine(load_model(None, "ir_se_tiny"), "cuda:0", "fp32", max_batch=2)


def test_out_of_memory_splits_the_batch_in_halves_down_to_single_images(engine, monkeypatch):
    import torch

    from faceq.errors import DeviceOutOfMemory

    crops = np.random.default_rng(2).integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)
    expected = engine.infer(crops)
    real_forward, attempts = engine._forward, []

    def forward_that_fits_two(batch):  # injected failure: the device holds at most two images
        attempts.append(len(batch))
        if len(batch) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real_forward(batch)

    monkeypatch.setattr(engine, "_forward", forward_that_fits_two)
    embeddings, quality = engine.infer(crops)
    assert attempts == [4, 2, 2]
    np.testing.assert_allclose(embeddings, expected[0], atol=1e-6)
    np.testing.assert_allclose(quality, expected[1], rtol=1e-6)

    attempts.clear()
    monkeypatch.setattr(engine, "_forward", lambda batch: (attempts.append(len(batch)),
                                                           (_ for _ in ()).throw(torch.OutOfMemoryError("full")))[1])
    with pytest.raises(DeviceOutOfMemory, match="one image does not fit"):
        engine.infer(crops[:2])
    assert attempts == [2, 1]


def test_batch_buckets_cover_every_size_up_to_the_largest():
    from faceq.workers.engine import batch_buckets

    assert batch_buckets(1) == [1]
    assert batch_buckets(64) == [1, 2, 4, 8, 16, 32, 64]
    assert batch_buckets(100) == [1, 2, 4, 8, 16, 32, 64, 100]


@pytest.mark.parametrize("mode", ["fused", "compiled"])
def test_every_inference_mode_computes_what_eager_computes(mode):
    """FACEQ_INFERENCE: BatchNorm folded, and Inductor on top of it (compiled once per bucket at
    warm-up); the same embeddings and scores as the network run module by module."""
    crops = np.random.default_rng(4).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    eager = Engine(load_model(None, "ir_se_tiny", seed=6), "cpu", "fp32", max_batch=2, inference="eager")
    other = Engine(load_model(None, "ir_se_tiny", seed=6), "cpu", "fp32", max_batch=2, inference=mode)
    assert other.info.inference == mode and eager.info.inference == "eager"
    (want, want_q), (got, got_q) = eager.infer(crops), other.infer(crops)
    assert (want * got).sum(axis=1).min() >= 0.9999
    np.testing.assert_allclose(got_q, want_q, rtol=1e-4)


def test_cuda_graphs_need_a_gpu_and_unknown_modes_are_refused():
    with pytest.raises(ModelError, match="FACEQ_INFERENCE=graphs needs a CUDA device"):
        Engine(load_model(None, "ir_se_tiny"), "cpu", "fp32", max_batch=2, inference="graphs")
    with pytest.raises(ModelError, match="choose eager, fused, compiled, graphs"):
        Engine(load_model(None, "ir_se_tiny"), "cpu", "fp32", max_batch=2, inference="turbo")


def test_gpu_workers_get_a_decoding_child_per_core_and_cpu_workers_at_most_eight():
    from faceq.workers.runtime import default_decode_processes

    assert default_decode_processes("cuda:0", 16) == 15  # the H200 host: more than 8 when the GPU needs them
    assert default_decode_processes("cuda:0", 64) == 32
    assert default_decode_processes("cpu", 16) == 8 and default_decode_processes("cpu", 2) == 2
    assert default_decode_processes("cuda:0", 1) == default_decode_processes("cpu", 1) == 0
