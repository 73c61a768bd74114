"""Detect mode's two CPU paths on the bench's photos: the same faces, landmarks and embeddings?

Printed beside the pipeline's detect figures (``python -m bench pipeline``): for the photos the
``detect`` and ``detect_coarse`` runs process, the faces each path finds, the largest landmark
difference (photo px) and the smallest embedding cosine (the seeded random-weight IR-SE-64, as
in tests/test_coarse_detect.py: parity of the crops, not of a trained model), in process.
"""

from __future__ import annotations

import numpy as np


def parity(photos: list[bytes], yunet: str) -> dict:
    from faceq.models.coarse_detect import CoarseToFineDetector
    from faceq.models.detect import FaceDetector
    from faceq.models.preprocess import decode_image, detect_faces
    from faceq.models.weights import LoadedModel, load_model
    from faceq.workers.engine import Engine

    unlimited = 1 << 31
    detector = FaceDetector(yunet)
    coarse = CoarseToFineDetector(detector)
    engine = Engine(LoadedModel(load_model(None, "ir_se_64", seed=123).model, "parity", random_weights=True),
                    "cpu", "fp32", max_batch=8)
    faces = {"full": 0, "coarse": 0}
    took_full_path, max_landmark, min_cos = 0, 0.0, 1.0
    for data in photos:
        photo = decode_image(data, unlimited, unlimited)
        full = detect_faces(photo, detector)
        fast = coarse.prepare(photo)
        if fast is None:  # the coarse path declined the photo: the worker runs the full path
            took_full_path += 1
            fast = full
        faces["full"] += full.face_count
        faces["coarse"] += fast.face_count
        pairs = list(zip(full.faces, fast.faces))
        if pairs:
            max_landmark = max(max_landmark, *(float(np.abs(np.subtract(a.landmarks, b.landmarks)).max())
                                               for a, b in pairs))
            a, _ = engine.infer(np.stack([f.pixels for f, _ in pairs]))
            b, _ = engine.infer(np.stack([g.pixels for _, g in pairs]))
            min_cos = min(min_cos, float((a * b).sum(axis=1).min()))
    return {"photos": len(photos), "faces_found": faces, "photos_the_coarse_path_declined": took_full_path,
            "max_landmark_px": round(max_landmark, 5), "min_embedding_cosine": round(min_cos, 6),
            "embedding_model": "ir_se_64, seeded random weights (seed 123)"}
