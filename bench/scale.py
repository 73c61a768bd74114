"""``python -m bench scale --items N [--items N ...]``: what a job costs as it grows.

For each N, in a fresh private redis-server and a temporary ``file://`` storage:

1. an attendance manifest of N rows (record_id, employee_id, image, device_id, captured_at)
   is streamed to disk; its images are 64 distinct 112×112 JPEG crops (``crops/`` beside the
   manifest), each referenced over and over;
2. the producer plans and enqueues it as users run it, in a subprocess
   (``python -m faceq.producer attendance … --mode crop --no-report``, ``FACEQ_CHUNK_SIZE=256``):
   wall seconds and peak RSS (``/usr/bin/time -f %M``);
3. with no worker running: the Redis bytes of the queued job (``INFO`` used_memory before and
   after, and ``MEMORY USAGE`` of the queue and of the job's ledger keys), the manifest's bytes
   in storage (chunk manifests + job.json) and the largest object under ``jobs/<id>/`` (no
   manifest object may exceed 1 MiB);
4. workers running the zero-cost stand-in (``FACEQ_MODEL_ARCH=null``) process the job:
   end-to-end items/s from the moment they are ready until the summary is written. With
   ``--no-process N`` that N is not processed: its parts are synthesised instead
   (``faceq.outputs.results.chunk_part_bytes``, rows the stand-in would have written for the same
   crops), so finalize is still measured on N real-sized parts;
5. finalize runs again in a process of its own (``python -m bench.finalize_probe``): seconds
   and peak RSS.

Prints one JSON document, with the targets of issue 10 checked for N ≥ 1,000,000 and the
RSS ratios between 100k and 1M; ``--record`` appends it to bench/RESULTS.md. MB = MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
N_CROPS = 64
CHUNK_SIZE = 256
MB = 1 << 20
MAX_MANIFEST_OBJECT_BYTES = 1 << 20
# issue 10, for a 1,000,000-item job on the project's 2-core machine
TARGETS = {"producer_peak_rss_mb": 300, "producer_seconds": 60, "redis_mb_queued": 30, "finalize_seconds": 60,
           "finalize_peak_rss_mb": 1024, "flat_rss_ratio_100k_to_1m": 1.25}


# ---------------------------------------------------------------------------- inputs


def write_inputs(folder: Path, n: int, seed: int = 1) -> Path:
    """``N_CROPS`` distinct crops under ``folder/crops`` and a manifest of ``n`` rows, streamed."""
    from devstack.samples import draw_face, encode

    crops = folder / "crops"
    crops.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(N_CROPS):
        (crops / f"crop-{k:02d}.jpg").write_bytes(encode(draw_face(rng, 112), ".jpg"))
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        fh.write("record_id,employee_id,image,device_id,captured_at\n")
        block: list[str] = []
        for i in range(n):
            second = i % 86400
            block.append(f"r{i:08d},e{i % 5000:05d},crops/crop-{i % N_CROPS:02d}.jpg,gate-{i % 8},"
                         f"2026-11-24T{second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}Z\n")
            if len(block) == 10_000:
                fh.write("".join(block))
                block.clear()
        fh.write("".join(block))
    return manifest


# ---------------------------------------------------------------------------- measuring


def run_measured(args: list[str], env: dict[str, str], log_path: Path) -> dict:
    """Run a command to completion: wall seconds and the peak RSS of that process.

    The RSS comes from GNU time (``/usr/bin/time -f %M``), which execs the command from a
    small process: a child forked straight from this benchmark (torch, OpenCV loaded) would
    report this process's RSS at the fork as its own peak (Linux keeps the high-water mark
    across exec). Without GNU time, ``wait4`` is used and the figure is an upper bound.
    """
    gnu_time = shutil.which("time", path="/usr/bin:/bin")
    rss_file = log_path.with_suffix(".rss")
    command = [gnu_time, "-o", str(rss_file), "-f", "%M", *args] if gnu_time else args
    with log_path.open("wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{' '.join(args[:4])} … exited with {process.returncode}:\n{tail}")
    peak_kb = int(rss_file.read_text().split()[-1]) if gnu_time else usage.ru_maxrss
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(peak_kb / 1024, 1)}


def redis_figures(client, job_id: str, used_before: int, queue: str = "faceq") -> dict:
    used = int(client.info("memory")["used_memory"])
    queue_bytes = client.memory_usage(queue, samples=0) or 0
    ledger_bytes = sum(client.memory_usage(key, samples=0) or 0 for key in client.scan_iter(f"faceq:job:{job_id}*"))
    messages = client.llen(queue)
    return {"redis_bytes_queued": used - used_before, "redis_queue_key_bytes": queue_bytes,
            "redis_ledger_bytes": ledger_bytes, "redis_messages": messages,
            "redis_bytes_per_message": round(queue_bytes / messages) if messages else None}


def storage_figures(store: Path, job_id: str) -> tuple[str, dict]:
    """The run id and the bytes the plan put in storage (everything under jobs/<id>/)."""
    job_dir = store / "jobs" / job_id
    run_id = json.loads((job_dir / "current.json").read_text())["run_id"]
    run_dir = job_dir / "runs" / run_id
    manifests = [p.stat().st_size for p in (run_dir / "manifest").iterdir() if p.is_file()]
    header = (run_dir / "job.json").stat().st_size
    largest, largest_path = max((p.stat().st_size, p) for p in job_dir.rglob("*") if p.is_file())
    return run_id, {"manifest_bytes": sum(manifests) + header, "manifest_objects": len(manifests),
                    "max_manifest_object_bytes": max(manifests), "header_bytes": header,
                    "largest_job_object": str(largest_path.relative_to(store)), "largest_job_object_bytes": largest}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------- processing


def process(env: dict[str, str], workdir: Path, ledger, job_id: str, n_items: int, n_workers: int,
            timeout: float) -> dict:
    """Workers with the stand-in until the job's summary is written; items/s from when all are ready."""
    from devstack.processes import WorkerProcess, free_port

    workers = [WorkerProcess(env, workdir / f"worker-{k}.log", concurrency=2,
                             hostname=f"scale-{k}-{free_port()}@localhost") for k in range(n_workers)]
    for worker in workers:
        worker.launch()
    try:
        for worker in workers:
            worker.wait_ready(300)
        started = time.perf_counter()
        done_before = ledger.progress(job_id).items_done
        cpu_before = sum(cpu_seconds(w.pid) for w in workers)
        chunks_seconds = None
        while True:
            progress = ledger.progress(job_id)
            now = time.perf_counter() - started
            if progress.failed:
                raise RuntimeError(f"job {job_id} failed: {dict(list(progress.failed.items())[:3])}")
            if chunks_seconds is None and progress.chunks_done == progress.n_chunks:
                chunks_seconds = now
            if progress.complete:
                break
            if now > timeout:
                raise TimeoutError(f"job {job_id}: {progress.items_done} of {n_items} items after {now:.0f}s")
            time.sleep(0.2)
        cpu = sum(cpu_seconds(w.pid) for w in workers) - cpu_before
        peak_rss = max(_peak_rss_mb(w.pid) for w in workers)
    finally:
        for worker in workers:
            worker.stop()
    return {"e2e_items_per_second": round((n_items - done_before) / now, 1), "e2e_seconds": round(now, 2),
            "items_done_before_timer": done_before, "all_chunks_done_seconds": round(chunks_seconds or now, 2),
            "workers": n_workers, "worker_cpu_cores_used": round(cpu / now, 2), "worker_peak_rss_mb": peak_rss}


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def synthesise_parts(storage_url: str, job_id: str, crops_dir: Path) -> dict:
    """Write the parts a stand-in worker would have written, without Redis or a worker: every
    chunk's manifest is read, its rows built (the stand-in's outputs for the same crops) and
    written with ``chunk_part_bytes``."""
    from faceq.job import spec as jobs
    from faceq.job.spec import JobHeader
    from faceq.job.manifest import read_chunk_manifest
    from faceq.outputs.results import ItemResult, chunk_part_bytes
    from faceq.settings import TrustThresholds
    from faceq.storage.store import open_storage
    from faceq.models.decisions import review_reasons
    from faceq.models.null import NULL_MODEL_ID, NullModel
    from faceq.models.preprocess import crop_face, decode_image

    storage = open_storage(storage_url)
    run_id = json.loads(storage.get_bytes(jobs.current_run_key(job_id)))["run_id"]
    header = JobHeader.from_json(storage.get_bytes(jobs.header_key(job_id, run_id)))
    paths = sorted(crops_dir.iterdir())
    crops = [crop_face(decode_image(p.read_bytes(), 1 << 25, 1 << 25)) for p in paths]
    embeddings, quality = NullModel().infer(np.stack([c.faces[0].pixels for c in crops]))
    by_uri = {p.resolve().as_uri(): k for k, p in enumerate(paths)}
    thresholds = TrustThresholds()
    started = time.perf_counter()
    for index in range(header.n_chunks):
        chunk_started = time.perf_counter()
        items = read_chunk_manifest(storage.get_bytes(jobs.chunk_manifest_key(job_id, run_id, index)), header.columns)
        now = datetime.now(timezone.utc)
        rows = []
        for item in items:
            k = by_uri[item.source_uri]
            reasons = review_reasons("ok", float(quality[k]), 1, thresholds)
            rows.append(ItemResult(item.item_id, item.source_uri, "ok", NULL_MODEL_ID, now, embedding=embeddings[k],
                                   quality=float(quality[k]), needs_review=bool(reasons), review_reasons=reasons,
                                   face_count=1, bbox=crops[k].faces[0].bbox, fields=item.fields))
        stats = {"n_items": len(items), "n_rows": len(rows), "n_errors": 0,
                 "n_flagged": sum(r.needs_review for r in rows),
                 "seconds": round(time.perf_counter() - chunk_started, 4), "finished_at": time.time(),
                 "worker": "bench-synthesised"}
        storage.put_bytes(jobs.part_key(job_id, run_id, index), chunk_part_bytes(rows, header, stats))
    return {"parts": "synthesised", "synthesis_seconds": round(time.perf_counter() - started, 1)}


