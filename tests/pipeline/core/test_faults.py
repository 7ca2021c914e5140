"""Faults on local Ray, each bounded in time: a model actor killed mid-run, a node removed mid-run,
object storage that fails transiently (and one object that always fails), a broken checkpoint;
and a job run with credentials that must not leak into anything it prints or stores.

(A driver killed mid-run is covered by test_cluster_and_restart.py.)

Each run must end with exactly one metrics row per manifest row and, for every ok row, exactly
one complete image under `<output>/images/`.
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.config import ModelConfig, PoolsConfig, ResolutionConfig
from pipelines.jobs.harmonize.config import HarmonizeJobConfig
from pipelines.errors import JobError
from pipelines.jobs.harmonize.job import run_harmonize
from pipelines.io.storage import filesystem
from tests.pipeline.conftest import enc, make_scene
from tests.pipeline.flaky_s3 import Faults, FlakyS3Proxy
from tests.pipeline.jobs.test_harmonize import local_dataset, pools, quiet

pytestmark = [pytest.mark.pipeline, pytest.mark.timeout(240)]


# ---------------------------------------------------------------------------------------------
# helpers


def alive_actors(class_part: str) -> list[tuple[str, str]]:
    """(actor id, node id) of the connected cluster's ALIVE actors whose class name contains class_part.

    Reads the GCS actor table of *this* cluster: `ray.util.state.list_actors` needs the dashboard
    (these tests run without it) and, with several Ray instances on one machine, may pick another.
    """
    import ray

    table = ray._private.state.actors()
    return [(aid, a["Address"]["NodeID"]) for aid, a in table.items()
            if a["State"] == "ALIVE" and class_part in a["ActorClassName"]]


def actor_restarts(actor_id: str) -> int:
    import ray

    return int(ray._private.state.actors().get(actor_id, {}).get("NumRestarts", 0))


def images_done(out: Path) -> int:
    d = out / "images"
    return len([p for p in d.iterdir() if ".tmp-" not in p.name]) if d.exists() else 0


class Saboteur(threading.Thread):
    """Waits until `ready()` (the job is under way) and a target exists, then strikes once."""

    def __init__(self, ready, target, strike, timeout: float = 150):
        super().__init__(daemon=True)
        self.ready, self.target, self.strike, self.timeout = ready, target, strike, timeout
        self.hit = None
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self):
        deadline = time.time() + self.timeout
        try:
            while not self._halt.is_set() and time.time() < deadline:
                if self.ready():
                    t = self.target()
                    if t is not None:
                        self.strike(t)
                        self.hit = t
                        return
                time.sleep(0.05)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def stop(self):
        self._halt.set()
        self.join(timeout=30)


def check_complete(result, manifest: pd.DataFrame, out: Path):
    """One metrics row per manifest row, all ok; exactly one complete image per row, nothing else
    (a worker killed between writing an image's temporary sibling and renaming it leaves a
    `.tmp-` file, which the job removes at the end)."""
    m = result.metrics
    assert len(m) == len(manifest) and not m["id"].duplicated().any() and not m["row"].duplicated().any()
    assert sorted(m["id"]) == sorted(manifest["id"])
    assert (m["status"] == "ok").all(), m.loc[m["status"] != "ok", ["id", "error_type", "error_message"]]
    names = sorted(p.name for p in (out / "images").iterdir())
    assert names == sorted(f"{i}.png" for i in manifest["id"]), names  # no duplicates, no temporary files
    for _, r in m.iterrows():
        with Image.open(out / "images" / f"{r['id']}.png") as img:
            img.load()  # a partial PNG fails here
            assert img.size == (r["width"], r["height"])


# ---------------------------------------------------------------------------------------------
# a model actor killed mid-run


def test_model_actor_killed_mid_run_is_restarted_and_the_job_completes(ray_local, tmp_path, tiny_checkpoint):
    import ray
    from ray._raylet import ActorID

    manifest_path, manifest = local_dataset(tmp_path, good=6)
    out = tmp_path / "out"
    cfg = HarmonizeJobConfig(manifest=str(manifest_path), output=str(out), model=ModelConfig(model=str(tiny_checkpoint)),
                             resolution=ResolutionConfig(mode="512", class_sizes=(128, 256)), pools=pools(1),
                             block_rows=1)

    def kill(target):
        handle = ray._private.worker.global_worker.core_worker.get_actor_handle(ActorID.from_hex(target[0]))
        ray.kill(handle, no_restart=False)  # a crash: Ray restarts the actor and retries its tasks

    saboteur = Saboteur(ready=lambda: 1 <= images_done(out) <= 3,
                        target=lambda: next(iter(alive_actors("MapWorker")), None), strike=kill)
    saboteur.start()
    try:
        result = run_harmonize(cfg, echo=quiet)
    finally:
        saboteur.stop()
    assert saboteur.error is None, saboteur.error
    assert saboteur.hit is not None, "the job finished before the model actor could be killed"
    assert actor_restarts(saboteur.hit[0]) >= 1
    check_complete(result, manifest, out)


# ---------------------------------------------------------------------------------------------
# a node removed mid-run


def test_node_removed_mid_run(tmp_path, monkeypatch):
    """The model actor is placed on purpose (a custom resource only the doomed node offers) and
    holds a row there; the node is then removed and a replacement joins: the held row is re-run
    on the replacement and every row ends ok, once. (It is also the suite's job on a two-node
    cluster: two nodes alive at the start, every row ok once at the end.) The baseline engine: the
    placement and the re-run are the model stage's, whatever its engine, and a replacement actor
    that loads no model starts in a second instead of ~10."""
    import ray
    from ray.cluster_utils import Cluster

    from pipelines.jobs.harmonize import job as harmonize_job
    from tests.pipeline.node_probe import ProbedModelStage, markers

    ray.shutdown()  # leave the session's local instance; the next test's ray_local starts a fresh one
    # Fast failure detection, so the lost node is noticed in about a second instead of tens.
    fast = {"health_check_period_ms": 300, "health_check_failure_threshold": 3, "health_check_timeout_ms": 300}
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 2, "include_dashboard": False, "_system_config": fast})
    host = {"model_host": 1}  # the model pool asks for it: only the doomed node, then its replacement, offer it
    try:
        doomed = cluster.add_node(num_cpus=1, resources=host)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        manifest_path, manifest = local_dataset(tmp_path, good=8)
        out = tmp_path / "out"
        probe = tmp_path / "probe"
        probe.mkdir()
        (probe / "doomed").write_text(doomed.node_id)
        monkeypatch.setattr(harmonize_job, "ModelStage", functools.partial(ProbedModelStage, probe_dir=str(probe)))
        p = pools(1)
        cfg = HarmonizeJobConfig(manifest=str(manifest_path), output=str(out),
                                 model=ModelConfig(engine="baseline"), block_rows=1,
                                 pools=PoolsConfig(decode=p.decode, finish=p.finish,
                                                   model=p.model.model_copy(update={"resources": host})))

        # Strike while the model actor holds a row on the doomed node (after it finished two there);
        # decode/finish tasks there (Ray Data spreads them) are lost too. Never the head: it holds
        # the GCS and the driver's blocks. A replacement node with the resource joins at once. The
        # job runs in a thread: `Cluster.add_node` must be called from the main thread.
        job: dict = {}

        def run():
            try:
                job["result"] = run_harmonize(cfg, echo=quiet)
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                job["error"] = exc

        runner = threading.Thread(target=run, daemon=True)
        runner.start()
        deadline = time.time() + 150
        while runner.is_alive() and not any(probe.glob("held.*")) and time.time() < deadline:
            time.sleep(0.05)
        struck = runner.is_alive() and any(probe.glob("held.*"))
        if struck:
            cluster.remove_node(doomed, allow_graceful=False)
            replacement = cluster.add_node(num_cpus=1, resources=host)
        runner.join(timeout=180)
        assert not runner.is_alive(), "the job did not finish"
        assert "error" not in job, job.get("error")
        result = job["result"]
        assert struck, "the model stage never held a row on the doomed node (did it run there?)"
        alive = {n["NodeID"]: n["Alive"] for n in ray.nodes()}
        assert alive[doomed.node_id] is False, "the doomed node was not removed"
        assert alive[replacement.node_id] is True
        assert len([a for a in alive.values() if a]) == 2  # the head and the replacement

        seen = markers(probe)
        hosts = {node for _, node, _ in seen}
        assert hosts == {doomed.node_id, replacement.node_id}, "the model ran where it was not placed"
        done_on = lambda node: {i for e, n, i in seen if e == "done" and n == node}  # noqa: E731
        (held,) = [i for e, n, i in seen if e == "held"]
        assert len(done_on(doomed.node_id)) >= 2  # the removed node did real work before it went
        assert held not in done_on(doomed.node_id)  # in flight when the node went ...
        assert held in done_on(replacement.node_id)  # ... and re-run on the replacement
        check_complete(result, manifest, out)
        status = result.metrics.set_index("id")["status"]
        assert (status[sorted(done_on(doomed.node_id) | {held})] == "ok").all()
    finally:
        ray.shutdown()
        cluster.shutdown()


# ---------------------------------------------------------------------------------------------
# object storage failing transiently, and one object that always fails


def s3_dataset(bucket: str, opts: dict, good: int = 6, real: bool = False) -> pd.DataFrame:
    """`good` rows, and a row `doomed` whose composite is the object the faults single out."""
    fs, root = filesystem(bucket, opts)
    rows = []
    for k in range(good):
        comp, mask, gt = make_scene(k, ratio=0.2)
        fs.pipe_file(f"{root}/data/comp/{k}.png", enc(comp))
        fs.pipe_file(f"{root}/data/mask/{k}.png", enc(mask))
        rows.append({"id": f"img{k}", "composite": f"comp/{k}.png", "mask": f"mask/{k}.png"})
        if real:
            fs.pipe_file(f"{root}/data/real/{k}.png", enc(gt))
            rows[-1]["real"] = f"real/{k}.png"
    comp, mask, _ = make_scene(99, ratio=0.2)
    fs.pipe_file(f"{root}/data/comp/doomed.png", enc(comp))
    rows.append({"id": "doomed", "composite": "comp/doomed.png", "mask": "mask/0.png"})
    manifest = pd.DataFrame(rows)
    buf = io.BytesIO()
    manifest.to_parquet(buf, index=False)
    fs.pipe_file(f"{root}/data/manifest.parquet", buf.getvalue())
    return manifest


def baseline_through(proxy, bucket: str, options: dict, **settings):
    """(result, seconds) of the baseline job on s3_dataset's manifest, its storage reached through `proxy`."""
    opts = {"endpoint_url": proxy.endpoint, "key": "testing-key-id", "secret": "testing-secret-value", **options}
    cfg = HarmonizeJobConfig(manifest=f"{bucket}/data/manifest.parquet", output=f"{bucket}/out",
                             model=ModelConfig(engine="baseline"), pools=pools(4), block_rows=4, storage_options=opts,
                             **settings)
    t = time.time()
    return run_harmonize(cfg, echo=quiet), time.time() - t


