"""The warm model on one device: weights loaded once, buffers preallocated, warmed up.

Inputs arrive as uint8 BGR crops; they cross to the device as uint8 (4× less traffic than
float) and are normalised there. One lock serialises device work between task threads.
Cross-task micro-batching (a batcher in front of ``infer``) is a later step; ``infer``
already splits any input into batches of at most ``max_batch``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from faceq.errors import ModelError
from models.preprocess import normalize_batch
from models.rts import EMBEDDING_DIM, INPUT_SIZE, embed_and_score
from models.weights import LoadedModel

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """``cpu`` or ``cuda[:N]``, refusing a GPU that is not there (with the reason)."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ModelError(f"FACEQ_DEVICE={name!r} is not a device; use cpu or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"FACEQ_DEVICE={name}: this torch build or machine has no CUDA")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise ModelError(f"FACEQ_DEVICE={name}: only {torch.cuda.device_count()} CUDA device(s) visible")
        device = torch.device("cuda", index)
    elif device.type != "cpu":
        raise ModelError(f"FACEQ_DEVICE={name}: only cpu and cuda devices are supported")
    return device


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    if name not in PRECISIONS:
        raise ModelError(f"FACEQ_PRECISION={name!r}; choose fp32, fp16 or bf16")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ModelError(f"FACEQ_PRECISION=bf16: {torch.cuda.get_device_name(device)} cannot run bf16")
    return PRECISIONS[name]


@dataclass(frozen=True)
class EngineInfo:
    device: str
    precision: str
    max_batch: int
    model_id: str
    random_weights: bool
    warm_memory_bytes: int | None
    warmup_seconds: float


class Engine:
    def __init__(self, loaded: LoadedModel, device: str, precision: str, max_batch: int):
        self.device = resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        self.precision = precision
        self.max_batch = max_batch
        self.model_id = loaded.model_id
        self.random_weights = loaded.random_weights
        memory_format = torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
        self.model = loaded.model.to(self.device, dtype=self.dtype, memory_format=memory_format).eval()
        self._lock = threading.Lock()
        shape = (max_batch, INPUT_SIZE, INPUT_SIZE, 3)
        on_cuda = self.device.type == "cuda"
        self._host = torch.empty(shape, dtype=torch.uint8, pin_memory=on_cuda)
        self._device_input = torch.empty(shape, dtype=torch.uint8, device=self.device)
        self.info = self._warm_up()

    def _warm_up(self) -> EngineInfo:
        """One forward per batch size we expect (1 and max), before any task is taken."""
        start = time.perf_counter()
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        try:  # the warm-up is also the proof that this device runs this precision
            for size in sorted({1, self.max_batch}):
                self.infer(np.zeros((size, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8))
        except RuntimeError as exc:
            raise ModelError(f"{self.device} cannot run the model in {self.precision}: {exc}") from exc
        memory = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            memory = torch.cuda.memory_reserved(self.device)
        info = EngineInfo(
            device=str(self.device),
            precision=self.precision,
            max_batch=self.max_batch,
            model_id=self.model_id,
            random_weights=self.random_weights,
            warm_memory_bytes=memory,
            warmup_seconds=round(time.perf_counter() - start, 3),
        )
        log.info("engine warm: %s", info)
        return info

    def infer(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 112, 112, 3) uint8 BGR → embeddings (N, 512) float32 unit-norm, quality (N,)."""
        if crops.ndim != 4 or crops.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3) or crops.dtype != np.uint8:
            raise ValueError(f"expected (N, {INPUT_SIZE}, {INPUT_SIZE}, 3) uint8 crops, got {crops.shape} {crops.dtype}")
        embeddings = np.empty((len(crops), EMBEDDING_DIM), dtype=np.float32)
        quality = np.empty(len(crops), dtype=np.float32)
        for start in range(0, len(crops), self.max_batch):
            stop = min(start + self.max_batch, len(crops))
            embeddings[start:stop], quality[start:stop] = self._forward(crops[start:stop])
        return embeddings, quality

    @torch.inference_mode()
    def _forward(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(crops)
        with self._lock:
            host = self._host[:n]
            host.copy_(torch.from_numpy(crops))
            device_input = self._device_input[:n]
            device_input.copy_(host, non_blocking=True)
            x = normalize_batch(device_input, self.dtype)
            if self.device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            embedding, score = embed_and_score(self.model, x)
            return embedding.cpu().numpy(), score.cpu().numpy()
