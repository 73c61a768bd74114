"""Faces aligned on the device: ``cv2.warpAffine`` of models/align.py as ``grid_sample``.

The transform is the CPU path's own (``similarity_transform``, float64, from the same
landmarks), so only the sampling moves. OpenCV 5's ``warpAffine`` (INTER_LINEAR, constant
black border) samples in floating point: each output pixel is the bilinear mix of the four
source pixels around ``M⁻¹·(x, y)``, a neighbour outside the photo counting as 0, rounded half
to even. That is ``grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False)``
on pixel centres, then ``round``: tested equal to OpenCV but for rare ±1 at rounding ties.

All faces of one photo are sampled in one call (their grids stacked along the height), from
the photo as it lies on the device, and land in the caller's rows of an (M, 112, 112, 3) uint8
BGR batch: the layout the engine's input takes (workers/engine.py).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from faceq.models.align import ARCFACE_TEMPLATE, INPUT_SIZE, similarity_transform


def sampling_grid(landmarks: np.ndarray, height: int, width: int) -> torch.Tensor:
    """(F, 112, 112, 2) ``grid_sample`` coordinates that warp each face's landmarks (F, 5, 2)
    onto the ArcFace template, in a ``height`` × ``width`` photo."""
    grids = []
    pixels = np.mgrid[0:INPUT_SIZE, 0:INPUT_SIZE][::-1].reshape(2, -1).astype(np.float64)  # (x, y) per pixel
    for points in landmarks:
        forward = np.vstack([similarity_transform(np.asarray(points, np.float32), ARCFACE_TEMPLATE), [0, 0, 1]])
        inverse = np.linalg.inv(forward)[:2]
        source = inverse[:, :2] @ pixels + inverse[:, 2:]  # (2, 112·112) source pixel coordinates
        normalised = (2 * source + 1) / np.array([[width], [height]]) - 1
        grids.append(normalised.T.reshape(INPUT_SIZE, INPUT_SIZE, 2))
    return torch.from_numpy(np.stack(grids).astype(np.float32))


def align_into(photo_bgr: torch.Tensor, landmarks: np.ndarray, out: torch.Tensor) -> torch.Tensor:
    """Warp the faces of one photo ((3, H, W) uint8 BGR on the device; landmarks (F, 5, 2) in its
    pixels) into ``out`` ((F, 112, 112, 3) uint8, e.g. rows of the engine's input batch)."""
    if len(landmarks) == 0:
        return out
    height, width = photo_bgr.shape[-2:]
    grid = sampling_grid(landmarks, height, width).to(photo_bgr.device).flatten(0, 1)[None]  # (1, F·112, 112, 2)
    warped = F.grid_sample(photo_bgr[None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    faces = warped[0].round_().clamp_(0, 255).to(torch.uint8).unflatten(1, (len(landmarks), INPUT_SIZE))
    out.copy_(faces.permute(1, 2, 3, 0))  # (3, F, 112, 112) → (F, 112, 112, 3)
    return out
