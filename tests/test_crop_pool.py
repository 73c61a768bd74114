"""Crop mode's local items read by decoding child processes (faceq.workers.crop_pool, issue 11).

Real child processes and shared memory throughout; the faults are real signals to them:

- the rows are exactly the thread path's (pixels, boxes, every kind of bad input, the allow-list);
- a stopped child costs only the item it holds (a ``timeout`` row), the pool is replaced and
  later chunks read everything;
- a killed child costs nothing: what it held is read again;
- through a real worker: a decoding child killed with SIGKILL mid-job, and both children
  stopped mid-job, still give exactly one row per item; a worker killed with SIGKILL leaves
  no decoding process behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from faceq.storage.allow import AllowedSources
from devstack.processes import decoding_children, process_tree, wait_until
from faceq.errors import BadInputError
from faceq.job.spec import Item
from faceq.storage.store import open_storage
from devstack.samples import draw_face
from tests.conftest import job_rows, redis_and_worker
from tests.test_datapath import _crop_job, _processor
from faceq.workers.crop_pool import STARTED, CropPool, _Round


@pytest.fixture
def pool():
    crop_pool = CropPool(2, 32 << 20, 50_000_000).start()
    yield crop_pool
    crop_pool.close()


def _same_rows(a, b):
    assert [r.item_id for r in a] == [r.item_id for r in b]
    for x, y in zip(a, b):
        assert (x.status, x.error, x.bbox) == (y.status, y.error, y.bbox), x.item_id
        if x.status == "ok":
            np.testing.assert_array_equal(x.embedding, y.embedding)


def _big_job(tmp_path, n=48):
    """A crop-mode job header and its ``n`` large crops."""
    header, _ = _crop_job(tmp_path, 1)
    return replace(header, allowed_sources=((tmp_path / "big").as_uri(),)), _big_crops(tmp_path / "big", n)


def _signal_once_reading(pool, pids, sig, reading):
    """Send ``sig`` to ``pids`` once, as soon as ``reading`` items of the pool's first round are being read."""
    original, once = pool._submit, threading.Lock()

    def submit(*args):
        slices = original(*args)
        if once.acquire(blocking=False):  # the first round of the first chunk to get here; never released
            batch = args[1]
            wait_until(lambda: (batch.status == STARTED).sum() >= reading, 20, "the children reading")
            for pid in pids:
                os.kill(pid, sig)
        return slices

    pool._submit = submit


def _big_crops(folder, n, side=1600):
    """``n`` large JPEG face crops (slow enough to decode that a signal lands mid-chunk)."""
    folder.mkdir(exist_ok=True)
    data = cv2.imencode(".jpg", draw_face(np.random.default_rng(3), side), [cv2.IMWRITE_JPEG_QUALITY, 95])[1]
    items = []
    for i in range(n):
        path = folder / f"big-{i:04d}.jpg"
        path.write_bytes(data.tobytes())
        items.append(Item(path.name, path.as_uri()))
    return items


def test_pool_rows_are_the_thread_paths_rows_for_every_kind_of_input(tmp_path, pool):
    header, items = _crop_job(tmp_path, 40)
    folder = tmp_path / "crops"
    outside = tmp_path / "outside.jpg"
    outside.write_bytes((folder / "c001.jpg").read_bytes())
    (folder / "escape.jpg").symlink_to(outside)
    (folder / "text.jpg").write_text("not an image")
    items += [Item("escape.jpg", (folder / "escape.jpg").as_uri()), Item("text.jpg", (folder / "text.jpg").as_uri()),
              Item("missing.jpg", (folder / "missing.jpg").as_uri())]
    threads, children = _processor(tmp_path), _processor(tmp_path)
    children.crop_pool = pool
    try:
        expected, rows = threads.rows(header, items), children.rows(header, items)
    finally:
        threads.close()
        children._io.shutdown()
    _same_rows(rows, expected)
    by_id = {r.item_id: r for r in rows}
    assert by_id["escape.jpg"].error.startswith("forbidden")
    assert by_id["text.jpg"].error.startswith("not_an_image")
    assert by_id["missing.jpg"].error.startswith("unreadable")
    assert sum(r.status == "ok" for r in rows) == 40
    cpu = children.cpu.totals()  # the children's stage CPU is counted too
    assert cpu["fetch"] > 0 and cpu["decode"] > 0


def test_without_room_in_dev_shm_a_chunk_is_read_in_threads(tmp_path, caplog):
    """A batch that /dev/shm cannot hold (here: 50 million crops reserved per batch) fails when it is
    made, not as a SIGBUS in a child, and the chunk is read by the threads instead."""
    header, items = _crop_job(tmp_path, 20)
    threads, short = _processor(tmp_path), _processor(tmp_path)
    short.crop_pool = CropPool(1, 32 << 20, 50_000_000, batch_items=50_000_000)
    try:
        _same_rows(short.rows(header, items), threads.rows(header, items))
    finally:
        threads.close()
        short.close()
    assert "no shared memory for a batch" in caplog.text


