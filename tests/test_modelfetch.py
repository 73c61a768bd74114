"""`faceq models fetch` against a loopback server that answers the hubs' own URLs.

The server serves what the code requests: ModelScope's file API
(``/api/v1/models/<id>/repo?Revision=…&FilePath=…``) and GitHub's raw path for YuNet, which
redirects to its LFS media host as github.com does. It honours HTTP ``Range`` and can cut a
download in the middle, serve a truncated file or a wrong one. The "checkpoint" is a seeded
random state dict saved in the reference layout (the real one could not be downloaded here),
so the manifest is overridden with the host swapped and, where a test needs it, a pinned hash.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import torch

from faceq.errors import ModelError
from faceq.producer.models_fetch import fetch
from faceq.modelfiles import (
    CHECKPOINT_FILE, DEFAULT_MANIFEST, MODELSCOPE_ENDPOINT, RECORD_FILE, RTS_MODEL, RTS_REVISION, YUNET_FILE,
    YUNET_SHA256, as_json, installed_checkpoint, installed_detector, model_id_for,
)
from devstack.processes import free_port
from faceq.settings import Settings
from faceq.models.weights import load_model
from tests.conftest import REPO, YUNET

HUB_PATH = f"/api/v1/models/{RTS_MODEL}/repo"
GITHUB_RAW = "/opencv/opencv_zoo/raw/main/models/face_detection_yunet/face_detection_yunet_2023mar.onnx"
LFS_MEDIA = "/media/opencv/opencv_zoo/main/models/face_detection_yunet/face_detection_yunet_2023mar.onnx"


def checkpoint_bytes(arch: str = "ir_se_tiny", seed: int = 3) -> bytes:
    """A seeded random state dict of the RTS network, saved as ModelScope's pytorch_model.pt is."""
    buffer = io.BytesIO()
    torch.save(load_model(None, arch, seed=seed).model.state_dict(), buffer)
    return buffer.getvalue()


