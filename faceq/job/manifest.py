"""Per-chunk manifests: the items of one chunk as a small Parquet object.

A job's items never exist as one document: the producer streams its source into one
manifest object per chunk, and a worker reads only its own chunk's.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

from faceq.job.spec import Item
from faceq.outputs.results import read_parquet


def chunk_manifest_bytes(items: list[Item], columns: tuple[str, ...]) -> bytes:
    data = {"item_id": [i.item_id for i in items], "source_uri": [i.source_uri for i in items]}
    for name in columns:
        data[name] = [i.fields.get(name, "") for i in items]
    schema = pa.schema([(name, pa.string()) for name in data])
    sink = io.BytesIO()
    pq.write_table(pa.table(data, schema=schema), sink, compression="zstd")
    return sink.getvalue()


def read_chunk_manifest(data: bytes, columns: tuple[str, ...]) -> list[Item]:
    table = read_parquet(data)
    ids = table.column("item_id").to_pylist()
    uris = table.column("source_uri").to_pylist()
    values = {name: table.column(name).to_pylist() for name in columns}
    return [Item(item_id, uri, {name: values[name][k] for name in columns})
            for k, (item_id, uri) in enumerate(zip(ids, uris))]
