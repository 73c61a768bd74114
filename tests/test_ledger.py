"""Job bookkeeping on a real redis-server: idempotent chunks, stale runs, one finalizer."""

import threading

import pytest

from faceq.job.ledger import ChunkRecord, Ledger


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
    assert ledger.progress("j-fail").failed == {"1": "StorageError: bucket gone"}
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


def test_job_keys_expire_after_the_retention(redis_server):
    ledger = Ledger.from_url(redis_server.url, retention_seconds=120)
    ledger.start("j-ttl", "run1", "audit", n_chunks=2, n_items=2)
    ledger.record_chunk("j-ttl", "run1", 0, _stats(1))
    ledger.record_failure("j-ttl", "run1", 1, "boom")
    ledger.count_delivery("j-ttl", 1)
    for suffix in ("", ":chunks", ":failed", ":deliveries"):
        assert 0 < ledger.redis.ttl(f"faceq:job:j-ttl{suffix}") <= 120


def test_a_finalize_lease_lapses_unless_renewed_and_only_its_holder_releases_it(ledger):
    ledger.start("j-lease", "run1", "audit", n_chunks=1, n_items=1)
    lease = ledger.claim_finalize("j-lease", "run1", lease_seconds=1)
    assert lease is not None and ledger.claim_finalize("j-lease", "run1", lease_seconds=1) is None
    assert lease.renew()
    ledger.redis.delete("faceq:job:j-lease:finalize")
    other = ledger.claim_finalize("j-lease", "run1", lease_seconds=30)  # the first holder's lease lapsed
    assert other is not None and not lease.renew()
    lease.release()  # a stale holder cannot release the new holder's lease
    assert ledger.claim_finalize("j-lease", "run1", lease_seconds=30) is None
    other.release()
    assert ledger.claim_finalize("j-lease", "run1", lease_seconds=30) is not None


def test_deliveries_are_counted_per_chunk(ledger):
    ledger.start("j-deliveries", "run1", "audit", n_chunks=2, n_items=2)
    assert [ledger.count_delivery("j-deliveries", 0) for _ in range(3)] == [1, 2, 3]
    assert ledger.count_delivery("j-deliveries", 1) == 1


def test_a_lost_job_is_restored_with_the_chunks_that_have_parts(ledger):
    ledger.restore("j-restore", "run1", "audit", n_chunks=3, n_items=70, created_at=1.0, done={0: 32, 2: 6})
    progress = ledger.progress("j-restore")
    assert (progress.chunks_done, progress.items_done, progress.state) == (2, 38, "running")
    assert ledger.chunk_done("j-restore", 0) and not ledger.chunk_done("j-restore", 1)
    assert ledger.record_chunk("j-restore", "run1", 1, _stats(32)) is ChunkRecord.COMPLETE
