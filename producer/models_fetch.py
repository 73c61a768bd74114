"""Fetch the model files into the model folder, verified, resumably (``faceq models fetch``).

Each file of the manifest (``faceq.modelfiles``) is downloaded from its URL, or taken from a
mirror (``source``: a folder, e.g. a copied model folder on an air-gapped GPU host, or a base
URL whose ``/<file name>`` serves it), into ``<file>.part``. An interrupted download keeps the
part and the next run asks for the rest (HTTP ``Range``); a server that ignores the range
sends it whole again. Only a verified file is renamed to its final name: a pinned sha256 must
match, and the checkpoint must load strictly into the RTS network with the repo's own loader
(``faceq.models.weights``, imported only here and only when torch is installed). A bad file is
deleted, never installed. Expected failures are one-line ``ModelError``s saying what to do.
"""

from __future__ import annotations

import http.client
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote, urlsplit

from faceq.errors import ModelError
from faceq.modelfiles import (
    CHECKPOINT_ARCH, DEFAULT_MANIFEST, ModelFile, model_id_for, read_record, sha256_file, write_record,
)
from faceq.redact import redact_url

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 30.0
BLOCK = 1 << 20


@dataclass(frozen=True)
class Installed:
    role: str
    path: Path
    sha256: str
    how: str  # "downloaded", "copied", "already installed", "verified in place"
    model_id: str | None = None  # the checkpoint's: what every row it produces carries
    load_checked: bool = False  # the checkpoint passed the strict state-dict load here


def fetch(model_dir: Path, manifest: tuple[ModelFile, ...] = DEFAULT_MANIFEST, source: str | None = None,
          progress: bool = False, roles: tuple[str, ...] | None = None) -> list[Installed]:
    """Install every file of ``manifest`` (or only ``roles``) into ``model_dir``; returns what is there."""
    model_dir = Path(model_dir).expanduser()
    model_dir.mkdir(parents=True, exist_ok=True)
    return [_install(entry, model_dir, source, progress) for entry in manifest if not roles or entry.role in roles]


def _install(entry: ModelFile, model_dir: Path, source: str | None, progress: bool) -> Installed:
    dest = model_dir / entry.file
    if dest.is_file():
        done = _already_installed(entry, dest)
        if done is not None:
            return done
    local = _mirror_file(source, entry) if source and not _is_url(source) else None
    if local is not None and local.resolve() == dest.resolve():  # the file was put in place by hand
        return _record(entry, dest, _verify(entry, dest, str(local), delete=False), "verified in place")
    part = model_dir / f"{entry.file}.part"
    if local is not None:
        _copy(local, part, progress, entry.file)
        origin, how = str(local), "copied"
    else:
        origin = entry.url if not source else f"{source.rstrip('/')}/{quote(entry.file)}"
        _download(origin, part, progress, entry.file, dest)
        how = "downloaded"
    verified = _verify(entry, part, origin, delete=True)
    os.replace(part, dest)
    return _record(entry, dest, verified, how)


def _already_installed(entry: ModelFile, dest: Path) -> Installed | None:
    """The installed file, when it is still the verified one (size and sha256 as recorded, and the
    pinned hash if any); None when it must be fetched again."""
    known = read_record(dest.parent).get(entry.role) or {}
    if known.get("file") != entry.file or known.get("size") != dest.stat().st_size:
        return None
    sha = sha256_file(dest)
    if sha != known.get("sha256") or (entry.sha256 and sha != entry.sha256):
        return None
    return Installed(entry.role, dest, sha, "already installed", known.get("model_id"),
                     bool(known.get("load_checked")))


def _is_url(source: str) -> bool:
    return urlsplit(source).scheme in ("http", "https")


def _mirror_file(source: str, entry: ModelFile) -> Path:
    folder = Path(source.removeprefix("file://")).expanduser()
    if not folder.is_dir():
        raise ModelError(f"--from {source}: no such folder (give a folder holding {entry.file}, or an http(s) URL)")
    path = folder / entry.file
    if not path.is_file() and entry.sha256:  # a copy under another name: its pinned hash says which
        path = next((p for p in sorted(folder.glob(f"*{Path(entry.file).suffix}"))
                     if p.is_file() and sha256_file(p) == entry.sha256), path)
    if not path.is_file():
        raise ModelError(f"--from {source}: no {entry.file} there (the mirror needs the files under their names: "
                         f"{entry.file})")
    return path


