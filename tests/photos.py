"""Real photos that ship inside scikit-image (no download): a portrait and a cat."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def astronaut_bgr() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])


def cat_bgr() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.chelsea()[:, :, ::-1])


def two_people_bgr() -> np.ndarray:
    """The portrait twice, the second at 60 % size: two faces of different areas."""
    big = astronaut_bgr()
    small = cv2.resize(big, None, fx=0.6, fy=0.6)
    canvas = np.zeros((big.shape[0], big.shape[1] + small.shape[1], 3), dtype=np.uint8)
    canvas[:, : big.shape[1]] = big
    canvas[: small.shape[0], big.shape[1] :] = small
    return canvas


def write_photos(root: Path) -> dict[str, np.ndarray]:
    photos = {"portrait.png": astronaut_bgr(), "cat.jpg": cat_bgr(), "two-people.png": two_people_bgr()}
    root.mkdir(parents=True, exist_ok=True)
    for name, image in photos.items():
        cv2.imwrite(str(root / name), image)
    return photos