def test_flaky_object_storage_retries_then_fails_only_the_broken_row(ray_local, s3_bucket):
    bucket, opts = s3_bucket
    manifest = s3_dataset(bucket, opts, good=4)
    name = bucket.split("://", 1)[1]
    faults = Faults(fraction=0.5, max_failures=2, seed=7,
                    select=(f"/{name}/data/comp/", f"/{name}/data/mask/", f"/{name}/out/images/"),
                    always_fail=("doomed",))
    with FlakyS3Proxy(opts["endpoint_url"], faults) as proxy:
        # botocore's own retries off, so every injected error reaches s3fs and the job's retry loop
        result, took = baseline_through(proxy, bucket, {"config_kwargs": {"retries": {"total_max_attempts": 1}}},
                                        retries=2)
    m = result.metrics.set_index("id")
    assert result.exit_code == 0 and len(m) == len(manifest)
    assert m.loc["doomed", "status"] == "failed" and m.loc["doomed", "error_type"] == "storage_error"
    assert "Service Unavailable" in m.loc["doomed", "error_message"] or "reduce" in m.loc["doomed", "error_message"]
    assert (m.drop(index="doomed")["status"] == "ok").all(), m[["status", "error_type", "error_message"]].to_dict("index")
    # faults were really injected on reads and on image writes, and the doomed object was retried
    assert faults.injected["GET"] + faults.injected["HEAD"] >= 4 and faults.injected["PUT"] >= 1, faults.injected
    assert any(n > 1 for (kind, path), n in faults.attempts.items() if kind == "read" and "doomed" not in path)
    doomed_attempts = sum(n for (_, path), n in faults.attempts.items() if "doomed" in path)
    assert doomed_attempts >= 3  # the job's retries (2) on top of the first try
    fs, root = filesystem(bucket, opts)
    images = sorted(p.rsplit("/", 1)[-1] for p in fs.find(f"{root}/out/images"))
    assert images == sorted(f"img{k}.png" for k in range(4))
    assert took < 120