@pytest.mark.serial  # /dev/shm is the machine's: other tests' workers must not add to it meanwhile
def test_a_chunk_larger_than_the_kept_batches_leaves_no_shared_memory_behind(tmp_path):
    """Batches of the worker's chunk size are reused; a larger chunk's batch is one-off: freed by
    the worker and unmapped by every child once read, so a big job holds no memory afterwards."""
    header, items = _crop_job(tmp_path, 40)
    processor = _processor(tmp_path)
    processor.crop_pool = CropPool(2, 32 << 20, 50_000_000, batch_items=8).start()
    before = set(Path("/dev/shm").iterdir())
    try:
        rows = processor.rows(header, items)
        assert sum(r.status == "ok" for r in rows) == 40
        children = decoding_children(os.getpid())
        mapped = [line for pid in children for line in open(f"/proc/{pid}/maps")
                  if "/dev/shm/psm_" in line]  # SharedMemory's names (sem.* are the queues' locks)
        assert len(children) == 2 and mapped == []
        assert set(Path("/dev/shm").iterdir()) <= before
    finally:
        processor.close()


def test_a_stopped_child_costs_only_the_item_it_holds(tmp_path, pool):
    processor = _processor(tmp_path, item_timeout_seconds=3.0)
    processor.crop_pool = pool
    header, items = _big_job(tmp_path)
    children = decoding_children(os.getpid())
    assert len(children) == 2
    _signal_once_reading(pool, children, signal.SIGSTOP, reading=2)
    try:
        rows = processor.rows(header, items)
    finally:
        for pid in children:  # killed by the pool already; never leave a stopped process behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert [r.item_id for r in rows] == [i.item_id for i in items]
    timeouts = [r for r in rows if r.status == "error"]
    assert 1 <= len(timeouts) <= 2 and all(r.error.startswith("timeout") for r in timeouts)
    assert sum(r.status == "ok" for r in rows) == len(items) - len(timeouts)
    replaced = decoding_children(os.getpid())
    assert replaced and not set(replaced) & set(children)
    again = processor.rows(header, items)
    assert all(r.status == "ok" for r in again)
    processor._io.shutdown()


def test_a_killed_child_loses_nothing(tmp_path, pool):
    processor = _processor(tmp_path)
    processor.crop_pool = pool
    header, items = _big_job(tmp_path)
    victim = decoding_children(os.getpid())[0]
    _signal_once_reading(pool, [victim], signal.SIGKILL, reading=1)
    rows = processor.rows(header, items)
    assert [r.item_id for r in rows] == [i.item_id for i in items]
    assert all(r.status == "ok" for r in rows), [r.error for r in rows if r.error]
    assert victim not in decoding_children(os.getpid())
    processor._io.shutdown()


def test_a_restart_by_one_chunk_costs_another_chunk_nothing(tmp_path, pool):
    """Two chunks share the pool; the children are stopped while the first is being read. Its
    timeout restarts the pool under the second one's feet, a second before the second one's own
    deadline (whether the second one's slices then end broken or cancelled is up to the
    executor's threads): each still gets exactly one row per item, and only items a stopped
    child held can time out."""
    processor = _processor(tmp_path, item_timeout_seconds=3.0)
    processor.crop_pool = pool
    header, items = _big_job(tmp_path, 96)
    first, second = items[:48], items[48:]
    _signal_once_reading(pool, decoding_children(os.getpid()), signal.SIGSTOP, reading=1)
    results = {}
    threads = [threading.Thread(target=lambda name, chunk: results.__setitem__(name, processor.rows(header, chunk)),
                                args=(name, chunk)) for name, chunk in (("first", first), ("second", second))]
    threads[0].start()
    time.sleep(1)  # the second chunk's deadline is a second later: the first one's restart happens under its feet
    threads[1].start()
    for thread in threads:
        thread.join(60)
    assert [r.item_id for r in results["first"]] == [i.item_id for i in first]
    assert [r.item_id for r in results["second"]] == [i.item_id for i in second]
    rows = results["first"] + results["second"]
    timeouts = [r for r in rows if r.status != "ok"]
    assert len(timeouts) <= 2 and all(r.error.startswith("timeout") for r in timeouts), [r.error for r in timeouts]
    processor._io.shutdown()