# ---------------------------------------------------------------------------- one size


def measure(n: int, workdir: Path, *, do_process: bool, n_workers: int, timeout: float) -> dict:
    from devstack.processes import RedisServer
    from faceq.job.ledger import Ledger

    from bench.pipeline import python_env

    inputs = workdir / "input"
    t0 = time.perf_counter()
    manifest = write_inputs(inputs, n)
    result: dict = {"items": n, "chunk_size": CHUNK_SIZE, "manifest_csv_bytes": manifest.stat().st_size,
                    "inputs_seconds": round(time.perf_counter() - t0, 1)}
    store = workdir / "store"
    storage_url = store.as_uri()
    job_id = f"scale-{n}"
    with RedisServer(workdir / "redis") as redis_server:
        env = python_env() | {"FACEQ_BROKER_URL": redis_server.url, "FACEQ_STORAGE_URL": storage_url,
                              "FACEQ_CHUNK_SIZE": str(CHUNK_SIZE), "FACEQ_MODEL_ARCH": "null", "FACEQ_MODES": "crop"}
        client = redis_server.client()
        used_before = int(client.info("memory")["used_memory"])
        produced = run_measured([sys.executable, "-m", "faceq.producer", "attendance", str(manifest), "--job-id", job_id,
                                 "--mode", "crop", "--no-report", "--no-progress"], env, workdir / "producer.log")
        result |= {"producer_seconds": produced["seconds"], "producer_peak_rss_mb": produced["peak_rss_mb"]}
        result |= redis_figures(client, job_id, used_before)
        client.close()
        run_id, stored = storage_figures(store, job_id)
        result |= stored
        ledger = Ledger.from_url(redis_server.url)
        if do_process:
            result["parts"] = "workers"
            result |= process(env, workdir, ledger, job_id, n, n_workers, timeout)
        else:
            result |= {"e2e_items_per_second": None, "e2e_note": "--no-process: not processed; parts synthesised "
                       "for finalize"}
            result |= synthesise_parts(storage_url, job_id, inputs / "crops")
        ledger.redis.close()
    part_bytes = sum(p.stat().st_size for p in (store / "jobs" / job_id / "runs" / run_id / "results").iterdir())
    probe = run_measured([sys.executable, "-m", "bench.finalize_probe", storage_url, job_id], env,
                         workdir / "finalize.log")
    probe_line = json.loads((workdir / "finalize.log").read_text().strip().splitlines()[-1])
    result |= {"parts_bytes": part_bytes, "finalize_seconds": probe_line["seconds"],
               "finalize_process_seconds": probe["seconds"], "finalize_peak_rss_mb": probe["peak_rss_mb"],
               "finalize_rows": probe_line["n_rows"], "finalize_needs_review": probe_line["needs_review"]}
    if result["finalize_rows"] != n:
        raise RuntimeError(f"finalize counted {result['finalize_rows']} rows for {n} items")
    return result


