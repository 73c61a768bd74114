"""Find repeated item ids while streaming a manifest, in about 20–40 bytes per id.

A Python ``set`` of id strings costs 100+ bytes per item and grows with the job; this
open-addressing table keeps only an 8-byte hash of each id and the 4-byte line where it
was first seen. A hit is a repeat with overwhelming probability (64-bit hashes); the
caller can confirm it by re-reading the earlier line before reporting it.
"""

from __future__ import annotations

import hashlib
from array import array

_EMPTY = 0
_MAX_LOAD_NUM, _MAX_LOAD_DEN = 2, 3  # grow past 2/3 full: short probe runs, ≤ 36 bytes per id


def id_hash(item_id: str) -> int:
    """A stable non-zero 64-bit hash of an id (0 marks an empty slot)."""
    digest = hashlib.blake2b(item_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


class SeenIds:
    """Hashes of the ids seen so far, each with the line it was first seen on."""

    def __init__(self, capacity: int = 1024):
        size = 1 << max(4, (capacity * _MAX_LOAD_DEN // _MAX_LOAD_NUM).bit_length())
        self._hashes = array("Q", bytes(8 * size))
        self._lines = array("I", bytes(4 * size))
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        """Memory held by the table (for tests and logs)."""
        return self._hashes.itemsize * len(self._hashes) + self._lines.itemsize * len(self._lines)

    def add(self, item_id: str, line: int) -> int | None:
        """Remember ``item_id`` (first seen on ``line``); if its hash was seen before, return
        that earlier line instead and remember nothing."""
        h = id_hash(item_id)
        mask = len(self._hashes) - 1
        index = h & mask
        hashes = self._hashes
        while hashes[index] != _EMPTY:
            if hashes[index] == h:
                return self._lines[index]
            index = (index + 1) & mask
        hashes[index] = h
        self._lines[index] = line
        self._count += 1
        if self._count * _MAX_LOAD_DEN > len(hashes) * _MAX_LOAD_NUM:
            self._grow()
        return None

    def _grow(self) -> None:
        old_hashes, old_lines = self._hashes, self._lines
        size = 2 * len(old_hashes)
        self._hashes = hashes = array("Q", bytes(8 * size))
        self._lines = lines = array("I", bytes(4 * size))
        mask = size - 1
        for h, line in zip(old_hashes, old_lines):
            if h == _EMPTY:
                continue
            index = h & mask
            while hashes[index] != _EMPTY:
                index = (index + 1) & mask
            hashes[index] = h
            lines[index] = line
