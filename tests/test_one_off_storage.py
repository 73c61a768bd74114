"""One-off calls are stored apart from the jobs people glob (issue 26)."""

from __future__ import annotations

import pytest

from faceq.job import spec as jobs
from faceq.errors import JobError
from faceq.job.spec import Item
from faceq.settings import Settings
from faceq.storage.store import open_storage
from faceq.producer.submit import JobOptions, new_job_id, write_plan


def test_one_off_ids_live_under_their_own_prefix():
    one_off = new_job_id("compare", one_off=True)
    assert jobs.is_one_off(one_off) and jobs.summary_key(one_off) == f"oneoff/{one_off}/summary.json"
    assert jobs.part_key(one_off, "r", 0).startswith(f"oneoff/{one_off}/runs/r/results/")
    assert jobs.part_key("nightly", "r", 0).startswith("jobs/nightly/runs/r/results/")
    assert not jobs.is_one_off(new_job_id("compare"))


@pytest.mark.parametrize(("job_id", "one_off"), [("oneoff-mine", False), ("mine", True)])
def test_an_id_that_says_otherwise_is_refused_before_anything_is_written(tmp_path, job_id, one_off):
    storage = open_storage((tmp_path / "store").as_uri())
    with pytest.raises(JobError, match="one-off"):
        write_plan(Settings(), storage, items=[Item("a.jpg", (tmp_path / "a.jpg").as_uri())], source=str(tmp_path),
                   job_id=job_id, options=JobOptions("audit", one_off=one_off))
    assert not list(storage.list_keys(""))
