"""Crop mode's local items read and decoded by child processes, into a shared-memory batch.

Why: a worker is one process, so one GIL. Threads overlap the reads and libjpeg-turbo's
decode (it releases the GIL), but each item's Python (the allow-list check, open and read,
the decoder's wrapper, the crop) holds it: a worker used about 1.3 of 2 cores (issue 11).
Each child has a GIL of its own. The chunk's batch lives in shared memory, so a crop is
decoded straight into the row the model reads, and only a few bytes per item cross a pipe.

Children start from a fork server that imported this module (numpy, OpenCV, Pillow,
simplejpeg; never torch or CUDA), so a replaced child is up in milliseconds. Every child
re-checks each URI against the job's roots (a fresh ``AllowedSources`` per slice) right
before reading it, exactly as the threads do.

Stuck and dying children: a child marks an item STARTED before it touches it and DONE once
its crop is in place. When the chunk's slices are not all back within the item timeout,
the children are killed and replaced: the STARTED items of the unfinished slices get a
``timeout`` row, finished crops are kept, and the rest is read again. A slice whose child
died (a decoder crash, or another chunk's timeout killed it) is read again too, its STARTED
item at most twice in all; after that it gets an ``internal`` error row.

The pipes carry Python's pickle, between this process and its own children only; nothing
from a broker or a job is ever unpickled.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import select
import threading
from collections import OrderedDict
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.shared_memory import SharedMemory
from typing import Callable, Iterator

import numpy as np

from faceq.storage.allow import AllowedSources
from faceq.errors import BadInputError, FaceqError
from faceq.storage.store import read_local_uri
from faceq.models.align import INPUT_SIZE
from faceq.models.preprocess import FaceCrop, PreparedImage, crop_face, decode_image
from faceq.workers.stage_cpu import clock

log = logging.getLogger(__name__)

PENDING, STARTED, DONE, FAILED = 0, 1, 2, 3
CROP_BYTES = INPUT_SIZE * INPUT_SIZE * 3
MAX_TRIES = 2  # reads of an item whose child died while reading it
SLICE_ITEMS = 32  # items per task: small enough that a dead child costs little, big enough to amortise a task
_FREE_BATCHES_KEPT = 4


class SharedBatch:
    """One chunk's crops, ``(n, 112, 112, 3)`` uint8 in shared memory, with each item's status
    byte and its decoded (width, height)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        size = capacity * (CROP_BYTES + 8 + 1)
        self._shm = SharedMemory(create=True, size=size)
        try:  # reserve the pages now: a full /dev/shm then fails here, not as a SIGBUS in a child
            os.posix_fallocate(self._shm._fd, 0, size)
        except OSError:
            self._shm.close()
            self._shm.unlink()
            raise
        self._all = _views(self._shm, capacity)
        self.crops, self.sizes, self.status = self._all

    @property
    def name(self) -> str:
        return self._shm.name

    def use(self, n: int) -> "SharedBatch":
        self.crops, self.sizes, self.status = (view[:n] for view in self._all)  # statuses: reset per round
        return self

    def finished(self, indices: list[int]) -> dict[int, PreparedImage]:
        """The crops among ``indices`` that are in place (status DONE), as ``crop_face`` gives them."""
        done = self.status[indices] == DONE
        sizes = self.sizes[indices].tolist()
        return {i: PreparedImage([FaceCrop(self.crops[i], [0.0, 0.0, float(width), float(height)])], face_count=1)
                for i, is_done, (width, height) in zip(indices, done.tolist(), sizes) if is_done}

    def close(self) -> None:
        self.crops = self.sizes = self.status = self._all = None
        try:
            self._shm.close()
        except BufferError:  # a caller still holds a view: the mapping goes when it does
            pass
        self._shm.unlink()


def _views(shm: SharedMemory, capacity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    crops = np.ndarray((capacity, INPUT_SIZE, INPUT_SIZE, 3), np.uint8, shm.buf)
    sizes = np.ndarray((capacity, 2), np.int32, shm.buf, offset=capacity * CROP_BYTES)
    status = np.ndarray((capacity,), np.uint8, shm.buf, offset=capacity * (CROP_BYTES + 8))
    return crops, sizes, status


@dataclass
class _Round:
    """What one ``read`` call still has to get (item index → URI) and what it has got."""

    todo: dict[int, str]
    timeout: float
    tries: dict[int, int] = field(default_factory=dict)
    outcomes: dict[int, PreparedImage | BadInputError] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=lambda: {"fetch": 0.0, "decode": 0.0, "crop": 0.0})