# ---------------------------------------------------------------------------- the document


def checks(results: list[dict]) -> tuple[dict, list[str]]:
    """Ratios between 100k and 1M, the 1M targets, and the bounds that must always hold."""
    by_n = {r["items"]: r for r in results}
    ratios, failures = {}, []
    for small, large in ((100_000, 1_000_000),):
        if small in by_n and large in by_n:
            for key in ("producer_peak_rss_mb", "finalize_peak_rss_mb"):
                ratios[f"{key.removesuffix('_mb')}_1m_over_100k"] = round(by_n[large][key] / by_n[small][key], 3)
    for r in results:
        if r["max_manifest_object_bytes"] > MAX_MANIFEST_OBJECT_BYTES:
            failures.append(f"{r['items']} items: a manifest object of {r['max_manifest_object_bytes']} bytes")
        if r["items"] >= 1_000_000:
            measured = {"producer_peak_rss_mb": r["producer_peak_rss_mb"], "producer_seconds": r["producer_seconds"],
                        "redis_mb_queued": r["redis_bytes_queued"] / MB, "finalize_seconds": r["finalize_seconds"],
                        "finalize_peak_rss_mb": r["finalize_peak_rss_mb"]}
            r["targets"] = {k: {"measured": round(v, 2), "target": TARGETS[k], "met": v <= TARGETS[k]}
                            for k, v in measured.items()}
    for key, ratio in ratios.items():
        ratios[key] = {"ratio": ratio, "target": TARGETS["flat_rss_ratio_100k_to_1m"],
                       "met": ratio <= TARGETS["flat_rss_ratio_100k_to_1m"]}
    return ratios, failures


