"""YuNet's outputs → faces, as OpenCV's ``FaceDetectorYN`` post-processes them, for a batch.

Per anchor (one per cell of each stride's grid, over the padded input): score
``sqrt(clamp(cls) · clamp(obj))``, kept at ``score ≥ threshold``; box centre ``(col + dx,
row + dy) · stride``, size ``exp(dw, dh) · stride``; landmarks ``(col + kx, row + ky) · stride``.
Then OpenCV's ``NMSBoxes`` on the boxes truncated to integers (``Rect2i(int(x), …)``): scores
``> threshold``, a stable sort by score, the first ``top_k``, greedy suppression at IoU
``> nms_threshold``. Faces come out as OpenCV gives them: rows of 15 floats (x, y, w, h, five
landmarks, score), best first. Everything up to the score threshold runs on the tensors'
device; the suppression, over a few dozen candidates per face, on the host.
"""

from __future__ import annotations

import torch

from faceq.models.yunet_torch import STRIDES


def _anchors(pad_h: int, pad_w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(cells, 2) grid positions (col, row) and (cells,) strides, stride 8 first, row-major."""
    positions, strides = [], []
    for stride in STRIDES:
        rows, cols = pad_h // stride, pad_w // stride
        r, c = torch.meshgrid(torch.arange(rows, device=device), torch.arange(cols, device=device), indexing="ij")
        positions.append(torch.stack([c.reshape(-1), r.reshape(-1)], dim=1).float())
        strides.append(torch.full((rows * cols,), float(stride), device=device))
    return torch.cat(positions), torch.cat(strides)


def decode(outputs: dict[str, list[torch.Tensor]], pad_h: int, pad_w: int) -> torch.Tensor:
    """(N, cells, 15) candidate faces for every anchor: x, y, w, h, 10 landmark coordinates, score."""
    cls, obj, bbox, kps = (torch.cat(outputs[name], dim=1) for name in ("cls", "obj", "bbox", "kps"))
    position, stride = _anchors(pad_h, pad_w, cls.device)
    stride = stride[:, None]
    score = torch.sqrt(cls.clamp(0, 1) * obj.clamp(0, 1))
    centre = (position + bbox[..., :2]) * stride
    size = torch.exp(bbox[..., 2:]) * stride
    corner = centre - size / 2
    landmarks = (kps.unflatten(-1, (5, 2)) + position[:, None, :]) * stride[..., None]
    return torch.cat([corner, size, landmarks.flatten(-2), score], dim=-1)


def suppress(candidates: torch.Tensor, score_threshold: float, nms_threshold: float, top_k: int) -> torch.Tensor:
    """OpenCV's ``NMSBoxes`` over one image's (K, 15) candidates: the kept rows, best first."""
    if len(candidates) <= 1:  # FaceDetectorYN skips the suppression (and its strict threshold) then
        return candidates
    scores = candidates[:, 14]
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[scores[order] > score_threshold][:top_k]
    boxes = torch.trunc(candidates[order, :4]).double()  # Rect2i(int(x), int(y), int(w), int(h))
    x1, y1 = boxes[:, 0], boxes[:, 1]
    x2, y2 = x1 + boxes[:, 2], y1 + boxes[:, 3]
    area = boxes[:, 2] * boxes[:, 3]
    overlap_w = (torch.minimum(x2[:, None], x2[None]) - torch.maximum(x1[:, None], x1[None])).clamp(min=0)
    overlap_h = (torch.minimum(y2[:, None], y2[None]) - torch.maximum(y1[:, None], y1[None])).clamp(min=0)
    intersection = overlap_w * overlap_h
    union = area[:, None] + area[None] - intersection
    iou = torch.where(union > 0, intersection / union.clamp(min=1e-12), torch.zeros_like(union))
    suppresses = (iou > nms_threshold).cpu().tolist()
    kept: list[int] = []
    for i in range(len(order)):
        if not any(suppresses[i][k] for k in kept):
            kept.append(i)
    return candidates[order[kept]]


def faces_per_image(outputs: dict[str, list[torch.Tensor]], pad_h: int, pad_w: int, score_threshold: float,
                    nms_threshold: float, top_k: int = 5000) -> list[torch.Tensor]:
    """Per image of the batch: its faces, (F, 15) on the host, best first, in the padded input's pixels.

    The candidates above the threshold (a few dozen per face) cross to the host in one transfer for
    the whole batch; the suppression loop runs there."""
    candidates = decode(outputs, pad_h, pad_w)
    keep = candidates[..., 14] >= score_threshold
    counts = keep.sum(dim=1).tolist()
    kept = candidates[keep].cpu()  # image by image, each in anchor order
    return [suppress(part, score_threshold, nms_threshold, top_k) for part in kept.split(counts)]
