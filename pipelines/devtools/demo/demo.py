"""`harmony demo` / `make demo`: sample composites from scikit-image's bundled photographs, then
the whole `harmony harmonize` job on them (optionally through an embedded S3 server)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipelines.devtools.demo.scenes import composite_of, sample_photos, write_scenes

# One foreground size per bucket of the paper's tables, cycled over the photos.
FG_RATIOS = (0.03, 0.10, 0.25, 0.02, 0.40, 0.08)


def build_demo_data(folder: Path, n: int, seed: int = 0) -> Path:
    """iHarmony4-style layout plus manifest.csv (relative paths); returns the manifest path."""
    rng = np.random.default_rng(seed)
    photos = list(sample_photos())

    def scenes():
        for k in range(n):
            name, real = photos[k % len(photos)]
            comp, mask = composite_of(real, rng, FG_RATIOS[k % len(FG_RATIOS)])
            yield f"{name}_{k // len(photos) + 1}_1", name, comp, mask, real

    return write_scenes(folder, scenes(), subset="skimage")


def run_demo(output: str = "demo-output", model: str | None = None, s3: bool = False, images: int = 8,
             engine: str | None = None, echo=print, catalog: bool = False) -> int:
    from pipelines.config import ModelConfig
    from pipelines.jobs.harmonize.config import HarmonizeJobConfig
    from pipelines.jobs.harmonize.job import run_harmonize

    out = Path(output).resolve()
    if catalog:
        from pipelines.devtools.demo.catalog import run_catalog

        if s3:
            raise ValueError("--catalog runs on local folders; leave out --s3")
        return run_catalog(out, images, _common(model, engine, echo), echo)
    manifest = build_demo_data(out / "data", images)
    echo(f"demo: wrote {images} sample composites (scikit-image photographs, random foreground, Lab colour shift) "
          f"and {manifest}")
    common = _common(model, engine, echo)
    if s3:
        return _run_via_s3(out, manifest, common, echo)
    cfg = HarmonizeJobConfig(manifest=str(manifest), output=str(out / "results"), **common)
    code = run_harmonize(cfg, echo).exit_code
    if code or model or engine:
        return code
    # Neither named: the other engine too, and the two side by side (what the default chose, and what it did not)
    other = "diffharmony" if common["model"].engine == "baseline" else "baseline"
    echo(f"demo: the same composites with engine {other}, for comparison")
    second = HarmonizeJobConfig(manifest=str(manifest), output=str(out / f"results-{other}"),
                                **{**common, "model": ModelConfig(engine=other)})
    code = run_harmonize(second, echo).exit_code
    return code or compare_engines(manifest, out, common["model"].engine, other, common["pools"], echo)


def compare_engines(manifest: Path, out: Path, first: str, other: str, pools, echo=print) -> int:
    """`harmony evaluate` of results/ with results-<other>/ as the compare method: one report with both engines'
    images in each row's detail view and both figures in its tables; a two-line table on the terminal."""
    from pipelines.jobs.evaluate.config import EvaluateJobConfig, EvaluatePools
    from pipelines.jobs.evaluate.job import run_evaluate

    cfg = EvaluateJobConfig(manifest=str(manifest), predictions=str(out / "results"),
                            compare=str(out / f"results-{other}"), output=str(out / "comparison"),
                            pools=EvaluatePools(evaluate=pools.decode), block_rows=2)
    r = run_evaluate(cfg, echo=lambda *a, **k: None)  # its own table would repeat the one below
    if r.exit_code:
        return r.exit_code
    ok = r.metrics[r.metrics["status"] == "ok"]
    echo(f"demo: side by side ({len(ok)} composites, 256 px protocol; report {out / 'comparison' / 'report.html'})")
    echo(f"  {'':36s} {'fMSE':>8s} {'PSNR':>7s}")
    for label, prefix in (("composite (untouched)", "composite_"), (f"{first} (results/)", ""),
                          (f"{other} (results-{other}/)", "compare_")):
        echo(f"  {label:36s} {ok[prefix + 'fmse'].mean():8.1f} {ok[prefix + 'psnr'].mean():7.2f}")
    return 0


def _common(model: str | None, engine: str | None, echo) -> dict:
    """The demo's model and pool settings: small batches, CPU stages on half the machine's CPUs."""
    from pipelines.config import ModelConfig, PoolConfig, PoolsConfig

    model_cfg = ModelConfig(**{k: v for k, v in (("model", model), ("engine", engine)) if v is not None})
    echo(f"demo: {model_cfg.label()}")
    cpus = os.cpu_count() or 2
    pools = PoolsConfig(
        decode=PoolConfig(num_cpus=0.25, num_gpus=0, batch_size=2, min_workers=1, max_workers=max(1, cpus // 2)),
        model=PoolConfig(batch_size=2, min_workers=1, max_workers=1),  # CPUs: the job's rule per engine
        finish=PoolConfig(num_cpus=0.25, num_gpus=0, batch_size=2, min_workers=1, max_workers=max(1, cpus // 2)),
    )
    return dict(model=model_cfg, pools=pools, block_rows=2)


def _run_via_s3(out: Path, manifest: Path, common: dict, echo=print) -> int:
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    from pipelines.jobs.harmonize.config import HarmonizeJobConfig
    from pipelines.jobs.harmonize.job import run_harmonize

    # Fake credentials for the embedded server, passed explicitly: Ray workers that already run
    # do not see environment variables set now.
    creds = {"key": "demo-access-key", "secret": "demo-secret-key"}
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=creds["key"],
                              aws_secret_access_key=creds["secret"], region_name="us-east-1")
        client.create_bucket(Bucket="harmony-demo")
        for p in sorted(manifest.parent.rglob("*")):
            if p.is_file():
                client.upload_file(str(p), "harmony-demo", f"data/{p.relative_to(manifest.parent).as_posix()}")
        echo(f"demo: embedded S3 endpoint {endpoint}, bucket harmony-demo")
        cfg = HarmonizeJobConfig(manifest="s3://harmony-demo/data/manifest.csv", output="s3://harmony-demo/results",
                                 storage_options={"endpoint_url": endpoint, **creds}, **common)
        code = run_harmonize(cfg, echo).exit_code
        local = out / "results-s3"
        for obj in client.list_objects_v2(Bucket="harmony-demo", Prefix="results/").get("Contents", []):
            if obj["Key"].endswith("/"):  # directory markers some clients create
                continue
            dest = local / obj["Key"].removeprefix("results/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            client.download_file("harmony-demo", obj["Key"], str(dest))
        echo(f"demo: copied the S3 results to {local}")
        return code
    finally:
        server.stop()
