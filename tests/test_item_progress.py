"""Progress counts items as they finish, not chunks (issue 26): a one-chunk job moves
between 0 and its total while the worker runs it, and ends with exactly one row per item."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import pytest

from faceq.job.ledger import Ledger
from faceq.job.spec import Item
from faceq.workers.chunk_progress import ChunkProgress
from faceq.storage.store import open_storage
from devstack.samples import draw_face, encode
from tests.conftest import job_rows, redis_and_worker

pytestmark = pytest.mark.integration


def _photos(root: Path, n: int) -> Path:
    import numpy as np

    rng = np.random.default_rng(3)
    for i in range(n):
        (root / f"face-{i:03d}.jpg").write_bytes(encode(draw_face(rng, 128), ".jpg"))
    return root


def test_a_single_chunk_job_shows_items_as_they_finish(tmp_path):
    n = 66
    (tmp_path / "photos").mkdir()
    photos = _photos(tmp_path / "photos", n)
    storage_url = (tmp_path / "store").as_uri()
    # the full-size network on the CPU, a few crops per batch: the one chunk takes seconds
    with redis_and_worker(tmp_path, "progress", storage_url, FACEQ_MODEL_ARCH="ir_se_64", FACEQ_MAX_BATCH="4",
                          FACEQ_CHUNK_SIZE="500", FACEQ_MODES="crop") as (env, _):
        submitted = subprocess.run([sys.executable, "-m", "faceq.producer", "audit", str(photos), "--job-id", "one-chunk",
                                    "--mode", "crop"], env=env, capture_output=True, text=True, timeout=120)
        assert submitted.returncode == 0, submitted.stderr
        ledger = Ledger.from_url(env["FACEQ_BROKER_URL"])
        seen, deadline = set(), time.monotonic() + 300
        while time.monotonic() < deadline:
            progress = ledger.progress("one-chunk")
            assert progress.n_chunks == 1 and progress.n_items == n
            seen.add(progress.items_done)
            if progress.complete:
                break
            time.sleep(0.05)
        assert progress.complete and progress.items_done == n
        between = sorted(k for k in seen if 0 < k < n)
        assert between, f"progress only ever read {sorted(seen)}"
        assert not ledger.redis.exists("faceq:job:one-chunk:partial")  # the recorded chunk counts whole
        rows = job_rows(open_storage(storage_url), "one-chunk")
        assert rows.num_rows == n and len(set(rows.column("item_id").to_pylist())) == n


def test_chunk_progress_is_overwritten_and_dropped_once_the_chunk_is_recorded(redis_server):
    ledger = Ledger.from_url(redis_server.url)
    ledger.start("p", "run-1", "audit", n_chunks=2, n_items=20)
    assert ledger.chunk_progress("p", "run-1", 0, 4) and ledger.chunk_progress("p", "run-1", 1, 3)
    assert ledger.progress("p").items_done == 7
    assert ledger.chunk_progress("p", "run-1", 0, 2)  # a redelivery starts its count again: replaced, not added
    assert ledger.progress("p").items_done == 5
    ledger.record_chunk("p", "run-1", 0, {"n_items": 10})
    assert ledger.progress("p").items_done == 13
    assert not ledger.chunk_progress("p", "run-1", 0, 10)  # a late report of a recorded chunk: ignored
    assert not ledger.chunk_progress("p", "run-0", 1, 9)  # an older run's: ignored
    ledger.record_chunk("p", "run-1", 1, {"n_items": 10})
    ledger.record_chunk("p", "run-1", 1, {"n_items": 10})  # redelivered after recording: counted once
    assert ledger.progress("p").items_done == 20


# -- during a chunk: items that need no model as they end, the others as results come back --


class _GatedStorage:
    """The real storage, but one photo's read waits until the test opens the gate (a slow
    network read): the chunk is then still reading while the test looks at the ledger."""

    def __init__(self, storage, slow_uri: str):
        self._storage, self.slow_uri, self.gate = storage, slow_uri, threading.Event()

    def __getattr__(self, name):
        return getattr(self._storage, name)

    def read_uri(self, uri, max_bytes=None):
        if uri == self.slow_uri:
            assert self.gate.wait(30)
        return self._storage.read_uri(uri, max_bytes)


class _WatchedEngine:
    """The real engine, 4 crops per call; before each call it waits (a few seconds at most) for
    the ledger to show what should be shown by then, and notes what it saw."""

    max_batch = 4

    def __init__(self, engine, seen_now: Callable[[int], int], first: int):
        self.engine, self.seen_now, self.expected = engine, seen_now, first
        self.model_id, self.device = engine.model_id, engine.device
        self.seen: list[int] = []

    def infer(self, crops):
        self.seen.append(self.seen_now(self.expected))
        self.expected += len(crops)
        return self.engine.infer(crops)


@pytest.mark.parametrize("microbatch", [True, False], ids=["microbatch", "direct"])
def test_progress_moves_while_a_chunk_reads_and_while_its_model_runs(tmp_path, redis_server, microbatch):
    from faceq.models.weights import load_model
    from faceq.producer.submit import JobOptions, write_plan
    from faceq.settings import Settings
    from faceq.workers.batcher import MicroBatcher
    from faceq.workers.engine import Engine
    from faceq.workers.service import ChunkProcessor
    from devstack.samples import write_sample_set

    samples = tmp_path / "samples"
    expected = write_sample_set(samples, n_good=10)
    n, n_bad = len(expected), sum(v != "ok" for v in expected.values())
    items = [Item(name, (samples / name).as_uri(), {}) for name in sorted(expected)]
    slow = next(item.source_uri for item in items if expected[item.item_id] == "ok")
    storage = _GatedStorage(open_storage((tmp_path / "store").as_uri()), slow)
    job_id = f"during-{'mb' if microbatch else 'direct'}"
    header = write_plan(Settings(), storage._storage, items=items, source=str(samples), job_id=job_id,
                        options=JobOptions("audit", chunk_size=500), allowed_sources=(samples.as_uri(),))
    ledger = Ledger.from_url(redis_server.url)
    ledger.start(job_id, header.run_id, "audit", header.n_chunks, header.n_items)

    def seen_now(want: int, within: float = 5.0) -> int:
        deadline = time.monotonic() + within
        while (done := ledger.progress(job_id).items_done) < want and time.monotonic() < deadline:
            time.sleep(0.02)
        return done

    engine = _WatchedEngine(Engine(load_model(None, "ir_se_tiny", seed=2), "cpu", "fp32", max_batch=4),
                            seen_now, n_bad)
    batcher = MicroBatcher(engine.infer, 4, 2) if microbatch else None
    processor = ChunkProcessor(Settings(io_threads=2), storage, ledger, engine, "w", batcher=batcher)
    processor.progress_every = 0.1
    sent = []
    reporter = processor._progress_reporter
    processor._progress_reporter = lambda ref: (lambda k: (sent.append(time.monotonic()), reporter(ref)(k)))
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(processor.process, header.chunk(0))
        # still reading one photo: the broken files are done (their rows need no model), no face yet
        assert seen_now(n_bad) == n_bad
        time.sleep(0.3)
        assert ledger.progress(job_id).items_done == n_bad and not running.done()
        storage.gate.set()
        outcome = running.result(timeout=120)
    processor.close()
    if batcher:
        batcher.close()
    # before each batch of 4 crops ran, the ledger showed every item with results until then
    assert engine.seen == [n_bad + 4 * k for k in range(len(engine.seen))] and len(engine.seen) == 3
    assert outcome.n_items == n and ledger.progress(job_id).items_done == n
    assert not ledger.redis.exists(f"faceq:job:{job_id}:partial")
    gaps = [b - a for a, b in zip(sent, sent[1:])]
    assert gaps and min(gaps) >= 0.09  # one report per tick at most, whatever finished meanwhile


def test_a_chunk_is_reported_at_most_once_a_tick_and_only_when_it_moved():
    sent: list[int] = []
    progress = ChunkProgress(sent.append, every=0.2)
    listen = progress.faces_done([0, 2, 3])  # item 0: face 0; item 1: faces 1-2; item 2: face 3
    with progress:
        started = time.monotonic()
        for k in range(2000):  # many items end within one tick: one report
            if k < 2:
                progress.settled()
            time.sleep(0.0002)
        listen(2)  # faces 0 and 1: item 0 only (item 1 waits for its second face)
        time.sleep(0.5)
        listen(4)
        time.sleep(0.5)
        elapsed = time.monotonic() - started
    assert sent == sorted(sent) and sent[-1] == 2 + 3
    assert 3 in sent and 4 not in sent
    assert len(sent) <= elapsed / 0.2 + 1 and len(set(sent)) == len(sent)  # never the same count twice
