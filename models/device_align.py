"""Faces aligned on the device: ``cv2.warpAffine`` of models/align.py as ``grid_sample``.

The transform is the CPU path's own (``similarity_transform``, float64, from the same
landmarks), so only the sampling moves. OpenCV 5's ``warpAffine`` (INTER_LINEAR, constant
black border) samples in floating point: each output pixel is the bilinear mix of the four
source pixels around ``M⁻¹·(x, y)``, a neighbour outside the photo counting as 0, rounded half
to even. That is ``grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False)``
on pixel centres, then ``round``: tested equal to OpenCV but for rare ±1 at rounding ties.
OpenCV 4 (the floor pyproject allows) samples in fixed point instead: coordinates in 1/1024 px
rounded to 1/32 px (``warpAffine``'s AB_BITS, INTER_BITS), integer weights, sums rounded half
up; with it the same arithmetic runs here as integer tensor ops, so the device path matches
the CPU path of whichever OpenCV the worker has.

All faces of one photo are sampled in one call (their grids stacked along the height), from
the photo as it lies on the device, and land in the caller's rows of an (M, 112, 112, 3) uint8
BGR batch: the layout the engine's input takes (workers/engine.py).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from faceq.models.align import ARCFACE_TEMPLATE, INPUT_SIZE, similarity_transform


FIXED_POINT = int(cv2.__version__.split(".")[0]) < 5  # OpenCV 4's warpAffine: fixed-point sampling
_AB_BITS, _INTER_BITS = 10, 5  # OpenCV 4: coordinates in 1/1024 px, rounded to 1/32 px
_STEPS = 1 << _INTER_BITS


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """``cv2.invertAffineTransform``'s arithmetic (what warpAffine does to its matrix)."""
    (a, b, c), (d, e, f) = np.asarray(matrix, np.float64)
    det = a * e - b * d
    det = 1.0 / det if det != 0 else 0.0
    a11, a22, a12, a21 = e * det, a * det, -b * det, -d * det
    return np.array([[a11, a12, -a11 * c - a12 * f], [a21, a22, -a21 * c - a22 * f]])


def _inverse_maps(landmarks: np.ndarray) -> list[np.ndarray]:
    return [invert_affine(similarity_transform(np.asarray(points, np.float32), ARCFACE_TEMPLATE))
            for points in landmarks]


def sampling_grid(landmarks: np.ndarray, height: int, width: int) -> torch.Tensor:
    """(F, 112, 112, 2) ``grid_sample`` coordinates that warp each face's landmarks (F, 5, 2)
    onto the ArcFace template, in a ``height`` × ``width`` photo (OpenCV 5's float sampling)."""
    grids = []
    pixels = np.mgrid[0:INPUT_SIZE, 0:INPUT_SIZE][::-1].reshape(2, -1).astype(np.float64)  # (x, y) per pixel
    for inverse in _inverse_maps(landmarks):
        source = inverse[:, :2] @ pixels + inverse[:, 2:]  # (2, 112·112) source pixel coordinates
        normalised = (2 * source + 1) / np.array([[width], [height]]) - 1
        grids.append(normalised.T.reshape(INPUT_SIZE, INPUT_SIZE, 2))
    return torch.from_numpy(np.stack(grids).astype(np.float32))


def fixed_point_coordinates(landmarks: np.ndarray) -> np.ndarray:
    """(F, 2, 112, 112) source coordinates in 1/32 px as OpenCV 4's warpAffine computes them:
    per row a fixed-point start (1/1024 px, rounded half to even like ``saturate_cast<int>``),
    per column a fixed-point step, summed, then shifted down to 1/32 px with rounding."""
    scale = 1 << _AB_BITS
    round_delta = scale >> (_INTER_BITS + 1)
    steps = np.arange(INPUT_SIZE, dtype=np.float64)
    maps = []
    for inverse in _inverse_maps(landmarks):
        axes = []
        for row in inverse:  # x, then y
            per_column = np.rint(row[0] * steps * scale).astype(np.int64)
            per_row = np.rint((row[1] * steps + row[2]) * scale).astype(np.int64) + round_delta
            axes.append((per_row[:, None] + per_column[None, :]) >> (_AB_BITS - _INTER_BITS))
        maps.append(np.stack(axes))
    return np.stack(maps)


def _warp_fixed_point(photo_bgr: torch.Tensor, landmarks: np.ndarray) -> torch.Tensor:
    """(3, F·112, 112) uint8: OpenCV 4's bilinear remap in integers. Weights are products of
    1/32 steps (exact in its 15-bit coefficient table), a neighbour outside the photo is 0,
    and the sum is rounded half up."""
    height, width = photo_bgr.shape[-2:]
    coordinates = torch.from_numpy(fixed_point_coordinates(landmarks)).to(photo_bgr.device)
    x, y = coordinates[:, 0].flatten(0, 1), coordinates[:, 1].flatten(0, 1)  # (F·112, 112) in 1/32 px
    x0, y0, fx, fy = x >> _INTER_BITS, y >> _INTER_BITS, x & (_STEPS - 1), y & (_STEPS - 1)
    total = torch.zeros((3, *x.shape), dtype=torch.int64, device=photo_bgr.device)
    for dy, wy in ((0, _STEPS - fy), (1, fy)):
        for dx, wx in ((0, _STEPS - fx), (1, fx)):
            xs, ys = x0 + dx, y0 + dy
            inside = (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
            values = photo_bgr[:, ys.clamp(0, height - 1), xs.clamp(0, width - 1)].to(torch.int64)
            total += values * (wx * wy * inside)
    half = _STEPS * _STEPS // 2
    return ((total + half) >> (2 * _INTER_BITS)).clamp_(0, 255).to(torch.uint8)


def align_into(photo_bgr: torch.Tensor, landmarks: np.ndarray, out: torch.Tensor) -> torch.Tensor:
    """Warp the faces of one photo ((3, H, W) uint8 BGR on the device; landmarks (F, 5, 2) in its
    pixels) into ``out`` ((F, 112, 112, 3) uint8, e.g. rows of the engine's input batch)."""
    if len(landmarks) == 0:
        return out
    height, width = photo_bgr.shape[-2:]
    if FIXED_POINT:
        warped = _warp_fixed_point(photo_bgr, landmarks)
    else:
        grid = sampling_grid(landmarks, height, width).to(photo_bgr.device).flatten(0, 1)[None]  # (1, F·112, 112, 2)
        warped = F.grid_sample(photo_bgr[None].float(), grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False)[0].round_().clamp_(0, 255).to(torch.uint8)
    faces = warped.unflatten(1, (len(landmarks), INPUT_SIZE))
    out.copy_(faces.permute(1, 2, 3, 0))  # (3, F, 112, 112) → (F, 112, 112, 3)
    return out
