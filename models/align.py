"""5-point similarity alignment to the standard ArcFace 112×112 template.

Matches ModelScope's ``align_face`` (after insightface): a least-squares similarity
transform (Umeyama, 1991 — what scikit-image's ``SimilarityTransform.estimate`` computes)
from the five landmarks to the template, then ``cv2.warpAffine`` with its defaults
(bilinear, black border). Written here in numpy rather than pulling in scikit-image for
one function; the parity tests check it against the reference.
"""

from __future__ import annotations

import cv2
import numpy as np

INPUT_SIZE = 112  # the aligned crop's side: the network's input (faceq.models.rts re-exports it)

# ArcFace landmarks for a 96×112 crop (left eye, right eye, nose, left and right mouth
# corner, as they appear in the image), shifted by 8 px to centre them in 112×112.
ARCFACE_TEMPLATE = np.array(
    [[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655], [62.7299, 92.2041]],
    dtype=np.float32,
) + np.array([(INPUT_SIZE - 96) / 2, 0], dtype=np.float32)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2×3 rotation + uniform scale + translation that best maps ``src`` onto ``dst``."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_centered, dst_centered = src - src_mean, dst - dst_mean
    covariance = dst_centered.T @ src_centered / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    reflection = np.eye(2)
    if np.linalg.det(covariance) < 0:
        reflection[1, 1] = -1
    rotation = u @ reflection @ vt
    scale = (singular * np.diag(reflection)).sum() / src_centered.var(axis=0).sum()
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


def align_face(image_bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Warp ``image_bgr`` so the five ``landmarks`` (5×2) land on the ArcFace template."""
    matrix = similarity_transform(np.asarray(landmarks, dtype=np.float32).reshape(5, 2), ARCFACE_TEMPLATE)
    return cv2.warpAffine(image_bgr, matrix, (INPUT_SIZE, INPUT_SIZE))
