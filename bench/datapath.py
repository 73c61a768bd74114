"""The data path (issue 11): how fast a worker feeds its device when the device costs nothing.

``python -m bench pipeline [--quick] [--record]`` (and the ``pipeline`` section of
``python -m bench``). Every worker runs the zero-cost stand-in (``FACEQ_MODEL_ARCH=null``), so
only fetch, decode, detect/align, batch assembly, result building, Parquet and the queue are
timed. One worker process (the CPU's default concurrency, 3; chunks of 256, batches of up to 256)
at a time:

- ``crop_file``: 112×112 JPEG crops in a local folder (``file://``), one job per run;
- ``crop_file_one_core``: the same, the worker pinned to one core (``taskset -c 0``);
- ``crop_s3``: crops in S3 (moto on loopback; results written to S3 too);
- ``detect``: 1920×2400 JPEG photos with one face each (scikit-image's astronaut and
  matplotlib's Grace Hopper, upscaled, with sensor-like noise), YuNet + alignment, the full
  path (``FACEQ_DETECT_PATH=full``) with the default engine (ONNX Runtime);
- ``detect_opencv``: the same with OpenCV's YuNet (``FACEQ_DETECT_ENGINE=opencv``, the engine before);
- ``detect_coarse``: the same photos through the coarse-to-fine path (``FACEQ_DETECT_PATH=coarse``,
  models/coarse_detect.py; its stages: decode, coarse_resize, coarse_detect, fine_detect, align),
  and ``detect_parity`` beside them: faces found by each path, the largest landmark difference and
  the smallest embedding cosine between them (bench/detect_parity.py);
- ``detect_coarse_min_face``: the coarse path told that faces are at least 160 photo px wide
  (``FACEQ_DETECT_COARSE_MIN_FACE=160``: its coarse pass at 1/8 scale; smaller faces may be missed);
- ``dataloader``: what a user would write instead: a plain ``torch.utils.data.DataLoader`` over
  the ``crop_file`` folder (Pillow decode, uint8 tensors, batch 256, ``num_workers=2``).

For each: images/s (median of ``runs`` jobs, after one untimed warm-up job); worker CPU ms
per item (``/proc`` user + system of the worker and its descendants: the crop pool's decoding
children and their fork server); cores used (CPU seconds / wall seconds, and
``cores_used_once_enqueued``: from the moment the job's last chunk was queued, since the worker
has nothing to do while the producer plans); and the CPU per item by stage, from the worker's
``faceq_stage_cpu_seconds_total{stage}`` (thread CPU: fetch, decode, detect, crop, rows, write,
record; the decoding children report theirs with each slice) and
``faceq_device_batch_seconds_sum`` (device); ``other`` is the rest of the process tree's CPU:
Celery, kombu, Redis, heartbeats, finalize — the queue overhead. Timed from the job's
submission until its last chunk is recorded.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
YUNET = REPO.parent / "shared" / "models" / "face_detection_yunet.onnx"
FULL = {"crops": 12000, "s3_crops": 3000, "photos": 48, "runs": 3}
QUICK = {"crops": 128, "s3_crops": 32, "photos": 2, "runs": 1}
CHUNK = 256
PHOTO_SIZE = (1920, 2400)  # width, height
# issue 11, on the project's 2-core machine
TARGETS = {"crop_file_over_dataloader": 0.8, "crop_file_cores_used": 1.7, "two_cores_over_one": 1.7,
           "crop_s3_worker_cpu_ms_per_item": 0.5, "detect_worker_cpu_ms_per_photo": 25.0}


# ---------------------------------------------------------------------------- inputs


def write_crops(folder: Path, n: int, seed: int = 1) -> list[Path]:
    """``n`` distinct 112×112 JPEG face crops (the ones ``bench.pipeline`` uses)."""
    from devstack.samples import draw_face, encode

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"crop-{i:05d}.jpg"
        path.write_bytes(encode(draw_face(rng, 112), ".jpg"))
        paths.append(path)
    return paths


def photo_jpegs(seed: int = 0) -> list[bytes]:
    """Two real portraits as 1920×2400 JPEGs (quality 85, ≈ 0.5 MB each), one face each."""
    import cv2
    import matplotlib.cbook
    from PIL import Image
    from skimage import data

    astronaut = np.ascontiguousarray(data.astronaut()[:, :, ::-1])  # 512×512: the face upper left
    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as image:
        hopper = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])  # 512×600
    width, height = PHOTO_SIZE
    rng = np.random.default_rng(seed)
    photos = []
    for small in (astronaut, hopper):
        scale = max(width / small.shape[1], height / small.shape[0])
        big = cv2.resize(small, (round(small.shape[1] * scale), round(small.shape[0] * scale)),
                         interpolation=cv2.INTER_CUBIC)
        left, top = (big.shape[1] - width) // 2, (big.shape[0] - height) // 2
        big = big[top : top + height, left : left + width]
        noisy = np.clip(big + rng.normal(0, 4, big.shape), 0, 255).astype(np.uint8)  # an upscale is too smooth
        photos.append(cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes())
    return photos


def write_photos(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    photos = photo_jpegs()
    paths = []
    for i in range(n):
        path = folder / f"photo-{i:04d}.jpg"
        path.write_bytes(photos[i % len(photos)])
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------- measuring


def scrape(port: int) -> dict[str, float]:
    """Stage CPU seconds and device seconds from the worker's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    figures: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "faceq_stage_cpu_seconds_total":
                figures[sample.labels["stage"]] = sample.value
            elif sample.name == "faceq_device_batch_seconds_sum":
                figures["device"] = sample.value
    return figures


