"""Redis restarted (AOF, SIGTERM, back 5 s later on the same port) at each point of a job's life.

The restart is triggered by the job's state, never by a sleep: at its start (chunks queued, no
part yet), its middle (half the parts written), its last chunk (every part but one) and during
its finalize (the finalize lease is held). Each run asserts the job is done within 60 s of
Redis's return, exactly one row per item, every worker still alive, and every worker still
consuming: a second job submitted afterwards completes too.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from faceq.job.ledger import Ledger
from tests.test_chaos import AFTER_FAULT, make_stack, samples  # noqa: F401 (fixtures shared with the chaos tests)

pytestmark = pytest.mark.integration

DOWN_SECONDS = 5
N_CHUNKS = 12  # the chaos sample set: 96 items in chunks of 8


def _trigger(stack, job_id: str, phase: str, timeout: float = 120) -> None:
    """Return once the job is at ``phase`` (see the module docstring)."""
    ledger = Ledger.from_url(stack.redis.url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            parts = len(stack.result_parts(job_id))
            if phase == "start" and ledger.progress(job_id) is not None:
                return
            if phase == "middle" and parts >= N_CHUNKS // 2:
                return
            if phase == "last_chunk" and parts >= N_CHUNKS - 1:
                return
            if phase == "finalize" and ledger.redis.exists(f"faceq:job:{job_id}:finalize"):
                return
            assert stack.summary_bytes(job_id) is None, f"job {job_id} finished before its {phase}"
            for worker in stack.workers:
                assert worker.alive(), f"worker {worker.hostname} exited:\n{worker.log_tail()}"
            time.sleep(0.005 if phase == "finalize" else 0.02)
        raise AssertionError(f"job {job_id} never reached {phase}\n{stack.diagnostics(job_id)}")
    finally:
        ledger.redis.close()


def _restart_at(stack, job_id: str, phase: str) -> float:
    """Stop Redis cleanly at ``phase``, bring it back after DOWN_SECONDS; → when it was back."""
    _trigger(stack, job_id, phase)
    stack.redis.stop(kill=False)  # SIGTERM: the AOF is flushed, clients see their connections close
    time.sleep(DOWN_SECONDS)  # the outage itself
    stack.redis.restart()
    return time.monotonic()


# every phase, and one and two workers at the tail (where the restarts of the issue hurt); each
# case costs CI about 45 s, so not every product is run: `-k` and a loop run more locally
@pytest.mark.parametrize(("phase", "workers"), [
    ("start", 1), ("middle", 2), ("last_chunk", 2), ("finalize", 1), ("finalize", 2),
])
def test_a_redis_restart_at_any_point_of_a_job_loses_nothing(make_stack, samples, phase, workers):
    root, expected = samples
    # S3 behind a slow proxy: chunks take about a second and finalize reads every part through it,
    # so the finalize lease is held long enough to be caught
    stack = make_stack(workers=workers, appendonly=True, latency=0.03 if phase != "finalize" else 0.06)
    stack.ready()
    job_id = f"restart-{phase}-{workers}"
    stack.submit(root, job_id)
    back = _restart_at(stack, job_id, phase)
    seconds = stack.wait_for_summary(job_id, AFTER_FAULT)
    print(f"redis restarted at {phase} with {workers} worker(s): summary {seconds:.1f}s after it was back")
    assert time.monotonic() - back <= AFTER_FAULT + 5
    stack.assert_complete(job_id, expected)
    done = stack.wait(job_id, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    for worker in stack.workers:
        assert worker.alive(), f"worker {worker.hostname} exited after the restart:\n{worker.log_tail(40)}"
    # still consuming: a new job after the restart completes on the same workers
    stack.submit(root, f"{job_id}-after")
    stack.wait_for_summary(f"{job_id}-after", AFTER_FAULT)
    stack.assert_complete(f"{job_id}-after", expected)


# -- the worker itself: it reconnects, or it exits non-zero -----------------------------------

FAULTS = Path(__file__).parent / "faults"  # sitecustomize.py: faults injected into a worker process


def _worker_with_fault(stack, fault: str):
    stack.worker_env = {**stack.worker_env, "FACEQ_TEST_FAULT": fault,
                        "PYTHONPATH": f"{FAULTS}{os.pathsep}{stack.worker_env['PYTHONPATH']}"}
    worker = stack.add_worker(f"fault-{fault}")
    stack.ready()
    return worker


def test_a_worker_reconnects_even_when_closing_the_dead_connection_raises(make_stack, samples):
    """kombu's Redis transport could raise AttributeError while Celery closed the connection that
    Redis's restart had killed; the worker then logged "Unrecoverable error" and never consumed
    again. workers/consumer.py makes that close harmless."""
    root, expected = samples
    stack = make_stack(workers=0, appendonly=True)
    worker = _worker_with_fault(stack, "close-raises")
    stack.submit(root, "reconnect-close-raises")
    back = _restart_at(stack, "reconnect-close-raises", "middle")
    stack.wait_for_summary("reconnect-close-raises", AFTER_FAULT)
    assert time.monotonic() - back <= AFTER_FAULT + 5
    stack.assert_complete("reconnect-close-raises", expected)
    assert worker.alive(), worker.log_tail(40)
    assert "closing the broken broker connection raised AttributeError" in worker.log_text()
    assert "Unrecoverable error" not in worker.log_text()
    stack.submit(root, "reconnect-close-raises-after")  # and it still consumes
    stack.wait_for_summary("reconnect-close-raises-after", AFTER_FAULT)
    stack.assert_complete("reconnect-close-raises-after", expected)


def test_a_worker_that_cannot_reconnect_exits_non_zero_with_one_line(make_stack):
    """When the consumer truly cannot go on, the process must not live on idle (or exit 0, which
    `Restart=on-failure` ignores): it exits 1 and says why in one line."""
    stack = make_stack(workers=0, appendonly=True)
    worker = _worker_with_fault(stack, "reconnect-fails")
    stack.redis.stop(kill=False)
    time.sleep(1)  # the outage itself
    stack.redis.restart()
    deadline = time.monotonic() + 60
    while worker.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not worker.alive(), f"the worker lives on without consuming:\n{worker.log_tail(30)}"
    assert worker.process.returncode == 1, worker.log_tail(30)
    lines = [line for line in worker.log_text().splitlines() if line.startswith("error: faceq worker ")]
    assert len(lines) == 1 and "stopped consuming after an unrecoverable error" in lines[0], worker.log_tail(30)
    assert "cannot reconnect" in lines[0]


# -- the sweeper: what a restart lost is found from storage and finished by the workers --------

def test_chunk_messages_lost_from_the_queue_are_sent_again_by_the_workers(make_stack, samples):
    """kombu takes a message off the queue before it records it as unacknowledged: a restart in
    between loses it. The workers' sweeper sees the job stall, finds the chunks with neither a
    part nor a message, and sends them again: done, one row per item, no person involved."""
    root, expected = samples
    stack = make_stack(workers=0, appendonly=True, FACEQ_STALL_SECONDS="4")
    stack.submit(root, "lost-messages")  # queued: no worker yet
    client = stack.redis.client(decode_responses=True)
    lost = [client.rpop("faceq") for _ in range(3)]  # the first three chunks to be delivered, gone
    assert all(lost) and client.llen("faceq") == N_CHUNKS - 3
    stack.add_worker()
    stack.ready()
    seconds = stack.wait_for_summary("lost-messages", AFTER_FAULT)
    print(f"3 lost chunk messages: summary {seconds:.1f}s after the worker started")
    stack.assert_complete("lost-messages", expected)
    logs = "\n".join(w.log_text() for w in stack.workers)
    assert "sweeper: finished stalled jobs from storage" in logs and "resent={'lost-messages': [0, 1, 2]}" in logs


def test_a_run_with_every_part_and_no_summary_is_finalized_by_the_workers(make_stack, samples):
    """Every chunk recorded, then the finalize lost (its message acknowledged, its worker gone):
    the sweeper sends the finalize again."""
    root, expected = samples
    stack = make_stack(workers=1, appendonly=True, FACEQ_STALL_SECONDS="4")
    stack.submit(root, "lost-finalize")
    assert stack.wait("lost-finalize", timeout=120).returncode == 0  # done in the ledger too
    summary = stack.summary("lost-finalize")
    stack.storage.delete_prefix("jobs/lost-finalize/summary.json")
    client = stack.redis.client(decode_responses=True)
    client.hset("faceq:job:lost-finalize", mapping={"state": "running", "updated_at": time.time() - 60})
    seconds = stack.wait_for_summary("lost-finalize", AFTER_FAULT)
    print(f"lost finalize: summary {seconds:.1f}s after it was lost")
    assert stack.summary("lost-finalize")["run_id"] == summary["run_id"]
    stack.assert_complete("lost-finalize", expected)
    # finalize writes the summary first, then marks the ledger done: the second follows shortly
    deadline = time.monotonic() + 15
    while client.hget("faceq:job:lost-finalize", "state") != "done" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.hget("faceq:job:lost-finalize", "state") == "done"
