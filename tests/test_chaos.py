"""Chaos tests: real processes, real faults, mid-job, and the job still completes exactly.

Each test builds its own stack (``make_stack``): a redis-server (with an fsync-always AOF
unless the test is about losing Redis), storage (S3 on moto's server, reached by the
workers through a ``TcpProxy`` that can cut it, or ``file://``) and worker subprocesses
running the tiny network. Jobs are submitted and followed with the CLI as subprocesses, as
the nightly cron does. The proxy adds a little latency so that a 96-item job in chunks of 8
takes several seconds on two workers: long enough to inject a fault mid-job, short enough
for CI.

Every test asserts exactly one row per input item (read from the parts under the
summary's ``outputs.results``), a written ``summary.json``, and completion within a bound.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pytest

from devstack.processes import RedisServer, TcpProxy, WorkerProcess, free_port
from faceq.outputs.results import read_parquet
from faceq.storage.store import Storage, open_storage
from devstack.samples import write_sample_set
from tests.conftest import worker_env

pytestmark = pytest.mark.integration

CHUNK_SIZE = 8
LATENCY = 0.03  # seconds per forwarded piece of S3 traffic: ~1 s per chunk of 8 with one I/O thread
AFTER_FAULT = 60  # the target: done within 60 s of the fault ending (kill -9: of the kill)
_TASK_LINE = re.compile(r"Task \S+\[([0-9a-f-]{36})\] (received|succeeded|failed|retry|raised|rejected|revoked)")


def summary_key(job_id: str) -> str:
    return f"jobs/{job_id}/summary.json"


@dataclass
class Cli:
    """A producer command running in the background, output to files (read while it runs)."""

    process: subprocess.Popen
    stdout_path: Path
    stderr_path: Path

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def finish(self, timeout: float) -> subprocess.CompletedProcess:
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(f"{self.process.args[3:]} still running after {timeout:.0f}s:\n"
                                 f"stdout: {self.stdout[-2000:]}\nstderr: {self.stderr[-2000:]}") from None
        return subprocess.CompletedProcess(self.process.args, self.process.returncode, self.stdout, self.stderr)


@dataclass
class Stack:
    tmp: Path
    redis: RedisServer
    storage: Storage  # the test's own view (S3: moto directly, never through the proxy)
    env: dict[str, str]  # producer CLI
    worker_env: dict[str, str]
    proxy: TcpProxy | None = None  # the workers' way to S3, when storage is S3
    workers: list[WorkerProcess] = field(default_factory=list)
    _ready: set[str] = field(default_factory=set)
    _cli_count: int = 0

    # -- processes ------------------------------------------------------------------------

    def add_worker(self, name: str | None = None) -> WorkerProcess:
        name = name or f"w{len(self.workers)}"
        worker = WorkerProcess(self.worker_env, self.tmp / f"{name}.log", hostname=f"{name}-{free_port()}@localhost")
        self.workers.append(worker.launch())
        return worker

    def ready(self, timeout: float = 120) -> None:
        """Every launched worker answers a ping (launched in parallel, so they warm up together)."""
        for worker in self.workers:
            if worker.hostname not in self._ready and worker.alive():
                worker.wait_ready(timeout)
                self._ready.add(worker.hostname)

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return self.cli_background(*args).finish(timeout)

    def cli_background(self, *args: str) -> Cli:
        self._cli_count += 1
        out = self.tmp / f"cli-{self._cli_count}.out"
        err = self.tmp / f"cli-{self._cli_count}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            process = subprocess.Popen([sys.executable, "-m", "faceq.producer", *args], env=self.env, stdout=stdout,
                                       stderr=stderr)
        return Cli(process, out, err)

    def submit(self, source: str | Path, job_id: str, kind: str = "audit", background: bool = False):
        args = [kind, str(source), "--job-id", job_id, "--mode", "crop", "--chunk-size", str(CHUNK_SIZE),
                "--no-progress"]
        if background:
            return self.cli_background(*args)
        done = self.cli(*args, timeout=120)
        assert done.returncode == 0, f"submitting {job_id} failed:\n{done.stdout}\n{done.stderr}"
        return done

    def wait(self, job_id: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.cli("wait", job_id, "--no-progress", "--timeout", str(timeout), timeout=timeout + 60)

    # -- what storage says ----------------------------------------------------------------

    def summary_bytes(self, job_id: str) -> bytes | None:
        try:
            return self.storage.get_bytes(summary_key(job_id))
        except Exception:  # absent (or, with S3, not yet visible)
            return None

    def summary(self, job_id: str) -> dict | None:
        raw = self.summary_bytes(job_id)
        return None if raw is None else json.loads(raw)

    def result_parts(self, job_id: str) -> list[str]:
        """Every result part of the job so far, of any run (``…/results/…parquet`` under ``jobs/<id>/``)."""
        return [k for k in self.storage.list_keys(f"jobs/{job_id}/") if "/results/" in k and k.endswith(".parquet")]

    def rows_under(self, prefix: str) -> pa.Table:
        keys = list(self.storage.list_keys(prefix))
        assert keys, f"no result parts under {prefix}"
        return pa.concat_tables(read_parquet(self.storage.get_bytes(k)) for k in keys)

    def final_rows(self, job_id: str) -> pa.Table:
        summary = self.summary(job_id)
        assert summary is not None, f"no {summary_key(job_id)}"
        return self.rows_under(summary["outputs"]["results"])

    # -- waiting and checking -------------------------------------------------------------

    def diagnostics(self, job_id: str) -> str:
        status = self.cli("status", job_id, timeout=60) if self.redis.running else None
        logs = "\n".join(f"--- {w.hostname} (alive={w.alive()})\n{w.log_tail(25)}" for w in self.workers)
        return (f"parts: {len(self.result_parts(job_id))}, summary: {self.summary_bytes(job_id) is not None}\n"
                f"status: {status.stdout if status else 'redis down'} {status.stderr if status else ''}\n{logs}")

    def wait_for_parts(self, job_id: str, at_least: int = 1, timeout: float = 90, exclude: set[str] = frozenset()
                       ) -> None:
        """Until the job has written ``at_least`` new parts; fails if it finished first (the fault
        would not be mid-job) or a worker died."""
        self.ready()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            parts = set(self.result_parts(job_id)) - exclude
            if len(parts) >= at_least:
                assert self.summary_bytes(job_id) is None or exclude, \
                    f"job {job_id} finished before the fault: make it slower (LATENCY, items)"
                return
            for worker in self.workers:
                assert worker.alive() or worker.process.returncode == -9, \
                    f"worker {worker.hostname} exited:\n{worker.log_tail()}"
            time.sleep(0.05)
        raise AssertionError(f"job {job_id}: fewer than {at_least} parts after {timeout:.0f}s\n"
                             f"{self.diagnostics(job_id)}")

    def wait_for_summary(self, job_id: str, timeout: float, guard=None) -> float:
        """Seconds until ``summary.json`` appears (no human action); ``guard()`` runs each poll."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.summary_bytes(job_id) is not None:
                return time.monotonic() - started
            if guard is not None:
                guard()
            time.sleep(0.2)
        raise AssertionError(f"job {job_id}: no summary {timeout:.0f}s after the fault\n{self.diagnostics(job_id)}")

    def assert_complete(self, job_id: str, expected: dict[str, str]) -> dict:
        """Exactly one row per item, each with the expected outcome, and a written summary."""
        summary = self.summary(job_id)
        assert summary is not None, f"no summary for {job_id}"
        rows = self.final_rows(job_id)
        ids = rows.column("item_id").to_pylist()
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        assert not duplicates, f"{len(ids)} rows for {len(expected)} items; duplicated: {duplicates[:5]}"
        missing = sorted(set(expected) - set(ids))
        assert not missing, f"{len(missing)} item(s) without a row: {missing[:5]}"
        assert set(ids) == set(expected) and len(ids) == len(expected)
        statuses = dict(zip(ids, rows.column("status").to_pylist()))
        wrong = {i: statuses[i] for i, want in expected.items() if (statuses[i] == "ok") != (want == "ok")}
        assert not wrong, f"unexpected statuses: {dict(list(wrong.items())[:5])}"
        for name in ("n_items", "n_rows"):
            if name in summary:
                assert summary[name] == len(expected), (name, summary[name])
        return summary

    def close(self) -> None:
        for worker in self.workers:
            if worker.alive():
                print(f"--- {worker.hostname}\n{worker.log_tail(30)}")
            worker.kill()  # the stack is thrown away: no need for a warm shutdown
        if self.proxy is not None:
            self.proxy.close()
        self.redis.stop(kill=True)


