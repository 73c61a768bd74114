"""Both storage backends behave the same through the one interface (S3 via moto over HTTP)."""

import pytest

from faceq.errors import ConfigError, StorageError
from faceq.storage.store import FileStorage, S3Storage, open_storage


@pytest.fixture(params=["file", "s3"])
def storage(request, tmp_path):
    if request.param == "file":
        return open_storage((tmp_path / "store").as_uri())
    s3_endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("bucket")
    return open_storage(f"s3://{bucket}/some/prefix", s3_endpoint)


def test_put_get_overwrite_list_and_delete(storage):
    uri = storage.put_bytes("jobs/j1/results/part-00000.parquet", b"one")
    assert uri == storage.uri("jobs/j1/results/part-00000.parquet")
    storage.put_bytes("jobs/j1/results/part-00000.parquet", b"two")  # redelivery overwrites
    storage.put_bytes("jobs/j1/results/part-00001.parquet", b"three")
    storage.put_bytes("jobs/j1/summary.json", b"{}")
    assert storage.get_bytes("jobs/j1/results/part-00000.parquet") == b"two"
    assert storage.read_uri(uri) == b"two"
    assert storage.exists("jobs/j1/summary.json") and not storage.exists("jobs/j1/nothing")
    assert list(storage.list_keys("jobs/j1/results/")) == [
        "jobs/j1/results/part-00000.parquet",
        "jobs/j1/results/part-00001.parquet",
    ]
    assert storage.delete_prefix("jobs/j1/results/") == 2
    assert list(storage.list_keys("jobs/j1/")) == ["jobs/j1/summary.json"]


def test_reading_a_missing_object_is_a_storage_error(storage):
    with pytest.raises(StorageError, match="cannot read|no such object") as raised:
        storage.get_bytes("jobs/none/manifest.json")
    assert not raised.value.transient  # a missing object is not retried


def test_an_unreachable_store_is_retried_for_the_window_then_fails_as_transient():
    import time

    from devstack.processes import free_port

    storage = open_storage("s3://bucket/prefix", f"http://127.0.0.1:{free_port()}", retry_seconds=1.5)
    started = time.monotonic()
    with pytest.raises(StorageError, match="cannot write") as raised:
        storage.put_bytes("jobs/x/summary.json", b"{}")
    assert raised.value.transient and 1.5 <= time.monotonic() - started < 20


def test_runs_are_listed_as_folders_and_deleted_whole(storage):
    for run in ("r1", "r2"):
        storage.put_bytes(f"jobs/j/runs/{run}/results/part-00000.parquet", b"x")
    assert storage.list_children("jobs/j/runs/") == ["r1", "r2"]
    assert storage.delete_prefix("jobs/j/runs/r1/") == 1
    assert storage.list_children("jobs/j/runs/") == ["r2"]


def test_a_relative_or_one_slash_storage_url_is_refused():
    from faceq.errors import ConfigError

    for url in ("file:/data/x", "store", "http://host/x"):
        with pytest.raises(ConfigError, match="FACEQ_STORAGE_URL"):
            open_storage(url)


def test_s3_keys_live_under_the_configured_prefix(s3_endpoint, s3_client, bucket):
    storage = open_storage(f"s3://{bucket}/team-a", s3_endpoint)
    assert isinstance(storage, S3Storage)
    storage.put_bytes("jobs/x/summary.json", b"{}")
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["team-a/jobs/x/summary.json"]
    assert storage.uri("jobs/x/summary.json") == f"s3://{bucket}/team-a/jobs/x/summary.json"


def test_file_storage_reads_s3_items_too(tmp_path, s3_endpoint, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="in/a.jpg", Body=b"jpeg")
    storage = open_storage(str(tmp_path), s3_endpoint)
    assert isinstance(storage, FileStorage)
    assert storage.read_uri(f"s3://{bucket}/in/a.jpg") == b"jpeg"


def test_file_keys_cannot_escape_the_root(tmp_path):
    with pytest.raises(StorageError, match="escapes the storage root"):
        FileStorage(tmp_path).put_bytes("../outside.txt", b"x")


def test_unknown_schemes_are_refused():
    with pytest.raises(ConfigError, match="use file:///abs/path, an absolute path or s3://bucket/prefix"):
        open_storage("gs://bucket/prefix")
