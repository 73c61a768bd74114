"""Every faceq setting, read once from the environment into one frozen object."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from faceq.errors import ConfigError
from faceq.modelfiles import default_model_dir, installed_checkpoint, installed_detector

DEFAULT_STORAGE_DIR = Path.home() / ".faceq" / "store"


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return default if value is None or value.strip() == "" else value.strip()


def _int(name: str, default: int | None, minimum: int = 1) -> int | None:
    raw = _env(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be ≥ {minimum}")
    return value


def _float(name: str, default: float) -> float:
    raw = _env(name)
    try:
        return default if raw is None else float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None


def _port(name: str) -> int:
    """A TCP port, or 0 (unset, empty or 0: disabled)."""
    value = _int(name, 0, minimum=0)
    if value > 65535:
        raise ConfigError(f"{name}={value} is not a TCP port (1-65535, or 0 for none)")
    return value


def _choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _env(name, default).lower()
    if value not in choices:
        raise ConfigError(f"{name}={value!r}: choose one of {', '.join(choices)}")
    return value


def _modes(raw: str) -> tuple[str, ...]:
    from faceq.job.spec import MODES

    modes = tuple(m.strip() for m in raw.split(",") if m.strip())
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ConfigError(f"FACEQ_MODES={raw!r}: choose one or more of {', '.join(MODES)}")
    return modes


@dataclass(frozen=True)
class TrustThresholds:
    """The seed's trust rules (see ../shared/SEED.md); configurable, defaults are the seed's."""

    review_quality: float = 0.4  # below: untrusted, retake or review by hand
    match_quality: float = 0.6  # a confident decision needs at least this quality
    match_similarity: float = 0.45  # above (with good quality): same person
    mismatch_similarity: float = 0.35  # below (with good quality): possible impersonation
    not_a_face_quality: float = 0.2  # below: probably not a face at all (the seed's cat: 0.19)
    enrol_quality: float = 0.6  # enrolment images below this are not used for templates
    duplicate_similarity: float = 0.8  # two employees' templates closer than this: same person?
    drift_drop: float = 0.15  # a source's median quality falling this much against the last job

    @classmethod
    def from_env(cls) -> "TrustThresholds":
        d = cls()
        return cls(**{name: _float(f"FACEQ_{name.upper()}", getattr(d, name)) for name in THRESHOLD_NAMES})


THRESHOLD_NAMES = (
    "review_quality", "match_quality", "match_similarity", "mismatch_similarity", "not_a_face_quality",
    "enrol_quality", "duplicate_similarity", "drift_drop",
)


@dataclass(frozen=True)
class Settings:
    broker_url: str = "redis://127.0.0.1:6379/0"
    storage_url: str = DEFAULT_STORAGE_DIR.as_uri()
    s3_endpoint_url: str | None = None
    model_weights: str | None = None  # FACEQ_MODEL_WEIGHTS, else the checkpoint `faceq models fetch` installed
    detector_weights: str | None = None  # FACEQ_DETECTOR_WEIGHTS, else the fetched YuNet
    model_dir: str = str(default_model_dir())  # FACEQ_MODEL_DIR: where `faceq models fetch` installs
    modes: tuple[str, ...] = ("crop", "detect")
    min_face: int = 10
    detect_score: float = 0.7
    detect_max_side: int = 1280
    # full | coarse (models/coarse_detect.py): coarse meets parity on every test photo, but with every face the
    # full search finds kept its coarse pass runs at 0.875 of the search's size: 0.88 of the CPU on a
    # one-face portrait, more on group photos (bench/RESULTS.md)
    detect_path: str = "full"
    # YuNet's network in onnxruntime (≈ 1.5× less CPU than OpenCV's DNN, landmarks within 3e-4 px) or opencv
    detect_engine: str = "onnxruntime"
    # onnxruntime threads per search; photos run side by side on FACEQ_IO_THREADS threads (one core each is the
    # least CPU per photo); 0: onnxruntime's default (every core for each search)
    detect_threads: int = 1
    detect_coarse_min_face: float = 0.0  # > 0: faces narrower than this (photo px) may be missed, for speed
    model_arch: str = "ir_se_64"
    model_seed: int = 0
    device: str = "cpu"
    # FACEQ_DETECT_DEVICE: detect mode decoded, searched and aligned on this torch device (cpu, cuda, cuda:N;
    # workers/device_stage.py); unset: on the CPU as before
    detect_device: str | None = None
    precision: str = "auto"  # bf16 on GPUs that run it, fp32 on the CPU (workers/engine.py default_precision)
    inference: str = "fused"  # eager | fused | compiled | graphs (workers/graph.py)
    max_batch: int = 64
    max_delay_ms: float = 5.0
    microbatch: bool = True
    chunk_size: int = 256
    queue: str = "faceq"
    io_threads: int = 8
    decode_processes: int | None = None  # crop mode's local reads in child processes; None: one per usable core, ≤ 8
    max_image_bytes: int = 32 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    decode_pixel_budget: int = 150_000_000  # decoded pixels in flight per worker (≈ 3 bytes each, plus copies)
    item_timeout_seconds: float = 120.0  # fetch + decode + detect of one chunk's items
    storage_retry_seconds: float = 600.0  # storage outages shorter than this are ridden out
    redis_retry_seconds: float = 300.0  # broker outages shorter than this are ridden out by workers
    stall_seconds: float = 30.0  # a running job with no chunk recorded this long is checked against storage
    max_deliveries: int = 5  # a chunk started this often without finishing is recorded as failed
    ledger_retention_seconds: int = 7 * 24 * 3600  # job keys in Redis expire this long after the last write
    allowed_sources: tuple[str, ...] = ()  # input roots besides a job's own source and the storage root
    metrics_port: int = 0  # the worker's /metrics, /healthz, /readyz port; 0: none (workers/endpoints.py)
    metrics_address: str = "127.0.0.1"  # where that port listens (compose: 0.0.0.0 inside its network)
    thresholds: TrustThresholds = field(default_factory=TrustThresholds)

    def open_storage(self):
        """The configured storage, retrying outages for ``storage_retry_seconds``."""
        from faceq.storage.store import open_storage

        return open_storage(self.storage_url, self.s3_endpoint_url, self.storage_retry_seconds)

    def open_ledger(self):
        from faceq.job.ledger import Ledger

        return Ledger.from_url(self.broker_url, self.ledger_retention_seconds)

    @classmethod
    def from_env(cls) -> "Settings":
        d = cls()
        model_dir = Path(_env("FACEQ_MODEL_DIR") or default_model_dir()).expanduser()
        model_arch = _env("FACEQ_MODEL_ARCH", d.model_arch)
        return cls(
            broker_url=_env("FACEQ_BROKER_URL", d.broker_url),
            storage_url=_env("FACEQ_STORAGE_URL", d.storage_url),
            s3_endpoint_url=_env("FACEQ_S3_ENDPOINT_URL"),
            # the variables win; else what `faceq models fetch` installed (faceq.modelfiles)
            model_weights=_env("FACEQ_MODEL_WEIGHTS") or installed_checkpoint(model_dir, model_arch),
            detector_weights=_env("FACEQ_DETECTOR_WEIGHTS") or installed_detector(model_dir),
            model_dir=str(model_dir),
            modes=_modes(_env("FACEQ_MODES", ",".join(d.modes))),
            min_face=_int("FACEQ_MIN_FACE", d.min_face),
            detect_score=_float("FACEQ_DETECT_SCORE", d.detect_score),
            detect_max_side=_int("FACEQ_DETECT_MAX_SIDE", d.detect_max_side, minimum=64),
            detect_path=_choice("FACEQ_DETECT_PATH", d.detect_path, ("coarse", "full")),
            detect_coarse_min_face=_float("FACEQ_DETECT_COARSE_MIN_FACE", d.detect_coarse_min_face),
            detect_engine=_choice("FACEQ_DETECT_ENGINE", d.detect_engine, ("onnxruntime", "opencv")),
            detect_threads=_int("FACEQ_DETECT_THREADS", d.detect_threads, minimum=0),
            model_arch=model_arch,
            model_seed=_int("FACEQ_MODEL_SEED", d.model_seed, minimum=0),
            device=_env("FACEQ_DEVICE", d.device),
            detect_device=_env("FACEQ_DETECT_DEVICE") or None,
            precision=_env("FACEQ_PRECISION", d.precision),
            inference=_env("FACEQ_INFERENCE", d.inference),
            max_batch=_int("FACEQ_MAX_BATCH", d.max_batch),
            max_delay_ms=_float("FACEQ_MAX_DELAY_MS", d.max_delay_ms),
            microbatch=_env("FACEQ_MICROBATCH", "1").lower() not in ("0", "false", "no", "off"),
            chunk_size=_int("FACEQ_CHUNK_SIZE", d.chunk_size),
            queue=_env("FACEQ_QUEUE", d.queue),
            io_threads=_int("FACEQ_IO_THREADS", d.io_threads),
            decode_processes=_int("FACEQ_DECODE_PROCESSES", None, minimum=0),
            max_image_bytes=_int("FACEQ_MAX_IMAGE_BYTES", d.max_image_bytes),
            max_image_pixels=_int("FACEQ_MAX_IMAGE_PIXELS", d.max_image_pixels),
            decode_pixel_budget=_int("FACEQ_DECODE_PIXEL_BUDGET", d.decode_pixel_budget),
            item_timeout_seconds=_float("FACEQ_ITEM_TIMEOUT_SECONDS", d.item_timeout_seconds),
            storage_retry_seconds=_float("FACEQ_STORAGE_RETRY_SECONDS", d.storage_retry_seconds),
            redis_retry_seconds=_float("FACEQ_REDIS_RETRY_SECONDS", d.redis_retry_seconds),
            stall_seconds=_float("FACEQ_STALL_SECONDS", d.stall_seconds),
            max_deliveries=_int("FACEQ_MAX_DELIVERIES", d.max_deliveries),
            ledger_retention_seconds=_int("FACEQ_LEDGER_RETENTION_SECONDS", d.ledger_retention_seconds, minimum=60),
            allowed_sources=tuple(s.strip() for s in (_env("FACEQ_ALLOWED_SOURCES") or "").split(",") if s.strip()),
            metrics_port=_port("FACEQ_METRICS_PORT"),
            metrics_address=_env("FACEQ_METRICS_ADDRESS", d.metrics_address),
            thresholds=TrustThresholds.from_env(),
        )


def default_concurrency(device: str) -> int:
    """Chunk tasks a worker runs at once unless told (``python -m faceq.workers --concurrency``).

    A GPU: 4, so that while one chunk is on the device the next is being read and the last
    written. The CPU: 3. With decoding children, two tasks often sit in their serial parts
    (ledger, device, rows, Parquet) together, and the children then idle. A third keeps them
    fed: 1.64 → 1.78 cores of 2, 0.90 → 0.94 of a DataLoader (bench/RESULTS.md).
    """
    return 4 if device.startswith("cuda") else 3


# Every environment variable faceq reads (besides the standard AWS_* ones). The compose test
# checks docker-compose.yml against this list so the two cannot drift apart.
ENV_VARS = (
    "FACEQ_BROKER_URL",
    "FACEQ_STORAGE_URL",
    "FACEQ_S3_ENDPOINT_URL",
    "FACEQ_MODEL_WEIGHTS",
    "FACEQ_DETECTOR_WEIGHTS",
    "FACEQ_MODEL_DIR",
    "FACEQ_MODES",
    "FACEQ_MIN_FACE",
    "FACEQ_DETECT_SCORE",
    "FACEQ_DETECT_MAX_SIDE",
    "FACEQ_DETECT_PATH",
    "FACEQ_DETECT_COARSE_MIN_FACE",
    "FACEQ_DETECT_ENGINE",
    "FACEQ_DETECT_THREADS",
    "FACEQ_MODEL_ARCH",
    "FACEQ_MODEL_SEED",
    "FACEQ_DEVICE",
    "FACEQ_DETECT_DEVICE",
    "FACEQ_PRECISION",
    "FACEQ_INFERENCE",
    "FACEQ_MAX_BATCH",
    "FACEQ_MAX_DELAY_MS",
    "FACEQ_MICROBATCH",
    "FACEQ_CHUNK_SIZE",
    "FACEQ_QUEUE",
    "FACEQ_IO_THREADS",
    "FACEQ_DECODE_PROCESSES",
    "FACEQ_S3_READER",
    "FACEQ_MAX_IMAGE_BYTES",
    "FACEQ_MAX_IMAGE_PIXELS",
    "FACEQ_DECODE_PIXEL_BUDGET",
    "FACEQ_ITEM_TIMEOUT_SECONDS",
    "FACEQ_STORAGE_RETRY_SECONDS",
    "FACEQ_REDIS_RETRY_SECONDS",
    "FACEQ_STALL_SECONDS",
    "FACEQ_MAX_DELIVERIES",
    "FACEQ_LEDGER_RETENTION_SECONDS",
    "FACEQ_ALLOWED_SOURCES",
    "FACEQ_METRICS_PORT",
    "FACEQ_METRICS_ADDRESS",
    *(f"FACEQ_{name.upper()}" for name in THRESHOLD_NAMES),
    "FACEQ_HEARTBEAT_SECONDS",
    # read by celeryconfig.py (Celery settings live there)
    "FACEQ_VISIBILITY_TIMEOUT",
)