def _copy(src: Path, part: Path, progress: bool, label: str) -> None:
    from tqdm import tqdm

    with src.open("rb") as fin, part.open("wb") as fout, \
            tqdm(total=src.stat().st_size, unit="B", unit_scale=True, desc=label, disable=not progress) as bar:
        while block := fin.read(BLOCK):
            fout.write(block)
            bar.update(len(block))


def _download(url: str, part: Path, progress: bool, label: str, dest: Path) -> None:
    """``url`` into ``part``, continuing a part left by an interrupted run (HTTP Range)."""
    from tqdm import tqdm

    have = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "faceq-models-fetch", **({"Range": f"bytes={have}-"} if have else {})}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_SECONDS)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing after what we have: the part is whole, its hash decides
            return
        raise ModelError(f"{redact_url(url)} answered HTTP {exc.code} {exc.reason}: {_by_hand(url, dest)}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ModelError(f"cannot reach {urlsplit(url).hostname} ({reason}): {_by_hand(url, dest)}") from None
    with response:
        length = response.headers.get("Content-Length")
        if response.status == 206 and _range_start(response.headers.get("Content-Range")) == have:
            mode, total = "ab", have + int(length) if length else None
        else:  # the server sent the whole file (it ignored the range, or there was none)
            mode, have, total = "wb", 0, int(length) if length else None
        with part.open(mode) as fh, tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=label,
                                         disable=not progress) as bar:
            try:
                while block := response.read(BLOCK):
                    fh.write(block)
                    bar.update(len(block))
            except (http.client.HTTPException, OSError) as exc:
                fh.flush()
                raise _interrupted(label, part, total, type(exc).__name__) from None
    if total is not None and part.stat().st_size < total:
        raise _interrupted(label, part, total, "the connection closed early")


def _range_start(content_range: str | None) -> int | None:
    try:  # "bytes 1000-1999/2000"
        return int(content_range.split()[1].split("-")[0])
    except (AttributeError, IndexError, ValueError):
        return None


def _interrupted(label: str, part: Path, total: int | None, why: str) -> ModelError:
    return ModelError(f"the download of {label} stopped at {part.stat().st_size} of {total or '?'} bytes ({why}); "
                      f"run the same command again to resume it (kept in {part})")


def _by_hand(url: str, dest: Path) -> str:
    return (f"download {redact_url(url)} by hand into a folder as {dest.name}, then run "
            f"`faceq models fetch --from THAT_FOLDER` (it is verified and installed in {dest.parent})")


def _verify(entry: ModelFile, path: Path, origin: str, delete: bool) -> dict:
    """The record of a file that passed: pinned sha256, and for the checkpoint the strict load.
    A file that fails is deleted when fetch wrote it (``delete``), never when it is the user's."""
    sha = sha256_file(path)
    record = {"file": entry.file, "sha256": sha, "size": path.stat().st_size, "source": redact_url(origin),
              "installed_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    try:
        if entry.sha256 and sha != entry.sha256:
            raise ModelError(f"{entry.file} from {redact_url(origin)} has sha256 {sha}, not the pinned "
                             f"{entry.sha256}: it is not the expected file (a changed or corrupted copy)")
        if entry.role == "checkpoint":
            arch = entry.arch or CHECKPOINT_ARCH
            record.update(arch=arch, model_id=model_id_for(arch, sha), load_checked=_strict_load(path, arch, origin))
    except ModelError as exc:
        if delete:
            path.unlink(missing_ok=True)
        raise ModelError(f"{exc}; {'it was deleted, nothing was installed' if delete else 'nothing was installed'}") \
            from None
    return record


def _strict_load(path: Path, arch: str, origin: str) -> bool:
    """The checkpoint through the workers' own loader (strict: every key, every shape). False when
    torch is not installed here: the worker still loads it strictly before taking a task."""
    try:
        from faceq.models.weights import load_model
    except ImportError:
        log.warning("torch is not installed here: %s is checked by its hash only; the worker loads it strictly",
                    path.name)
        return False
    try:
        load_model(str(path), arch)
    except ModelError as exc:
        why = str(exc).split(": ", 1)[-1] if str(exc).startswith("FACEQ_MODEL_WEIGHTS=") else str(exc)
        why = " ".join(why.split())  # torch's messages span lines: one line, bounded
        why = why if len(why) <= 200 else why[:199] + "…)"
        raise ModelError(f"{path.name.removesuffix('.part')} from {redact_url(origin)} is not an RTS {arch} "
                         f"checkpoint: {why}") from None
    return True


def _record(entry: ModelFile, dest: Path, record: dict, how: str) -> Installed:
    write_record(dest.parent, entry.role, record)
    return Installed(entry.role, dest, record["sha256"], how, record.get("model_id"),
                     bool(record.get("load_checked")))

