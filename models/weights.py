"""Build the RTS network with real weights (path or ``s3://``) or seeded random ones.

Every output row carries the returned ``model_id`` so nobody mistakes numbers from random
weights for real scores: ``rts-ir_se_64-sha256:<16 hex>`` or ``rts-ir_se_64-random-seed0``.
``FACEQ_MODEL_ARCH=null`` selects the zero-cost stand-in of ``faceq.models.null`` instead
(``null-standin-NOT-A-MODEL``): no network, no checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from faceq.errors import ModelError
from faceq.modelfiles import model_id_for
from faceq.models.null import NULL_ARCH, NULL_MODEL_ID, STAND_IN_WARNING, NullModel
from faceq.models.rts import ARCHITECTURES, RTSNet

log = logging.getLogger(__name__)

_RANDOM_WEIGHTS_WARNING = (
    "no RTS checkpoint (FACEQ_MODEL_WEIGHTS unset, none fetched): the model runs with SEEDED RANDOM WEIGHTS "
    "(seed %d). Embeddings and quality scores are placeholders; every row says so in model_id=%s. "
    "For real results run `faceq models fetch` (ModelScope's damo/cv_ir_face-recognition-ood_rts "
    "pytorch_model.pt into FACEQ_MODEL_DIR), or point FACEQ_MODEL_WEIGHTS at it (a path or s3:// URI)."
)


@dataclass(frozen=True)
class LoadedModel:
    model: RTSNet | NullModel
    model_id: str
    random_weights: bool
    stand_in: bool = False  # the zero-cost NullModel (FACEQ_MODEL_ARCH=null), not a network


def _read_checkpoint_bytes(source: str, s3_endpoint_url: str | None) -> bytes:
    if source.startswith("s3://"):
        from faceq.storage.store import S3Storage, split_s3_uri

        bucket, _ = split_s3_uri(source)
        return S3Storage(bucket, endpoint_url=s3_endpoint_url).read_uri(source)
    path = Path(source.removeprefix("file://")).expanduser()
    if not path.is_file():
        raise ModelError(f"FACEQ_MODEL_WEIGHTS={source}: no such file")
    return path.read_bytes()


def unwrap_state_dict(checkpoint: object) -> dict[str, torch.Tensor]:
    """Accept a plain state dict, one wrapped in ``state_dict``/``model``, or DataParallel keys."""
    if isinstance(checkpoint, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(checkpoint.get(wrapper), dict):
                checkpoint = checkpoint[wrapper]
                break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ModelError("checkpoint is not a state dict (a mapping of parameter names to tensors)")
    return {k.removeprefix("module."): v for k, v in checkpoint.items()}


def _check_and_load(model: RTSNet, state: dict[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (first: {', '.join(missing[:5])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:5])})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches (first: {'; '.join(mismatched[:3])})")
    if problems:
        raise ModelError(f"checkpoint does not fit RTS {model.arch.name}: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def load_model(
    weights: str | None, arch_name: str = "ir_se_64", seed: int = 0, s3_endpoint_url: str | None = None
) -> LoadedModel:
    """The network in eval mode on the CPU, with weights from ``weights`` or seeded random
    (or, for ``arch_name="null"``, the zero-cost stand-in, which refuses any weights)."""
    if arch_name == NULL_ARCH:
        if weights is not None:
            raise ModelError(f"FACEQ_MODEL_ARCH=null is the zero-cost stand-in and loads no checkpoint, but "
                             f"FACEQ_MODEL_WEIGHTS={weights} is set: unset FACEQ_MODEL_WEIGHTS, or choose a real "
                             f"architecture ({', '.join(ARCHITECTURES)})")
        log.warning(STAND_IN_WARNING, NULL_MODEL_ID)
        return LoadedModel(NullModel(), NULL_MODEL_ID, random_weights=False, stand_in=True)
    if arch_name not in ARCHITECTURES:
        raise ModelError(f"unknown architecture {arch_name!r}; choose from "
                         f"{', '.join([*ARCHITECTURES, NULL_ARCH])} ({NULL_ARCH}: a zero-cost stand-in, not a model)")
    arch = ARCHITECTURES[arch_name]
    if weights is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = RTSNet(arch)
        model_id = f"rts-{arch.name}-random-seed{seed}"
        log.warning(_RANDOM_WEIGHTS_WARNING, seed, model_id)
        return LoadedModel(model.eval(), model_id, random_weights=True)

    raw = _read_checkpoint_bytes(weights, s3_endpoint_url)
    try:
        checkpoint = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"FACEQ_MODEL_WEIGHTS={weights}: not a readable torch checkpoint ({exc})") from exc
    state = unwrap_state_dict(checkpoint)
    plus = state.get("logvar_rts_plus_backbone.0.weight")
    if plus is not None:  # RTS+ head width (ModelScope's `alpha`) comes from the checkpoint
        arch = dataclasses.replace(arch, rts_plus_dim=plus.shape[0])
    model = RTSNet(arch)
    _check_and_load(model, state)
    model_id = model_id_for(arch.name, hashlib.sha256(raw).hexdigest())
    log.info("loaded RTS weights from %s (%s)", weights, model_id)
    return LoadedModel(model.eval(), model_id, random_weights=False)
