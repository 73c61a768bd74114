"""`pip install faceq` in a fresh venv: the client alone, nothing generic top level, a real job.

Builds the wheel from this checkout, installs it (and only what it declares) into a new virtual
environment with uv, lists what got installed and which top-level names exist, then submits a
crop-mode job with that environment's `faceq` command to a real worker running from the
checkout, and reads every row back with that environment's Python.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.samples import write_sample_set
from tests.conftest import REPO, redis_and_worker

pytestmark = pytest.mark.integration

WORKER_ONLY = {"torch", "celery", "flower", "opencv-python-headless", "opencv-python", "matplotlib", "billiard",
               "simplejpeg", "prometheus-client"}
UV = (sys.executable, "-m", "uv")  # uv is in the dev extra


def _run(*args: str, env: dict | None = None, timeout: float = 600) -> str:
    """Run outside the checkout, so that nothing is imported from it by accident."""
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout, cwd=Path(args[0]).parent
                          if Path(args[0]).is_absolute() else None)
    assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("client-install")
    _run(*UV, "build", "--wheel", "--out-dir", str(tmp / "dist"), str(REPO))
    (wheel,) = (tmp / "dist").glob("faceq-*.whl")
    venv = tmp / "venv"
    _run(*UV, "venv", "--quiet", "--python", sys.executable, str(venv))
    # the versions CI tested (requirements/dev.lock), for whatever the client declares
    _run(*UV, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
         "--constraint", str(REPO / "requirements" / "dev.lock"), str(wheel))
    return venv


def installed(venv: Path) -> dict[str, str]:
    listing = _run(*UV, "pip", "list", "--python", str(venv / "bin" / "python"), "--format", "json")
    return {p["name"].lower(): p["version"] for p in json.loads(listing)}


def test_the_client_installs_without_the_worker_stack(client_venv):
    packages = installed(client_venv)
    assert "faceq" in packages
    assert not WORKER_ONLY & set(packages), f"worker packages in a client install: {WORKER_ONLY & set(packages)}"
    assert {"redis", "kombu", "pyarrow", "boto3"} <= set(packages)


def test_only_faceq_names_land_top_level(client_venv):
    (site,) = (client_venv / "lib").glob("python3*/site-packages")
    (record,) = site.glob("faceq-*.dist-info/RECORD")
    top_level = {line.split(",", 1)[0].split("/", 1)[0] for line in record.read_text().splitlines()}
    top_level.discard("..")  # the console scripts, in the venv's bin/
    assert top_level == {"faceq", record.parent.name}, top_level
    scripts = sorted(p.name for p in (client_venv / "bin").glob("faceq*"))
    assert scripts == ["faceq", "faceq-worker"]
    # and the importable names: the design card's folders are faceq's subpackages, never top level
    probe = ("import importlib.util as u; print([n for n in ('models', 'workers', 'producer', 'celeryconfig', "
             "'devstack', 'faceq.producer', 'faceq.workers', 'faceq.models') if u.find_spec(n)])")
    found = _run(str(client_venv / "bin" / "python"), "-c", probe, env={"PATH": os.environ["PATH"]}).strip()
    assert found == "['faceq.producer', 'faceq.workers', 'faceq.models']"


def test_the_client_imports_no_worker_module(client_venv):
    probe = ("import sys; from faceq import Client; import faceq.producer.__main__; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'celery', 'cv2', 'matplotlib'}))")
    out = _run(str(client_venv / "bin" / "python"), "-c", probe, env={"PATH": os.environ["PATH"]})
    assert out.strip() == "[]"


def test_a_job_from_the_client_venv_against_a_real_worker(client_venv, tmp_path):
    expected = write_sample_set(tmp_path / "photos", n_good=6)
    with redis_and_worker(tmp_path, "install-worker", (tmp_path / "store").as_uri()) as (env, _):
        client_env = {"PATH": f"{client_venv / 'bin'}:{os.environ['PATH']}", "HOME": str(tmp_path),
                      "FACEQ_BROKER_URL": env["FACEQ_BROKER_URL"], "FACEQ_STORAGE_URL": env["FACEQ_STORAGE_URL"]}
        _run(str(client_venv / "bin" / "faceq"), "audit", str(tmp_path / "photos"), "--mode", "crop",
             "--job-id", "from-client-venv", "--wait", "--timeout", "180", env=client_env, timeout=240)
        read_back = ("from faceq import Client; t = Client.from_env().job('from-client-venv').results(); "
                     "import json; print(json.dumps(sorted(zip(t.column('item_id').to_pylist(), "
                     "t.column('status').to_pylist()))))")
        rows = json.loads(_run(str(client_venv / "bin" / "python"), "-c", read_back, env=client_env))
    assert sorted(item for item, _ in rows) == sorted(expected)  # exactly one row per item
    assert {item: status for item, status in rows if status == "ok"} == \
        {item: "ok" for item, outcome in expected.items() if outcome == "ok"}
