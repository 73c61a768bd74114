"""Real results on day one (issue 23), with real processes: after `faceq models fetch --from
MIRROR`, `make demo`'s job carries the checkpoint's hash as its model id and no warning; with
nothing fetched, every surface a person decides from says the results are placeholders (the
summary the CLI prints, `faceq status`, review.csv, report.html, the review page, the client's
rows, the task result Flower shows), and the guidance stops calling a random score clear."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import threading
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from kombu import Connection

from faceq.outputs.guidance import explain
from faceq.outputs.placeholder import ITEM_NOTE, RANDOM_WARNING
from faceq.modelfiles import CHECKPOINT_FILE, model_id_for
from faceq.settings import Settings
from faceq.storage.store import open_storage
from faceq.producer.client import Client
from faceq.producer.review_server import ReviewServer
from devstack.samples import write_sample_set
from tests.conftest import REPO, job_rows, redis_and_worker, write_csv
from tests.test_modelfetch import checkpoint_bytes

pytestmark = pytest.mark.integration
ROUNDED_MEDIAN = re.compile(r"quality:\s+median (\d+\.\d\d)\s")


def _demo(tmp_path: Path, model_dir: Path) -> subprocess.CompletedProcess:
    """`make demo` (python -m devstack.demo) in a fresh folder, as a new user runs it (tiny network for speed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEQ_")}
    env.update(FACEQ_MODEL_DIR=str(model_dir), FACEQ_MODEL_ARCH="ir_se_tiny", PYTHONPATH=str(REPO))
    tmp_path.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "devstack.demo"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)


def _job_id(stdout: str) -> str:
    return re.search(r"^job (\S+) done:", stdout, re.M).group(1)


def test_after_fetch_from_a_mirror_the_demo_gives_real_model_ids_and_without_it_says_placeholder(tmp_path):
    # a mirror folder, as copied to an air-gapped host (the checkpoint: seeded, in the reference layout)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    checkpoint = checkpoint_bytes("ir_se_tiny", seed=21)
    (mirror / CHECKPOINT_FILE).write_bytes(checkpoint)
    manifest = tmp_path / "manifest.json"  # the built-in manifest, for the tiny test network
    manifest.write_text(json.dumps({"files": [{"role": "checkpoint", "file": CHECKPOINT_FILE,
                                               "url": "https://unused.invalid/", "sha256": None,
                                               "arch": "ir_se_tiny"}]}))
    model_dir = tmp_path / "models"
    fetched = subprocess.run([sys.executable, "-m", "faceq.producer", "models", "fetch", "--from", str(mirror),
                              "--manifest", str(manifest)], env={**os.environ, "FACEQ_MODEL_DIR": str(model_dir)},
                             capture_output=True, text=True, timeout=120)
    assert fetched.returncode == 0, fetched.stderr

    real = _demo(tmp_path / "real", model_dir)
    assert real.returncode == 0, real.stdout + real.stderr
    model_id = model_id_for("ir_se_tiny", hashlib.sha256(checkpoint).hexdigest())
    assert f"model: RTS checkpoint {model_dir / CHECKPOINT_FILE}" in real.stdout
    assert "PLACEHOLDER" not in real.stdout and "WARNING" not in real.stdout
    assert ROUNDED_MEDIAN.search(real.stdout), real.stdout
    store = open_storage((tmp_path / "real" / "demo-output" / "store").as_uri())
    rows = job_rows(store, _job_id(real.stdout))
    assert set(rows.column("model_id").to_pylist()) == {model_id}

    placeholder = _demo(tmp_path / "none", tmp_path / "empty-model-dir")
    assert placeholder.returncode == 0, placeholder.stdout + placeholder.stderr
    assert "every score below is a PLACEHOLDER" in placeholder.stdout and "`faceq models fetch`" in placeholder.stdout
    assert placeholder.stdout.count(RANDOM_WARNING) == 2  # under the "done" line and last
    median = ROUNDED_MEDIAN.search(placeholder.stdout)
    assert median, placeholder.stdout  # quality 1.03, never 1.0307400226593018
    assert "random-seed0, a placeholder)" in placeholder.stdout


class FlowerFeed(threading.Thread):
    """Task events as Flower receives them, from one receiver bound before the job starts (the
    ``result`` of a task-succeeded event is what Flower shows)."""

    def __init__(self, broker_url: str):
        super().__init__(daemon=True)
        self.broker_url, self.succeeded, self.ready, self.receiver = broker_url, [], threading.Event(), None

    def run(self) -> None:
        from faceq.workers.app import app

        with Connection(self.broker_url) as connection:
            self.receiver = app.events.Receiver(connection, handlers={"task-succeeded": self.succeeded.append})
            bound = self.receiver.on_consume_ready

            def ready(*args, **kwargs):
                bound(*args, **kwargs)
                self.ready.set()

            self.receiver.on_consume_ready = ready
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def stop(self) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True
        self.join(timeout=10)


