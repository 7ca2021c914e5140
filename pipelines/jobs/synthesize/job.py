"""`harmony synthesize`: real images (+ masks) -> iHarmony4-style training triples, streamed on Ray Data.

    input manifest (parquet / csv / jsonl; Ray Data reader, only id, real, mask, subset columns)
      -> donor pool (colour transfer only): Lab statistics of the foregrounds of the first
         `donor_pool` rows, computed once by a small Ray job and shipped with the stage
      -> synthesis stage (CPU tasks): per row and sample, draws until one passes the fMSE filter;
         kept samples written as composite_images/, masks/, real_images/ (atomic writes)
      -> per-block parameter tables -> _journal/run-*/ (write_parquet, streaming)
      -> assembly: manifest.parquet (kept rows; only the manifest columns are read), params.parquet
         (every draw and bad input row, streamed part by part), summary.json; journal removed

The driver never holds the input manifest: it reads the first rows for the donor pool and, at
the end, the kept rows' manifest columns (the output manifest is one file by design).
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from harmony_ops.perturb import DonorPool, normalise_weights
from pipelines.jobs.synthesize.config import SynthesizeJobConfig
from pipelines.core.adapter import apply_stages
from pipelines.core.run import JobResult, JobRun
from pipelines.errors import JobError, ManifestError
from pipelines.io.manifest import manifest_format
from pipelines.io.storage import arrow_filesystem, filesystem, join
from pipelines.io.tables import parquet_files, write_parquet_stream, write_table_atomic
from pipelines.jobs.synthesize.donors import DonorStatsStage, donor_pool_from
from pipelines.jobs.synthesize.sources import COMPOSITES, FOREGROUNDS, INPUT_COLUMNS, MASKS, REALS, CELL_PROBLEMS, parse_json_lines
from pipelines.jobs.synthesize.stage import InverseSynthesizeStage, SynthesizeStage
from schemas.synthesis import CUTOUT_MANIFEST_COLUMNS, CUTOUT_MANIFEST_SCHEMA, MANIFEST_COLUMNS, MANIFEST_SCHEMA, SCHEMA, to_arrow
from schemas.vocabulary import DrawStatus, ErrorKind

MANIFEST_FILE = "manifest.parquet"
PARAMS_FILE = "params.parquet"


JSON_PEEK_BYTES = 1 << 20


def json_keys(uri: str, options: dict) -> list[str]:
    """The keys of the first lines of a JSON Lines manifest (its first MiB), for the driver's check of required
    columns (the workers parse every line); an empty file has the input columns (an empty run)."""
    import json

    fs, path = filesystem(uri, options)
    with fs.open(path, "rb") as f:
        head = f.read(JSON_PEEK_BYTES)
    keys: dict[str, None] = {}
    lines = head.splitlines()[:-1] if len(head) == JSON_PEEK_BYTES else head.splitlines()  # no cut-off last line
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            keys.update(dict.fromkeys(rec))
    return list(keys) if keys or any(line.strip() for line in lines) else list(INPUT_COLUMNS)


def read_input(cfg: SynthesizeJobConfig, columns: list[str] | None = None):
    """(The input manifest as a lazy Ray dataset of its id, real, mask (and subset) columns, the manifest's
    columns (checked here; pass them back to skip reading the schema again), the dataset's columns: known even
    where an empty file gives the dataset no schema)."""
    import ray

    try:
        fmt = manifest_format(cfg.manifest)
    except ManifestError as exc:
        raise JobError(str(exc)) from exc
    try:
        fs, path = arrow_filesystem(cfg.manifest, cfg.storage_options)
        if fmt == "parquet":
            ds = ray.data.read_parquet(path, filesystem=fs, file_extensions=None)
        elif fmt == "csv":
            import pyarrow.csv as pacsv

            # Ids like 0001 stay strings; empty cells are empty strings (read as "not given").
            types = {c: pa.string() for c in INPUT_COLUMNS}
            ds = ray.data.read_csv(path, filesystem=fs, file_extensions=None,
                                   convert_options=pacsv.ConvertOptions(column_types=types))
        else:
            # Line by line in the workers, not through a JSON reader that infers one type per column: a catalog's
            # column of mixed types (or a number where a path belongs) is then a row's problem, not the job's.
            ds = ray.data.read_text(path, filesystem=fs, file_extensions=None).map_batches(
                parse_json_lines, batch_format="pandas")
            columns = columns or json_keys(cfg.manifest, cfg.storage_options)
        columns = columns or ds.columns()
    except Exception as exc:  # noqa: BLE001 - readers raise many types; the job cannot run either way
        if isinstance(exc, FileNotFoundError) or "not found" in str(exc).lower() or "no such file" in str(exc).lower():
            raise JobError(f"manifest {cfg.manifest} does not exist") from None
        raise JobError(f"manifest {cfg.manifest} cannot be read: {type(exc).__name__}: {exc}") from exc
    need = ["id", "real"] + (["mask"] if cfg.mask_source == "given" else [])
    missing = [c for c in need if c not in columns]
    if missing:
        hint = " (or pass --mask-source ellipse|box|blob)" if missing == ["mask"] else ""
        raise JobError(f"manifest {cfg.manifest} lacks column(s) {missing}{hint}; it has {columns}")
    # (CELL_PROBLEMS only from parse_json_lines: a CSV or parquet column of that name is the catalog's own)
    selected = [c for c in INPUT_COLUMNS if c in columns] + ([CELL_PROBLEMS] if fmt == "jsonl" else [])
    ds = ds.select_columns(selected)
    if cfg.limit:
        # "The first N rows" must be the same rows in every pass: keep the file order.
        ds.context.execution_options.preserve_order = True
        ds = ds.limit(cfg.limit)
    return ds, columns, selected


def build_donor_pool(cfg: SynthesizeJobConfig, columns: list[str]) -> DonorPool | None:
    """Lab statistics of the foregrounds of the readable rows among the first `donor_pool` (manifest order),
    or None when colour transfer is not drawn. Fixed for the whole job: a sample's donor then depends
    only on its own random draws."""
    if normalise_weights(cfg.kinds)["colour_transfer"] == 0:
        return None
    ds, _, selected = read_input(cfg, columns)  # a dataset of its own, so ordering it does not slow the main pass
    ds.context.execution_options.preserve_order = True
    stage = DonorStatsStage(cfg=cfg, pool=cfg.pools.synthesize.on_cluster(False))
    rows = apply_stages(ds.limit(cfg.donor_pool), [stage], inputs=selected).take_all()
    return donor_pool_from(rows)


def run_synthesize(cfg: SynthesizeJobConfig, echo=print) -> JobResult:
    with JobRun(cfg, echo) as run:  # holds the output prefix's lease from Ray's start (start_ray claims it)
        return _synthesize(run, cfg, echo)


def _synthesize(run: JobRun, cfg: SynthesizeJobConfig, echo) -> JobResult:
    try:
        manifest_format(cfg.manifest)  # before starting Ray: a name that cannot be a manifest
    except ManifestError as exc:
        raise JobError(str(exc)) from exc
    model_id = inverse_model_id(cfg)  # before starting Ray: a checkpoint that cannot load
    run.start_ray()
    ds, columns, selected = read_input(cfg)
    if cfg.method == "inverse":
        return _finish(run, cfg, echo, ds, None, _inverse_stage(cfg, model_id, echo), selected)
    weights = normalise_weights(cfg.kinds)
    echo(
        f"harmony synthesize: {cfg.manifest} -> {cfg.output}; masks {cfg.mask_source}"
        + (f" (fg ratio {cfg.fg_ratio[0]:g}-{cfg.fg_ratio[1]:g})" if cfg.mask_source != "given" else "")
        + f", {cfg.per_image} per image, kinds "
        + ", ".join(f"{k} {w:.2f}" for k, w in weights.items() if w > 0)
        + f", strength {cfg.strength[0]:g}-{cfg.strength[1]:g}, fMSE {cfg.fmse_range[0]:g}-{cfg.fmse_range[1]:g}, "
        f"up to {cfg.max_draws} draws per sample, seed {cfg.seed}" + (f", first {cfg.limit} rows" if cfg.limit else "")
    )
    donors = build_donor_pool(cfg, columns)
    if donors is not None:
        echo(f"donor pool: {len(donors)} foregrounds from the first {cfg.donor_pool} rows")
        if len(donors) < 2:
            echo("warning: fewer than 2 donors; colour-transfer draws without a donor are rejected (no_donor)")

    return _finish(run, cfg, echo, ds, donors, SynthesizeStage(cfg=cfg, donors=donors, pool=cfg.pools.synthesize.on_cluster(False)),
                   selected)


def inverse_model_id(cfg: SynthesizeJobConfig) -> str | None:
    """The inverse model's id, after checking every part of its checkpoint (None for classical synthesis)."""
    if cfg.method != "inverse":
        return None
    from harmony_ops.checkpoints import resolve_checkpoint
    from pipelines.io.access import checkpoint_refusal

    m = cfg.model
    why = checkpoint_refusal(m.model, cfg.allow_uri)
    if why:
        raise JobError(f"model.model {m.model}: {why}")
    return resolve_checkpoint(m.model, m.unet, m.vae, m.refiner, cfg.storage_options, m.allow_pickle, m.harmony_vae, m.decoder).model_id


