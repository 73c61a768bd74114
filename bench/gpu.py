"""``python -m bench gpu``: an unattended smoke of a GPU host, as one JSON document.

It starts its own redis-server, measures the bare model per precision, then runs one real
worker on the device and pushes a crop job (112×112 JPEG crops) and a detect job (1920×2400
photos) through it, file:// storage. For each job: images/s from submission to summary,
the first chunk's seconds against the median of the steady chunks, and a check that the
parts hold exactly one row per item. Warm GPU memory comes from the worker's heartbeat.

Exits 0 only if every job completed with one row per item; 1 as soon as a job fails (a chunk
or its finalize gave up), stalls or runs out of time, with the reason in the JSON's
``error``; 2 for a usage error. ``--device cpu --quick`` runs the same path on a CPU host (CI).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.pipeline import JobsFailed, python_env, wait_for_jobs, worker

CHUNKS_BEFORE_STEADY = 4  # the first chunks pay one-off costs (issue 24: 1.2–2.1 s against 0.16–0.24 s)
FULL = {"crops": 4000, "photos": 400, "chunk": 512, "min_seconds": 2.0, "batches": [64, 256, 512],
        "device_photos": 256, "device_batch": 64}
QUICK = {"crops": 256, "photos": 6, "chunk": 32, "min_seconds": 0.2, "batches": [8, 32],
         "device_photos": 4, "device_batch": 4}


class SmokeFailed(RuntimeError):
    """The smoke found a fault (a failed job, a missing or doubled row)."""


def chunk_timing(chunk_stats: dict[int, dict], n_items: int, submitted_at: float) -> dict:
    """First-chunk and steady-chunk seconds, and images/s between the 5th chunk and the last."""
    ordered = sorted(chunk_stats.values(), key=lambda s: s.get("finished_at", 0.0))
    seconds = [s.get("seconds") for s in ordered if s.get("seconds") is not None]
    steady = seconds[CHUNKS_BEFORE_STEADY:] or seconds
    timing = {"chunks": len(ordered),
              "first_chunk_done_after_seconds": round(ordered[0]["finished_at"] - submitted_at, 3) if ordered else None,
              "first_chunks_seconds": [round(s, 3) for s in seconds[:CHUNKS_BEFORE_STEADY]],
              "steady_chunk_seconds_median": round(statistics.median(steady), 4) if steady else None}
    if len(ordered) > CHUNKS_BEFORE_STEADY + 1:
        start = ordered[CHUNKS_BEFORE_STEADY]["finished_at"]
        items_after = sum(s.get("n_items", 0) for s in ordered[CHUNKS_BEFORE_STEADY + 1:])
        span = ordered[-1]["finished_at"] - start
        timing["steady_ips"] = round(items_after / span, 1) if span > 0 else None
    return timing


def check_one_row_per_item(storage, job_id: str, n_items: int) -> dict:
    """Every part of the job read back with this host's pyarrow: one row per item, by status."""
    from faceq.job import spec as jobs
    from faceq.outputs.results import read_parquet

    summary = json.loads(storage.get_bytes(jobs.summary_key(job_id)))
    item_ids: list[str] = []
    statuses: dict[str, int] = {}
    for key in storage.list_keys(summary["outputs"]["results"]):
        table = read_parquet(storage.get_bytes(key), ["item_id", "status", "face_index"])
        for item_id, status, face in zip(*(table.column(c).to_pylist() for c in ("item_id", "status", "face_index"))):
            if face == 0:
                item_ids.append(item_id)
            statuses[status] = statuses.get(status, 0) + 1
    if len(item_ids) != n_items or len(set(item_ids)) != n_items:
        raise SmokeFailed(f"job {job_id}: {len(item_ids)} rows for {len(set(item_ids))} distinct of {n_items} items")
    return {"rows": sum(statuses.values()), "status": statuses}


def run_job(ledger, storage, settings, items, job_id: str, mode: str, chunk: int, allowed: tuple[str, ...],
            timeout: float, stall_seconds: float) -> dict:
    from faceq.producer.submit import JobOptions, submit

    started, wall = time.perf_counter(), time.time()
    submit(settings, storage, ledger, items=items, source="bench-gpu", job_id=job_id, allowed_sources=allowed,
           options=JobOptions("audit", mode=mode, chunk_size=chunk, report=False))
    with GpuBusy(settings.device) as busy:
        wait_for_jobs(ledger, [job_id], timeout, stall_seconds)
    seconds = time.perf_counter() - started
    return {"mode": mode, "images": len(items), "seconds": round(seconds, 3), "ips": round(len(items) / seconds, 1),
            "gpu_busy_fraction": busy.mean,
            **chunk_timing(ledger.chunk_stats(job_id), len(items), wall),
            **check_one_row_per_item(storage, job_id, len(items))}


def bare_models(arch: str, device: str, precisions: list[str], modes: list[str], sizes: dict) -> dict:
    """Bare-model images/s per precision and inference mode (workers/graph.py)."""
    from bench.model_speed import bare_model

    return {precision: {mode: {k: v for k, v in bare_model(arch, device, precision, sizes["batches"],
                                                            sizes["min_seconds"], mode).items() if k != "batch_sweep"}
                        for mode in modes}
            for precision in precisions}