@pytest.fixture
def make_stack(tmp_path, s3_endpoint, s3_client, request):
    """``make_stack(storage="s3"|"file", workers=2, appendonly=True, latency=LATENCY, **env)``.

    Workers are launched, not awaited: a test submits while they warm up, and
    ``wait_for_parts`` (or ``ready``) waits for them.
    """
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server: one log line per request
    stacks: list[Stack] = []

    def make(storage: str = "s3", workers: int = 2, appendonly: bool = True, latency: float = LATENCY,
             **extra: str) -> Stack:
        tmp = tmp_path / f"stack{len(stacks)}"
        tmp.mkdir()
        redis_server = RedisServer(tmp / "redis", appendonly=appendonly).start()
        proxy = None
        extra = {"FACEQ_IO_THREADS": "1", **extra}  # one read at a time: chunks take long enough to catch
        if storage == "s3":
            bucket = re.sub(r"[^a-z0-9-]+", "-", f"chaos-{request.node.name.lower()}")[:45].strip("-")
            bucket = f"{bucket}-{free_port()}"
            s3_client.create_bucket(Bucket=bucket)
            storage_url = f"s3://{bucket}/faceq"
            proxy = TcpProxy.to_url(s3_endpoint, latency=latency)
            producer_env = worker_env(redis_server.url, storage_url, s3_endpoint, **extra)
            workers_env = worker_env(redis_server.url, storage_url, proxy.url, **extra)
            view = open_storage(storage_url, s3_endpoint)
        else:
            storage_url = (tmp / "store").as_uri()
            producer_env = worker_env(redis_server.url, storage_url, None, **extra)
            workers_env = dict(producer_env)
            view = open_storage(storage_url, None)
        stack = Stack(tmp, redis_server, view, producer_env, workers_env, proxy)
        stacks.append(stack)
        for _ in range(workers):
            stack.add_worker()
        return stack

    yield make
    for stack in stacks:
        stack.close()


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """96 items (90 faces, 6 broken files): 12 chunks of 8."""
    root = tmp_path_factory.mktemp("chaos-samples")
    return root, write_sample_set(root, n_good=90)


