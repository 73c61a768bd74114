"""The output contract: one row per input item, one Parquet object per chunk.

Columns (see README "Output contract"): job_id, item_id, source_uri, status, error, embedding,
quality, needs_review, review_reasons, face_count, face_index, bbox, landmarks, model_id,
processed_at, the verification columns (null unless attendance against a gallery or compare),
the second photo of a compare pair (``*_b``, null for other kinds), then the job's manifest
columns (attendance: record_id, employee_id, …) as strings. The chunk's
statistics (items, rows, seconds, worker) travel in the part's Parquet metadata, so a job's
summary can be rebuilt from storage alone.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

EMBEDDING_DIM = 512
STATUSES = ("ok", "no_face", "error")

# Vectors (embedding, bbox, landmarks) are plain ``list<float32>``, never fixed-size lists. In a
# Parquet file both are the same 3-level LIST; they differ only in the Arrow schema stored beside
# it, and Arrow C++ before pyarrow 26 cannot rebuild a *null* fixed-size list from Parquet
# (apache/arrow#35692: "Expected all lists to be of size=10 but index 1 had size=0"; pyarrow 15
# cannot even write one). Plain lists open in every reader; ``vectors()`` turns a column into an
# (N, 512) array. Parts written by faceq 0.2 still hold fixed-size lists: ``read_parquet`` reads
# them on every pyarrow (see ``_read_legacy``).
VECTOR_TYPE = pa.list_(pa.float32())

CHUNK_STATS_KEY = b"faceq.chunk_stats"

BASE_SCHEMA = pa.schema(
    [
        ("job_id", pa.string()),
        ("item_id", pa.string()),
        ("source_uri", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("embedding", VECTOR_TYPE),  # 512 values or null
        ("quality", pa.float32()),
        ("needs_review", pa.bool_()),
        ("review_reasons", pa.list_(pa.string())),
        ("face_count", pa.int32()),
        ("face_index", pa.int32()),
        ("bbox", VECTOR_TYPE),  # 4 values or null
        ("landmarks", VECTOR_TYPE),  # 10 values or null
        ("model_id", pa.string()),
        ("processed_at", pa.timestamp("ms", tz="UTC")),
    ]
)


@dataclass
class ItemResult:
    item_id: str
    source_uri: str
    status: str
    model_id: str
    processed_at: datetime
    error: str | None = None
    embedding: np.ndarray | None = None
    quality: float | None = None
    needs_review: bool = False
    review_reasons: list[str] = field(default_factory=list)
    face_count: int = 0
    face_index: int = 0
    bbox: list[float] | None = None
    landmarks: list[float] | None = None
    fields: dict[str, str] = field(default_factory=dict)
    # attendance against a gallery
    decision: str | None = None
    similarity: float | None = None
    gallery: str | None = None
    best_candidate_id: str | None = None
    best_candidate_score: float | None = None
    top_k_ids: list[str] | None = None
    top_k_scores: list[float] | None = None
    # compare: the pair's second photo (the first is source_uri, embedding, quality, …)
    source_uri_b: str | None = None
    embedding_b: np.ndarray | None = None
    quality_b: float | None = None
    face_count_b: int | None = None
    bbox_b: list[float] | None = None
    landmarks_b: list[float] | None = None


VERIFICATION_SCHEMA = pa.schema(
    [
        ("decision", pa.string()),
        ("similarity", pa.float32()),
        ("gallery", pa.string()),
        ("best_candidate_id", pa.string()),
        ("best_candidate_score", pa.float32()),
        ("top_k_ids", pa.list_(pa.string())),
        ("top_k_scores", pa.list_(pa.float32())),
    ]
)


COMPARE_SCHEMA = pa.schema(
    [
        ("source_uri_b", pa.string()),
        ("embedding_b", VECTOR_TYPE),
        ("quality_b", pa.float32()),
        ("face_count_b", pa.int32()),
        ("bbox_b", VECTOR_TYPE),
        ("landmarks_b", VECTOR_TYPE),
    ]
)
SECOND_IMAGE_FIELD = "image_b"  # compare: the manifest column that becomes source_uri_b


# Manifest columns every part has, null where a job has none: one schema for every job kind, so
# a glob over many jobs reads without options. Other manifest columns go into ``extra``.
MANIFEST_FIELDS = ("record_id", "employee_id", "device_id")
MANIFEST_SCHEMA = pa.schema(
    [
        *((name, pa.string()) for name in MANIFEST_FIELDS),
        ("captured_at", pa.timestamp("ms", tz="UTC")),  # when captured_at_raw parses as ISO-8601
        ("captured_at_raw", pa.string()),
        ("extra", pa.map_(pa.string(), pa.string())),
    ]
)
_KNOWN_FIELDS = (*MANIFEST_FIELDS, "captured_at", SECOND_IMAGE_FIELD)


def field_columns(manifest_columns: tuple[str, ...] | list[str]) -> list[str]:
    """The output columns that hold a job's manifest columns (for readers that want only those)."""
    columns = [c for c in MANIFEST_FIELDS if c in manifest_columns]
    columns += ["captured_at", "captured_at_raw"] if "captured_at" in manifest_columns else []
    return columns + (["extra"] if any(c not in _KNOWN_FIELDS for c in manifest_columns) else [])


