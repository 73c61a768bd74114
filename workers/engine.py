"""The warm model on one device: weights loaded once, buffers preallocated, warmed up.

Inputs arrive as uint8 BGR crops; they cross to the device as uint8 (4× less traffic than
float) through a pinned host buffer and are normalised, flipped to RGB and laid out
(channels_last) on the device. On CUDA every batch is padded to a bucket (powers of two up to ``max_batch``) and
every bucket is run once at start, so cuDNN autotuning happens before the first task and
never again. A CUDA out-of-memory error splits the batch in halves down to single images;
only an image that does not fit alone fails (``DeviceOutOfMemory``, retried by the task).
One lock serialises device work; the micro-batcher is normally its only caller.

With the zero-cost stand-in (``FACEQ_MODEL_ARCH=null``, ``faceq.models.null``) nothing is moved to
the device and no buffer is allocated: the same warm-up, batching and locking run, and each
batch costs microseconds on the host, so benchmarks time only what surrounds the model.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from faceq.errors import DeviceOutOfMemory, ModelError
from faceq.models.preprocess import normalize_batch
from faceq.models.rts import EMBEDDING_DIM, INPUT_SIZE, embed_and_score
from faceq.models.weights import LoadedModel
from faceq.workers.graph import DEFAULT_INFERENCE, GraphSet, prepare_network, resolve_inference, wrap_forward

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


def default_precision(device: torch.device) -> str:
    """``auto``: bf16 on a GPU that runs it (cosine ≥ 0.99996 to fp32 on the H200, issue 24), else fp32."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        name = default_precision(device)
    if name not in PRECISIONS:
        raise ModelError(f"FACEQ_PRECISION={name!r}; choose auto, fp32, fp16 or bf16")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ModelError(f"FACEQ_PRECISION=bf16: {torch.cuda.get_device_name(device)} cannot run bf16")
    return PRECISIONS[name]


def batch_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, … below ``max_batch``, and ``max_batch`` itself."""
    buckets, size = [], 1
    while size < max_batch:
        buckets.append(size)
        size *= 2
    return buckets + [max_batch]


@dataclass(frozen=True)
class EngineInfo:
    device: str
    precision: str
    max_batch: int
    model_id: str
    random_weights: bool
    warm_memory_bytes: int | None
    warmup_seconds: float
    stand_in: bool = False  # FACEQ_MODEL_ARCH=null: not a model (see faceq.models.null)
    inference: str = DEFAULT_INFERENCE  # eager | fused | compiled | graphs (faceq.workers.graph)


class Engine:
    def __init__(self, loaded: LoadedModel, device: str, precision: str, max_batch: int,
                 inference: str = DEFAULT_INFERENCE):
        self.device = resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        self.precision = default_precision(self.device) if precision == "auto" else precision
        self.inference = "eager" if loaded.stand_in else resolve_inference(inference, self.device)
        self._graphs: GraphSet | None = None
        self.max_batch = max_batch
        self.model_id = loaded.model_id
        self.random_weights = loaded.random_weights
        self.stand_in = loaded.stand_in
        self._lock = threading.Lock()
        if self.stand_in:  # no network: nothing on the device, no buffers, no bucket padding
            self.model = loaded.model
            self.buckets = None
            self._host = self._device_input = None
            self.info = self._warm_up()
            return
        # channels_last on every device: measured on this project's 2-core x86 CPU, 1.2× (IR-SE-64)
        # to 2.4× (tiny) faster than NCHW; on GPUs it is what tensor cores want.
        network = prepare_network(loaded.model, self.inference)
        self.model = network.to(self.device, dtype=self.dtype, memory_format=torch.channels_last).eval()
        self._run = wrap_forward(self._network_forward, self.inference)
        shape = (max_batch, INPUT_SIZE, INPUT_SIZE, 3)
        on_cuda = self.device.type == "cuda"
        # CUDA and compiled graphs: fixed shapes (one autotune or compile per bucket, at warm-up);
        # the eager CPU: no padding
        static = on_cuda or self.inference in ("compiled", "graphs")
        self.buckets = batch_buckets(max_batch) if static else None
        self._host = torch.empty(shape, dtype=torch.uint8, pin_memory=on_cuda)
        # on the CPU the host buffer is the model's input: no second copy
        self._device_input = torch.empty(shape, dtype=torch.uint8, device=self.device) if on_cuda else self._host
        if self.inference == "graphs":
            with torch.inference_mode():
                self._graphs = GraphSet(self._run, self._device_input, self.buckets)
        self.info = self._warm_up()

    def _network_forward(self, device_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 NHWC BGR on the device → (embedding, score), fp32."""
        x = normalize_batch(device_input, self.dtype).contiguous(memory_format=torch.channels_last)
        return embed_and_score(self.model, x)

    def _warm_up(self) -> EngineInfo:
        """One forward per batch bucket (CUDA) or for 1 and the largest batch (CPU), before any task."""
        start = time.perf_counter()
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        sizes = self.buckets or sorted({1, self.max_batch})
        try:  # the warm-up is also the proof that this device runs this precision
            for size in sizes:
                self.infer(np.zeros((size, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8))
        except RuntimeError as exc:
            raise ModelError(f"{self.device} cannot run the model in {self.precision}: {exc}") from exc
        memory = None
        if self.device.type == "cuda" and not self.stand_in:
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
            stand_in=self.stand_in,
            inference=self.inference,
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
            embeddings[start:stop], quality[start:stop] = self._forward_splitting_on_oom(crops[start:stop])
        return embeddings, quality

    def _forward_splitting_on_oom(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        try:
            return self._forward(crops)
        except torch.OutOfMemoryError as exc:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(crops) == 1:
                raise DeviceOutOfMemory(f"one image does not fit on {self.device}: {exc}") from exc
            half = len(crops) // 2
            log.warning("out of memory on a batch of %d; retrying as %d + %d", len(crops), half, len(crops) - half)
            first, second = self._forward_splitting_on_oom(crops[:half]), self._forward_splitting_on_oom(crops[half:])
            return np.concatenate([first[0], second[0]]), np.concatenate([first[1], second[1]])

    def _bucket(self, n: int) -> int:
        return n if self.buckets is None else next(size for size in self.buckets if size >= n)

    @torch.inference_mode()
    def _forward(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(crops)
        if self.stand_in:
            with self._lock:
                return self.model.infer(crops)
        with self._lock:
            host = self._host[:n]
            host.copy_(torch.from_numpy(crops))
            bucket = self._bucket(n)
            device_input = self._device_input[:bucket]  # padding rows are ignored
            if device_input.data_ptr() != host.data_ptr():
                device_input[:n].copy_(host, non_blocking=True)
            if self._graphs is not None:
                embedding, score = self._graphs.replay(bucket)
            else:
                embedding, score = self._run(device_input)
            return embedding[:n].cpu().numpy(), score[:n].cpu().numpy()
