"""Detect mode, coarse to fine: the full search's faces, landmarks and aligned crops, with less work.

The full path (``faceq.models.preprocess.detect_faces``) shrinks the decoded photo with
``INTER_AREA`` to the search size (longest side ``FaceDetector.max_side``, 1280) and runs YuNet on
all of it. Here, from the same decoded photo:

1. **Coarse pass**: the photo reduced to ``coarse_scale`` (a box filter by a whole factor, cheap,
   then a bilinear step); YuNet with a low score threshold (``COARSE_SCORE``) finds candidate faces.
2. **Fine pass**, per candidate: a region of the *search image* around it — ``REACH`` search
   pixels from the face's centre on every side (at least ``BOX_MARGIN`` beyond its box), its
   corners on YuNet's 32-pixel stride grid and on whole photo pixels of the ``INTER_AREA``
   resize — is resized from the photo's pixels of that region only, with the full search's
   factor. Those pixels are exactly the full search's pixels, YuNet sees them on the same stride
   grid, and nothing its outputs for the face depend on lies outside the region, so it reports the
   same box and landmarks (to float rounding). YuNet's score threshold there is the full search's:
   it decides what is a face.

   Why ``REACH`` is 256: the region's edges are zero padding to YuNet where the full search had
   photo pixels, and every output of an anchor depends on input from 195 px left/above to
   225 px right/below of it (measured: the input gradient of each head at every stride, through
   the top-down neck, which brings stride-32 features to every level); the winning anchor sits
   within one stride-32 cell of the face's centre. A margin counted from the face's *box* (the
   first version: 128 px) is short of that for small faces: landmarks moved by 0.46 search px
   (1.2 photo px, cos 0.957) for a 22-px face in a 4000×3000 photo and by up to 0.2 for the
   four-faces photo. Measured from the centre, the worst landmark/box difference over the parity
   photos is 5.1 px at 160, 1.0 at 208, 0.003 at 224, 3e-4 at 240 and 6e-5 at 256.
3. **Align** from the region's pixels, with the full path's transform moved by the region's offset.

Why one full decode and not libjpeg's DCT scaling plus lossless region crops (this module's first
version): a crop entropy-decodes the whole photo again, so a 1/2-scale decode (7.0 ms) and a region
crop (13.5 ms) cost twice one full decode (9.6 ms, simplejpeg, 1920×2400), and the box-filtered
coarse image (1.6 ms) may have any size, not only n/8. The full path's own decoder also means
every format, EXIF orientation and error code is the full path's.

How the coarse size is chosen (``coarse_scale``): YuNet finds a face only above a minimum size
in the image it searches. Measured (``python -m bench recall``; one small head pasted on noise,
1920×2400, and the faces at the edge of what the full search finds, heads of 38–46 photo px): of
18 such faces the full search found, a coarse pass at 0.75 of the search scale kept 14 at
threshold 0.3 or 0.1 and 18 at 0.05 (which tripled the candidates on real photos: a fine pass
each); at 0.875 it kept 18 at 0.1, and lost one of 3 at 40 px at 0.2. So ``RECALL_RATIO`` is
0.875 and ``COARSE_SCORE`` 0.1. On real portraits that threshold also passes hair, hands and
shoulders (0.1–0.33, boxes of 24–650 coarse px), whose regions merged into a second full search;
a face the full search finds scores nearly as high on the coarse image (≥ 0.88 from 28 coarse px
on the recall photos and the parity set), so candidates from ``LARGE_CANDIDATE_PX`` need
``COARSE_SCORE_LARGE`` (0.5). With both, the recall run (144 photos, 83 faces found by the full
search, heads of 32–320 px) lost none, and the path costs 0.88 of the full path's CPU on one-face
portraits (bench/RESULTS.md) — the full path stays the default: a photo with several faces pays
for the coarse pass and for regions that may cover most of it. A photo the full search does not
shrink takes the full path (``None``). A job whose faces are known to be large (portraits,
check-ins) sets ``min_face_px`` (``FACEQ_DETECT_COARSE_MIN_FACE``, head width in photo pixels):
the coarse scale need only make such a face ``COARSE_FACE_PX`` wide — 1/8 for heads from 160 px —
and that is where this path saves (half the CPU); smaller faces may then be missed: a setting,
never the default, since accuracy is not traded by default.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from faceq.models.align import ARCFACE_TEMPLATE, INPUT_SIZE, align_face, similarity_transform
from faceq.models.detect import Detection, FaceDetector, usable_faces
from faceq.models.preprocess import FaceCrop, PreparedImage

# Candidates only: the fine pass applies the full search's threshold (see the docstring). Small candidates
# (below LARGE_CANDIDATE_PX coarse px) from COARSE_SCORE, larger ones from COARSE_SCORE_LARGE
COARSE_SCORE = 0.1
COARSE_SCORE_LARGE = 0.5
LARGE_CANDIDATE_PX = 24
RECALL_RATIO = 0.875  # coarse scale / search scale that keeps every face the full search finds (see the docstring)
COARSE_FACE_PX = 20  # head width (coarse pixels) from which the coarse pass finds a face
REACH = 256  # search px from a face's centre that YuNet's outputs for it depend on (see the docstring)
BOX_MARGIN = 32  # search px kept around a face box larger than REACH allows for
STRIDE = 32  # YuNet's coarsest stride: regions start on its grid
MAX_GRID = 256  # a resize whose whole-pixel grid is coarser than this: take the full path
MAX_COARSE_SHARE = 0.9  # a coarse scale this close to the search scale saves nothing: take the full path
COARSE_SLACK = 0.1  # share of a coarse box's size it may be off by (a face cut off is searched again)


@dataclass
class Region:
    """A rectangle of the search image (x0, y0, x1, y1) and the photo rectangle it is resized from."""
    search: tuple[int, int, int, int]
    photo: tuple[int, int, int, int]


@dataclass
class StageSeconds:
    """Thread CPU seconds per stage of one photo (faceq.workers.stage_cpu's coarse-path stages)."""
    coarse_resize: float = 0.0
    coarse_detect: float = 0.0
    fine_detect: float = 0.0
    align: float = 0.0
    _mark: float = field(default_factory=time.thread_time, repr=False)

    def lap(self, stage: str) -> None:
        now = time.thread_time()
        setattr(self, stage, getattr(self, stage) + now - self._mark)
        self._mark = now

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


def coarse_scale(search_scale: float, min_face_px: float = 0) -> float:
    """The coarse pass's scale: the smallest that still finds every face the full search finds
    (or, with ``min_face_px``, every face at least that wide)."""
    needed = search_scale * RECALL_RATIO
    if min_face_px > 0:
        needed = min(needed, COARSE_FACE_PX / min_face_px)
    return needed


def coarse_image(photo: np.ndarray, scale: float) -> np.ndarray:
    """``photo`` at ``scale``: box-filtered by the largest whole factor it allows (OpenCV's fast
    ``INTER_AREA`` path), then bilinear for the rest (a ratio of at least 1/2: little aliasing)."""
    height, width = photo.shape[:2]
    factor = max(1, int(1 / scale))
    if factor > 1:  # whole multiples of the factor: OpenCV's integer-ratio fast path
        photo = cv2.resize(photo[:height // factor * factor, :width // factor * factor],
                           (width // factor, height // factor), interpolation=cv2.INTER_AREA)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if (photo.shape[1], photo.shape[0]) == size:
        return photo
    return cv2.resize(photo, size, interpolation=cv2.INTER_LINEAR)


class CoarseToFineDetector:
    """The full search's detections and crops, from a coarse pass and full-resolution regions."""

    def __init__(self, detector: FaceDetector, min_face_px: float = 0):
        self.detector = detector
        self.min_face_px = min_face_px
        unlimited = 1 << 30  # both run on images already at the size they are meant to search
        self.coarse = detector.like(score_threshold=COARSE_SCORE, max_side=unlimited)
        self.fine = detector.like(max_side=unlimited)

    def prepare(self, photo: np.ndarray, min_face: float = 10,
                seconds: StageSeconds | None = None) -> PreparedImage | None:
        """The decoded photo's faces as the full path (``detect_faces``) finds and aligns them;
        ``None`` when this photo takes the full path (too small to gain)."""
        seconds = seconds or StageSeconds()
        height, width = photo.shape[:2]
        scale = min(1.0, self.detector.max_side / max(height, width))  # FaceDetector.detect's
        search_size = (width, height) if scale == 1.0 else (round(width * scale), round(height * scale))
        reduced = coarse_scale(scale, self.min_face_px)
        grid = (_grid(width, search_size[0]), _grid(height, search_size[1]))
        if scale == 1.0 or reduced >= scale * MAX_COARSE_SHARE or max(grid) > MAX_GRID:
            return None
        coarse = coarse_image(photo, reduced)
        seconds.lap("coarse_resize")
        candidates = self.candidates(coarse)
        seconds.lap("coarse_detect")
        to_search = (search_size[0] / coarse.shape[1], search_size[1] / coarse.shape[0])
        regions = _merge([_region(face.bbox, to_search, search_size, (width, height), grid) for face in candidates])
        detections: list[tuple[Detection, Region]] = []
        pending, retried = list(regions), set()
        while pending:
            region = pending.pop(0)
            kept, cut = self._fine_faces(_pixels(photo, region), region, scale, search_size)
            detections += [(face, region) for face in kept if not _seen(face, detections)]
            for box in cut:  # a face off its coarse box: once more, with its whole context around it
                key = tuple(np.round(box).astype(int))
                if key in retried:  # still cut in a region of its own: never lose it, search it all
                    return None
                retried.add(key)
                pending.append(_region(box, (1.0, 1.0), search_size, (width, height), grid, slack=0))
        seconds.lap("fine_detect")
        crops = []
        for face in usable_faces([face for face, _ in detections], min_face):
            region = next(r for f, r in detections if f is face)
            crop = _align_in_region(_pixels(photo, region), region, face.landmarks, (width, height))
            if crop is None:  # the crop reaches past the region: the full path's own alignment
                crop = align_face(photo, face.landmarks)
            crops.append(FaceCrop(crop, face.bbox.tolist(), face.landmarks.reshape(-1).tolist()))
        seconds.lap("align")
        return PreparedImage(crops, face_count=len(crops))

    def candidates(self, coarse: np.ndarray) -> list[Detection]:
        """The coarse pass's faces worth a fine pass: every small one from ``COARSE_SCORE`` (faces at
        the edge of what the full search finds score lowest here), larger ones from ``COARSE_SCORE_LARGE``
        (a face the full search finds scores nearly as high on the coarse image: hair, hands and
        shoulders at 0.1–0.33 would otherwise each cost a fine pass)."""
        return [face for face in self.coarse.detect(coarse)
                if face.score >= COARSE_SCORE_LARGE or max(face.width, face.height) < LARGE_CANDIDATE_PX]

    def _fine_faces(self, pixels: np.ndarray, region: Region, scale: float,
                    search_size: tuple[int, int]) -> tuple[list[Detection], list[np.ndarray]]:
        """YuNet on the region at the search's resolution: the faces with their full context in
        it, in photo coordinates computed as FaceDetector.detect does, and the search-image boxes
        of faces the region cuts into (to be searched again in a region of their own)."""
        x0, y0, x1, y1 = region.search
        search = pixels if scale == 1.0 else cv2.resize(pixels, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
        kept, cut = [], []
        for face in self.fine.detect(search):
            bx0, by0, bx1, by1 = face.bbox + [x0, y0, x0, y0]
            cx, cy, hx, hy = (bx0 + bx1) / 2, (by0 + by1) / 2, _half_extent(bx1 - bx0), _half_extent(by1 - by0)
            inside = ((x0 == 0 or cx - hx >= x0) and (y0 == 0 or cy - hy >= y0)
                      and (x1 == search_size[0] or cx + hx <= x1) and (y1 == search_size[1] or cy + hy <= y1))
            if not inside:
                cut.append(np.array([bx0, by0, bx1, by1]))
                continue
            offset = np.array([x0, y0], dtype=np.float32)
            factor = np.float32(scale)
            kept.append(Detection(((face.bbox + np.tile(offset, 2)) / factor),
                                  ((face.landmarks + offset) / factor), face.score))
        return kept, cut


def _half_extent(size: float) -> float:
    """Search px from a face's centre to the edge of a region that gives the full search's result."""
    return max(REACH, size / 2 + BOX_MARGIN)


def _grid(photo: int, search: int) -> int:
    """Search pixels between region corners that fall on whole photo pixels and on YuNet's stride."""
    step = search // math.gcd(photo, search)
    return step * STRIDE // math.gcd(step, STRIDE)


def _region(bbox: np.ndarray, coarse_scale: tuple[float, float], search_size: tuple[int, int],
            photo_size: tuple[int, int], grid: tuple[int, int], slack: float = COARSE_SLACK) -> Region:
    """The search-image region for a face box (in an image ``coarse_scale`` times smaller)."""
    corners = []
    for axis in (0, 1):
        low, high = bbox[axis] * coarse_scale[axis], bbox[axis + 2] * coarse_scale[axis]
        centre, half = (low + high) / 2, _half_extent(high - low) + slack * (high - low)
        low, high = centre - half, centre + half
        step = grid[axis]
        corners.append((max(0, int(low // step) * step), min(search_size[axis], math.ceil(high / step) * step)))
    (x0, x1), (y0, y1) = corners
    return _with_photo((x0, y0, x1, y1), search_size, photo_size)


def _with_photo(search: tuple[int, int, int, int], search_size, photo_size) -> Region:
    fx, fy = photo_size[0] / search_size[0], photo_size[1] / search_size[1]
    x0, y0, x1, y1 = search
    photo = tuple(round(v * f) for v, f in ((x0, fx), (y0, fy), (x1, fx), (y1, fy)))
    return Region(search, photo)


def _seen(face: Detection, found: list[tuple[Detection, Region]]) -> bool:
    """The same face found in an earlier region (its box centre inside one already kept)."""
    cx, cy = (face.bbox[0] + face.bbox[2]) / 2, (face.bbox[1] + face.bbox[3]) / 2
    return any(f.bbox[0] <= cx <= f.bbox[2] and f.bbox[1] <= cy <= f.bbox[3] for f, _ in found)


def _merge(regions: list[Region]) -> list[Region]:
    """Overlapping regions as one (a face's context may hold another face)."""
    merged = list(regions)
    changed = True
    while changed:
        changed = False
        for i in range(len(merged)):
            for j in range(i + 1, len(merged)):
                a, b = merged[i].search, merged[j].search
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    union = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                    fx = (merged[i].photo[2] - merged[i].photo[0]) / (a[2] - a[0])
                    fy = (merged[i].photo[3] - merged[i].photo[1]) / (a[3] - a[1])
                    photo = (round(union[0] * fx), round(union[1] * fy), round(union[2] * fx), round(union[3] * fy))
                    merged[i] = Region(union, photo)
                    del merged[j]
                    changed = True
                    break
            if changed:
                break
    return merged


def _pixels(photo: np.ndarray, region: Region) -> np.ndarray:
    x0, y0, x1, y1 = region.photo
    return photo[y0:y1, x0:x1]


def _align_in_region(pixels: np.ndarray, region: Region, landmarks: np.ndarray,
                     photo_size: tuple[int, int]) -> np.ndarray | None:
    """``faceq.models.align.align_face`` on the whole photo, computed from the region's pixels: the same
    inverse map (OpenCV's own inversion), moved by the region's offset. ``None`` when the crop
    samples photo pixels outside the region."""
    matrix = similarity_transform(np.asarray(landmarks, dtype=np.float32).reshape(5, 2), ARCFACE_TEMPLATE)
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0], [INPUT_SIZE, 0], [0, INPUT_SIZE], [INPUT_SIZE, INPUT_SIZE]], dtype=np.float64)
    sampled = corners @ inverse[:, :2].T + inverse[:, 2]
    x0, y0, x1, y1 = region.photo
    (low_x, low_y), (high_x, high_y) = sampled.min(axis=0), sampled.max(axis=0)
    if ((x0 > 0 and low_x - 2 < x0) or (y0 > 0 and low_y - 2 < y0)
            or (x1 < photo_size[0] and high_x + 2 > x1) or (y1 < photo_size[1] and high_y + 2 > y1)):
        return None
    inverse[:, 2] -= (x0, y0)
    return cv2.warpAffine(pixels, inverse, (INPUT_SIZE, INPUT_SIZE), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)

