"""In-process speed: the bare model (the ceiling) and the engine from uint8 host crops."""

from __future__ import annotations

import time

import numpy as np
import torch

from faceq.models.rts import embed_and_score
from faceq.models.weights import load_model
from faceq.workers.batcher import MicroBatcher
from faceq.workers.engine import Engine, resolve_device, resolve_precision
from faceq.workers.graph import GraphSet, prepare_network, resolve_inference, wrap_forward


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_runs(run, device: torch.device, min_seconds: float, min_runs: int = 3) -> list[float]:
    run()  # warm-up (cuDNN autotune, allocator)
    _sync(device)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - started < min_seconds:
        t0 = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def bare_model(arch: str, device_name: str, precision: str, batch_sizes: list[int], min_seconds: float,
               inference: str = "eager") -> dict:
    """Forward + normalisation of the outputs, inputs already on the device in the model's dtype,
    the network run as ``inference`` runs it (workers/graph.py: eager, fused, compiled, graphs)."""
    device = resolve_device(device_name)
    dtype = resolve_precision(precision, device)
    inference = resolve_inference(inference, device)
    memory_format = torch.channels_last  # the engine's layout (the faster one on CPU and GPU)
    network = prepare_network(load_model(None, arch).model, inference)
    model = network.to(device, dtype=dtype, memory_format=memory_format).eval()
    forward = wrap_forward(lambda x: embed_and_score(model, x), inference)
    sweep = []
    for batch in batch_sizes:
        x = (torch.rand(batch, 3, 112, 112, device=device) * 2 - 1).to(dtype).contiguous(memory_format=memory_format)
        with torch.inference_mode():
            if inference == "graphs":
                graphs = GraphSet(forward, x, [batch])
                times = _timed_runs(lambda: graphs.replay(batch), device, min_seconds)
            else:
                times = _timed_runs(lambda: forward(x), device, min_seconds)
        p50, p95 = float(np.percentile(times, 50)), float(np.percentile(times, 95))
        sweep.append({"batch": batch, "ips": round(batch / p50, 2), "latency_ms_p50": round(p50 * 1e3, 2),
                      "latency_ms_p95": round(p95 * 1e3, 2), "runs": len(times)})
    best = max(sweep, key=lambda row: row["ips"])
    return {"bare_model_ips": best["ips"], "best_batch": best["batch"], "batch_sweep": sweep}


def engine_speed(arch: str, device_name: str, precision: str, batch: int, n_images: int, repeats: int = 3) -> dict:
    """uint8 BGR crops in host memory → embeddings in host memory, through the micro-batcher."""
    engine = Engine(load_model(None, arch), device_name, precision, max_batch=batch)
    batcher = MicroBatcher(engine.infer, batch, max_delay_ms=2)
    crops = np.random.default_rng(0).integers(0, 256, (n_images, 112, 112, 3), dtype=np.uint8)
    try:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            batcher.infer(crops)
            times.append(time.perf_counter() - t0)
    finally:
        batcher.close()
    info = engine.info
    return {"engine_ips": round(n_images / float(np.median(times)), 2), "engine_images": n_images,
            "warm_memory_bytes": info.warm_memory_bytes, "warmup_seconds": info.warmup_seconds}


