"""``python -m bench recall``: which faces the coarse pass keeps, by face size — how the coarse
scale of detect mode's coarse-to-fine path (models/coarse_detect.py) is chosen.

Photos of 1920×2400 with one head (scikit-image's astronaut, cut to the head) pasted at a
random place on blurred noise, ``--per-size`` photos per head width (photo px). For each width:
how many heads the full 1280 search finds (``FaceDetector`` at its threshold); of those, how many
the coarse pass finds (``CoarseToFineDetector.candidates`` on ``coarse_image``) at each ratio of the search
scale, and how many the coarse-to-fine path keeps end to end at its chosen scale (it must keep
them all). Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import sys

import cv2
import numpy as np

WIDTHS = (32, 36, 40, 44, 48, 52, 56, 64, 80, 128, 192, 320)
RATIOS = (0.625, 0.75, 0.875, 1.0)
SIZE = (2400, 1920)


def photo_with_head(head_width: int, seed: int) -> np.ndarray:
    from tests.photos import astronaut_bgr

    rng = np.random.default_rng(seed)
    canvas = cv2.GaussianBlur(rng.integers(60, 200, (*SIZE, 3), dtype=np.uint8), (0, 0), 4)
    head = astronaut_bgr()[20:260, 140:320]
    head = cv2.resize(head, (head_width, round(head_width * head.shape[0] / head.shape[1])),
                      interpolation=cv2.INTER_AREA if head_width < head.shape[1] else cv2.INTER_CUBIC)
    y, x = int(rng.integers(0, SIZE[0] - head.shape[0])), int(rng.integers(0, SIZE[1] - head_width))
    canvas[y:y + head.shape[0], x:x + head_width] = head
    return canvas


def measure(weights: str, engine: str, widths=WIDTHS, ratios=RATIOS, per_size: int = 6) -> dict:
    from faceq.models.coarse_detect import (COARSE_SCORE, COARSE_SCORE_LARGE, LARGE_CANDIDATE_PX, RECALL_RATIO,
                                            CoarseToFineDetector, coarse_image)
    from faceq.models.detect import FaceDetector
    from faceq.models.preprocess import detect_faces

    full = FaceDetector(weights, engine=engine)
    path = CoarseToFineDetector(full)
    search_scale = full.max_side / max(SIZE)
    rows, lost = [], 0
    for width in widths:
        row = {"head_width_px": width, "photos": per_size, "full_search": 0,
               "coarse_pass": {str(r): 0 for r in ratios}, "coarse_to_fine": 0}
        for seed in range(per_size):
            photo = photo_with_head(width, 1000 * width + seed)
            if not detect_faces(photo, full).face_count:
                continue  # too small for the full search: nothing the fast path must find
            row["full_search"] += 1
            for ratio in ratios:
                row["coarse_pass"][str(ratio)] += min(len(path.candidates(coarse_image(photo, search_scale * ratio))), 1)
            fast = path.prepare(photo)
            kept = 1 if fast is None else min(fast.face_count, 1)  # None: it took the full path
            row["coarse_to_fine"] += kept
            lost += 1 - kept
        rows.append(row)
    return {"photo": f"{SIZE[1]}×{SIZE[0]}, one head on blurred noise", "engine": engine,
            "search_scale": round(search_scale, 4), "recall_ratio": RECALL_RATIO,
            "coarse_score": {"small": COARSE_SCORE, "large": COARSE_SCORE_LARGE, "large_from_px": LARGE_CANDIDATE_PX},
            "rows": rows, "faces_the_full_search_found_and_coarse_to_fine_lost": lost}


def main(argv: list[str]) -> int:
    from faceq.modelfiles import installed_detector
    from faceq.settings import default_model_dir

    parser = argparse.ArgumentParser(prog="python -m bench recall", description=__doc__.splitlines()[0])
    parser.add_argument("--detector", default=installed_detector(default_model_dir()),
                        help="YuNet .onnx (default: the one `faceq models fetch` installed)")
    parser.add_argument("--engine", default="onnxruntime", choices=("onnxruntime", "opencv"))
    parser.add_argument("--per-size", type=int, default=6)
    args = parser.parse_args(argv)
    if not args.detector:
        print("no YuNet: pass --detector PATH or run `faceq models fetch --only detector`", file=sys.stderr)
        return 2
    print(json.dumps(measure(args.detector, args.engine, per_size=args.per_size), indent=1))
    return 0