def run_job(ledger, storage, settings, items, mode: str, job_id: str, allowed: tuple[str, ...], timeout: float,
            worker_pid: int, port: int) -> dict:
    """One job; wall seconds and worker CPU from submission until its last chunk is recorded."""
    from faceq.producer.submit import JobOptions, submit

    from bench.pipeline import JobsFailed, cpu_seconds, wait_for_jobs

    before_cpu, before = cpu_seconds(worker_pid), scrape(port)
    started = time.perf_counter()
    submit(settings, storage, ledger, items=items, source="bench", job_id=job_id, allowed_sources=allowed,
           options=JobOptions("audit", mode=mode, chunk_size=CHUNK, report=False))
    submitted = time.perf_counter()  # planned and enqueued: the worker had nothing to do until the first chunk
    deadline = started + timeout
    while True:
        progress = ledger.progress(job_id)
        if progress.failed:
            raise JobsFailed(f"job {job_id} failed: {dict(list(progress.failed.items())[:3])}")
        if progress.n_chunks and progress.chunks_done == progress.n_chunks:
            break
        if time.perf_counter() > deadline:
            raise JobsFailed(f"job {job_id}: {progress.items_done} of {len(items)} items after {timeout:.0f}s")
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    cpu, after = cpu_seconds(worker_pid) - before_cpu, scrape(port)
    # finalize: not timed, but not left to overlap the next run (and a failed one fails the bench)
    wait_for_jobs(ledger, [job_id], timeout, interval=0.02)
    n = len(items)
    stages = {k: (after.get(k, 0.0) - before.get(k, 0.0)) for k in after}
    stage_ms = {k: round(1000 * v / n, 4) for k, v in stages.items()}
    stage_ms["other"] = round(1000 * (cpu - sum(stages.values())) / n, 4)
    return {"ips": round(n / seconds, 1), "seconds": round(seconds, 3), "submit_seconds": round(submitted - started, 3),
            "worker_cpu_ms_per_item": round(1000 * cpu / n, 4),
            "cores_used": round(cpu / seconds, 2),
            # the same from the moment every chunk was queued: the planning before it leaves a worker idle
            "cores_used_once_enqueued": round(cpu / (seconds - (submitted - started)), 2),
            "stage_cpu_ms_per_item": stage_ms}


def medians(runs: list[dict]) -> dict:
    keys = runs[0]["stage_cpu_ms_per_item"].keys()
    return {"ips": statistics.median(r["ips"] for r in runs),
            "worker_cpu_ms_per_item": statistics.median(r["worker_cpu_ms_per_item"] for r in runs),
            "cores_used": statistics.median(r["cores_used"] for r in runs),
            "cores_used_once_enqueued": statistics.median(r["cores_used_once_enqueued"] for r in runs),
            "stage_cpu_ms_per_item": {k: round(statistics.median(r["stage_cpu_ms_per_item"].get(k, 0.0) for r in runs), 4)
                                      for k in keys},
            "runs": runs}


