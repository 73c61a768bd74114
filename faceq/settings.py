"""Every faceq setting, read once from the environment into one frozen object."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from faceq.errors import ConfigError

DEFAULT_STORAGE_DIR = Path.home() / ".faceq" / "store"


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return default if value is None or value.strip() == "" else value.strip()


def _int(name: str, default: int, minimum: int = 1) -> int:
    raw = _env(name)
    try:
        value = default if raw is None else int(raw)
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


def _modes(raw: str) -> tuple[str, ...]:
    from faceq.jobs import MODES

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
    model_weights: str | None = None
    detector_weights: str | None = None
    modes: tuple[str, ...] = ("crop", "detect")
    min_face: int = 10
    detect_score: float = 0.7
    detect_max_side: int = 1280
    model_arch: str = "ir_se_64"
    model_seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"
    max_batch: int = 64
    max_delay_ms: float = 5.0
    microbatch: bool = True
    chunk_size: int = 256
    queue: str = "faceq"
    io_threads: int = 8
    max_image_bytes: int = 32 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    thresholds: TrustThresholds = field(default_factory=TrustThresholds)

    @classmethod
    def from_env(cls) -> "Settings":
        d = cls()
        return cls(
            broker_url=_env("FACEQ_BROKER_URL", d.broker_url),
            storage_url=_env("FACEQ_STORAGE_URL", d.storage_url),
            s3_endpoint_url=_env("FACEQ_S3_ENDPOINT_URL"),
            model_weights=_env("FACEQ_MODEL_WEIGHTS"),
            detector_weights=_env("FACEQ_DETECTOR_WEIGHTS"),
            modes=_modes(_env("FACEQ_MODES", ",".join(d.modes))),
            min_face=_int("FACEQ_MIN_FACE", d.min_face),
            detect_score=_float("FACEQ_DETECT_SCORE", d.detect_score),
            detect_max_side=_int("FACEQ_DETECT_MAX_SIDE", d.detect_max_side, minimum=64),
            model_arch=_env("FACEQ_MODEL_ARCH", d.model_arch),
            model_seed=_int("FACEQ_MODEL_SEED", d.model_seed, minimum=0),
            device=_env("FACEQ_DEVICE", d.device),
            precision=_env("FACEQ_PRECISION", d.precision),
            max_batch=_int("FACEQ_MAX_BATCH", d.max_batch),
            max_delay_ms=_float("FACEQ_MAX_DELAY_MS", d.max_delay_ms),
            microbatch=_env("FACEQ_MICROBATCH", "1").lower() not in ("0", "false", "no", "off"),
            chunk_size=_int("FACEQ_CHUNK_SIZE", d.chunk_size),
            queue=_env("FACEQ_QUEUE", d.queue),
            io_threads=_int("FACEQ_IO_THREADS", d.io_threads),
            max_image_bytes=_int("FACEQ_MAX_IMAGE_BYTES", d.max_image_bytes),
            max_image_pixels=_int("FACEQ_MAX_IMAGE_PIXELS", d.max_image_pixels),
            thresholds=TrustThresholds.from_env(),
        )


# Every environment variable faceq reads (besides the standard AWS_* ones). The compose test
# checks docker-compose.yml against this list so the two cannot drift apart.
ENV_VARS = (
    "FACEQ_BROKER_URL",
    "FACEQ_STORAGE_URL",
    "FACEQ_S3_ENDPOINT_URL",
    "FACEQ_MODEL_WEIGHTS",
    "FACEQ_DETECTOR_WEIGHTS",
    "FACEQ_MODES",
    "FACEQ_MIN_FACE",
    "FACEQ_DETECT_SCORE",
    "FACEQ_DETECT_MAX_SIDE",
    "FACEQ_MODEL_ARCH",
    "FACEQ_MODEL_SEED",
    "FACEQ_DEVICE",
    "FACEQ_PRECISION",
    "FACEQ_MAX_BATCH",
    "FACEQ_MAX_DELAY_MS",
    "FACEQ_MICROBATCH",
    "FACEQ_CHUNK_SIZE",
    "FACEQ_QUEUE",
    "FACEQ_IO_THREADS",
    "FACEQ_MAX_IMAGE_BYTES",
    "FACEQ_MAX_IMAGE_PIXELS",
    *(f"FACEQ_{name.upper()}" for name in THRESHOLD_NAMES),
    "FACEQ_HEARTBEAT_SECONDS",
    # read by celeryconfig.py (Celery settings live there)
    "FACEQ_CHUNK_MAX_RETRIES",
    "FACEQ_VISIBILITY_TIMEOUT",
)
