"""``FACEQ_MODEL_ARCH=null``: a zero-cost stand-in for the network, for benchmarks and tests.

It loads no checkpoint and runs nothing on a device. Each crop's embedding is derived from
the mean colour of a sparse 14×14 grid of its pixels (a fixed bias direction plus one fixed
direction per BGR channel, orthonormal, then L2-normalised): deterministic, unit length,
512-d float32, different for visibly different crops. Its quality score is the mean
brightness of the same samples (0 black … 1 white), so dark crops are flagged ``low_quality``
as a real model would flag some: review lists and per-source statistics get realistic work.
Both cost about a microsecond per crop. Every row it produces carries ``NULL_MODEL_ID``, so nobody
mistakes its output for face recognition.

Use it to time everything around the model (fetch, decode, batching, Parquet, queues,
finalize) — see ``python -m bench scale`` — never for results.
"""

from __future__ import annotations

import numpy as np

from faceq.models.rts import EMBEDDING_DIM, INPUT_SIZE

NULL_ARCH = "null"
NULL_MODEL_ID = "null-standin-NOT-A-MODEL"
_GRID_STEP = 8  # every 8th pixel in each direction: 14 × 14 samples of a 112 × 112 crop

STAND_IN_WARNING = (
    "FACEQ_MODEL_ARCH=null: this worker runs the ZERO-COST STAND-IN, NOT A MODEL. Embeddings are "
    "derived from mean pixel colours and quality is the mean brightness; every row says "
    "model_id=%s. For benchmarks and tests only: unset FACEQ_MODEL_ARCH (or set ir_se_64) for results."
)


class NullModel:
    """Deterministic unit embeddings from pixel means, brightness as quality; no torch, no device."""

    arch_name = NULL_ARCH

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        basis, _ = np.linalg.qr(rng.standard_normal((EMBEDDING_DIM, 4)))  # orthonormal columns
        self._bias = basis[:, 0].astype(np.float32)  # (512,)
        self._channels = basis[:, 1:].T.astype(np.float32)  # (3, 512): one direction per B, G, R

    def infer(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 112, 112, 3) uint8 → embeddings (N, 512) float32 unit-norm, quality (N,) float32."""
        if crops.ndim != 4 or crops.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3) or crops.dtype != np.uint8:
            raise ValueError(f"expected (N, {INPUT_SIZE}, {INPUT_SIZE}, 3) uint8 crops, got {crops.shape} {crops.dtype}")
        means = crops[:, ::_GRID_STEP, ::_GRID_STEP, :].mean(axis=(1, 2), dtype=np.float32)  # (N, 3) in [0, 255]
        # the bias direction is orthogonal to the channel ones, so the norm is ≥ 1: never 0
        # a sum of three scaled directions, not a matmul: BLAS picks different kernels for one row
        # and for many, so a crop's vector would depend (in the last bit) on its batch
        centred = means / np.float32(255.0) - np.float32(0.5)
        embeddings = self._bias + (centred[:, :, None] * self._channels).sum(axis=1)
        embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
        quality = means.mean(axis=1) / np.float32(255.0)
        return embeddings.astype(np.float32, copy=False), quality.astype(np.float32, copy=False)