def _busy_worker(workers: list[WorkerProcess], timeout: float = 20) -> WorkerProcess:
    """A live worker with a chunk in flight (received, not finished, by its log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker in workers:
            if not worker.alive():
                continue
            open_tasks: set[str] = set()
            for task_id, event in _TASK_LINE.findall(worker.log_text()):
                (open_tasks.add if event == "received" else open_tasks.discard)(task_id)
            if open_tasks:
                return worker
        time.sleep(0.02)
    raise AssertionError("no worker has a chunk in flight:\n" + "\n".join(w.log_tail(10) for w in workers))


def _no_traceback(done: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr


# -- a. kill -9 of a worker mid-chunk ---------------------------------------------------------

def test_kill_9_of_a_worker_mid_chunk(make_stack, samples):
    root, expected = samples
    stack = make_stack(workers=2, FACEQ_VISIBILITY_TIMEOUT="10")
    stack.submit(root, "chaos-kill")
    stack.wait_for_parts("chaos-kill", 1)
    victim = _busy_worker(stack.workers)
    survivor = next(w for w in stack.workers if w is not victim)
    victim.kill()
    killed_at = time.monotonic()
    assert stack.summary_bytes("chaos-kill") is None, "the job finished before the kill"

    seconds = stack.wait_for_summary("chaos-kill", AFTER_FAULT)
    print(f"kill -9: summary {seconds:.1f}s after the kill")
    stack.assert_complete("chaos-kill", expected)
    assert time.monotonic() - killed_at <= AFTER_FAULT
    assert survivor.alive()
    done = stack.wait("chaos-kill", timeout=30)
    assert done.returncode == 0, done.stderr
    assert "done" in done.stdout


def test_kill_9_of_the_worker_writing_the_summary(make_stack, samples):
    """The finalizer dies: its message comes back, the next worker takes the lapsed lease over."""
    root, expected = samples
    stack = make_stack(workers=2, latency=0.1, FACEQ_VISIBILITY_TIMEOUT="10")
    stack.submit(root, "chaos-kill-finalizer")
    deadline = time.monotonic() + AFTER_FAULT
    finalizer = None
    while finalizer is None and time.monotonic() < deadline:  # the last chunk's worker finalizes inline
        finalizer = next((w for w in stack.workers if "→ complete" in w.log_text()), None)
        time.sleep(0.01)
    assert finalizer is not None, "no worker completed the job"
    finalizer.kill()
    killed_at = time.monotonic()
    assert stack.summary_bytes("chaos-kill-finalizer") is None, "the summary was written before the kill"
    seconds = stack.wait_for_summary("chaos-kill-finalizer", AFTER_FAULT)
    print(f"kill -9 of the finalizer: summary {seconds:.1f}s after the kill")
    stack.assert_complete("chaos-kill-finalizer", expected)
    assert time.monotonic() - killed_at <= AFTER_FAULT


# -- b. Redis (AOF) killed for 5 s mid-job ----------------------------------------------------

def test_redis_with_aof_down_for_5s_mid_job(make_stack, samples):
    root, expected = samples
    stack = make_stack(workers=2, appendonly=True)
    stack.submit(root, "chaos-redis-aof")
    stack.wait_for_parts("chaos-redis-aof", 1)
    with stack.redis.outage(kill=True):
        time.sleep(5)
    seconds = stack.wait_for_summary("chaos-redis-aof", AFTER_FAULT)
    print(f"redis (AOF) 5 s outage: summary {seconds:.1f}s after the restart")
    stack.assert_complete("chaos-redis-aof", expected)
    assert all(w.alive() for w in stack.workers), "a worker died of a broker blip"
    done = stack.wait("chaos-redis-aof", timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    _no_traceback(done)


# -- c. Redis without persistence restarted mid-job: state lost, resumed from storage ---------

def test_redis_state_lost_mid_job_is_resumed_from_storage(make_stack, samples):
    root, expected = samples
    stack = make_stack(workers=2, appendonly=False)
    stack.submit(root, "chaos-redis-lost")
    stack.wait_for_parts("chaos-redis-lost", 1)
    stack.redis.stop(kill=True)
    stack.redis.restart()  # same port, nothing kept (workers reconnect on their own)

    lost = stack.wait("chaos-redis-lost", timeout=60)
    output = lost.stdout + lost.stderr
    assert lost.returncode == 3, output  # README: 3 = Redis lost the job's state
    _no_traceback(lost)
    says = [line for line in output.splitlines()
            if re.search(r"\b(lost|gone)\b", line, re.I) and "resume chaos-redis-lost" in line]
    assert says, f"wait should say the state was lost and how to resume, on one line:\n{output}"

    resumed_at = time.monotonic()
    resumed = stack.cli("resume", "chaos-redis-lost", timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    _no_traceback(resumed)
    done = stack.wait("chaos-redis-lost", timeout=AFTER_FAULT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert time.monotonic() - resumed_at <= AFTER_FAULT
    stack.assert_complete("chaos-redis-lost", expected)


# -- d. S3 outage through the proxy ----------------------------------------------------------

S3_OUTAGE_SECONDS = float(os.environ.get("FACEQ_CHAOS_S3_OUTAGE", "8"))  # 30 for the figure (slow)


def test_s3_outage_of_8s_mid_job(make_stack, samples):
    root, expected = samples
    stack = make_stack(workers=2)
    stack.submit(root, "chaos-s3")
    stack.wait_for_parts("chaos-s3", 1)
    with stack.proxy.outage():
        time.sleep(S3_OUTAGE_SECONDS)
        assert stack.summary_bytes("chaos-s3") is None
    seconds = stack.wait_for_summary("chaos-s3", AFTER_FAULT)
    print(f"S3 {S3_OUTAGE_SECONDS:.0f} s outage: summary {seconds:.1f}s after it ended")
    stack.assert_complete("chaos-s3", expected)
    assert all(w.alive() for w in stack.workers)
    done = stack.wait("chaos-s3", timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


# -- e. inputs that never end: a FIFO, /dev/zero ----------------------------------------------

def _write_manifest(path: Path, rows: list[tuple[str, str]]) -> None:
    lines = ["record_id,employee_id,image,device_id,captured_at"]
    lines += [f"{record},emp{i % 3},{image},gate-{i % 2},2026-11-24T08:{i % 60:02d}:00Z"
              for i, (record, image) in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")


def _unblock_fifo(path: Path) -> None:
    """Give EOF to anyone blocked reading the FIFO (no-op when no one is)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def test_a_fifo_in_a_manifest_becomes_an_error_row(make_stack, samples, tmp_path):
    root, sample_set = samples
    folder = tmp_path / "checkins"
    folder.mkdir()
    good = [name for name, want in sample_set.items() if want == "ok"][:10]
    for name in good:
        (folder / Path(name).name).write_bytes((root / name).read_bytes())
    fifo = folder / "camera-pipe.jpg"
    os.mkfifo(fifo)
    zero = folder / "zero.jpg"
    zero.symlink_to("/dev/zero")
    rows = [(f"r{i}", Path(name).name) for i, name in enumerate(good)] + [("r-fifo", fifo.name)]
    _write_manifest(folder / "checkins.csv", rows)
    expected = {record: "ok" for record, _ in rows[:-1]} | {"r-fifo": "not_a_regular_file"}

    stack = make_stack(storage="file", workers=1, FACEQ_ALLOWED_SOURCES=folder.as_uri())
    worker = stack.workers[0]
    peak_rss = 0

    def watchdog() -> None:  # never let a runaway read take the machine down
        nonlocal peak_rss
        rss = worker.rss_bytes() or 0
        peak_rss = max(peak_rss, rss)
        if rss > 1_500_000_000:
            worker.kill()
            raise AssertionError(f"worker RSS reached {rss / 1e9:.1f} GB")

    try:
        stack.ready()
        started = time.monotonic()
        stack.submit(folder / "checkins.csv", "chaos-fifo", kind="attendance")
        stack.wait_for_summary("chaos-fifo", 30, guard=watchdog)
        stack.assert_complete("chaos-fifo", expected)
        by_id = {r["item_id"]: r for r in stack.final_rows("chaos-fifo").to_pylist()}
        assert by_id["r-fifo"]["status"] == "error" and by_id["r-fifo"]["needs_review"], by_id["r-fifo"]
        assert time.monotonic() - started < 30
        assert worker.alive() and worker.hostname in worker.ping()

        # /dev/zero behind a symlink, even where /dev is (wrongly) configured as allowed: refused
        # when the job is planned (one clear line), or an error row; never an endless read
        _write_manifest(folder / "zero.csv", rows[:3] + [("r-zero", zero.name)])
        stack.env["FACEQ_ALLOWED_SOURCES"] = f"{folder.as_uri()},file:///dev/"
        submitted = stack.submit(folder / "zero.csv", "chaos-zero", kind="attendance", background=True).finish(60)
        _no_traceback(submitted)
        if submitted.returncode == 0:
            stack.wait_for_summary("chaos-zero", 30, guard=watchdog)
            stack.assert_complete("chaos-zero", {"r0": "ok", "r1": "ok", "r2": "ok", "r-zero": "forbidden"})
            row = next(r for r in stack.final_rows("chaos-zero").to_pylist() if r["item_id"] == "r-zero")
            assert row["status"] == "error", row
            print(f"/dev/zero: error row {row['error']!r}")
        else:
            print(f"/dev/zero: refused when planned: {submitted.stderr.strip()}")
            assert "zero.csv" in submitted.stderr and ":5" in submitted.stderr, submitted.stderr
        watchdog()
        assert worker.alive()
        print(f"peak worker RSS {peak_rss / 1e6:.0f} MB")
    finally:
        _unblock_fifo(fifo)