def _inverse_stage(cfg: SynthesizeJobConfig, model_id: str, echo) -> SynthesizeStage:
    import ray

    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    echo(
        f"harmony synthesize: {cfg.manifest} -> {cfg.output}; method inverse, model {cfg.model.model} ({model_id}), "
        f"masks {cfg.mask_source}, {cfg.per_image} per image, {cfg.candidates} candidates per sample, keeping the largest "
        f"fMSE in {cfg.fmse_range[0]:g}-{cfg.fmse_range[1]:g}, seed {cfg.seed}, model actors on {'GPU' if has_gpu else 'CPU'}"
        + (f", first {cfg.limit} rows" if cfg.limit else "")
    )
    echo("note: the reference ranks candidates with a classifier whose weights are not released; the fMSE rule stands in")
    return InverseSynthesizeStage(cfg=cfg, model_id=model_id, pool=cfg.pools.model.on_cluster(has_gpu))


def _finish(run: JobRun, cfg: SynthesizeJobConfig, echo, ds, donors: DonorPool | None, stage: SynthesizeStage,
            selected: list[str]) -> JobResult:
    # Each finished block's parameter rows go to the journal as the job streams; assembly reads the parts.
    run.stream(ds, [stage], finalize=to_arrow, columns=selected, read_back=False)
    counts = assemble(cfg, run.journal)
    wall = run.wall
    summary = {
        "counts": counts,
        "donors": None if donors is None else {"count": len(donors), "pool": cfg.donor_pool},
        "method": cfg.method,
        "model": stage.model_id,
        "seconds": wall,
        "config": run.config(),
        "files": {"manifest": MANIFEST_FILE, "params": PARAMS_FILE, "composites": COMPOSITES, "masks": MASKS, "reals": REALS,
                  **({"foregrounds": FOREGROUNDS} if cfg.layout == "cutout" else {})},
    }
    summary_uri = run.close(summary)

    c = counts
    echo(
        f"kept {c['kept']} samples ({', '.join(f'{k} {n}' for k, n in c['kept_by_kind'].items()) or 'none'}), "
        f"rejected {c['rejected']} draws ({c['unfilled_samples']} sample(s) without a kept draw); "
        f"{c['inputs']} input rows: failed {c['failed']}, invalid {c['invalid']}"
        + (f"; {c['write_failed']} kept draws not written (storage errors)" if c["write_failed"] else "")
        + f"; {wall:.1f}s"
    )
    echo(
        f"dataset: {join(cfg.output, COMPOSITES)}/, {join(cfg.output, MASKS)}/, {join(cfg.output, REALS)}/\n"
        f"manifest: {join(cfg.output, MANIFEST_FILE)}\nparameters: {join(cfg.output, PARAMS_FILE)}\n"
        f"summary: {summary_uri}"
    )
    return JobResult(summary=summary)


