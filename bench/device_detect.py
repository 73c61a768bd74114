"""The device detect path in-process (``python -m bench gpu``'s ``device_detect`` section).

On 1920×2400 JPEGs held in memory (bench/datapath.py's photos, and their mirror images):

- ``photos_per_second``: file bytes → aligned 112×112 crops in the device's input batch
  (decode, search resize, YuNet, suppression, alignment), batches of ``batch`` photos, timed
  until ``min_seconds`` have passed (the device synchronised before the clock stops);
- ``cpu_ms_per_photo``: the calling thread's CPU per stage (what the worker's
  ``faceq_stage_cpu_seconds_total`` counts) and the whole process's CPU per photo (on a CPU
  device, torch's own threads do the work: only the process figure counts them);
- ``parity``: against the CPU path (``decode_image``, OpenCV's YuNet, ``cv2.warpAffine``): faces
  found by one and not the other, the largest landmark and box difference (px), the largest
  crop pixel difference, and the lowest embedding cosine with seeded random weights (fp32).

The end-to-end figure (file to Parquet rows) is the smoke's detect job, whose worker runs this
path (``FACEQ_DETECT_DEVICE``).
"""

from __future__ import annotations

import time

import numpy as np


def bench_photos(n: int) -> list[bytes]:
    """``n`` 1920×2400 JPEGs: the two portraits and their mirror images, in turn."""
    import cv2

    from bench.datapath import photo_jpegs

    originals = photo_jpegs()
    mirrored = [cv2.imencode(".jpg", cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_COLOR)[:, ::-1],
                             [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes() for p in originals]
    distinct = originals + mirrored
    return [distinct[i % len(distinct)] for i in range(n)]


def _synchronise(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def throughput(path, photos: list[bytes], batch: int, min_seconds: float) -> dict:
    """Photos/s and CPU ms per photo by stage, after one untimed warm-up batch."""
    path.run(photos[:batch])
    _synchronise(str(path.device))
    stages = {"decode": 0.0, "detect": 0.0, "align": 0.0}
    done, started, process_started = 0, time.perf_counter(), time.process_time()
    while done == 0 or time.perf_counter() - started < min_seconds:
        for start in range(0, len(photos), batch):
            result = path.run(photos[start:start + batch])
            for stage, seconds in result.cpu_seconds.items():
                stages[stage] += seconds
            done += len(photos[start:start + batch])
    _synchronise(str(path.device))
    wall, process = time.perf_counter() - started, time.process_time() - process_started
    return {"photos": done, "seconds": round(wall, 3), "photos_per_second": round(done / wall, 1),
            "cpu_ms_per_photo": {**{k: round(1000 * v / done, 2) for k, v in stages.items()},
                                 "process": round(1000 * process / done, 2)},
            "decoder": path.decoder.name, "device_decoder_fallbacks": path.decoder.fallbacks}


def parity(path, photos: list[bytes], detector_weights: str, arch: str, device: str) -> dict:
    """The device path against the CPU path on each distinct photo."""
    from faceq.models.detect import FaceDetector
    from faceq.models.preprocess import decode_image, detect_faces
    from faceq.models.weights import LoadedModel, load_model
    from faceq.workers.engine import Engine

    cpu_detector = FaceDetector(detector_weights)
    engine = Engine(LoadedModel(load_model(None, arch, seed=0).model, "parity", random_weights=True), device,
                    "fp32", max_batch=64)
    ours = path.run(photos).to_host()
    mine, theirs = [], []
    missed = landmarks = boxes = pixels = 0.0
    for data, outcome in zip(photos, ours):
        reference = detect_faces(decode_image(data, 1 << 30, 1 << 30), cpu_detector)
        missed += abs(outcome.face_count - reference.face_count)
        for a, b in zip(outcome.faces, reference.faces):
            landmarks = max(landmarks, float(np.abs(np.subtract(a.landmarks, b.landmarks)).max()))
            boxes = max(boxes, float(np.abs(np.subtract(a.bbox, b.bbox)).max()))
            pixels = max(pixels, float(np.abs(a.pixels.astype(int) - b.pixels).max()))
            mine.append(a.pixels)
            theirs.append(b.pixels)
    cosine = None
    if mine:
        ours_e, _ = engine.infer(np.stack(mine))
        theirs_e, _ = engine.infer(np.stack(theirs))
        cosine = round(float((ours_e * theirs_e).sum(axis=1).min()), 6)
    return {"photos": len(photos), "faces": len(mine), "face_count_differences": int(missed),
            "max_landmark_px": round(landmarks, 4), "max_box_px": round(boxes, 4), "max_crop_pixel": pixels,
            "min_embedding_cosine": cosine, "embedding_model": f"{arch} seeded random weights, fp32"}


def device_detect_section(device: str, detector_weights: str, n_photos: int, batch: int, min_seconds: float,
                          arch: str) -> dict:
    from faceq.models.device_detect_path import build_device_detect_path

    path = build_device_detect_path(detector_weights, device, 1 << 30, 1 << 30, 0.7, 1280, 10)
    photos = bench_photos(n_photos)
    return {"device": device, "photo_size": "1920x2400", "batch": batch,
            **throughput(path, photos, batch, min_seconds),
            "parity": parity(path, photos[:4], detector_weights, arch, device)}
