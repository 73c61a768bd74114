"""1:N identification speed: probes/s against galleries of 10,000 and 100,000 identities.

The gallery goes through the real path: published as Parquet to storage, loaded once into
the worker's device-resident cache, then matched chunk by chunk (one matrix product per
chunk, top-k of similarity × quality).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from faceq.gallery import GALLERY_SCHEMA, Enrolment, GalleryStore
from faceq.storage.store import open_storage
from faceq.workers.engine import resolve_device
from faceq.workers.galleries import GalleryCache


def _unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.standard_normal((n, 512), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def one_to_n(device_name: str, identities: int, probes: int, chunk: int = 256, top_k: int = 5) -> dict:
    rng = np.random.default_rng(0)
    templates = _unit_rows(rng, identities)
    table = pa.table({"employee_id": [f"emp{i:07d}" for i in range(identities)], "template": list(templates),
                      "n_images": np.full(identities, 3, np.int32),
                      "mean_quality": rng.uniform(0.6, 0.95, identities).astype(np.float32),
                      "model_id": ["bench"] * identities}, schema=GALLERY_SCHEMA)
    with tempfile.TemporaryDirectory() as tmp:
        store = GalleryStore(open_storage(Path(tmp).as_uri()))
        store.publish("bench", Enrolment(table, [], [], []), {})
        cache = GalleryCache(store, resolve_device(device_name))
        started = time.perf_counter()
        gallery = cache.get("bench", 1)
        load_seconds = time.perf_counter() - started
        queries = _unit_rows(rng, probes)
        claimed = [f"emp{i:07d}" for i in rng.integers(0, identities, probes)]
        gallery.match(queries[:chunk], claimed[:chunk], top_k)  # warm-up
        started = time.perf_counter()
        for start in range(0, probes, chunk):
            cache.get("bench", 1).match(queries[start : start + chunk], claimed[start : start + chunk], top_k)
        seconds = time.perf_counter() - started
    return {"identities": identities, "probes": probes, "chunk": chunk, "top_k": top_k,
            "probes_per_second": round(probes / seconds, 1), "gallery_load_seconds": round(load_seconds, 3),
            "gallery_loads": cache.loads}
