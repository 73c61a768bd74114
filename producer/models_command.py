"""``faceq models`` (what is installed, and what a worker here would load) and ``faceq models
fetch`` (download or copy, verify, install). Needs no broker and no storage: it is the first
command a new user runs, and the one an air-gapped GPU host runs with ``--from``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from faceq.errors import FaceqError
from faceq.modelfiles import listing, load_manifest
from faceq.outputs.placeholder import FETCH_HINT
from faceq.redact import redact_text
from faceq.settings import Settings


def add_parser(commands) -> None:
    models = commands.add_parser("models", help="the model files: list what is installed (JSON), or `fetch` them",
                                 description="Without a subcommand: the model folder's files, their sha256 and "
                                             "model id, and what a worker started here would load, as JSON.")
    actions = models.add_subparsers(dest="models_command")
    fetch = actions.add_parser("fetch", help="download (or copy from a mirror), verify and install the RTS "
                                             "checkpoint and YuNet into FACEQ_MODEL_DIR")
    fetch.add_argument("--from", dest="source", metavar="DIR_OR_URL",
                       help="a mirror: a folder holding the files under their names (e.g. a copied model folder), "
                            "or a base URL serving them at URL/<file name>")
    fetch.add_argument("--dir", type=Path, help="install here (default FACEQ_MODEL_DIR, else ~/.cache/faceq/models)")
    fetch.add_argument("--manifest", type=Path, help="JSON manifest replacing the built-in one (file names, URLs, "
                                                     "sha256): a mirror's own, or a test's")
    fetch.add_argument("--only", choices=("checkpoint", "detector"), action="append",
                       help="fetch only this file (repeatable)")
    fetch.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    model_dir = Path(getattr(args, "dir", None) or settings.model_dir).expanduser()
    if args.models_command == "fetch":
        return _fetch(args, model_dir, Path(settings.model_dir))
    print(json.dumps(_state(settings, model_dir), indent=2))
    return 0


def _state(settings: Settings, model_dir: Path) -> dict:
    files = listing(model_dir)
    weights = settings.model_weights
    checkpoint = next(f for f in files if f["role"] == "checkpoint")
    if os.environ.get("FACEQ_MODEL_WEIGHTS", "").strip():
        model = {"weights": weights, "from": "FACEQ_MODEL_WEIGHTS",
                 "model_id": "the checkpoint's sha256, computed when a worker loads it"}
    elif weights:
        model = {"weights": weights, "from": "model folder", "model_id": checkpoint.get("model_id")}
    else:
        model = {"weights": None, "from": None, "model_id": f"rts-{settings.model_arch}-random-seed{settings.model_seed}",
                 "warning": f"no checkpoint: a worker here runs SEEDED RANDOM weights (placeholders); {FETCH_HINT}"}
    detector = {"weights": settings.detector_weights,
                "from": "FACEQ_DETECTOR_WEIGHTS" if os.environ.get("FACEQ_DETECTOR_WEIGHTS", "").strip()
                else "model folder" if settings.detector_weights else None}
    return {"model_dir": str(model_dir), "files": files, "worker_would_load": {"model": model, "detector": detector}}


def _fetch(args: argparse.Namespace, model_dir: Path, settings_dir: Path) -> int:
    from faceq.producer.models_fetch import fetch

    progress = not args.no_progress and sys.stderr.isatty()
    manifest = load_manifest(args.manifest)
    failed = 0
    for entry in manifest:  # each file on its own: one that fails does not keep the other out
        if args.only and entry.role not in args.only:
            continue
        try:
            (item,) = fetch(model_dir, manifest, source=args.source, progress=progress, roles=(entry.role,))
        except FaceqError as exc:
            print(f"error: {redact_text(str(exc))}", file=sys.stderr)
            failed += 1
            continue
        checked = "strict load passed" if item.load_checked else "sha256 checked"
        extra = f"  model_id {item.model_id}" if item.model_id else ""
        print(f"{item.role:10} {item.path}  ({item.how}; {checked}; sha256 {item.sha256}){extra}")
    if failed:
        return 1
    hint = "" if model_dir.resolve() == settings_dir.resolve() else f" once FACEQ_MODEL_DIR={model_dir} is set"
    print(f"installed in {model_dir}: workers, `make demo` and the client started here find them{hint}; "
          f"FACEQ_MODEL_WEIGHTS / FACEQ_DETECTOR_WEIGHTS still override")
    return 0
