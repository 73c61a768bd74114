"""faceq.storage.allow: manifest values become canonical URIs, and only those under a job's roots pass."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from faceq.storage.allow import FORBIDDEN_MESSAGE, AllowedSources, is_under, normalise_uri, split_s3_prefix
from faceq.errors import BadInputError, ConfigError


@pytest.mark.parametrize(
    "value, expected",
    [
        ("a.jpg", "file:///base/dir/a.jpg"),
        ("sub/./b.jpg", "file:///base/dir/sub/b.jpg"),
        ("../x/c.jpg", "file:///base/x/c.jpg"),
        ("../../../../etc/passwd", "file:///etc/passwd"),  # no ".." left: the allow-list decides
        ("/abs/d.jpg", "file:///abs/d.jpg"),
        ("//abs//e.jpg", "file:///abs/e.jpg"),
        ("file:///abs/f.jpg", "file:///abs/f.jpg"),
        ("file://localhost/abs/g.jpg", "file:///abs/g.jpg"),
        ("file:///abs/../etc/shadow", "file:///etc/shadow"),
        ("file:///abs/with%20space.jpg", "file:///abs/with%20space.jpg"),
        ("photo:1.jpg", "file:///base/dir/photo%3A1.jpg"),  # a colon in a file name is not a scheme
        ("s3://photos/2024/a.jpg", "s3://photos/2024/a.jpg"),
        ("s3://my.bucket-1/k", "s3://my.bucket-1/k"),
    ],
)
def test_normalise_uri_gives_one_canonical_spelling(value, expected):
    assert normalise_uri(value, Path("/base/dir")) == expected


HUGE = "s3://photos/" + "a" * 100_000


@pytest.mark.parametrize(
    "value, reason",
    [
        ("http://evil.example/a.jpg", "unsupported scheme 'http'"),
        ("https://user:pw@evil.example/a.jpg", "unsupported scheme 'https'"),
        ("S3://photos/a.jpg", "unsupported scheme 'S3'"),
        ("FILE:///etc/passwd", "unsupported scheme 'FILE'"),
        ("s3:///x", "needs a bucket"),
        ("s3://photos", "needs a key"),
        ("s3://photos/", "needs a key"),
        ("s3://Photos_Bucket/a.jpg", "bucket name"),
        ("s3://ab/a.jpg", "bucket name"),
        ("s3://192.168.0.1/a.jpg", "bucket name"),
        ("s3://a..b/a.jpg", "bucket name"),
        ("s3://photos/a/../../other/x.jpg", "'..'"),
        ("s3://photos/./x.jpg", "'..'"),
        ("s3://photos/a.jpg?versionId=1", "'?'"),
        ("s3:photos/a.jpg", "s3://bucket/key"),
        ("file://otherhost/etc/passwd", "no host"),
        ("file:/etc/passwd", "file:///"),
        ("file://", "absolute path"),
        ("file:///a%00b.jpg", "control character"),
        ("file:///a%ffb.jpg", "not UTF-8"),
        ("file:///a.jpg#frag", "percent-encoded"),
        ("a\x00b.jpg", "control character"),
        ("a\nb.jpg", "control character"),
        ("a\rb.jpg", "control character"),
        ("", "empty"),
        (HUGE, "longer than 4096"),
        ("s3://photos/" + "é" * 600, "at most 1024 bytes"),
    ],
)
def test_normalise_uri_refuses_malformed_values_without_echoing_them(value, reason):
    with pytest.raises(BadInputError) as info:
        normalise_uri(value, Path("/base"))
    assert info.value.code == "bad_uri"
    assert reason in info.value.message
    assert len(str(info.value)) < 200
    assert "\n" not in str(info.value) and "\x00" not in str(info.value)


def test_a_relative_path_without_base_dir_is_refused():
    with pytest.raises(BadInputError, match="bad_uri"):
        normalise_uri("a.jpg")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """tmp/data (a root) with a photo, symlinks in and out, and a sibling tmp/data2."""
    data = tmp_path / "data"
    (data / "photos").mkdir(parents=True)
    (data / "photos" / "a.jpg").write_bytes(b"jpeg")
    (data / "photos" / "passwd_link.jpg").symlink_to("/etc/passwd")
    (data / "photos" / "environ_link.jpg").symlink_to("/proc/self/environ")
    (data / "photos" / "inside_link.jpg").symlink_to(data / "photos" / "a.jpg")
    (data / "escape").symlink_to("/etc")
    (tmp_path / "data2").mkdir()
    (tmp_path / "data2" / "b.jpg").write_bytes(b"jpeg")
    return tmp_path


@pytest.fixture
def allowed(tree: Path) -> AllowedSources:
    return AllowedSources.parse(f"s3://photos/, s3://archive/2024, {(tree / 'data').as_uri()}/")


@pytest.mark.parametrize(
    "value, expected",
    [
        ("data/photos/a.jpg", "data/photos/a.jpg"),
        ("data/photos/../photos/a.jpg", "data/photos/a.jpg"),
        ("data/photos/missing.jpg", "data/photos/missing.jpg"),  # existence is the reader's business
        ("data/photos/inside_link.jpg", "data/photos/a.jpg"),  # the real path is what gets read
        ("data", "data"),
        ("s3://photos/x/y.jpg", "s3://photos/x/y.jpg"),
        ("s3://archive/2024/y.jpg", "s3://archive/2024/y.jpg"),
    ],
)
def test_check_allows_uris_under_a_root(tree, allowed, value, expected):
    if not value.startswith("s3://"):
        value, expected = str(tree / value), (tree / expected).resolve().as_uri()
    assert allowed.check(value) == expected
    assert allowed.allows(value)


@pytest.mark.parametrize(
    "value",
    [
        "data/photos/../../../../../../../../etc/passwd",  # relative to tree, climbs out
        "file:///etc/shadow",
        "/etc/passwd",
        "/root/.aws/credentials",
        "data2/b.jpg",  # /data2 is not under /data
        "data/photos/passwd_link.jpg",  # symlink leaving the root
        "data/photos/environ_link.jpg",
        "data/escape/passwd",  # through a symlinked directory
        "s3://some-other-bucket/photos/a.jpg",
        "s3://photos-2/a.jpg",  # bucket compared whole
        "s3://archive/2024x/y.jpg",  # prefix compared on "/" boundaries
        "s3://archive/2023/y.jpg",
    ],
)
def test_check_forbids_everything_outside_the_roots(tree, allowed, value):
    if not value.startswith(("s3://", "file://", "/")):
        value = str(tree / value)
    with pytest.raises(BadInputError) as info:
        allowed.check(value)
    assert info.value.code == "forbidden"
    assert info.value.message == FORBIDDEN_MESSAGE
    assert not allowed.allows(value)


def test_one_instance_answers_like_fresh_ones_after_its_directory_cache_is_warm(tree):
    """The cached directory walk must not let a final symlink or a symlinked directory through."""
    roots = f"{(tree / 'data').as_uri()}/"
    warm = AllowedSources.parse(roots)
    names = ["a.jpg", "passwd_link.jpg", "inside_link.jpg", "environ_link.jpg", "missing.jpg", "a.jpg"]
    values = [str(tree / "data" / "photos" / name) for name in names] + [str(tree / "data" / "escape" / "passwd")]
    for value in values * 2:
        assert warm.allows(value) == AllowedSources.parse(roots).allows(value), value
        if warm.allows(value):
            assert warm.check(value) == AllowedSources.parse(roots).check(value)


def test_forbidden_reveals_nothing_about_whether_the_target_exists(tree, allowed):
    messages = set()
    for value in ("/etc/passwd", "/etc/no-such-file-here", "s3://other/exists", "s3://other/missing"):
        with pytest.raises(BadInputError) as info:
            allowed.check(value)
        messages.add(str(info.value))
    assert messages == {f"forbidden: {FORBIDDEN_MESSAGE}"}


def test_check_resolves_relative_values_against_base_dir(tree, allowed):
    photos = tree / "data" / "photos"
    assert allowed.check("a.jpg", photos) == (photos / "a.jpg").as_uri()
    with pytest.raises(BadInputError, match="forbidden"):
        allowed.check("../../../../../../../../etc/passwd", photos)


def test_malformed_values_are_bad_uri_before_forbidden(allowed):
    with pytest.raises(BadInputError) as info:
        allowed.check("http://evil.example/x.jpg")
    assert info.value.code == "bad_uri"


def test_an_empty_allow_list_forbids_everything(tree):
    with pytest.raises(BadInputError, match="forbidden"):
        AllowedSources().check(str(tree / "data" / "photos" / "a.jpg"))


def test_from_env_adds_code_roots_and_lists_them_sorted(tree):
    env = {"FACEQ_ALLOWED_SOURCES": "s3://photos/, ,file:///srv/in/"}
    allowed = AllowedSources.from_env([tree / "data", "s3://store/faceq"], environ=env)
    assert allowed.roots == tuple(sorted(
        ["s3://photos/", Path(os.path.realpath("/srv/in")).as_uri(), (tree / "data").resolve().as_uri(),
         "s3://store/faceq/"]))
    assert allowed.allows("s3://store/faceq/jobs/j1/inputs/a.jpg")
    assert not allowed.allows("s3://store/faceqx/a.jpg")
    assert AllowedSources.from_env(environ={}).roots == ()


def test_with_roots_returns_a_larger_copy(tree):
    base = AllowedSources.parse("s3://photos/")
    more = base.with_roots(tree / "data2")
    assert not base.allows(str(tree / "data2" / "b.jpg"))
    assert more.allows(str(tree / "data2" / "b.jpg"))
    with pytest.raises(Exception):
        base._roots = frozenset()  # frozen


def test_a_root_reached_through_a_symlink_compares_by_real_path(tree):
    (tree / "alias").symlink_to(tree / "data")
    allowed = AllowedSources.parse(str(tree / "alias"))
    assert allowed.check(str(tree / "alias" / "photos" / "a.jpg")) == (tree / "data/photos/a.jpg").resolve().as_uri()
    assert allowed.allows(str(tree / "data" / "photos" / "a.jpg"))


@pytest.mark.parametrize("root", ["http://x/", "relative/dir", "S3://photos/", "s3:///x", "file://host/x"])
def test_malformed_configured_roots_are_config_errors(root):
    with pytest.raises(ConfigError, match="allowed source"):
        AllowedSources.parse(root)


@pytest.mark.parametrize(
    "path, root, expected",
    [("/data", "/data", True), ("/data/a", "/data", True), ("/data2/a", "/data", False),
     ("/data", "/data/a", False), ("/x", "/", True)],
)
def test_is_under_compares_whole_components(path, root, expected):
    assert is_under(path, root) is expected


@pytest.mark.parametrize(
    "uri, expected",
    [("s3://b1b/", ("b1b", "")), ("s3://b1b", ("b1b", "")), ("s3://b1b/p/q", ("b1b", "p/q/")),
     ("s3://b1b/p/", ("b1b", "p/"))],
)
def test_split_s3_prefix(uri, expected):
    assert split_s3_prefix(uri) == expected
