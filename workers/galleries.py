"""Galleries resident on the worker's device: loaded once per version, matched per chunk.

1:1 similarity to the claimed employee and 1:N ranking (similarity × candidate quality,
the seed's rule) come from one matrix product of the chunk's embeddings with the
gallery's templates, on the device. A 100,000-identity gallery is 200 MB of fp32.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from faceq.gallery import Gallery, GalleryStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Matches:
    claimed_similarity: np.ndarray  # (n,) float32, NaN where the claimed id is not enrolled
    top_ids: list[list[str]]  # (n, k) best candidates, by similarity × quality
    top_scores: np.ndarray  # (n, k) float32
    top_similarities: np.ndarray  # (n, k) float32


class DeviceGallery:
    def __init__(self, gallery: Gallery, device: torch.device):
        self.gallery = gallery
        self.device = device
        self.templates = torch.from_numpy(gallery.templates).to(device)
        self.quality = torch.from_numpy(gallery.mean_quality).to(device)
        self.index = gallery.index()

    @torch.inference_mode()
    def match(self, embeddings: np.ndarray, claimed: list[str | None], top_k: int) -> Matches:
        similarity = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32)).to(self.device)
        similarity = similarity @ self.templates.T  # (n, G): the one matrix product
        rows = torch.arange(len(claimed), device=self.device)
        columns = torch.tensor([self.index.get(c, -1) if c is not None else -1 for c in claimed], device=self.device)
        claimed_similarity = torch.where(columns >= 0, similarity[rows, columns.clamp(min=0)], torch.nan)
        k = min(max(top_k, 1), len(self.gallery.employee_ids))
        top_scores, top_index = (similarity * self.quality).topk(k, dim=1)
        top_similarities = similarity.gather(1, top_index)
        ids = self.gallery.employee_ids
        return Matches(
            claimed_similarity=claimed_similarity.cpu().numpy(),
            top_ids=[[ids[j] for j in row] for row in top_index.cpu().tolist()],
            top_scores=top_scores.cpu().numpy(),
            top_similarities=top_similarities.cpu().numpy(),
        )


class GalleryCache:
    """The few most recently used gallery versions, resident on the device."""

    def __init__(self, store: GalleryStore, device: torch.device, capacity: int = 2):
        self.store = store
        self.device = device
        self.capacity = capacity
        self._galleries: OrderedDict[tuple[str, int], DeviceGallery] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0

    def get(self, name: str, version: int) -> DeviceGallery:
        with self._lock:
            key = (name, version)
            if key not in self._galleries:
                self._galleries[key] = DeviceGallery(self.store.load(name, version), self.device)
                self.loads += 1
                log.info("gallery %s@v%d resident on %s (%d identities)", name, version, self.device,
                         len(self._galleries[key].gallery.employee_ids))
                while len(self._galleries) > self.capacity:
                    self._galleries.popitem(last=False)
            self._galleries.move_to_end(key)
            return self._galleries[key]