def assemble(cfg: SynthesizeJobConfig, journal: str) -> dict:
    """manifest.parquet and params.parquet from the journal's parquet parts; returns the counts.

    Input rows whose sanitised names collide (the same id twice, or ids equal once `_` becomes `-`)
    would have written to the same files: all of them are marked invalid (`duplicate_name`), their
    files are removed and they are left out of the manifest.
    """
    opts = cfg.storage_options
    fs, files = parquet_files(journal, opts)
    if not files:  # an empty input manifest
        empty = CUTOUT_MANIFEST_SCHEMA if cfg.layout == "cutout" else MANIFEST_SCHEMA
        write_table_atomic(empty.empty_table(), join(cfg.output, MANIFEST_FILE), opts)
        write_parquet_stream([], join(cfg.output, PARAMS_FILE), SCHEMA, opts)
        return {"inputs": 0, "kept": 0, "rejected": 0, "failed": 0, "invalid": 0, "write_failed": 0, "unfilled_samples": 0,
                "manifest_rows": 0, "kept_by_kind": {}, "reasons": {}}
    dataset = pads.dataset(files, filesystem=fs, format="parquet", schema=SCHEMA)
    heads = dataset.to_table(columns=["name"], filter=pc.field("first_of_input") & pc.field("name").is_valid())
    duplicates = {str(v["values"]) for v in pc.value_counts(heads["name"]).to_pylist() if v["counts"] > 1}

    columns = list(CUTOUT_MANIFEST_COLUMNS if cfg.layout == "cutout" else MANIFEST_COLUMNS)
    kept = dataset.to_table(columns=sorted(set(columns) | {"composite", "mask", "foreground", "name"}), filter=pc.field("kept"))
    if duplicates:
        clash = pc.is_in(kept["name"], value_set=pa.array(sorted(duplicates), pa.string()))
        _remove_files(cfg, kept.filter(clash))
        kept = kept.filter(pc.invert(clash))
    manifest = kept.select(columns).sort_by("id")
    write_table_atomic(manifest, join(cfg.output, MANIFEST_FILE), opts)

    counts: Counter = Counter()
    by_kind: Counter = Counter()
    reasons: Counter = Counter()

    def tables():
        for f in files:
            part = pq.read_table(f, filesystem=fs, schema=SCHEMA).to_pandas()
            if duplicates:
                clash = part["name"].isin(duplicates)
                part.loc[clash, ["status", "reason"]] = [DrawStatus.INVALID, ErrorKind.DUPLICATE_NAME]
                part.loc[clash, "kept"] = False
                part.loc[clash, "message"] = [f"sanitised name {n!r} is shared with another input row (same id, or "
                                              f"ids equal once '_' becomes '-'); its files were removed" for n in part.loc[clash, "name"]]
                part.loc[clash, ["composite", "mask", "real", "subset", "foreground", "background", "x", "y"]] = None
            part = part.sort_values(["source_id", "sample", "draw"], na_position="first", kind="stable")
            status, first, drawn = part["status"], part["first_of_input"], part["sample"].notna()
            counts["inputs"] += int(first.sum())
            counts["kept"] += int((status == DrawStatus.KEPT).sum())
            counts["rejected"] += int((status == DrawStatus.REJECTED).sum())
            counts["failed"] += int(((status == DrawStatus.FAILED) & ~drawn).sum())  # input rows that could not be used
            counts["write_failed"] += int(((status == DrawStatus.FAILED) & drawn).sum())  # kept draws whose files failed
            counts["invalid"] += int((first & (status == DrawStatus.INVALID)).sum())
            if cfg.method == "inverse":  # all candidates are drawn: a sample is unfilled when none was kept
                evaluated = part[drawn & status.isin([DrawStatus.KEPT, DrawStatus.REJECTED])]
                counts["unfilled_samples"] += int((~evaluated.groupby(["source_id", "sample"])["kept"].any()).sum())
            else:
                counts["unfilled_samples"] += int(((status == DrawStatus.REJECTED) & (part["draw"] == cfg.max_draws - 1)).sum())
            for kind, n in part.loc[part["kept"], "kind"].value_counts().items():
                by_kind[kind] += int(n)
            for reason, n in part.loc[~part["kept"], "reason"].value_counts().items():
                reasons[reason] += int(n)
            yield to_arrow(part)

    write_parquet_stream(tables(), join(cfg.output, PARAMS_FILE), SCHEMA, opts)
    return {
        "inputs": counts["inputs"],
        "kept": counts["kept"],
        "rejected": counts["rejected"],
        "failed": counts["failed"],
        "invalid": counts["invalid"],
        "write_failed": counts["write_failed"],
        "unfilled_samples": counts["unfilled_samples"],
        "manifest_rows": manifest.num_rows,
        "kept_by_kind": dict(sorted(by_kind.items())),
        "reasons": dict(sorted(reasons.items())),
    }


def _remove_files(cfg: SynthesizeJobConfig, rows: pa.Table) -> None:
    paths = sorted({p for c in ("composite", "mask", "real", "foreground") for p in rows[c].to_pylist() if p})
    for rel in paths:
        fs, path = filesystem(join(cfg.output, rel), cfg.storage_options)
        try:
            fs.rm(path)
        except FileNotFoundError:
            pass
