"""A small synthetic sample set for the demo and the tests, including broken files.

The "faces" are drawn (skin-coloured ellipse, eyes, mouth) so no data is downloaded; they
exercise every code path, not the meaning of the scores.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np

# name → how it is broken; each must become an `error` row with its own reason
BROKEN = {
    "broken/empty.jpg": "empty",
    "broken/truncated.jpg": "truncated",
    "broken/notes.txt": "not_an_image",
    "broken/random-bytes.png": "not_an_image",
    "broken/bomb.png": "too_large",
    "broken/bad-crc.png": "corrupt",
}


def draw_face(rng: np.random.Generator, size: int = 160) -> np.ndarray:
    image = np.full((size, size, 3), rng.integers(40, 220, 3), dtype=np.uint8)
    centre = (size // 2 + int(rng.integers(-8, 8)), size // 2 + int(rng.integers(-8, 8)))
    skin = tuple(int(c) for c in rng.integers([60, 90, 140], [140, 170, 240]))
    cv2.ellipse(image, centre, (size // 3, int(size / 2.4)), 0, 0, 360, skin, -1)
    for dx in (-size // 7, size // 7):
        cv2.circle(image, (centre[0] + dx, centre[1] - size // 10), size // 20, (30, 30, 30), -1)
    cv2.ellipse(image, (centre[0], centre[1] + size // 6), (size // 8, size // 20), 0, 0, 180, (40, 40, 150), 3)
    noise = rng.normal(0, 6, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def encode(image: np.ndarray, ext: str) -> bytes:
    ok, data = cv2.imencode(ext, image)
    if not ok:
        raise ValueError(f"cannot encode {ext}")
    return data.tobytes()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def decompression_bomb_png(width: int = 60000, height: int = 60000) -> bytes:
    """A tiny PNG whose header claims billions of pixels (rejected before decoding)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        _png_chunk(b"IEND", b"")


def broken_files(rng: np.random.Generator) -> dict[str, bytes]:
    jpeg = encode(draw_face(rng), ".jpg")
    png = bytearray(encode(draw_face(rng), ".png"))
    png[60:80] = bytes(20)  # damage the image data so its CRC no longer matches
    return {
        "broken/empty.jpg": b"",
        "broken/truncated.jpg": jpeg[: len(jpeg) // 2],
        "broken/notes.txt": b"this is a text file, not a photo\n",
        "broken/random-bytes.png": rng.bytes(4096),
        "broken/bomb.png": decompression_bomb_png(),
        "broken/bad-crc.png": bytes(png),
    }


def write_sample_set(root: Path, n_good: int = 100, seed: int = 7) -> dict[str, str]:
    """Write ``n_good`` synthetic faces (JPEG/PNG/WebP) plus the broken files under ``root``.

    Returns item id (path relative to ``root``) → expected status or error code.
    """
    rng = np.random.default_rng(seed)
    expected: dict[str, str] = {}
    exts = [".jpg", ".png", ".webp"]
    for i in range(n_good):
        ext = exts[i % len(exts)]
        name = f"faces/cam{i % 4}/face-{i:04d}{ext}"
        size = int(rng.integers(96, 256))
        _write(root / name, encode(draw_face(rng, size), ext))
        expected[name] = "ok"
    for name, data in broken_files(rng).items():
        _write(root / name, data)
        expected[name] = BROKEN[name]
    return expected


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
