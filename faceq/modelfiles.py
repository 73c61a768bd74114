"""Where the model files live, what they must be, and which are installed (no torch, no network).

``faceq models fetch`` (``faceq.producer.models_fetch``) puts DAMO's RTS checkpoint and OpenCV Zoo's YuNet
in one folder, ``FACEQ_MODEL_DIR`` (default ``$XDG_CACHE_HOME/faceq/models``, else
``~/.cache/faceq/models``), and records what it verified in ``installed.json`` there. The
settings look there when ``FACEQ_MODEL_WEIGHTS`` / ``FACEQ_DETECTOR_WEIGHTS`` are unset, so
workers, ``make demo`` and the client find fetched files without any variable; the
variables still win.

What is fetched is a manifest: per file its role, name, URL and sha256. The built-in one
pins the hub's revision and YuNet's hash; a JSON manifest (``--manifest``) replaces it for a
mirror or a test. The RTS checkpoint's sha256 is not pinned (it could not be downloaded where
this was written): fetch records the hash of the file that passed the strict state-dict load,
and that hash is the ``model_id`` every row carries.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote

from faceq.errors import ConfigError

MODELSCOPE_ENDPOINT = "https://www.modelscope.cn"
RTS_MODEL = "damo/cv_ir_face-recognition-ood_rts"
RTS_REVISION = "v2.5"  # the tag FaceChain pins for this model; a tag, so the file cannot change under it
CHECKPOINT_FILE = "pytorch_model.pt"
CHECKPOINT_ARCH = "ir_se_64"
YUNET_FILE = "face_detection_yunet_2023mar.onnx"
YUNET_URL = ("https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/"
             "face_detection_yunet_2023mar.onnx")
YUNET_SHA256 = "ebafce4e3c118d6554634be5c27ab333b4c047a9a8c3faf1d7cf93101c22f0f0"
RECORD_FILE = "installed.json"
ROLES = ("checkpoint", "detector")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ModelFile:
    """One file to fetch. ``sha256`` None: not pinned (the checkpoint is then verified by a strict
    load and its hash recorded). ``arch``: the network a checkpoint fits."""

    role: str  # "checkpoint" (the RTS network's weights) or "detector" (YuNet)
    file: str  # its name in the model folder and in a mirror
    url: str
    sha256: str | None = None
    arch: str | None = None


def modelscope_url(model: str, revision: str, file_path: str, endpoint: str = MODELSCOPE_ENDPOINT) -> str:
    """The file URL of ModelScope's hub API, as its own client builds it
    (``modelscope.hub.file_download.get_file_download_url``)."""
    return f"{endpoint}/api/v1/models/{model}/repo?Revision={quote(revision)}&FilePath={quote(file_path)}"


DEFAULT_MANIFEST: tuple[ModelFile, ...] = (
    ModelFile("checkpoint", CHECKPOINT_FILE, modelscope_url(RTS_MODEL, RTS_REVISION, CHECKPOINT_FILE),
              sha256=None, arch=CHECKPOINT_ARCH),
    ModelFile("detector", YUNET_FILE, YUNET_URL, sha256=YUNET_SHA256),
)


def load_manifest(path: str | Path | None) -> tuple[ModelFile, ...]:
    """The built-in manifest, or the one in a JSON file: ``{"files": [{"role", "file", "url",
    "sha256", "arch"}, …]}`` (a mirror's own URLs and hashes, or a test's)."""
    if path is None:
        return DEFAULT_MANIFEST
    try:
        data = json.loads(Path(path).read_text())
        files = tuple(ModelFile(**{k: entry.get(k) for k in ("role", "file", "url", "sha256", "arch")})
                      for entry in data["files"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"model manifest {path}: not a manifest ({type(exc).__name__}: {exc}); expected "
                          f'{{"files": [{{"role", "file", "url", "sha256"}}, …]}}') from None
    for entry in files:
        if entry.role not in ROLES or not entry.file or Path(entry.file).name != entry.file or not entry.url:
            raise ConfigError(f"model manifest {path}: {entry.file!r} needs a role ({', '.join(ROLES)}), a plain "
                              f"file name and a URL")
        if entry.sha256 is not None and not _SHA256.match(entry.sha256):
            raise ConfigError(f"model manifest {path}: {entry.file}: sha256 must be 64 lower-case hex digits")
    return files


def default_model_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "faceq" / "models"


def model_id_for(arch: str, sha256: str) -> str:
    """The ``model_id`` rows carry for a checkpoint (``faceq.models.weights.load_model`` uses it too)."""
    return f"rts-{arch}-sha256:{sha256[:16]}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def read_record(model_dir: Path) -> dict[str, dict]:
    """What fetch verified, by role (empty when nothing was fetched or the record is unreadable)."""
    try:
        record = json.loads((Path(model_dir) / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def write_record(model_dir: Path, role: str, entry: dict) -> None:
    """Record one verified file (written to a temporary name, then renamed: never half a record)."""
    record = read_record(model_dir)
    record[role] = entry
    tmp = Path(model_dir) / f".{RECORD_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, Path(model_dir) / RECORD_FILE)


def installed_checkpoint(model_dir: Path, arch: str) -> str | None:
    """The fetched checkpoint for ``arch`` in ``model_dir``, if there is one. A file put there by
    hand (no record) is taken for the published network (ir_se_64); the worker loads it strictly."""
    entry = read_record(model_dir).get("checkpoint")
    name = entry.get("file", CHECKPOINT_FILE) if isinstance(entry, dict) else CHECKPOINT_FILE
    fits = entry.get("arch") == arch if isinstance(entry, dict) else arch == CHECKPOINT_ARCH
    path = Path(model_dir) / name
    return str(path) if fits and path.is_file() else None


def installed_detector(model_dir: Path) -> str | None:
    """The fetched (or hand-placed) YuNet in ``model_dir``, if there is one."""
    entry = read_record(model_dir).get("detector")
    path = Path(model_dir) / (entry.get("file", YUNET_FILE) if isinstance(entry, dict) else YUNET_FILE)
    return str(path) if path.is_file() else None


def listing(model_dir: Path, manifest: tuple[ModelFile, ...] = DEFAULT_MANIFEST) -> list[dict]:
    """Each file of the manifest: installed or not, where, its sha256 and (checkpoint) model id."""
    record = read_record(model_dir)
    rows = []
    for entry in manifest:
        known = record.get(entry.role) if isinstance(record.get(entry.role), dict) else {}
        path = Path(model_dir) / known.get("file", entry.file)
        row = {"role": entry.role, "file": path.name, "path": str(path), "installed": path.is_file(),
               "pinned_sha256": entry.sha256, "url": entry.url}
        if path.is_file():
            same = known.get("size") == path.stat().st_size and known.get("sha256")
            sha = known["sha256"] if same else sha256_file(path)
            row.update(sha256=sha, size=path.stat().st_size, verified=bool(same),
                       source=known.get("source") if same else "placed by hand (not verified by fetch)")
            if entry.role == "checkpoint":
                row["arch"] = known.get("arch", entry.arch or CHECKPOINT_ARCH)
                row["model_id"] = model_id_for(row["arch"], sha)
        rows.append(row)
    return rows


def as_json(entry: ModelFile) -> dict:
    return asdict(entry)
