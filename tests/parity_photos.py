"""Real photos for the device path's parity tests: ones that ship inside installed packages."""

from __future__ import annotations

import cv2
import numpy as np

from tests.photos import astronaut_bgr


def grace_hopper_bgr() -> np.ndarray:
    from matplotlib import cbook

    return cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))


def tiled_faces_bgr() -> np.ndarray:
    """Four faces of three sizes on one canvas (black between them)."""
    astronaut, hopper = astronaut_bgr(), grace_hopper_bgr()
    canvas = np.zeros((900, 1300, 3), dtype=np.uint8)
    canvas[:512, :512] = astronaut
    canvas[:600, 520:1032] = hopper
    small = cv2.resize(hopper, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    canvas[600:900, 1040:1296] = small
    canvas[520:776, 0:256] = cv2.resize(astronaut, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    return canvas


def large_photo_bgr(height: int = 2400, width: int = 1920) -> np.ndarray:
    """Grace Hopper upscaled to a camera's size: searched at reduced size (``max_side``)."""
    return cv2.resize(grace_hopper_bgr(), (width, height), interpolation=cv2.INTER_CUBIC)


def parity_photos() -> dict[str, np.ndarray]:
    astronaut, hopper = astronaut_bgr(), grace_hopper_bgr()
    return {
        "astronaut": astronaut,
        "grace_hopper": hopper,
        "astronaut_mirrored": np.ascontiguousarray(astronaut[:, ::-1]),
        "grace_hopper_mirrored": np.ascontiguousarray(hopper[:, ::-1]),
        "tiled": tiled_faces_bgr(),
        "large_1920x2400": large_photo_bgr(),
    }