class GpuBusy:
    """The device's busy fraction (NVML, through torch) sampled every 0.2 s while a job runs;
    None where NVML does not answer (the CPU, a driver without it)."""

    def __init__(self, device: str):
        self.device, self.samples = device, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import torch

        while not self._stop.wait(0.2):
            try:
                self.samples.append(torch.cuda.utilization(self.device) / 100)
            except Exception:  # no NVML: nothing to report
                return

    def __enter__(self) -> "GpuBusy":
        if self.device.startswith("cuda"):
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    @property
    def mean(self) -> float | None:
        return round(statistics.fmean(self.samples), 3) if self.samples else None


def smoke(args, sizes: dict, workdir: Path, document: dict) -> None:
    """Fills ``document`` as it goes, so a failure still reports what was measured before it."""
    from bench.datapath import dataloader, write_crops, write_photos
    from devstack.processes import RedisServer
    from faceq.job.spec import Item
    from faceq.job.ledger import Ledger
    from faceq.settings import Settings, default_concurrency
    from faceq.storage.store import open_storage

    document["bare_model"] = bare_models(args.arch, args.device, args.precisions, args.modes, sizes)
    if args.detect_device:  # the device detect path in-process: photos/s, CPU by stage, parity
        from bench.device_detect import device_detect_section

        document["device_detect"] = device_detect_section(args.detect_device, str(args.detector),
                                                          sizes["device_photos"], sizes["device_batch"],
                                                          sizes["min_seconds"], args.arch)
    with RedisServer(workdir / "redis") as redis_server:
        storage_url = (workdir / "store").as_uri()
        env = python_env() | {"FACEQ_BROKER_URL": redis_server.url, "FACEQ_STORAGE_URL": storage_url,
                              "FACEQ_MODEL_ARCH": args.arch, "FACEQ_PRECISION": args.precision,
                              "FACEQ_INFERENCE": args.inference,
                              "FACEQ_MAX_BATCH": str(sizes["chunk"]), "FACEQ_MODES": "crop,detect",
                              "FACEQ_DETECTOR_WEIGHTS": str(args.detector), "FACEQ_DETECT_DEVICE": args.detect_device}
        env |= dict(pair.split("=", 1) for pair in args.env)
        storage = open_storage(storage_url)
        ledger = Ledger.from_url(redis_server.url)
        settings = Settings(broker_url=redis_server.url, storage_url=storage_url, chunk_size=sizes["chunk"],
                            device=args.device)
        inputs = workdir / "inputs"
        crop_paths = write_crops(inputs / "crops", sizes["crops"])
        crops = [Item(p.name, p.as_uri()) for p in crop_paths]
        # what a user would write instead, at this host's core count, beside the job
        document["dataloader"] = dataloader(crop_paths, runs=1, num_workers=os.cpu_count() or 1)
        photos = [Item(p.name, p.as_uri()) for p in write_photos(inputs / "photos", sizes["photos"])]
        allowed = (inputs.as_uri() + "/",)
        concurrency = args.concurrency or default_concurrency(args.device)
        started = time.perf_counter()
        with worker(env, workdir / "worker.log", args.device, concurrency) as w:
            document["worker_start_seconds"] = round(time.perf_counter() - started, 2)
            document["worker_log"] = str(w.log_path) if args.keep else None
            try:
                document["jobs"] = {}
                for mode, items in (("crop", crops), ("detect", photos)):
                    document["jobs"][mode] = run_job(ledger, storage, settings, items, f"gpu-smoke-{mode}", mode,
                                                     sizes["chunk"], allowed, args.timeout, args.stall_seconds)
                document["warm_memory_bytes"] = _heartbeat(ledger, w.hostname).get("warm_memory_bytes")
            except JobsFailed as exc:
                raise SmokeFailed(f"{exc}; worker log tail:\n{w.log_tail(15)}") from exc


def _heartbeat(ledger, hostname: str) -> dict:
    from faceq.queue.heartbeats import read_heartbeats

    return next((beat for beat in read_heartbeats(ledger.redis) if beat["worker"] == hostname), {})