class CropPool:
    """A fixed number of decoding children shared by every chunk of one worker."""

    def __init__(self, processes: int, max_bytes: int, max_pixels: int, batch_items: int = 256):
        self.processes = processes
        self.batch_items = batch_items  # batches this size are kept for reuse; larger ones are one-off
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload([__name__])
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self._free: list[SharedBatch] = []

    def start(self) -> "CropPool":
        """Start the children now (the first chunk would otherwise wait for them)."""
        executor = self._current()
        wait([executor.submit(_ready) for _ in range(self.processes)])
        return self

    def close(self) -> None:
        with self._lock:
            executor = self._executor
            free, self._free = self._free, []
        if executor is not None:
            self._kill(executor)  # not a graceful shutdown: a child stuck on a read would hold it up for ever
        for batch in free:
            batch.close()

    @contextmanager
    def batch(self, n: int) -> Iterator[SharedBatch | None]:
        """A shared batch for ``n`` crops, reused by later chunks once this one is done with it;
        None when shared memory is short (the caller then reads in threads)."""
        with self._lock:
            batch = next((b for b in self._free if b.capacity >= n), None)
            if batch is not None:
                self._free.remove(batch)
        if batch is None:
            try:
                batch = SharedBatch(max(n, self.batch_items))
            except OSError as exc:
                log.warning("no shared memory for a batch of %d crops (%s): this chunk is read in threads; "
                            "give the worker a larger /dev/shm", n, exc)
                yield None
                return
        try:
            yield batch.use(n)
        finally:
            with self._lock:
                keep = (len(self._free) < _FREE_BATCHES_KEPT and batch.capacity <= self.batch_items
                        and self._executor is not None)
                if keep:
                    self._free.append(batch)
            if not keep:
                batch.close()

    def read(self, batch: SharedBatch, uris: dict[int, str], allowed: AllowedSources, timeout: float,
             failed: Callable[[int], None] | None = None
             ) -> tuple[dict[int, PreparedImage | BadInputError], dict[str, float]]:
        """Item index → its crop (in ``batch.crops[index]``) or its error, for every index of
        ``uris``; and the children's CPU seconds by stage. ``failed(n)``: told as each slice
        comes back how many of its items failed (they need no model: the chunk's progress)."""
        state = _Round(dict(uris), timeout)
        idle_rounds = 0
        while state.todo:
            left = len(state.todo), sum(state.tries.values())
            executor = self._current()
            slices = self._submit(executor, batch, state, allowed.roots)
            if failed is not None:
                for future in slices:
                    future.add_done_callback(lambda f: _tell_failed(f, failed))
            _, not_done = wait(slices, timeout=timeout)
            died = [f for f in slices if f not in not_done and _failure(f) is not None]
            if not_done or died:
                log.error("crop pool: %s; restarting the decoding processes", f"{len(not_done)} slice(s) not read "
                          f"within {timeout:.0f}s" if not_done else f"a decoding process died ({_failure(died[0])})")
                self._kill(executor)
            for future, indices in slices.items():
                self._collect(future, indices, batch, state, timed_out=future in not_done)
            idle_rounds = idle_rounds + 1 if (len(state.todo), sum(state.tries.values())) == left else 0
            if idle_rounds >= 3:
                raise RuntimeError("the decoding processes die before reading anything (see the log above)")
        return state.outcomes, state.cpu

    def _submit(self, executor: ProcessPoolExecutor, batch: SharedBatch, state: _Round, roots: tuple[str, ...]
                ) -> dict[Future, list[int]]:
        work = sorted(state.todo.items())
        batch.status[[i for i, _ in work]] = PENDING
        size = max(1, min(SLICE_ITEMS, -(-len(work) // self.processes)))
        slices = {}
        for start in range(0, len(work), size):
            part = work[start : start + size]
            try:
                future = executor.submit(_read_slice, batch.name, batch.capacity, batch.capacity <= self.batch_items,
                                         part, roots, self.max_bytes, self.max_pixels)
            except (BrokenProcessPool, RuntimeError) as exc:  # broken or killed since the round began
                future = Future()
                future.set_exception(BrokenProcessPool(str(exc)))
            slices[future] = [i for i, _ in part]
        return slices

    def _collect(self, future: Future, indices: list[int], batch: SharedBatch, state: _Round, timed_out: bool
                 ) -> None:
        error = None if timed_out else _failure(future)
        if error is not None and not isinstance(error, BrokenProcessPool):
            raise error  # a bug on this side (arguments, pickling), not an item's fault
        state.outcomes.update(batch.finished(indices))
        if not timed_out and error is None:  # the child went through the slice: each item is done or failed
            errors, cpu = future.result()
            for stage, seconds in cpu.items():
                state.cpu[stage] += seconds
            for i, code, message in errors:
                state.outcomes[i] = BadInputError(code, message)
            for i in indices:
                del state.todo[i]
            return
        # a stuck or dead child: its finished crops are kept (above), the item it held times out
        # (stuck) or is read again once (dead), and the rest of its slice is read again
        for i, status in zip(indices, batch.status[indices].tolist()):
            if status == STARTED and timed_out:
                state.outcomes[i] = BadInputError("timeout", f"not read and decoded within {state.timeout:.0f}s")
            elif status == STARTED:
                state.tries[i] = state.tries.get(i, 0) + 1
                if state.tries[i] >= MAX_TRIES:
                    state.outcomes[i] = BadInputError(
                        "internal", f"the decoding process died while reading this item ({MAX_TRIES} times)")
            if i in state.outcomes:
                del state.todo[i]

    def _current(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ProcessPoolExecutor(self.processes, mp_context=self._context,
                                                     initializer=_exit_with, initargs=(os.getpid(),))
            return self._executor

    def _kill(self, executor: ProcessPoolExecutor) -> None:
        """Kill ``executor``'s children (a stuck one cannot be interrupted); the next read starts fresh ones."""
        with self._lock:
            if self._executor is executor:
                self._executor = None
        children = list((getattr(executor, "_processes", None) or {}).values())  # no public way before Python 3.14
        for child in children:
            child.kill()
        executor.shutdown(wait=False, cancel_futures=True)
        for child in children:
            child.join(5)


def _tell_failed(future: Future, failed: Callable[[int], None]) -> None:
    """How many items of a slice that came back whole failed (a dead or stuck child's slice
    tells nothing: what it did not finish is read again or times out, counted by the caller)."""
    if _failure(future) is None:
        failed(len(future.result()[0]))


def _failure(future: Future) -> BaseException | None:
    """A finished slice's exception; one cancelled because another chunk restarted the pool counts as broken."""
    if future.cancelled():
        return BrokenProcessPool("cancelled: the decoding processes were restarted")
    return future.exception()


# ---------------------------------------------------------------------------- in the children

_attached: OrderedDict[str, tuple[SharedMemory, np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()


def _exit_with(worker_pid: int) -> None:
    """Leave when the worker does. A child waits on its task queue, which it also holds open,
    so after a ``kill -9`` of the worker it would wait for ever (and keep the fork server up)."""
    try:
        worker = os.pidfd_open(worker_pid)
    except ProcessLookupError:
        os._exit(0)
    threading.Thread(target=lambda: (select.select([worker], [], []), os._exit(0)), daemon=True,
                     name="faceq-exit-with-worker").start()


def _ready() -> bool:
    return True


def _attach(name: str, capacity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This child's views of a shared batch (a few kept mapped: the parent reuses its batches)."""
    if name not in _attached:
        shm = SharedMemory(name=name)
        _attached[name] = (shm, *_views(shm, capacity))
        while len(_attached) > 2 * _FREE_BATCHES_KEPT:
            _detach(next(iter(_attached)))
    _attached.move_to_end(name)
    return _attached[name][1:]


def _detach(name: str) -> None:
    shm, *views = _attached.pop(name)
    del views  # the mapping can only close once no view of it is left
    shm.close()


def _read_slice(name: str, capacity: int, keep_mapped: bool, work: list[tuple[int, str]], roots: tuple[str, ...],
                max_bytes: int, max_pixels: int) -> tuple[list[tuple[int, str, str]], dict[str, float]]:
    """Read, decode and crop each ``(index, uri)`` into the batch's row ``index``.

    Returns ``(index, error code, message)`` for each item that failed, and the CPU seconds by
    stage. A one-off batch (larger than the pool keeps) is unmapped afterwards: its memory goes
    as soon as the worker frees it."""
    try:
        return _read_into(*_attach(name, capacity), work, AllowedSources.parse("", roots), max_bytes, max_pixels)
    finally:
        if not keep_mapped:
            _detach(name)


def _read_into(crops: np.ndarray, sizes: np.ndarray, status: np.ndarray, work: list[tuple[int, str]],
               allowed: AllowedSources, max_bytes: int, max_pixels: int) -> tuple[list[tuple[int, str, str]], dict]:
    fetch = decode = crop = 0.0
    errors = []
    for i, uri in work:
        status[i] = STARTED
        started = clock()
        try:
            data = read_local_uri(allowed.check(uri), max_bytes)
            fetched = clock()
            fetch += fetched - started
            image = decode_image(data, max_bytes, max_pixels, crops[i])
            decoded = clock()
            decode += decoded - fetched
            sizes[i] = image.shape[1], image.shape[0]
            crop_face(image, crops[i])
            crop += clock() - decoded
            status[i] = DONE
            continue
        except BadInputError as exc:
            errors.append((i, exc.code, exc.message))
        except FaceqError as exc:
            errors.append((i, "unreadable", str(exc)))
        except Exception as exc:  # a decoder bug on one file must not cost the chunk
            errors.append((i, "internal", f"{type(exc).__name__}: {exc}"))
        status[i] = FAILED
    return errors, {"fetch": fetch, "decode": decode, "crop": crop}
