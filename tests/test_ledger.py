"""Job bookkeeping on a real redis-server: idempotent chunks, stale runs, one finalizer."""

import threading

import pytest

from faceq.ledger import ChunkRecord, Ledger


@pytest.fixture
def ledger(redis_server) -> Ledger:
    return Ledger.from_url(redis_server.url)


def _stats(n):
    return {"n_items": n, "n_errors": 0, "n_flagged": 0, "seconds": 0.1, "finished_at": 0.0, "worker": "w"}


def test_a_redelivered_chunk_is_counted_once(ledger):
    ledger.start("j-redeliver", "run1", "audit", n_chunks=3, n_items=70)
    assert ledger.record_chunk("j-redeliver", "run1", 0, _stats(32)) is ChunkRecord.PENDING
    assert ledger.record_chunk("j-redeliver", "run1", 0, _stats(32)) is ChunkRecord.PENDING
    progress = ledger.progress("j-redeliver")
    assert (progress.chunks_done, progress.items_done, progress.chunks_pending) == (1, 32, 2)


def test_the_last_chunk_completes_the_run(ledger):
    ledger.start("j-complete", "run1", "audit", n_chunks=2, n_items=40)
    assert ledger.record_chunk("j-complete", "run1", 1, _stats(8)) is ChunkRecord.PENDING
    assert ledger.record_chunk("j-complete", "run1", 0, _stats(32)) is ChunkRecord.COMPLETE
    assert ledger.progress("j-complete").items_done == 40


def test_messages_of_an_earlier_run_are_stale(ledger):
    ledger.start("j-rerun", "old", "audit", n_chunks=1, n_items=1)
    ledger.start("j-rerun", "new", "audit", n_chunks=2, n_items=2)
    assert ledger.record_chunk("j-rerun", "old", 0, _stats(1)) is ChunkRecord.STALE
    assert not ledger.is_current("j-rerun", "old")
    assert ledger.progress("j-rerun").chunks_done == 0


def test_a_failure_is_visible_until_the_chunk_succeeds(ledger):
    ledger.start("j-fail", "run1", "audit", n_chunks=2, n_items=2)
    ledger.record_failure("j-fail", "run1", 1, "StorageError: bucket gone")
    assert ledger.progress("j-fail").failed == {1: "StorageError: bucket gone"}
    ledger.record_chunk("j-fail", "run1", 1, _stats(1))
    assert ledger.progress("j-fail").failed == {}


def test_exactly_one_of_many_racing_workers_may_finalize(ledger):
    ledger.start("j-race", "run1", "audit", n_chunks=1, n_items=1)
    barrier = threading.Barrier(16)
    wins = []

    def contend():
        barrier.wait()
        if ledger.claim_finalize("j-race", "run1", lease_seconds=60):
            wins.append(threading.get_ident())

    threads = [threading.Thread(target=contend) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    ledger.mark_done("j-race", "run1")
    assert ledger.progress("j-race").complete


def test_unknown_jobs_have_no_progress(ledger):
    assert ledger.progress("never-submitted") is None