def test_an_object_store_that_answers_late_fails_its_row_by_the_deadline_and_the_job_goes_on(ray_local, s3_bucket):
    """A GET answering after 20 s used to stack s3fs's, botocore's and the job's retries (about 35 minutes an
    attempt); now one request waits at most read_timeout, retries are the job's alone, and the row's reads stop
    at read_deadline_seconds."""
    bucket, opts = s3_bucket
    manifest = s3_dataset(bucket, opts, good=3)
    name = bucket.split("://", 1)[1]
    faults = Faults(slow=(f"/{name}/data/comp/1.png",), delay_s=20.0)
    with FlakyS3Proxy(opts["endpoint_url"], faults) as proxy:
        result, took = baseline_through(proxy, bucket, {"read_timeout": 2}, retries=3, read_deadline_seconds=8)
    m = result.metrics.set_index("id")
    assert result.exit_code == 0 and len(m) == len(manifest)
    assert m.loc["img1", "status"] == "failed" and m.loc["img1", "error_type"] == "storage_error"
    assert "deadline" in m.loc["img1", "error_message"] or "timed out" in m.loc["img1", "error_message"].lower()
    good = m.drop(index=[i for i in m.index if i in ("img1", "doomed")])
    assert (good["status"] == "ok").all(), good[["status", "error_message"]].to_dict("index")
    assert took < 90  # the deadline, not 20 s x retries x layers


