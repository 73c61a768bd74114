"""The micro-batcher: batches by size and by deadline, routes every result to its request."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from faceq.workers.batcher import MicroBatcher


class RecordingModel:
    """A stand-in for the engine that encodes each crop's identity in its outputs."""

    def __init__(self, delay: float = 0.0):
        self.batches: list[int] = []
        self.times: list[float] = []
        self.delay = delay

    def __call__(self, crops: np.ndarray):
        self.batches.append(len(crops))
        self.times.append(time.monotonic())
        time.sleep(self.delay)
        ids = crops[:, 0, 0, 0].astype(np.float32) + 256 * crops[:, 0, 0, 1].astype(np.float32)
        embeddings = np.repeat(ids[:, None], 512, axis=1)
        return embeddings, ids


def _crops(ids) -> np.ndarray:
    crops = np.zeros((len(ids), 112, 112, 3), dtype=np.uint8)
    for k, i in enumerate(ids):
        crops[k, 0, 0, 0], crops[k, 0, 0, 1] = i % 256, i // 256
    return crops


def test_a_large_request_is_cut_into_full_batches_without_waiting():
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch=64, max_delay_ms=1500)
    started = time.monotonic()
    embeddings, quality = batcher.infer(_crops(range(150)))
    assert model.batches == [64, 64, 22]
    assert model.times[1] - started < 1.0  # full batches go at once
    assert model.times[2] - started >= 1.4  # the tail waits (once) for company, up to the delay
    assert quality.tolist() == list(range(150)) and embeddings[149, 0] == 149
    batcher.close()


def test_a_lone_image_goes_out_when_the_deadline_expires():
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch=64, max_delay_ms=50)
    started = time.monotonic()
    _, quality = batcher.infer(_crops([7]))
    waited = time.monotonic() - started
    assert quality.tolist() == [7.0] and model.batches == [1]
    assert 0.04 <= waited < 2
    batcher.close()


def test_concurrent_one_image_requests_share_batches_and_get_their_own_results():
    model = RecordingModel(delay=0.02)
    batcher = MicroBatcher(model, max_batch=16, max_delay_ms=20)
    results: dict[int, float] = {}
    barrier = threading.Barrier(48)

    def one_image_job(i: int) -> None:
        barrier.wait()
        embeddings, quality = batcher.infer(_crops([i]))
        assert embeddings.shape == (1, 512) and embeddings[0, 0] == i
        results[i] = float(quality[0])

    threads = [threading.Thread(target=one_image_job, args=(i,)) for i in range(48)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: float(i) for i in range(48)}
    assert sum(model.batches) == 48
    assert len(model.batches) < 48 / 2  # shared, not one forward per image
    assert max(model.batches) <= 16
    batcher.close()


def test_mixed_request_sizes_are_routed_back_in_order():
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch=8, max_delay_ms=30)
    sizes = [1, 5, 13, 2, 8, 1]
    futures, expected, next_id = [], [], 0
    for size in sizes:
        ids = list(range(next_id, next_id + size))
        next_id += size
        expected.append(ids)
        futures.append(batcher.submit(_crops(ids)))
    for future, ids in zip(futures, expected):
        assert future.result(timeout=10)[1].tolist() == ids
    assert all(b <= 8 for b in model.batches) and sum(model.batches) == sum(sizes)
    batcher.close()


def test_a_failing_batch_fails_its_requests_and_the_loop_survives():
    calls = []

    def flaky(crops):
        calls.append(len(crops))
        if len(calls) == 1:
            raise RuntimeError("device fell over")
        return RecordingModel()(crops)

    batcher = MicroBatcher(flaky, max_batch=4, max_delay_ms=1)
    with pytest.raises(RuntimeError, match="device fell over"):
        batcher.infer(_crops([1, 2]))
    assert batcher.infer(_crops([3]))[1].tolist() == [3.0]
    batcher.close()
