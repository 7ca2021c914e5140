"""Shared fixtures: tiny seeded checkpoints built by the project itself, sample images, GPU skipping."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Keep worker caches and Ray's files inside the test run.
os.environ.setdefault("HARMONY_CACHE", str(Path(os.environ.get("TMPDIR", "/tmp")) / f"harmony-test-cache-{os.getpid()}"))
# Fake credentials for the local S3 endpoint, set before any Ray worker starts: workers copy
# the environment once, at start.
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing-key-id", "AWS_SECRET_ACCESS_KEY": "testing-secret-value",
            "AWS_DEFAULT_REGION": "us-east-1"}
os.environ.update(FAKE_AWS)
# Ray Train V2 on a 2-core test machine: its controller polls the workers every 2 s by default, so a
# run's start, end and each restart wait up to that long; and each run starts a preemption-watcher
# actor (one more Python process) for node drains a local test cluster never has. Set before any Ray
# instance starts: its raylet and workers inherit the environment, as do `harmony train` subprocesses.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
# Ray keeps as many idle workers as the node has CPUs (2 here) and kills the others after 1 s idle,
# so every test's tasks and actors started fresh Python processes that import torch and diffusers
# again (~2-8 s of CPU each, the suite's largest cost). One test session is one Ray job: keeping up to
# 8 idle workers for 10 minutes lets later tests reuse them (tests/pipeline/jobs/test_harmonize.py and
# test_evaluate.py: 135 s -> 86 s). Raylet settings, read from the environment when Ray starts.
os.environ.setdefault("RAY_num_workers_soft_limit", "8")
os.environ.setdefault("RAY_idle_worker_killing_time_threshold_ms", "600000")


# Files whose tests take minutes (Ray Train launches, subprocess jobs): collected first, so that the
# xdist processes (`--dist loadfile`, files handed out in collection order) start on them and finish
# on the many short files, instead of one process running them alone at the end.
SLOW_FIRST = ("tests/pipeline/jobs/test_train", "tests/pipeline/jobs/test_recipe", "tests/pipeline/core/",
              "tests/pipeline/")


def _weight(item) -> int:
    path = item.nodeid.split("::", 1)[0]
    return next((k for k, prefix in enumerate(SLOW_FIRST) if path.startswith(prefix)), len(SLOW_FIRST))


def pytest_collection_modifyitems(config, items):
    items.sort(key=_weight)  # stable: each file's tests keep their order
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


class RayStarted(AssertionError):
    """Raised by `forbid_ray_start` when code under test tries to start or join Ray."""


@pytest.fixture
def forbid_ray_start(monkeypatch):
    """Fail any attempt to start or join Ray during the test; yields the list of attempts.

    Ray may already be running in this process (pipeline tests share one instance), so
    `ray.is_initialized()` alone proves nothing: it is forced to False for the test, `ray.init`
    refuses, and so does the project's `ensure_ray` wherever a module imported it by name.
    Assert the yielded list is empty as well: an `except Exception` could swallow the error.
    """
    import sys

    import ray

    from pipelines.core import adapter

    attempts: list[str] = []

    def refuse(what):
        def _refuse(*args, **kwargs):
            attempts.append(what)
            raise RayStarted(f"{what} called: Ray must not start here")

        return _refuse

    real_ensure = adapter.ensure_ray
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse("ray.init"))
    for name, mod in list(sys.modules.items()):
        if (name == "pipelines" or name.startswith("pipelines.")) and getattr(mod, "ensure_ray", None) is real_ensure:
            monkeypatch.setattr(mod, "ensure_ray", refuse(f"{name}.ensure_ray"))
    yield attempts


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from harmony_ops.factory import write_checkpoint

    # The refiner at its default (random) init, not the identity: its output depends on all of its
    # inputs, so a refiner fed the wrong mask or composite changes what the tests see.
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", arch="tiny", seed=0, refiner_init="default")


def png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def scene():
    """A 120x96 composite with a colour-shifted rectangle, its mask and the ground truth."""
    rng = np.random.default_rng(0)
    h, w = 96, 120
    yy, xx = np.mgrid[0:h, 0:w]
    real = np.stack([xx * 2, yy * 2, (xx + yy)], axis=-1).astype(np.float64) + rng.normal(0, 4, (h, w, 3))
    real = np.clip(real, 0, 255).astype(np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[30:70, 40:90] = 255
    comp = real.copy()
    fg = mask > 0
    comp[fg] = np.clip(comp[fg].astype(np.int16) * np.array([1.3, 0.8, 0.9]) + 20, 0, 255).astype(np.uint8)
    return comp, mask, real


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 endpoint on 127.0.0.1 (moto's threaded server) with fake credentials."""
    import socket

    from moto.server import ThreadedMotoServer

    os.environ.update(FAKE_AWS)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    yield endpoint
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket; returns (bucket URI, storage options)."""
    import uuid

    import boto3

    name = f"t-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}", {"endpoint_url": s3_server}


def upload_dir(local: Path, uri: str, options: dict) -> None:
    import fsspec

    fs, root = fsspec.core.url_to_fs(uri, **options)
    for p in sorted(Path(local).rglob("*")):
        if p.is_file():
            fs.put_file(str(p), f"{root}/{p.relative_to(local).as_posix()}")