def parse_time(value: str | None) -> datetime | None:
    """An ISO-8601 time (``Z`` or an offset; naive means UTC), or None when it does not parse."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


RESULT_SCHEMA = pa.schema([*BASE_SCHEMA, *VERIFICATION_SCHEMA, *COMPARE_SCHEMA, *MANIFEST_SCHEMA])


def to_table(rows: list[ItemResult], job_id: str = "") -> pa.Table:
    """Rows → an Arrow table with the contract schema: base columns, the verification columns
    (null unless attendance against a gallery or compare), the compare columns and the manifest columns."""
    columns = {
        "job_id": [job_id] * len(rows),
        "item_id": [r.item_id for r in rows],
        "source_uri": [r.source_uri for r in rows],
        "status": [r.status for r in rows],
        "error": [r.error for r in rows],
        "embedding": [None if r.embedding is None else r.embedding.astype(np.float32) for r in rows],
        "quality": [r.quality for r in rows],
        "needs_review": [r.needs_review for r in rows],
        "review_reasons": [r.review_reasons for r in rows],
        "face_count": [r.face_count for r in rows],
        "face_index": [r.face_index for r in rows],
        "bbox": [r.bbox for r in rows],
        "landmarks": [r.landmarks for r in rows],
        "model_id": [r.model_id for r in rows],
        "processed_at": [r.processed_at for r in rows],
    }
    for column in (*VERIFICATION_SCHEMA, *COMPARE_SCHEMA):
        columns[column.name] = [getattr(r, column.name) for r in rows]
    for name in MANIFEST_FIELDS:
        columns[name] = [r.fields.get(name) for r in rows]
    columns["captured_at"] = [parse_time(r.fields.get("captured_at")) for r in rows]
    columns["captured_at_raw"] = [r.fields.get("captured_at") for r in rows]
    columns["extra"] = [[(k, v) for k, v in r.fields.items() if k not in _KNOWN_FIELDS] or None for r in rows]
    return pa.table(columns, schema=RESULT_SCHEMA)


def chunk_part_bytes(rows: list[ItemResult], header, stats: dict) -> bytes:
    """One chunk's part: its rows, with the chunk's statistics in the file's metadata."""
    table = to_table(rows, header.job_id)
    table = table.replace_schema_metadata({CHUNK_STATS_KEY: json.dumps(stats).encode()})
    return to_parquet(table)


def part_stats(table: pa.Table) -> dict:
    """The chunk statistics written by ``chunk_part_bytes`` ({} for parts without them)."""
    raw = (table.schema.metadata or {}).get(CHUNK_STATS_KEY)
    return json.loads(raw) if raw else {}


def _values_repeat(column: pa.Field) -> bool:
    """Dictionary encoding pays only where values repeat: not for floats (scores, embeddings,
    boxes) nor times. On 512 floats per row it made parts 1.6× larger and 4× slower to write
    (0.046 → 0.012 ms per row, zstd either way)."""
    kind = column.type.value_type if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type) \
        else column.type
    return not (pa.types.is_floating(kind) or pa.types.is_timestamp(kind))


def to_parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    dictionary = [column.name for column in table.schema if _values_repeat(column)]
    pq.write_table(table, sink, compression="zstd", use_dictionary=dictionary)
    return sink.getvalue()