# ---------------------------------------------------------------------------------------------
# a broken checkpoint: the job refuses to start, naming the part (before Ray or any write)


@pytest.mark.parametrize("part,damage", [
    ("unet/diffusion_pytorch_model.safetensors", "delete"),
    ("vae/config.json", "delete"),
    ("scheduler/scheduler_config.json", "delete"),
    ("refiner/diffusion_pytorch_model.safetensors", "delete"),
    ("vae/diffusion_pytorch_model.safetensors", "truncate"),
    ("unet/diffusion_pytorch_model.safetensors", "garbage"),
    ("refiner/diffusion_pytorch_model.safetensors", "truncate"),
    ("unet/config.json", "garbage"),
    ("scheduler/scheduler_config.json", "garbage"),
    ("null_text_embedding.safetensors", "truncate"),
])
def test_broken_checkpoint_stops_the_job_before_it_starts(tiny_checkpoint, tmp_path, part, damage, forbid_ray_start):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    target = ckpt / part
    if damage == "delete":
        target.unlink()
    elif damage == "truncate":
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
    else:
        target.write_bytes(b"\x00garbage, not what this file should hold")
    (tmp_path / "m.csv").write_text("id,composite,mask\na,c.png,m.png\n")
    cfg = HarmonizeJobConfig(manifest=str(tmp_path / "m.csv"), output=str(tmp_path / "out"),
                             model=ModelConfig(model=str(ckpt)))
    with pytest.raises(JobError) as e:
        run_harmonize(cfg, echo=quiet)
    component = part.split("/")[0] if "/" in part else "null text embedding"
    assert component in str(e.value) and str(target.name) in str(e.value), str(e.value)
    assert forbid_ray_start == []  # stopped before any attempt to start or join Ray
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# secrets never reach logs, summaries, tables or reports