def test_slices_cancelled_or_refused_by_a_restarted_pool_are_read_again(tmp_path, pool):
    """The two ways another chunk's restart reaches a chunk, made to happen for certain: a pool
    shut down before a slice is submitted refuses it, and a queued slice is cancelled. Neither
    may fail the chunk: its items are read again on the fresh pool."""
    header, items = _crop_job(tmp_path, 12)
    allowed = AllowedSources.parse("", header.allowed_sources)
    uris = {i: item.source_uri for i, item in enumerate(items)}
    dead = ProcessPoolExecutor(1)
    dead.shutdown()
    with pool.batch(len(items)) as batch:
        refused = pool._submit(dead, batch, _Round(dict(uris), 5.0), allowed.roots)
        assert all(isinstance(f.exception(), BrokenProcessPool) for f in refused)
        cancelled = Future()
        assert cancelled.cancel()
        state = _Round(dict(uris), 5.0)
        pool._collect(cancelled, list(uris), batch, state, timed_out=False)
        assert state.todo == uris and state.outcomes == {}, "a cancelled slice's items are still to be read"
        outcomes, _ = pool.read(batch, uris, allowed, 30.0)
    assert sorted(outcomes) == sorted(uris)
    assert sum(isinstance(o, BadInputError) for o in outcomes.values()) == 1  # the broken JPEG, nothing else


def test_decoding_processes_that_cannot_start_leave_the_worker_reading_in_threads():
    """In a fresh interpreter whose children cannot be started (no such executable), the worker's
    start-up logs why and goes on without the pool instead of dying."""
    script = (
        "import logging, multiprocessing\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "multiprocessing.set_executable('/nonexistent/python')\n"
        "from faceq.settings import Settings\n"
        "from faceq.workers.runtime import start_crop_pool\n"
        "print('POOL', start_crop_pool(Settings(decode_processes=2, modes=('crop',))))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    assert "POOL None" in done.stdout
    assert "the decoding processes did not start" in done.stderr


def test_a_worker_rides_out_killed_and_stopped_decoding_children(tmp_path):
    """Real processes end to end: redis-server, a worker with two decoding children, storage on disk."""
    from faceq.job.ledger import Ledger
    from faceq.settings import Settings
    from faceq.producer.submit import JobOptions, submit

    storage_url = (tmp_path / "store").as_uri()
    items = _big_crops(tmp_path / "big", 160)
    (tmp_path / "big" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    items.insert(7, Item("broken.jpg", (tmp_path / "big" / "broken.jpg").as_uri()))
    with redis_and_worker(tmp_path, "pool", storage_url, FACEQ_DECODE_PROCESSES="2", FACEQ_CHUNK_SIZE="8",
                          FACEQ_ITEM_TIMEOUT_SECONDS="4") as (env, worker):
        children = decoding_children(worker.pid)
        assert len(children) == 2, "the worker starts its decoding children before it is ready"
        storage = open_storage(storage_url)
        ledger = Ledger.from_url(env["FACEQ_BROKER_URL"])
        settings = Settings(broker_url=env["FACEQ_BROKER_URL"], storage_url=storage_url, chunk_size=8)

        def run(job_id, fault):
            submit(settings, storage, ledger, items=items, source="test", job_id=job_id,
                   allowed_sources=((tmp_path / "big").as_uri(),), options=JobOptions("audit", mode="crop",
                                                                                       chunk_size=8, report=False))
            wait_until(lambda: ledger.progress(job_id).chunks_done >= 2, 60, "two chunks done")
            fault()
            wait_until(lambda: ledger.progress(job_id).complete, 120, f"job {job_id}")
            table = job_rows(storage, job_id).to_pydict()
            assert sorted(table["item_id"]) == sorted(i.item_id for i in items), "exactly one row per item"
            return dict(zip(table["item_id"], zip(table["status"], table["error"])))

        rows = run("killed", lambda: os.kill(children[0], signal.SIGKILL))
        assert rows.pop("broken.jpg")[0] == "error"
        assert all(status == "ok" for status, _ in rows.values()), "a dead child's items are read again"

        now = decoding_children(worker.pid)
        stop_all = lambda: [os.kill(pid, signal.SIGSTOP) for pid in now]  # noqa: E731
        try:
            rows = run("stopped", stop_all)
        finally:
            for pid in now:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        assert rows.pop("broken.jpg")[0] == "error"
        timeouts = [error for status, error in rows.values() if status != "ok"]
        assert len(timeouts) <= 2 and all(e.startswith("timeout") for e in timeouts), timeouts
        log = worker.log_path.read_text()
        assert "a decoding process died" in log and "not read within 4s" in log

        tree = process_tree(worker.pid)
        assert len(tree) >= 4  # the worker, its fork server, two decoding children (and the resource tracker)
        os.kill(worker.pid, signal.SIGKILL)
        wait_until(lambda: not any(_alive(pid) for pid in tree), 15,
                   "the decoding children and the fork server to leave with the killed worker")


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent to reap it."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