def read_parquet(data: bytes | pa.Buffer, columns: list[str] | None = None) -> pa.Table:
    """A Parquet object as a table whose vectors are ``list<float32>``, whichever faceq wrote it."""
    with open_parquet(data) as parquet:
        stored = parquet.schema_arrow
        legacy = any(pa.types.is_fixed_size_list(f.type) for f in stored)
        try:
            table = parquet.read(columns=columns, use_threads=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            if not legacy:
                raise
            table = None
    if table is None:
        table = _read_legacy(data, columns, stored)
    return _plain_lists(table) if legacy else table


_ARROW_SCHEMA_KEY = b"ARROW:schema"


def _read_legacy(data: bytes | pa.Buffer, columns: list[str] | None, stored: pa.Schema) -> pa.Table:
    """A faceq 0.2 part with null fixed-size lists, on a pyarrow that cannot rebuild them (< 26).

    The file's Parquet schema is the plain LIST every reader understands; only the Arrow schema
    kept in its footer asks for fixed-size lists. The footer is read with that one key renamed
    (to a name of the same length, so its Thrift encoding stays valid), and the table is cast to
    the stored Arrow schema with plain lists in place of fixed-size ones.
    """
    raw = data.to_pybytes() if isinstance(data, pa.Buffer) else bytes(data)
    footer_length = int.from_bytes(raw[-8:-4], "little")
    at = raw.rfind(_ARROW_SCHEMA_KEY, len(raw) - 8 - footer_length)
    if at < 0:
        raise pa.ArrowInvalid("a Parquet part with fixed-size lists but no Arrow schema to set aside")
    blinded = raw[:at] + b"faceq:legacy" + raw[at + len(_ARROW_SCHEMA_KEY):]
    with open_parquet(blinded) as parquet:
        table = parquet.read(columns=columns, use_threads=False)
    target = _plain_lists(stored.empty_table()).schema
    wanted = pa.schema([target.field(name) for name in table.column_names], stored.metadata)
    return table.cast(wanted)


def _plain_lists(table: pa.Table) -> pa.Table:
    """Fixed-size list columns (faceq 0.2 parts, galleries) as ``list<float32>``."""
    fields = [pa.field(f.name, pa.list_(f.type.value_type), f.nullable, f.metadata)
              if pa.types.is_fixed_size_list(f.type) else f for f in table.schema]
    return table.cast(pa.schema(fields, table.schema.metadata))


def vectors(column: pa.ChunkedArray | pa.Array, width: int = EMBEDDING_DIM) -> np.ndarray:
    """A vector column (embedding, bbox, landmarks) as an (N, width) float32 array, NaN where null.

    One copy of the values: no Python objects per row (``to_pylist`` of 10,000 embeddings costs
    about a second; this a few milliseconds).
    """
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    out = np.full((len(array), width), np.nan, dtype=np.float32)
    valid = ~np.asarray(array.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    values = pc.list_flatten(array).to_numpy(zero_copy_only=False)
    if values.size != int(valid.sum()) * width:
        raise ValueError(f"vector column holds lists of another length than {width}")
    out[valid] = values.reshape(-1, width)
    return out


def open_parquet(data: bytes | pa.Buffer) -> pq.ParquetFile:
    """A Parquet reader over an Arrow-owned copy of ``data``; read it with ``use_threads=False``.

    Short-lived producers aborted at exit ("terminate called without an active exception",
    4 runs in 20, then 1 in 40 with ``read_table`` replaced by ``ParquetFile``): an Arrow pool
    thread released the Python ``bytes`` it had been reading after the interpreter had
    finalized (gdb: ``PyBuffer::~PyBuffer`` → ``PyGILState_Ensure`` → ``pthread_exit``). With
    the bytes copied into Arrow's memory (a memcpy of a part) and no pool threads, no Arrow
    thread ever holds a Python object.
    """
    if isinstance(data, pa.Buffer):  # already Arrow's (a memory map): nothing to copy
        return pq.ParquetFile(pa.BufferReader(data))
    buffer = pa.allocate_buffer(len(data))
    with pa.FixedSizeBufferWriter(buffer) as writer:
        writer.write(data)
    return pq.ParquetFile(pa.BufferReader(buffer))