class Hub:
    """A loopback HTTP server answering ModelScope's file API and GitHub's raw/LFS paths."""

    def __init__(self, checkpoint: bytes, yunet: bytes):
        self.files = {"checkpoint": checkpoint, "yunet": yunet}
        self.cut_after: dict[str, int] = {}  # file → bytes sent before the connection is dropped (once)
        self.requests: list[dict] = []
        self.sent: dict[str, int] = {"checkpoint": 0, "yunet": 0}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802
                parts = urlsplit(self.path)
                hub.requests.append({"path": parts.path, "query": parse_qs(parts.query),
                                     "range": self.headers.get("Range")})
                if parts.path == GITHUB_RAW:  # github.com sends LFS files from its media host
                    self.send_response(302)
                    self.send_header("Location", f"http://127.0.0.1:{hub.port}{LFS_MEDIA}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                name = {HUB_PATH: "checkpoint", LFS_MEDIA: "yunet"}.get(parts.path)
                query = parse_qs(parts.query)
                if name is None or (name == "checkpoint" and query != {"Revision": [RTS_REVISION],
                                                                       "FilePath": [CHECKPOINT_FILE]}):
                    self.send_error(404)
                    return
                data, start = hub.files[name], 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                cut = hub.cut_after.pop(name, None)
                if cut is not None:
                    body = body[:cut]
                self.wfile.write(body)
                hub.sent[name] += len(body)
                if cut is not None:
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def manifest(self, path: Path, **changes: dict) -> Path:
        """The built-in manifest with the hosts swapped for this server (same paths and query)."""
        entries = []
        for entry in DEFAULT_MANIFEST:
            entry = replace(entry, url=entry.url.replace(MODELSCOPE_ENDPOINT, self.base)
                            .replace("https://github.com", self.base), **changes.get(entry.role, {}))
            entries.append(as_json(entry))
        path.write_text(json.dumps({"files": entries}))
        return path

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def tiny() -> bytes:
    return checkpoint_bytes()


@pytest.fixture
def hub(tiny):
    server = Hub(tiny, YUNET.read_bytes() if YUNET.is_file() else b"not yunet")
    yield server
    server.close()


def faceq(*args: str, model_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FACEQ_MODEL_DIR": str(model_dir), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "faceq.producer", *args], env=env, capture_output=True, text=True,
                          timeout=300)


TINY = {"checkpoint": {"arch": "ir_se_tiny"}}


@pytest.mark.skipif(not YUNET.is_file(), reason="YuNet test copy not found beside the checkout")
def test_fetch_downloads_both_files_from_the_hub_urls_verifies_and_lists_them(tmp_path):
    big = checkpoint_bytes("ir_se_64", seed=11)  # the published architecture, full size (≈ 191 MB)
    hub = Hub(big, YUNET.read_bytes())
    try:
        model_dir = tmp_path / "models"
        done = faceq("models", "fetch", "--manifest", str(hub.manifest(tmp_path / "m.json")), model_dir=model_dir)
    finally:
        hub.close()
    assert done.returncode == 0, done.stderr
    sha = hashlib.sha256(big).hexdigest()
    model_id = model_id_for("ir_se_64", sha)
    # exactly the hub's file API for the pinned revision, and GitHub's raw path (redirected to LFS)
    assert {"path": HUB_PATH, "query": {"Revision": ["v2.5"], "FilePath": ["pytorch_model.pt"]}, "range": None} \
        in hub.requests
    assert [r["path"] for r in hub.requests if "yunet" in r["path"]] == [GITHUB_RAW, LFS_MEDIA]
    assert (model_dir / CHECKPOINT_FILE).read_bytes() == big
    assert hashlib.sha256((model_dir / YUNET_FILE).read_bytes()).hexdigest() == YUNET_SHA256
    assert not list(model_dir.glob("*.part"))
    assert f"model_id {model_id}" in done.stdout and "strict load passed" in done.stdout
    record = json.loads((model_dir / RECORD_FILE).read_text())
    assert record["checkpoint"]["model_id"] == model_id and record["checkpoint"]["load_checked"] is True
    # the worker's own loader gives the same id
    assert load_model(str(model_dir / CHECKPOINT_FILE), "ir_se_64").model_id == model_id

    listed = faceq("models", model_dir=model_dir)
    assert listed.returncode == 0, listed.stderr
    state = json.loads(listed.stdout)
    checkpoint = next(f for f in state["files"] if f["role"] == "checkpoint")
    assert checkpoint["installed"] and checkpoint["model_id"] == model_id and checkpoint["verified"]
    assert state["worker_would_load"]["model"] == {"weights": str(model_dir / CHECKPOINT_FILE),
                                                   "from": "model folder", "model_id": model_id}
    assert state["worker_would_load"]["detector"]["weights"] == str(model_dir / YUNET_FILE)

    again = faceq("models", "fetch", "--manifest", str(tmp_path / "m.json"), model_dir=model_dir)
    assert again.returncode == 0 and again.stdout.count("already installed") == 2  # nothing downloaded twice


def test_a_wrong_hash_installs_nothing_and_says_so_in_one_line(hub, tmp_path):
    manifest = hub.manifest(tmp_path / "m.json", checkpoint={"arch": "ir_se_tiny", "sha256": "0" * 64},
                            detector={"sha256": "1" * 64})
    model_dir = tmp_path / "models"
    done = faceq("models", "fetch", "--manifest", str(manifest), model_dir=model_dir)
    assert done.returncode == 1
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 2 and all(e.startswith("error: ") and "not the pinned" in e for e in errors), done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in model_dir.iterdir()) == []  # no file, no part, no record


def test_a_truncated_checkpoint_fails_the_strict_load_and_is_deleted(hub, tiny, tmp_path):
    hub.files["checkpoint"] = tiny[: len(tiny) * 3 // 5]  # a mirror holding a cut-off copy, served "whole"
    model_dir = tmp_path / "models"
    done = faceq("models", "fetch", "--only", "checkpoint", "--manifest", str(hub.manifest(tmp_path / "m.json", **TINY)),
                 model_dir=model_dir)
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert "is not an RTS ir_se_tiny checkpoint" in line and "it was deleted, nothing was installed" in line
    assert not (model_dir / CHECKPOINT_FILE).exists() and not list(model_dir.glob("*.part"))
    assert installed_checkpoint(model_dir, "ir_se_tiny") is None


def test_an_interrupted_download_resumes_where_it_stopped(hub, tiny, tmp_path):
    manifest = hub.manifest(tmp_path / "m.json", **TINY)
    model_dir = tmp_path / "models"
    half = len(tiny) // 2
    hub.cut_after["checkpoint"] = half
    first = faceq("models", "fetch", "--only", "checkpoint", "--manifest", str(manifest), model_dir=model_dir)
    assert first.returncode == 1
    (line,) = first.stderr.strip().splitlines()
    assert f"stopped at {half} of {len(tiny)} bytes" in line and "run the same command again to resume" in line
    assert (model_dir / f"{CHECKPOINT_FILE}.part").stat().st_size == half
    assert not (model_dir / CHECKPOINT_FILE).exists()

    second = faceq("models", "fetch", "--only", "checkpoint", "--manifest", str(manifest), model_dir=model_dir)
    assert second.returncode == 0, second.stderr
    assert hub.requests[-1]["range"] == f"bytes={half}-"  # asked only for the rest
    assert hub.sent["checkpoint"] == len(tiny)  # every byte crossed the wire once
    assert (model_dir / CHECKPOINT_FILE).read_bytes() == tiny
    assert model_id_for("ir_se_tiny", hashlib.sha256(tiny).hexdigest()) in second.stdout


def test_an_unreachable_hub_says_what_to_download_and_where_to_put_it(tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"
    entries = [as_json(replace(e, url=e.url.replace(MODELSCOPE_ENDPOINT, closed)
                               .replace("https://github.com", closed))) for e in DEFAULT_MANIFEST]
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"files": entries}))
    model_dir = tmp_path / "models"
    done = faceq("models", "fetch", "--manifest", str(manifest), model_dir=model_dir)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    checkpoint_line = done.stderr.strip().splitlines()[0]
    assert checkpoint_line.startswith("error: cannot reach 127.0.0.1")
    assert f"download {closed}{HUB_PATH}?Revision=v2.5&FilePath=pytorch_model.pt by hand" in checkpoint_line
    assert "as pytorch_model.pt" in checkpoint_line and "faceq models fetch --from" in checkpoint_line
    assert str(model_dir) in checkpoint_line