# -- f. `producer wait` while Redis is down --------------------------------------------------

def test_wait_rides_out_a_redis_outage(make_stack, samples):
    """One ``wait`` follows the job when Redis dies, another starts while it is down: both
    say, on one line, that they keep retrying, and both finish once Redis (AOF) is back."""
    root, expected = samples
    retrying = re.compile(r"retr(y|ying)", re.I)
    stack = make_stack(workers=2, appendonly=True)
    stack.submit(root, "chaos-wait")
    stack.wait_for_parts("chaos-wait", 1)
    before = stack.cli_background("wait", "chaos-wait", "--no-progress", "--timeout", "120")
    time.sleep(2)  # it has started and read the job once
    assert before.process.poll() is None, before.stdout + before.stderr
    stack.redis.stop(kill=True)
    waiters = {"started before the outage": before}
    try:
        waiters["started during the outage"] = stack.cli_background("wait", "chaos-wait", "--no-progress",
                                                                    "--timeout", "120")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not all(retrying.search(w.stderr + w.stdout) for w in waiters.values()):
            for name, waiter in waiters.items():
                assert waiter.process.poll() is None, f"wait {name} gave up while Redis was down:\n{waiter.stderr}"
            time.sleep(0.1)
        for name, waiter in waiters.items():
            said = waiter.stderr + waiter.stdout
            assert retrying.search(said), f"wait {name}: no message about retrying within 15 s:\n{said}"
            assert "Traceback" not in said, said
    finally:
        stack.redis.restart()
    for name, waiter in waiters.items():
        done = waiter.finish(AFTER_FAULT + 30)
        assert done.returncode == 0, f"wait {name}:\n{done.stdout}{done.stderr}"
        _no_traceback(done)
        retry_lines = [line for line in done.stderr.splitlines() if retrying.search(line)]
        assert retry_lines and all(len(line) < 300 for line in retry_lines), done.stderr
        assert "done" in done.stdout
    stack.assert_complete("chaos-wait", expected)