def measure(base_env: dict[str, str], workdir: Path, label: str, storage_url: str, items, mode: str, runs: int,
            timeout: float, s3_endpoint: str | None = None, pin: str | None = None,
            allowed: tuple[str, ...] = (), extra_env: dict[str, str] | None = None) -> dict:
    """A fresh worker with the stand-in; ``runs`` jobs of ``items`` through it, one after another."""
    from devstack.processes import WorkerProcess, free_port
    from faceq.job.ledger import Ledger
    from faceq.settings import Settings, default_concurrency
    from faceq.storage.store import open_storage

    port = free_port()
    env = base_env | {"FACEQ_STORAGE_URL": storage_url, "FACEQ_MODEL_ARCH": "null", "FACEQ_MAX_BATCH": str(CHUNK),
                      "FACEQ_CHUNK_SIZE": str(CHUNK), "FACEQ_MODES": mode, "FACEQ_METRICS_PORT": str(port)}
    if mode == "detect":
        env["FACEQ_DETECTOR_WEIGHTS"] = str(YUNET)
    if s3_endpoint:
        env["FACEQ_S3_ENDPOINT_URL"] = s3_endpoint
    env |= extra_env or {}
    storage = open_storage(storage_url, s3_endpoint)
    ledger = Ledger.from_url(env["FACEQ_BROKER_URL"])
    settings = Settings(broker_url=env["FACEQ_BROKER_URL"], storage_url=storage_url, chunk_size=CHUNK)
    worker = WorkerProcess(env, workdir / f"worker-{label}.log", concurrency=default_concurrency("cpu"))
    if pin is not None:
        worker.args = ["taskset", "-c", pin, *worker.args]
    worker.start(ready_timeout=300)
    try:
        # not timed: a fresh worker's first job pays one-off costs (the first Parquet write, storage
        # folders, shared batches) that every later job is spared
        run_job(ledger, storage, settings, items[: 2 * CHUNK], mode, f"pipe-{label}-warm-{port}", allowed, timeout,
                worker.pid, port)
        results = [run_job(ledger, storage, settings, items, mode, f"pipe-{label}-{r}-{port}", allowed, timeout,
                           worker.pid, port) for r in range(runs)]
    finally:
        worker.stop()
        ledger.redis.close()
    return {"images": len(items), "mode": mode, "pinned_to_core": pin, **medians(results)}


