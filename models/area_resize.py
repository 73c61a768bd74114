"""``cv2.resize(..., interpolation=cv2.INTER_AREA)`` for downscaling, as torch ops on any device.

The detector searches photos larger than ``max_side`` at reduced size (models/detect.py); the
device path must feed YuNet the same pixels, or landmarks move. INTER_AREA is separable: each
output pixel is the area-weighted mean of the source pixels its footprint covers. The weights
are OpenCV's own (``computeResizeAreaTab``: the same cells, the same 1e-3 slivers dropped), as
one (out, in) matrix per axis, applied as two matrix products in float32 and rounded half to
even like ``saturate_cast<uchar>``. Tested against OpenCV: equal but for rare ±1 at rounding ties.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch


@lru_cache(maxsize=64)
def area_weights(source: int, target: int) -> np.ndarray:
    """(target, source) float32: row d holds the weights of output pixel d (a downscale)."""
    scale = source / target
    weights = np.zeros((target, source), dtype=np.float32)
    for d in range(target):
        start, stop = d * scale, d * scale + scale
        cell = min(scale, source - start)
        first, last = math.ceil(start), math.floor(stop)
        last = min(last, source - 1)
        first = min(first, last)
        if first - start > 1e-3:
            weights[d, first - 1] = np.float32((first - start) / cell)
        for s in range(first, last):
            weights[d, s] = np.float32(1.0 / cell)
        if stop - last > 1e-3:
            weights[d, last] = np.float32(min(min(stop - last, 1.0), cell) / cell)
    return weights


@lru_cache(maxsize=64)
def area_taps(source: int, target: int) -> tuple[np.ndarray, np.ndarray]:
    """The weights as (target, taps) source indices and weights: a few taps per output pixel,
    so resizing costs a few multiply-adds per pixel rather than a dense product."""
    weights = area_weights(source, target)
    taps = int((weights > 0).sum(axis=1).max())
    first = np.minimum((weights > 0).argmax(axis=1), source - taps)
    index = first[:, None] + np.arange(taps)[None]
    return index.astype(np.int64), np.take_along_axis(weights, index, axis=1)


@lru_cache(maxsize=64)
def _taps_on(source: int, target: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``area_taps`` as tensors on ``device``, uploaded once per size (photos of a job share sizes)."""
    index, weights = area_taps(source, target)
    return torch.from_numpy(index).to(device), torch.from_numpy(weights).to(device)


def _resize_last_axis(x: torch.Tensor, target: int) -> torch.Tensor:
    index, weights = _taps_on(x.shape[-1], target, x.device)
    gathered = x.index_select(-1, index.reshape(-1))
    return (gathered.unflatten(-1, index.shape) * weights).sum(-1)


def resize_area(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, C, H, W) uint8 → (N, C, height, width) float32 holding uint8 values (YuNet's input)."""
    h, w = images.shape[-2:]
    if (h, w) == (height, width):
        return images.float()
    x = _resize_last_axis(images.float(), width)
    x = _resize_last_axis(x.transpose(-1, -2), height).transpose(-1, -2)
    if h == 2 * height and w == 2 * width:  # OpenCV's 2×2 fast path rounds halves up, not to even
        return x.add_(0.5).floor_().clamp_(0, 255)
    return x.round_().clamp_(0, 255)
