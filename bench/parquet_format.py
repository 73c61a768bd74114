"""``python -m bench.parquet_format``: the vector columns as fixed-size lists against plain lists.

How the choice in ``faceq/outputs/results.py`` (``VECTOR_TYPE``) was made: one chunk's part (1,024 rows,
10 % error rows without an embedding) written and read back both ways, median of repeats, as
one JSON document: bytes, ms to write, ms to read, ms to turn the embeddings into an (N, 512)
float32 array, and whether this pyarrow can read the part back at all.
"""

from __future__ import annotations

import io
import json
import statistics
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROWS, DIM, REPEATS = 1024, 512, 15


def _table(vector_type: pa.DataType) -> pa.Table:
    rng = np.random.default_rng(0)
    values = rng.standard_normal((ROWS, DIM)).astype(np.float32)
    values /= np.linalg.norm(values, axis=1, keepdims=True)
    mask = np.zeros(ROWS, bool)
    mask[::10] = True  # error rows: no embedding
    flat = pa.array(values.ravel())
    if pa.types.is_fixed_size_list(vector_type):
        column = pa.FixedSizeListArray.from_arrays(flat, DIM, mask=pa.array(mask))
    else:  # a null list holds no values (what faceq writes; old pyarrow refuses any other)
        offsets = np.concatenate([[0], np.cumsum(np.where(mask, 0, DIM))]).astype(np.int32)
        column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values[~mask].ravel()), mask=pa.array(mask))
    return pa.table({"item_id": [f"item-{i}" for i in range(ROWS)], "embedding": column})


def _median_ms(action) -> float:
    seconds = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - start)
    return round(1000 * statistics.median(seconds), 3)


def _write(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", use_dictionary=["item_id"])
    return sink.getvalue()


def _matrix(table: pa.Table) -> np.ndarray:
    column = table.column("embedding").combine_chunks()
    valid = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), bool)
    out = np.full((len(column), DIM), np.nan, np.float32)
    out[valid] = pc.list_flatten(column).to_numpy(zero_copy_only=False).reshape(-1, DIM)
    return out


def measure(name: str, vector_type: pa.DataType) -> dict:
    table = _table(vector_type)
    try:
        data = _write(table)
    except pa.ArrowException as exc:
        return {"format": name, "writes": False, "error": f"{type(exc).__name__}: {exc}"}
    row = {"format": name, "writes": True, "bytes": len(data), "write_ms": _median_ms(lambda: _write(table))}
    try:
        back = pq.read_table(io.BytesIO(data))
    except pa.ArrowException as exc:
        return row | {"reads": False, "error": f"{type(exc).__name__}: {exc}"}
    row |= {"reads": True, "read_ms": _median_ms(lambda: pq.read_table(io.BytesIO(data))),
            "to_matrix_ms": _median_ms(lambda: _matrix(back))}
    assert np.array_equal(_matrix(back), _matrix(table), equal_nan=True)
    return row


def main() -> int:
    rows = [measure("fixed_size_list<float32>[512]", pa.list_(pa.float32(), DIM)),
            measure("list<float32>", pa.list_(pa.float32()))]
    print(json.dumps({"pyarrow": pa.__version__, "rows": ROWS, "null_rows": ROWS // 10, "formats": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