def parse(argv: list[str] | None) -> argparse.Namespace:
    default_detector = os.environ.get("FACEQ_DETECTOR_WEIGHTS") or str(
        Path(__file__).resolve().parent.parent.parent / "shared" / "models" / "face_detection_yunet.onnx")
    parser = argparse.ArgumentParser(prog="python -m bench gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--arch", help="network (default: ir_se_64; ir_se_tiny with --quick on the CPU)")
    parser.add_argument("--precision", help="the worker's precision (default: bf16 on a GPU, fp32 on the CPU)")
    parser.add_argument("--precisions", help="bare-model precisions, comma-separated (default: fp32,fp16,bf16 "
                                             "on a GPU, fp32 on the CPU)")
    parser.add_argument("--inference", default="fused", help="the worker's FACEQ_INFERENCE (default: fused)")
    parser.add_argument("--modes", help="bare-model inference modes, comma-separated (default: eager,fused,"
                                        "compiled,graphs on a GPU, eager,fused on the CPU)")
    parser.add_argument("--quick", action="store_true", help=f"small jobs ({QUICK['crops']} crops, {QUICK['photos']} "
                                                             f"photos) for CI")
    parser.add_argument("--crops", type=int, help="crops in the crop job")
    parser.add_argument("--photos", type=int, help="photos in the detect job")
    parser.add_argument("--concurrency", type=int, help="the worker's chunk tasks")
    parser.add_argument("--detector", default=default_detector, help="YuNet ONNX file (FACEQ_DETECTOR_WEIGHTS)")
    parser.add_argument("--detect-device", help="where the detect job's photos are decoded, searched and aligned "
                                                "(FACEQ_DETECT_DEVICE; default: --device); 'none': the CPU path")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a job may take")
    parser.add_argument("--stall-seconds", type=float, default=120, help="fail when no chunk finishes for this long")
    parser.add_argument("--env", action="append", default=[], metavar="FACEQ_X=V", help="extra worker setting")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (and the worker's log)")
    parser.add_argument("--record", action="store_true", help="append the figures to bench/RESULTS.md")
    args = parser.parse_args(argv)
    on_gpu = args.device.startswith("cuda")
    args.arch = args.arch or ("ir_se_tiny" if args.quick and not on_gpu else "ir_se_64")
    args.precision = args.precision or ("bf16" if on_gpu else "fp32")
    args.precisions = (args.precisions or ("fp32,fp16,bf16" if on_gpu else "fp32")).split(",")
    args.modes = (args.modes or ("eager,fused,compiled,graphs" if on_gpu else "eager,fused")).split(",")
    args.detect_device = "" if args.detect_device == "none" else (args.detect_device or args.device)
    if not Path(args.detector).is_file():
        parser.error(f"no YuNet weights at {args.detector}: pass --detector PATH or set FACEQ_DETECTOR_WEIGHTS")
    if any("=" not in pair for pair in args.env):
        parser.error("--env takes FACEQ_X=VALUE")
    return args


def main(argv: list[str] | None = None) -> int:
    from bench import record

    args = parse(argv)
    sizes = (QUICK if args.quick else FULL) | {k: v for k, v in (("crops", args.crops), ("photos", args.photos)) if v}
    document = {"benchmark": "faceq gpu smoke", "ok": False, "device": args.device, "arch": args.arch,
                "precision": args.precision, "inference": args.inference, "sizes": sizes, "machine": record.machine(), "commit": record.commit()}
    workdir = Path(tempfile.mkdtemp(prefix="faceq-gpu-smoke-"))
    try:
        smoke(args, sizes, workdir, document)
        document["ok"] = True
    except (SmokeFailed, JobsFailed, RuntimeError, TimeoutError, OSError) as exc:
        document["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(document, indent=2))
    if args.record and document["ok"]:
        record.append("GPU smoke (`python -m bench gpu`)", as_table(document), document)
    if not document["ok"]:
        print(f"bench gpu: FAILED: {document['error'].splitlines()[0]}", file=sys.stderr)
    return 0 if document["ok"] else 1


def as_table(document: dict) -> str:
    lines = ["| figure | value |", "| --- | --- |"]
    for precision, modes in document["bare_model"].items():
        for mode, row in modes.items():
            lines.append(f"| bare model {precision} {mode} | {row['bare_model_ips']} img/s (batch {row['best_batch']}) |")
    device_detect = document.get("device_detect")
    if device_detect:
        cpu, match = device_detect["cpu_ms_per_photo"], device_detect["parity"]
        lines.append(f"| device detect path ({device_detect['device']}, decoder {device_detect['decoder']}) | "
                     f"{device_detect['photos_per_second']} photos/s (1920×2400, bytes to crops); CPU ms/photo: "
                     + ", ".join(f"{k} {v}" for k, v in cpu.items()) + " |")
        lines.append(f"| device detect parity vs the CPU path | landmarks ≤ {match['max_landmark_px']} px, crops ≤ "
                     f"{match['max_crop_pixel']}, cos ≥ {match['min_embedding_cosine']}, face count differences "
                     f"{match['face_count_differences']} |")
    for mode, job in document["jobs"].items():
        lines.append(f"| e2e {mode} ({job['images']} images) | {job['ips']} img/s; steady {job.get('steady_ips')} "
                     f"img/s; first chunks {job['first_chunks_seconds']} s, steady chunk "
                     f"{job['steady_chunk_seconds_median']} s; GPU busy {job['gpu_busy_fraction']} |")
    lines.append(f"| DataLoader ({document['dataloader']['num_workers']} workers) | {document['dataloader']['ips']} img/s |")
    memory = document.get("warm_memory_bytes")
    lines.append(f"| warm GPU memory | {f'{memory / 2**20:.0f} MiB' if memory else 'n/a (CPU)'} |")
    return "\n".join(lines)