def test_credentials_never_leak(ray_local, s3_bucket, monkeypatch, capfd):
    import logging

    bucket, opts = s3_bucket
    key_id, secret, env_secret = "AKIAFAKEKEYID0000042", "fake-secret-Zq9vXw2sLk", "env-secret-Yh7TbN3mPd"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY_EXTRA", env_secret)
    monkeypatch.setenv("AWS_SESSION_TOKEN", env_secret)
    manifest = s3_dataset(bucket, opts, good=2, real=True)  # ground truth: report.html is written too
    fs, root = filesystem(bucket, opts)
    fs.rm(f"{root}/data/comp/doomed.png")  # one failed row: its error message goes to the table too
    creds = {"endpoint_url": opts["endpoint_url"], "key": key_id, "secret": secret}
    cfg = HarmonizeJobConfig(manifest=f"{bucket}/data/manifest.parquet", output=f"{bucket}/out",
                             model=ModelConfig(engine="baseline"), pools=pools(4), storage_options=creds, retries=0)
    log_text = io.StringIO()
    handler = logging.StreamHandler(log_text)
    handler.setLevel(logging.DEBUG)
    loggers = [logging.getLogger(n) for n in ("", "pipelines", "harmony_ops", "ray.data")]
    saved = [(lg, lg.level) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
    logging.getLogger("pipelines").setLevel(logging.DEBUG)
    logging.getLogger("harmony_ops").setLevel(logging.DEBUG)
    try:
        result = run_harmonize(cfg, echo=print)  # as the CLI prints
    finally:
        for lg, level in saved:
            lg.removeHandler(handler)
            lg.setLevel(level)
    captured = capfd.readouterr()
    assert result.exit_code == 0 and len(result.metrics) == len(manifest)
    assert result.metrics.set_index("id").loc["doomed", "status"] == "failed"  # an error message was written

    texts = {
        "stdout": captured.out, "stderr": captured.err, "logs": log_text.getvalue(),
        "summary.json": fs.cat_file(f"{root}/out/summary.json").decode(),
        "summary (result)": json.dumps(result.summary),
        "metrics (result)": result.metrics.to_csv(),
    }
    raw = fs.cat_file(f"{root}/out/metrics/metrics.parquet")
    texts["metrics.parquet"] = raw.decode("latin-1") + pq.read_table(io.BytesIO(raw)).to_pandas().to_csv()
    for p in fs.find(f"{root}/out"):
        if p.endswith((".html", ".json", ".txt", ".csv", ".md")):
            texts[p] = fs.cat_file(p).decode("utf-8", "replace")
    # Ray's worker logs of this session
    ray_logs = Path(os.environ["RAY_TMPDIR"]) / "session_latest" / "logs"
    if ray_logs.exists():
        for p in ray_logs.glob("*"):
            if p.is_file() and p.stat().st_size < 50_000_000:
                texts[f"ray:{p.name}"] = p.read_text(errors="replace")
    assert texts["summary.json"] and "storage_options" in texts["summary.json"]
    assert any(k.endswith("report.html") for k in texts), sorted(texts)
    assert any(k.startswith("ray:worker-") for k in texts), "no Ray worker log was searched"
    for where, text in texts.items():
        for s in (key_id, secret, env_secret):
            assert s not in text, f"{s!r} found in {where}"
    summary = json.loads(texts["summary.json"])
    assert json.dumps(summary).count("***") >= 2  # key and secret are there, redacted
