"""A two-node simulated cluster, and a driver killed mid-run that a re-run completes."""

from __future__ import annotations

import os
import signal
import time

import pytest
import yaml

from pipelines.config import HarmonizeJobConfig, ModelConfig
from pipelines.jobs.harmonize.job import run_harmonize
from tests.pipeline.jobs.slow_job import slow_job
from tests.pipeline.jobs.test_harmonize import local_dataset, pools, quiet

pytestmark = pytest.mark.pipeline


def test_two_node_cluster(tmp_path, tiny_checkpoint):
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        manifest_path, manifest = local_dataset(tmp_path, good=4)
        cfg = HarmonizeJobConfig(manifest=str(manifest_path), output=str(tmp_path / "out"),
                                 model=ModelConfig(model=str(tiny_checkpoint)), pools=pools(2), block_rows=1,
                                 resolution={"class_sizes": (64, 128)})
        r = run_harmonize(cfg, echo=quiet)
        assert (r.metrics["status"] == "ok").all() and len(r.metrics) == len(manifest)
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_driver_killed_midway_then_rerun_completes(ray_local, tmp_path, tiny_checkpoint):
    proc, out, manifest = slow_job(tmp_path, tiny_checkpoint)
    journal = out / "_journal"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if journal.exists() and any(journal.rglob("*.parquet")):
                break
            if proc.poll() is not None:
                pytest.fail("the job finished before it could be killed")
            time.sleep(0.2)
        else:
            pytest.fail("no journal file appeared")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver dies mid-run, whatever it was doing
        proc.wait()
    assert not (out / "metrics").exists()  # the killed run never consolidated
    done_before = len(list((out / "images").glob("*.png")))
    assert 0 < done_before < len(manifest)

    cfg = HarmonizeJobConfig.model_validate(yaml.safe_load((tmp_path / "job.yaml").read_text()))  # the same job
    r = run_harmonize(cfg, echo=quiet)
    m = r.metrics
    assert len(m) == len(manifest) and not m["id"].duplicated().any()
    assert m["status"].isin(["ok", "skipped"]).all() and (m["status"] == "skipped").sum() >= 1
    images = sorted(p.name for p in (out / "images").iterdir())
    assert images == sorted(f"{i}.png" for i in manifest["id"])  # no partial or temporary objects left
    assert not journal.exists()