def test_every_surface_says_placeholder_under_random_weights(tmp_path):
    samples = tmp_path / "samples"
    expected = write_sample_set(samples, n_good=12)
    good = sorted(k for k, v in expected.items() if v == "ok")
    broken = sorted(k for k, v in expected.items() if v != "ok")
    pairs = [[f"p{i}", good[i], good[i + 1]] for i in range(0, 10, 2)] + [["p-broken", good[0], broken[0]]]
    manifest = write_csv(samples / "pairs.csv", ["pair_id", "image_a", "image_b"], pairs)
    # random weights score every face ≈ 1 and every pair nearly parallel: with the match threshold out of
    # reach every pair is a (model-made) grey-zone flag, beside the broken pair's real one
    with redis_and_worker(tmp_path, "placeholder-worker", (tmp_path / "store").as_uri(),
                          FACEQ_MODES="crop", FACEQ_MATCH_SIMILARITY="1.5") as (env, _):
        flower = FlowerFeed(env["FACEQ_BROKER_URL"])
        flower.start()
        assert flower.ready.wait(30)
        try:
            done = subprocess.run([sys.executable, "-m", "faceq.producer", "compare", str(manifest), "--job-id",
                                   "placeholder-pairs", "--wait", "--no-progress"], env=env,
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr
            assert done.stdout.count(RANDOM_WARNING) == 2 and ROUNDED_MEDIAN.search(done.stdout), done.stdout

            status = subprocess.run([sys.executable, "-m", "faceq.producer", "status", "placeholder-pairs", "--json"],
                                    env=env,
                                    capture_output=True, text=True, timeout=60)
            state = json.loads(status.stdout)
            assert state["random_weights"] is True and state["warning"] == RANDOM_WARNING

            client = Client(replace(Settings.from_env(), broker_url=env["FACEQ_BROKER_URL"],
                                    storage_url=env["FACEQ_STORAGE_URL"]))
            review = {r["item_id"]: r for r in csv.DictReader(io.StringIO(_output(client, "placeholder-pairs",
                                                                                  "review")))}
            assert sorted(review) == sorted(p[0] for p in pairs)
            for pair_id, line in review.items():
                assert line["placeholder"] == ITEM_NOTE
                if pair_id == "p-broken":  # an unreadable file is a real finding whatever the weights
                    assert line["section"] == "error" and not line["reason"].startswith("Placeholder")
                else:
                    assert line["section"] == "grey_zone" and line["reason"].startswith("Placeholder result")
                    assert line["action"].startswith("Do not act on it")

            report = _output(client, "placeholder-pairs", "report")
            assert report.count("placeholder-banner") == 1 and report.count("warn placeholder-item") == len(pairs)

            server = ReviewServer(client, "placeholder-pairs").start()
            try:
                page = urllib.request.urlopen(server.url, timeout=30).read().decode()
                assert "placeholder-banner" in page and "Not real results." in page
                assert page.count("warn placeholder-item") == len(pairs)
                section = urllib.request.urlopen(server.url + "section/grey_zone?page=1", timeout=30).read().decode()
                assert "placeholder-banner" in section and section.count("warn placeholder-item") == len(pairs) - 1
            finally:
                server.close()

            row = client.compare(samples / good[0], samples / good[1], timeout=120)
            assert row["random_weights"] is True and row["warning"] == RANDOM_WARNING
        finally:
            flower.stop()
    results = [e.get("result") or "" for e in flower.succeeded]
    assert any("'random_weights': True" in r and "PLACEHOLDER" in r for r in results), results


def _output(client, job_id: str, what: str) -> str:
    summary = json.loads(client.storage.get_bytes(f"jobs/{job_id}/summary.json"))
    return client.storage.get_bytes(summary["outputs"][what]).decode("utf-8-sig")


@pytest.mark.parametrize("decides,decision,reason", [
    ("attendance", "mismatch", "possible_impersonation"), ("compare", "different", "different_person"),
    (None, None, "low_quality")])
def test_guidance_calls_a_random_weights_flag_a_placeholder_not_a_clear_photo(decides, decision, reason):
    row = {"decision": decision, "review_reasons": [reason], "quality": 1.018, "quality_b": 1.02,
           "similarity": 0.12, "employee_id": "e1", "best_candidate_id": "e2"}
    real_reason, _ = explain({**row, "model_id": "rts-ir_se_64-sha256:0123456789abcdef"}, decides)
    fake_reason, action = explain({**row, "model_id": "rts-ir_se_64-random-seed0"}, decides)
    assert "Placeholder result" not in real_reason
    assert fake_reason.startswith("Placeholder result") and "The photo is clear" not in fake_reason
    assert "quality 1.02" in fake_reason and "1.018" not in fake_reason  # rounded for people
    assert action.startswith("Do not act on it") and "faceq models fetch" in action
    broken, _ = explain({"review_reasons": ["error"], "error": "truncated: cut off", "decision": "error",
                         "model_id": "rts-ir_se_64-random-seed0"}, decides)
    assert not broken.startswith("Placeholder")  # an unreadable file is real whatever the weights