def as_table(document: dict) -> str:
    lines = ["| items | producer s | producer peak RSS MB | Redis queued MB (messages, B/msg) | manifest MB "
             "(objects, largest KB) | e2e items/s (workers) | finalize s | finalize peak RSS MB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in document["results"]:
        e2e = f"{r['e2e_items_per_second']} ({r['workers']})" if r.get("e2e_items_per_second") else \
            "not processed (parts synthesised)"
        lines.append(f"| {r['items']:,} | {r['producer_seconds']} | {r['producer_peak_rss_mb']} | "
                     f"{r['redis_bytes_queued'] / MB:.2f} ({r['redis_messages']}, {r['redis_bytes_per_message']}) | "
                     f"{r['manifest_bytes'] / MB:.2f} ({r['manifest_objects']}, "
                     f"{r['max_manifest_object_bytes'] / 1024:.1f}) | {e2e} | {r['finalize_seconds']} | "
                     f"{r['finalize_peak_rss_mb']} |")
    if document["ratios"]:
        lines += ["", "Ratios 1M / 100k: " + ", ".join(f"{k} = {v['ratio']} (target ≤ {v['target']})"
                                                       for k, v in document["ratios"].items())]
    for r in document["results"]:
        if "targets" in r:
            lines += ["", f"Targets at {r['items']:,} items: " + ", ".join(
                f"{k} {v['measured']} ≤ {v['target']}: {'met' if v['met'] else 'MISSED'}" for k, v in r["targets"].items())]
    return "\n".join(lines)


def _commit() -> str:
    from bench import record

    commit = record.commit()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=REPO).stdout.strip()
    return f"{commit} + uncommitted changes" if dirty else commit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, action="append", required=True, help="job size (repeat for several)")
    parser.add_argument("--no-process", type=int, action="append", default=[], metavar="N",
                        help="do not process the N-item job through workers (parts are synthesised for finalize); "
                             "repeatable; 0 means every size")
    parser.add_argument("--workers", type=int, default=2, help="worker processes running the stand-in")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for one job to be processed")
    parser.add_argument("--workdir", type=Path, help="keep the run's files here (default: a temporary folder)")
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = parser.parse_args(argv)

    from bench import record

    results = []
    for n in args.items:
        do_process = not ({0, n} & set(args.no_process))
        if args.workdir:
            workdir = args.workdir / f"n{n}"
            workdir.mkdir(parents=True, exist_ok=False)
            results.append(measure(n, workdir, do_process=do_process, n_workers=args.workers, timeout=args.timeout))
        else:
            with tempfile.TemporaryDirectory(prefix=f"faceq-scale-{n}-") as tmp:
                results.append(measure(n, Path(tmp), do_process=do_process, n_workers=args.workers,
                                       timeout=args.timeout))
        print(f"measured {n} items: {json.dumps(results[-1])}", file=sys.stderr)
    ratios, failures = checks(results)
    document = {"benchmark": "faceq scale", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "machine": record.machine() | {"cores": os.cpu_count()}, "commit": _commit(),
                "chunk_size": CHUNK_SIZE, "model": "FACEQ_MODEL_ARCH=null (zero-cost stand-in)",
                "results": results, "ratios": ratios, "failures": failures}
    print(json.dumps(document, indent=2))
    if args.record:
        record.append("Scale (`python -m bench scale`)", as_table(document), document)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