def test_from_a_mirror_folder_or_url_installs_what_workers_then_find(hub, tiny, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / CHECKPOINT_FILE).write_bytes(tiny)
    manifest = hub.manifest(tmp_path / "m.json", **TINY)
    by_folder = tmp_path / "from-folder"
    done = faceq("models", "fetch", "--only", "checkpoint", "--from", str(mirror), "--manifest", str(manifest),
                 model_dir=by_folder)
    assert done.returncode == 0, done.stderr
    assert "copied" in done.stdout and not hub.requests  # nothing asked of the network

    static = ThreadingHTTPServer(("127.0.0.1", 0), _static_handler(mirror))
    threading.Thread(target=static.serve_forever, daemon=True).start()
    try:
        by_url = tmp_path / "from-url"
        installed = fetch(by_url, tuple(replace(e, arch="ir_se_tiny") for e in DEFAULT_MANIFEST
                                        if e.role == "checkpoint"),
                          source=f"http://127.0.0.1:{static.server_address[1]}/models/")
    finally:
        static.shutdown()
        static.server_close()
    assert [i.how for i in installed] == ["downloaded"] and (by_url / CHECKPOINT_FILE).read_bytes() == tiny

    os.environ.pop("FACEQ_MODEL_WEIGHTS", None)
    os.environ["FACEQ_MODEL_ARCH"] = "ir_se_tiny"
    try:
        os.environ["FACEQ_MODEL_DIR"] = str(by_folder)
        assert Settings.from_env().model_weights == str(by_folder / CHECKPOINT_FILE)
        os.environ["FACEQ_MODEL_WEIGHTS"] = "/elsewhere/pytorch_model.pt"  # the variable still wins
        assert Settings.from_env().model_weights == "/elsewhere/pytorch_model.pt"
        del os.environ["FACEQ_MODEL_WEIGHTS"]
        os.environ["FACEQ_MODEL_ARCH"] = "ir_se_64"  # a checkpoint of another network is not taken
        assert Settings.from_env().model_weights is None
    finally:
        os.environ.pop("FACEQ_MODEL_ARCH", None)
        os.environ["FACEQ_MODEL_DIR"] = str(Path(REPO / "build" / "tests-no-model-files"))


def test_a_file_placed_by_hand_is_found_and_verified_in_place(tmp_path):
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    if YUNET.is_file():
        (model_dir / YUNET_FILE).write_bytes(YUNET.read_bytes())
        assert installed_detector(model_dir) == str(model_dir / YUNET_FILE)
        (item,) = fetch(model_dir, tuple(e for e in DEFAULT_MANIFEST if e.role == "detector"), source=str(model_dir))
        assert item.how == "verified in place" and item.sha256 == YUNET_SHA256
    (model_dir / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    assert installed_checkpoint(model_dir, "ir_se_64") == str(model_dir / CHECKPOINT_FILE)  # the worker refuses it
    with pytest.raises(ModelError, match="is not an RTS ir_se_64 checkpoint.*nothing was installed$"):
        fetch(model_dir, tuple(e for e in DEFAULT_MANIFEST if e.role == "checkpoint"), source=str(model_dir))
    assert (model_dir / CHECKPOINT_FILE).exists()  # the user's own file is never deleted


def _static_handler(folder: Path):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            path = folder / urlsplit(self.path).path.removeprefix("/models/")
            if not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