class _Folder:
    """The DataLoader's dataset: Pillow decode of one file (module level, so spawned workers import it)."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        import torch
        from PIL import Image

        with Image.open(self.paths[i]) as image:
            return torch.from_numpy(np.asarray(image.convert("RGB")).copy())


def dataloader(paths: list[Path], runs: int, batch: int = 256, num_workers: int = 2, timeout: float = 300) -> dict:
    """What a user would write instead: Pillow decode in a plain DataLoader (median of ``runs``).

    Its workers are spawned, never forked: this process holds broker connections, and a forked
    child once blocked for good in kombu's after-fork cleanup reading a BRPOP reply on one of
    them. ``timeout`` bounds every batch the loader waits for.
    """
    import torch

    rates = []
    for _ in range(runs):
        started = time.perf_counter()
        loader = torch.utils.data.DataLoader(_Folder(paths), batch_size=batch, num_workers=num_workers,
                                             multiprocessing_context="spawn" if num_workers else None,
                                             timeout=timeout if num_workers else 0)
        n = sum(len(b) for b in loader)
        rates.append(n / (time.perf_counter() - started))
    return {"images": len(paths), "batch": batch, "num_workers": num_workers, "ips": round(statistics.median(rates), 1),
            "runs": [round(r, 1) for r in rates]}


SECTIONS = ("dataloader", "crop_file", "crop_file_one_core", "crop_s3", "detect", "detect_opencv", "detect_coarse",
            "detect_coarse_min_face")
# detect sections → the worker's detect settings (the engine's default: onnxruntime)
DETECT_RUNS = {"detect": {"FACEQ_DETECT_PATH": "full"},
               "detect_opencv": {"FACEQ_DETECT_PATH": "full", "FACEQ_DETECT_ENGINE": "opencv"},
               "detect_coarse": {"FACEQ_DETECT_PATH": "coarse"},
               "detect_coarse_min_face": {"FACEQ_DETECT_PATH": "coarse", "FACEQ_DETECT_COARSE_MIN_FACE": "160"}}


def run(base_env: dict[str, str], workdir: Path, s3_endpoint: str | None, quick: bool = False,
        timeout: float = 1800, only: tuple[str, ...] = SECTIONS, sizes: dict | None = None,
        extra_env: dict[str, str] | None = None) -> dict:
    from faceq.job.spec import Item
    from faceq.storage.store import open_storage

    sizes = (QUICK if quick else FULL) | (sizes or {})
    runs = sizes["runs"]
    crops = write_crops(workdir / "pipeline-crops", sizes["crops"])
    crop_items = [Item(p.name, p.as_uri()) for p in crops]
    section: dict = {"model": "FACEQ_MODEL_ARCH=null (zero-cost stand-in)", "chunk_size": CHUNK, "runs": runs,
                     "cores": os.cpu_count()}
    if "dataloader" in only:
        section["dataloader"] = dataloader(crops, runs)
    allowed = ((workdir / "pipeline-crops").as_uri(),)
    if "crop_file" in only:
        section["crop_file"] = measure(base_env, workdir, "crop-file", (workdir / "store-file").as_uri(), crop_items,
                                       "crop", runs, timeout, allowed=allowed, extra_env=extra_env)
    if "crop_file_one_core" in only and shutil.which("taskset"):
        section["crop_file_one_core"] = measure(base_env, workdir, "crop-file-1core",
                                                (workdir / "store-file-1").as_uri(), crop_items, "crop", runs,
                                                timeout, pin="0", allowed=allowed, extra_env=extra_env)
    if s3_endpoint and "crop_s3" in only:
        storage = open_storage("s3://faceq-bench/pipeline", s3_endpoint)
        s3_items = []
        for path in crops[: sizes["s3_crops"]]:
            uri = storage.put_bytes(f"inputs/{path.name}", path.read_bytes(), "image/jpeg")
            s3_items.append(Item(path.name, uri))
        section["crop_s3"] = measure(base_env, workdir, "crop-s3", "s3://faceq-bench/pipeline", s3_items, "crop",
                                     runs, timeout, s3_endpoint=s3_endpoint, extra_env=extra_env)
    detect_runs = [key for key in DETECT_RUNS if key in only]
    if detect_runs and YUNET.is_file():
        photos = write_photos(workdir / "pipeline-photos", sizes["photos"])
        for key in detect_runs:
            env = DETECT_RUNS[key] | (extra_env or {})
            section[key] = measure(base_env, workdir, key.replace("_", "-"), (workdir / f"store-{key}").as_uri(),
                                   [Item(p.name, p.as_uri()) for p in photos], "detect", runs, timeout,
                                   allowed=((workdir / "pipeline-photos").as_uri(),), extra_env=env)
            section[key]["photo"] = f"{PHOTO_SIZE[0]}×{PHOTO_SIZE[1]} JPEG, one face"
            section[key]["detect_settings"] = {k: v for k, v in env.items() if k.startswith("FACEQ_DETECT")}
        if "detect_coarse" in detect_runs:
            from bench.detect_parity import parity

            section["detect_parity"] = parity(photo_jpegs(), str(YUNET))
    elif detect_runs:
        for key in detect_runs:
            section[key] = {"skipped": f"YuNet weights not found at {YUNET}"}
    section["targets"] = targets(section)
    return section


def targets(section: dict) -> dict:
    checks = {}
    crop, loader = section.get("crop_file"), section.get("dataloader")
    if crop and loader:
        ratio = round(crop["ips"] / loader["ips"], 3)
        checks["crop_file_over_dataloader"] = {"measured": ratio, "target": f"≥ {TARGETS['crop_file_over_dataloader']}",
                                               "met": ratio >= TARGETS["crop_file_over_dataloader"]}
        checks["crop_file_cores_used"] = {"measured": crop["cores_used"], "target": f"≥ {TARGETS['crop_file_cores_used']}",
                                          "met": crop["cores_used"] >= TARGETS["crop_file_cores_used"]}
    if crop and section.get("crop_file_one_core"):
        ratio = round(crop["ips"] / section["crop_file_one_core"]["ips"], 3)
        checks["two_cores_over_one"] = {"measured": ratio, "target": f"≥ {TARGETS['two_cores_over_one']}",
                                        "met": ratio >= TARGETS["two_cores_over_one"]}
    if section.get("crop_s3"):
        ms = section["crop_s3"]["worker_cpu_ms_per_item"]
        checks["crop_s3_worker_cpu_ms_per_item"] = {"measured": ms, "target": "≤ 0.5", "met": ms <= 0.5}
    for key in DETECT_RUNS:
        if section.get(key, {}).get("worker_cpu_ms_per_item") is not None:
            ms = section[key]["worker_cpu_ms_per_item"]
            checks[f"{key}_worker_cpu_ms_per_photo"] = {"measured": ms, "target": "≤ 25", "met": ms <= 25.0}
    same = section.get("detect_parity")
    if same:
        met = (same["min_embedding_cosine"] >= 0.9999 and same["faces_found"]["coarse"] == same["faces_found"]["full"])
        checks["detect_coarse_parity"] = {"measured": same["min_embedding_cosine"],
                                          "target": "cos ≥ 0.9999, the same faces", "met": met}
    return checks


def as_table(section: dict) -> str:
    stages = ("fetch", "decode", "detect", "crop", "coarse_resize", "coarse_detect", "fine_detect",
              "align", "rows", "device", "write", "record", "other")
    lines = ["| run | images | images/s | worker CPU ms/item | cores used | " + " | ".join(stages) + " |",
             "| --- | --- | --- | --- | --- |" + " --- |" * len(stages)]
    for key in ("crop_file", "crop_file_one_core", "crop_s3", *DETECT_RUNS):
        r = section.get(key)
        if not r or "ips" not in r:
            continue
        split = r["stage_cpu_ms_per_item"]
        lines.append(f"| {key} | {r['images']} | {r['ips']} | {r['worker_cpu_ms_per_item']} | {r['cores_used']} | "
                     + " | ".join(str(split.get(s, "")) for s in stages) + " |")
    loader = section.get("dataloader")
    if loader:
        lines.append(f"| DataLoader (Pillow, batch {loader['batch']}, num_workers={loader['num_workers']}) | "
                     f"{loader['images']} | {loader['ips']} | | | " + " |" * len(stages))
    same = section.get("detect_parity")
    if same:
        lines += ["", f"Detect parity, coarse vs full ({same['photos']} photos): faces {same['faces_found']}, "
                      f"max landmark diff {same['max_landmark_px']} px, min embedding cos {same['min_embedding_cosine']}"]
    lines += ["", "Targets: " + "; ".join(f"{k} {v['measured']} (target {v['target']}): "
                                        f"{'met' if v['met'] else 'MISSED'}" for k, v in section["targets"].items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile

    from bench import record
    from bench.pipeline import python_env
    from devstack.processes import RedisServer

    parser = argparse.ArgumentParser(prog="python -m bench pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few hundred images, one run (for tests)")
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 (moto) run")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {', '.join(SECTIONS)}")
    parser.add_argument("--crops", type=int, help="images in the crop_file runs")
    parser.add_argument("--photos", type=int, help="photos in the detect runs")
    parser.add_argument("--runs", type=int, help="jobs per measurement (the median is reported)")
    parser.add_argument("--env", action="append", default=[], metavar="FACEQ_X=V",
                        help="extra worker setting, to compare variants (repeatable)")
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = parser.parse_args(argv)
    from bench.pipeline import start_moto

    with tempfile.TemporaryDirectory(prefix="faceq-pipeline-") as tmp:
        workdir = Path(tmp)
        redis_server = RedisServer(workdir / "redis").start()
        os.environ["FACEQ_BROKER_URL"] = redis_server.url
        moto = None
        try:
            base_env = python_env() | {"FACEQ_BROKER_URL": redis_server.url}
            s3_endpoint = None
            if not args.no_s3 and "crop_s3" in args.only:
                moto, s3_endpoint = start_moto(base_env)
            only = tuple(args.only.split(","))
            sizes = {k: v for k, v in (("crops", args.crops), ("photos", args.photos), ("runs", args.runs)) if v}
            extra_env = dict(pair.split("=", 1) for pair in args.env)
            section = run(base_env, workdir, s3_endpoint, args.quick, args.timeout, only, sizes, extra_env)
        finally:
            if moto is not None:
                moto.stop()
            redis_server.stop()
    document = {"benchmark": "faceq pipeline", "machine": record.machine() | {"cores": os.cpu_count()},
                "commit": record.commit(), "worker_env": extra_env, "pipeline": section}
    print(json.dumps(document, indent=2))
    if args.record:
        record.append("Data path (`python -m bench pipeline`)", as_table(section), document)
    return 0