# -- g. re-submitting a job id while a run has chunks in flight ------------------------------

def test_resubmitting_mid_run_never_mixes_runs_nor_destroys_before_replacing(make_stack, samples):
    root, expected = samples
    job = "chaos-rerun"
    stack = make_stack(workers=2, latency=0.0)  # the first run fast, the next ones slow
    stack.submit(root, job)
    stack.wait_for_summary(job, 90)
    first_raw = stack.summary_bytes(job)
    first = stack.assert_complete(job, expected)
    first_results = first["outputs"]["results"]
    first_parts = set(stack.result_parts(job))

    problems: list[str] = []
    seen_summaries: list[bytes] = []
    stop = threading.Event()

    def watch() -> None:
        """Until the summary changes: it and the first run's rows stay readable."""
        while not stop.is_set():
            raw = stack.summary_bytes(job)
            readable = False
            if raw == first_raw:
                try:
                    readable = stack.rows_under(first_results).num_rows == len(expected)
                except Exception:
                    pass
            if raw is None or not readable:
                time.sleep(0.1)  # a replacement written meanwhile is fine: look again
                raw = stack.summary_bytes(job)
            if raw is not None and raw != first_raw:
                seen_summaries.append(raw)
                return
            if raw is None:
                problems.append("summary.json disappeared before the new run completed")
            elif not readable:
                problems.append("the previous run's results were deleted or changed before the new run completed")
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        stack.proxy.latency = LATENCY
        stack.submit(root, job)  # the second run
        deadline = time.monotonic() + 60
        while not (second_parts := set(stack.result_parts(job)) - first_parts):  # its own, new parts
            assert not problems, problems[:3]
            assert time.monotonic() < deadline, f"the second run wrote no part of its own\n{stack.diagnostics(job)}"
            time.sleep(0.05)
        assert not seen_summaries, "the second run completed before it could be superseded: make it slower"
        stack.submit(root, job)  # the third, while the second has chunks in flight
        done = stack.wait(job, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        watcher.join(5)  # it returns by itself once it has seen the new summary
        stop.set()
        watcher.join(5)
    assert not problems, problems[:3]
    final = stack.assert_complete(job, expected)
    assert final["outputs"]["results"] != first_results, "the new run wrote over the previous run's results"
    assert seen_summaries and seen_summaries[0] == stack.summary_bytes(job), \
        "the summary went through an intermediate state (the superseded run finalized?)"
    mixed = [k for k in second_parts if k.startswith(final["outputs"]["results"])]
    assert not mixed, f"parts of the superseded run are among the final results: {mixed[:3]}"
