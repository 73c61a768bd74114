"""The fast data path (issue 11) gives exactly what the plain path gives, and fails the same way.

- plain JPEGs are decoded by libjpeg-turbo through simplejpeg (GIL released) to the same pixels
  as Pillow; everything else (rotated, CMYK, damaged) still goes through Pillow;
- detect mode on real multi-megapixel photos: embeddings within cosine 0.9999 of the
  full-decode (Pillow) path;
- crop mode decodes straight into the chunk's batch;
- items are prepared by a few draining threads; one stuck item times out alone;
- input items on S3 are read with obstore where installed, with boto3's errors' meanings.
"""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image, ImageOps

from faceq.errors import BadInputError, StorageError
from faceq.job.spec import Item, JobHeader
from faceq.settings import Settings
from faceq.storage.store import open_storage
from faceq.models import preprocess
from faceq.models.preprocess import decode_image, jpeg_orientation
from devstack.samples import draw_face, encode
from tests.conftest import YUNET, needs_yunet

LIMITS = dict(max_bytes=32 << 20, max_pixels=50_000_000)


def pillow_bgr(data: bytes) -> np.ndarray:
    """The reference decode: Pillow, EXIF transpose, RGB, then BGR."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        rgb = ImageOps.exif_transpose(image).convert("RGB")
        return np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])


def _jpeg(image_bgr: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image_bgr[:, :, ::-1]).save(buffer, "JPEG", **options)
    return buffer.getvalue()


needs_simplejpeg = pytest.mark.skipif(preprocess.simplejpeg is None, reason="simplejpeg not installed")


@needs_simplejpeg
@pytest.mark.parametrize("options", [{"quality": 95}, {"quality": 75, "subsampling": 0}, {"quality": 90, "subsampling": 1},
                                     {"quality": 85, "progressive": True}, {"quality": 90, "optimize": True}])
@pytest.mark.parametrize("size", [112, 97, 333])
def test_plain_jpegs_decode_to_exactly_pillows_pixels(options, size):
    data = _jpeg(draw_face(np.random.default_rng(size), size), **options)
    fast = preprocess._decode_plain_jpeg(data, LIMITS["max_pixels"])
    assert fast is not None, "a plain JPEG must take the fast path"
    np.testing.assert_array_equal(fast, pillow_bgr(data))
    np.testing.assert_array_equal(decode_image(data, **LIMITS), pillow_bgr(data))


@needs_simplejpeg
def test_greyscale_jpegs_decode_to_pillows_three_equal_channels():
    grey = Image.fromarray(draw_face(np.random.default_rng(3), 120)[:, :, 0])
    buffer = io.BytesIO()
    grey.save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    fast = preprocess._decode_plain_jpeg(data, LIMITS["max_pixels"])
    assert fast is not None
    np.testing.assert_array_equal(fast, pillow_bgr(data))


@needs_simplejpeg
def test_rotated_cmyk_and_damaged_jpegs_are_left_to_pillow():
    face = draw_face(np.random.default_rng(4), 96)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = io.BytesIO()
    Image.fromarray(face[:, :, ::-1]).save(rotated, "JPEG", exif=exif)
    assert jpeg_orientation(rotated.getvalue()) == 6
    assert preprocess._decode_plain_jpeg(rotated.getvalue(), LIMITS["max_pixels"]) is None
    np.testing.assert_array_equal(decode_image(rotated.getvalue(), **LIMITS), pillow_bgr(rotated.getvalue()))
    cmyk = io.BytesIO()
    Image.fromarray(face[:, :, ::-1]).convert("CMYK").save(cmyk, "JPEG")
    assert preprocess._decode_plain_jpeg(cmyk.getvalue(), LIMITS["max_pixels"]) is None
    plain = _jpeg(face)
    assert jpeg_orientation(plain) == 1
    with pytest.raises(BadInputError) as cut:
        decode_image(plain[: len(plain) // 2], **LIMITS)
    assert cut.value.code == "truncated"  # Pillow's diagnosis, as before
    xmp = plain[:2] + b"\xff\xe1\x00\x2a" + b"http://ns.adobe.com/xap/1.0/\x00tiff:Orientation" + plain[2:]
    assert jpeg_orientation(xmp) is None  # XMP may rotate it: Pillow decides


@needs_simplejpeg
def test_the_pixel_limit_is_checked_from_the_header_before_decoding():
    data = _jpeg(draw_face(np.random.default_rng(5), 200))
    with pytest.raises(BadInputError, match="FACEQ_MAX_IMAGE_PIXELS") as info:
        decode_image(data, max_bytes=1 << 20, max_pixels=199 * 200)
    assert info.value.code == "too_large"
    assert preprocess.image_size(data) == 200 * 200


@needs_simplejpeg
def test_a_crop_of_the_networks_size_is_decoded_into_the_given_row():
    batch = np.zeros((3, 112, 112, 3), np.uint8)
    data = encode(draw_face(np.random.default_rng(6), 112), ".jpg")
    decoded = decode_image(data, **LIMITS, out=batch[1])
    assert decoded.ctypes.data == batch[1].ctypes.data
    np.testing.assert_array_equal(batch[1], pillow_bgr(data))
    assert not batch[0].any() and not batch[2].any()
    other = decode_image(encode(draw_face(np.random.default_rng(7), 90), ".jpg"), **LIMITS, out=batch[2])
    assert other.shape == (90, 90, 3) and not batch[2].any()  # another size: an array of its own


# ---------------------------------------------------------------------------- detect mode, real photos


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    from bench.datapath import photo_jpegs

    return photo_jpegs()


@needs_yunet
@needs_simplejpeg
def test_detect_mode_on_real_photos_matches_the_full_pillow_decode(photos):
    """1920×2400 JPEGs of two real portraits: the worker's path (libjpeg-turbo via simplejpeg,
    YuNet, alignment) against the full Pillow decode: the same crops, embeddings within
    cosine 0.9999 (IR-SE-64, seeded weights)."""
    from faceq.models.detect import FaceDetector
    from faceq.models.preprocess import detect_faces
    from faceq.models.weights import load_model
    from faceq.workers.engine import Engine

    detector = FaceDetector(str(YUNET))
    engine = Engine(load_model(None, "ir_se_64", seed=0), "cpu", "fp32", max_batch=4)
    fast, full = [], []
    for data in photos:
        assert len(data) > 300_000  # a real multi-megapixel JPEG, not a flat upscale
        ours = detect_faces(decode_image(data, **LIMITS), detector)
        reference = detect_faces(pillow_bgr(data), detector)
        assert ours.face_count == reference.face_count == 1
        np.testing.assert_allclose(ours.faces[0].landmarks, reference.faces[0].landmarks, atol=1e-3)
        fast.append(ours.faces[0].pixels)
        full.append(reference.faces[0].pixels)
    ours_emb, _ = engine.infer(np.stack(fast))
    reference_emb, _ = engine.infer(np.stack(full))
    cosines = (ours_emb * reference_emb).sum(axis=1)
    assert cosines.min() >= 0.9999, cosines


# ---------------------------------------------------------------------------- the chunk processor


class _Engine:
    """What ChunkProcessor needs of an engine, without a model."""

    device = "cpu"
    model_id = "test-null"
    max_batch = 64

    def __init__(self):
        from faceq.models.null import NullModel

        self.model = NullModel()

    def infer(self, crops):
        return self.model.infer(crops)


def _processor(tmp_path, **settings):
    from faceq.workers.service import ChunkProcessor

    storage = open_storage((tmp_path / "store").as_uri())
    return ChunkProcessor(Settings(**settings), storage, None, _Engine(), "w")


def _crop_job(tmp_path, n):
    folder = tmp_path / "crops"
    folder.mkdir()
    rng = np.random.default_rng(8)
    items = []
    for i in range(n):
        size = 112 if i % 3 else 150  # most decode in place, some are resized
        path = folder / f"c{i:03d}.jpg"
        path.write_bytes(encode(draw_face(rng, size), ".jpg"))
        items.append(Item(path.name, path.as_uri()))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    items.insert(5, Item("broken.jpg", (folder / "broken.jpg").as_uri()))
    header = JobHeader("j", "r", "audit", "crop", str(folder), "2026-11-25T00:00:00+00:00", chunk_size=64,
                       n_items=len(items), allowed_sources=(folder.as_uri(),))
    return header, items


def test_crop_rows_from_the_batch_are_those_of_one_image_at_a_time(tmp_path):
    from faceq.models.null import NullModel
    from faceq.models.preprocess import crop_face

    processor = _processor(tmp_path)
    header, items = _crop_job(tmp_path, 40)
    rows = processor.rows(header, items)
    processor.close()
    assert [r.item_id for r in rows] == [i.item_id for i in items]
    assert rows[5].status == "error" and rows[5].error.split(":")[0] in ("truncated", "corrupt")
    model = NullModel()
    for item, row in zip(items, rows):
        if item.item_id == "broken.jpg":
            continue
        data = open(item.source_uri[len("file://"):], "rb").read()
        crop = crop_face(pillow_bgr(data)).faces[0].pixels
        embedding, quality = model.infer(crop[None])
        assert row.status == "ok"
        np.testing.assert_allclose(row.embedding, embedding[0], rtol=0, atol=1e-6)
        assert row.quality == pytest.approx(float(quality[0]))
    cpu = processor.cpu.totals()
    assert cpu["fetch"] > 0 and cpu["decode"] > 0 and cpu["rows"] > 0


def test_one_stuck_item_times_out_alone_and_the_next_chunk_gets_a_fresh_pool(tmp_path):
    processor = _processor(tmp_path, item_timeout_seconds=1.0, io_threads=2)
    header, items = _crop_job(tmp_path, 12)
    release = threading.Event()
    read = processor.storage.read_uri

    def read_uri(uri, max_bytes=None):
        if uri.endswith("c003.jpg"):
            release.wait(30)
        return read(uri, max_bytes)

    processor.storage.read_uri = read_uri
    try:
        rows = processor.rows(header, items)
        by_id = {r.item_id: r for r in rows}
        assert by_id["c003.jpg"].status == "error" and by_id["c003.jpg"].error.startswith("timeout")
        assert sum(r.status == "ok" for r in rows) == 12 - 1
        pool = processor._io
        release.set()
        again = processor.rows(header, items)
        assert sum(r.status == "ok" for r in again) == 12 and pool is processor._io
    finally:
        release.set()
        processor.close()


def test_a_store_outage_fails_the_chunk_for_a_retry_instead_of_writing_error_rows(tmp_path):
    processor = _processor(tmp_path)
    header, items = _crop_job(tmp_path, 8)

    def down(uri, max_bytes=None):
        error = StorageError("cannot read: connection refused")
        error.transient = True
        raise error

    processor.storage.read_uri = down
    with pytest.raises(StorageError, match="connection refused"):
        processor.rows(header, items)
    processor.close()


# ---------------------------------------------------------------------------- S3 items through obstore


def test_s3_items_are_read_with_obstore_and_errors_keep_their_meaning(tmp_path, s3_endpoint, s3_client, bucket):
    pytest.importorskip("obstore")
    s3_client.put_object(Bucket=bucket, Key="in/a.jpg", Body=b"x" * 100)
    s3_client.put_object(Bucket=bucket, Key="in/empty.jpg", Body=b"")
    storage = open_storage(str(tmp_path), s3_endpoint)
    assert storage.read_uri(f"s3://{bucket}/in/a.jpg", 100) == b"x" * 100
    assert storage._object_store(bucket) is not None  # the fast client was used
    assert storage.read_uri(f"s3://{bucket}/in/empty.jpg", 100) == b""
    with pytest.raises(BadInputError) as large:
        storage.read_uri(f"s3://{bucket}/in/a.jpg", 99)
    assert large.value.code == "too_large"
    with pytest.raises(StorageError, match="NoSuchKey") as missing:
        storage.read_uri(f"s3://{bucket}/in/none.jpg", 100)
    assert not missing.value.transient  # an error row, not a retry


def test_an_unreachable_store_is_a_transient_error_for_item_reads_too(tmp_path):
    pytest.importorskip("obstore")
    from devstack.processes import free_port

    storage = open_storage(str(tmp_path), f"http://127.0.0.1:{free_port()}", retry_seconds=0.5)
    with pytest.raises(StorageError) as down:
        storage.read_uri("s3://some-bucket/a.jpg", 100)
    assert down.value.transient


def test_boto3_still_reads_items_when_asked(tmp_path, s3_endpoint, s3_client, bucket, monkeypatch):
    monkeypatch.setenv("FACEQ_S3_READER", "boto3")
    s3_client.put_object(Bucket=bucket, Key="in/b.jpg", Body=b"y" * 10)
    storage = open_storage(str(tmp_path), s3_endpoint)
    assert storage.read_uri(f"s3://{bucket}/in/b.jpg", 100) == b"y" * 10
    assert storage._object_store(bucket) is None
