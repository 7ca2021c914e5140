"""The stages of `harmony synthesize` (CPU tasks): donor statistics, and synthesis itself.

`SynthesizeStage` turns each input row (id, real, mask) into parameter-table rows: for each of
`per_image` samples, up to `max_draws` draws (kind, strength, parameters), each perturbed, encoded,
scored against the stored real image and filtered on fMSE; the first draw that passes is written
in the iHarmony4 layout. Bad input rows become one row with a reason. Every random choice comes
from `rng_for(seed, row id, sample, draw | "mask")`, so a sample never depends on batching or worker.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from PIL import Image

from harmony_ops.color import delta_e76, rgb_to_lab
from harmony_ops.imageio import ImageError, decode_image, encode_image
from harmony_ops.metrics import evaluate_arrays
from harmony_ops.perturb import DonorPool, LabStats, draw_kind, filter_reason, perturb, rng_for
from pipelines.jobs.synthesize.config import SynthesizeJobConfig
from pipelines.core.failures import classify
from pipelines.core.stage import PoolConfig, Stage
from pipelines.io.manifest import manifest_dir, resolve_uri
from pipelines.io.storage import join, write_with_retries
from pipelines.jobs.synthesize.sources import (
    SCALAR_PARAMS, Source, input_columns, input_problem, layout, load_source, mask_index, sample_mask, sanitise_name,
    text_cell,
)
from schemas.synthesis import SCHEMA
from schemas.vocabulary import DrawStatus, ErrorKind

@dataclass
class SynthesizeStage(Stage):
    """Input rows in, parameter-table rows out (an Arrow table with the schemas.synthesis schema)."""

    cfg: SynthesizeJobConfig
    donors: DonorPool | None = None
    pool: PoolConfig = field(default_factory=PoolConfig)
    model_id: str | None = None

    name = "synthesize"
    keeps_rows = False
    composite_ext = "jpg"
    writes = tuple(SCHEMA.names)

    @property
    def reads(self) -> tuple[str, ...]:
        return input_columns(self.cfg)

    def process(self, batch: pd.DataFrame):
        rows: list[dict] = []
        for rec in batch.to_dict("records"):
            produced = self.synthesize_row(rec)
            produced[0]["first_of_input"] = True
            rows.extend(produced)
        return pd.DataFrame(rows)

    def crashed(self, batch: pd.DataFrame, message: str) -> pd.DataFrame:
        rows = [{**self._common(rec), "status": DrawStatus.FAILED, "reason": ErrorKind.WORKER_CRASHED, "message": message,
                 "first_of_input": True} for rec in batch.to_dict("records")]
        return pd.DataFrame(rows)

    def _common(self, rec: dict) -> dict:
        """The columns every parameter row of one input row shares."""
        cfg, base = self.cfg, manifest_dir(self.cfg.manifest)
        return {
            "source_id": text_cell(rec.get("id")) or "",
            "mask_source": cfg.mask_source,
            "source_real": text_cell(resolve_uri(base, rec.get("real"))),
            "source_mask": text_cell(resolve_uri(base, rec.get("mask"))) if cfg.mask_source == "given" else None,
            "source_subset": text_cell(rec.get("subset")),
            "method": cfg.method,
            "model": self.model_id,
            "kept": False,
            "first_of_input": False,
        }

    def synthesize_row(self, rec: dict) -> list[dict]:
        cfg = self.cfg
        common = self._common(rec)
        source_id = common["source_id"]
        problem = input_problem(rec, cfg)
        if problem:
            return [{**common, "status": DrawStatus.INVALID, "reason": problem[0], "message": problem[1]}]
        name = sanitise_name(source_id)
        common["name"] = name
        try:
            source = load_source(rec, cfg)
        except Exception as exc:  # noqa: BLE001 - storage and decoding failures alike are this row's failure
            kind, message = classify(exc, ErrorKind.DECODE_ERROR)
            return [{**common, "status": DrawStatus.FAILED, "reason": kind, "message": message[:2000]}]
        h, w = source.real.shape[:2]
        common.update(width=w, height=h, notes=",".join(source.notes) or None)
        try:
            real_jpg = encode_image(source.real, "jpg", cfg.jpeg_quality)
            real_stored = _decode_stored(real_jpg)
        except Exception as exc:  # noqa: BLE001
            return [{**common, "status": DrawStatus.FAILED, "reason": ErrorKind.ENCODE_ERROR, "message": f"{type(exc).__name__}: {exc}"}]

        rows: list[dict] = []
        written: set[str] = set()
        for k in range(1, cfg.per_image + 1):
            m = mask_index(cfg, k)
            paths = layout(name, m, k, self.composite_ext)
            try:
                mask, mask_params = sample_mask(cfg, source_id, source, k)
            except ImageError as exc:
                return rows + [{**common, "status": DrawStatus.FAILED, "reason": exc.kind, "message": str(exc)}]
            fg = mask >= 0.5
            base = {**common, "id": paths["id"], "sample": k, "mask_index": m, "fg_ratio": float(fg.mean())}
            drawn = self._sample_draws(base, source, mask, mask_params, real_stored, rgb_to_lab(real_stored[fg]), source_id, k)
            for row in drawn:
                if row["status"] == DrawStatus.KEPT:
                    self._keep(row, paths, real_jpg, mask, written)
                row.pop("_composite", None)
            rows.extend(drawn)
        return rows

    def _sample_draws(self, base: dict, source: Source, mask: np.ndarray, mask_params: dict | None, real_stored: np.ndarray,
                      real_fg_lab: np.ndarray, source_id: str, k: int) -> list[dict]:
        """One sample's draws, in order, until one passes the fMSE filter (at most `max_draws`)."""
        rows = []
        for d in range(self.cfg.max_draws):
            rows.append({**base, "draw": d, **self._draw(source, mask, mask_params, real_stored, real_fg_lab, source_id, k, d)})
            if rows[-1]["status"] != DrawStatus.REJECTED:
                break
        return rows

    def _keep(self, row: dict, paths: dict, real_jpg: bytes, mask: np.ndarray, written: set) -> None:
        """Write a kept draw's files; a storage failure fails the draw, not the job."""
        try:
            placement = self._write(paths, real_jpg, mask, row["_composite"], written)
            if placement is not None:
                row["_placement"] = placement
        except Exception as exc:  # noqa: BLE001
            kind, message = classify(exc, ErrorKind.WRITE_ERROR)
            row.update(status=DrawStatus.FAILED, kept=False, reason=kind, message=message[:2000])
        else:
            row.update({c: paths[c] for c in ("composite", "mask", "real")}, subset=row["kind"])
            if self.cfg.layout == "cutout":
                x, y = row.pop("_placement")
                row.update(foreground=paths["foreground"], background=paths["real"], x=x, y=y)

    def _statistics(self, comp_stored: np.ndarray, real_stored: np.ndarray, mask: np.ndarray, real_fg_lab: np.ndarray) -> tuple[dict, object]:
        """The parameter table's statistics of a stored composite against the stored real image, and its metrics."""
        metrics = evaluate_arrays(comp_stored, real_stored, mask)
        comp_fg_lab = rgb_to_lab(comp_stored[mask >= 0.5])
        return dict(
            mse=metrics.mse, psnr=metrics.psnr, fmse=metrics.fmse, fpsnr=metrics.fpsnr,
            fg_delta_l=float(comp_fg_lab[:, 0].mean() - real_fg_lab[:, 0].mean()),
            fg_delta_e=float(delta_e76(comp_fg_lab, real_fg_lab).mean()),
        ), metrics

    def _draw(self, source: Source, mask: np.ndarray, mask_params: dict | None, real_stored: np.ndarray,
              real_fg_lab: np.ndarray, source_id: str, k: int, d: int) -> dict:
        """One draw: kind, strength, parameters, perturbation, encoding, statistics, filter."""
        cfg = self.cfg
        rng = rng_for(cfg.seed, source_id, k, d)
        kind = draw_kind(rng, cfg.kinds)
        lo, hi = cfg.strength
        strength = float(rng.uniform(lo, hi)) if hi > lo else float(lo)
        out: dict = {"kind": kind, "strength": strength}
        try:
            comp, params = perturb(kind, source.real, mask, rng, strength, self.donors, source_id)
        except LookupError as exc:
            return {**out, "status": DrawStatus.REJECTED, "reason": ErrorKind.NO_DONOR, "message": str(exc),
                    "params": _json({"strength": strength, "mask": mask_params})}
        params = {"strength": strength, **params}
        if mask_params is not None:
            params["mask"] = mask_params
        out.update({c: params.get(c) for c in SCALAR_PARAMS}, donor_id=params.get("donor_id"), params=_json(params))
        comp_jpg = encode_image(comp, "jpg", cfg.jpeg_quality)
        stats, metrics = self._statistics(_decode_stored(comp_jpg), real_stored, mask, real_fg_lab)
        out.update(stats)
        reason = filter_reason(metrics.fmse, cfg.fmse_range)
        if reason is not None:
            lo_f, hi_f = cfg.fmse_range
            return {**out, "status": DrawStatus.REJECTED, "reason": reason,
                    "message": f"fMSE {metrics.fmse:.1f} outside [{lo_f:g}, {hi_f:g}]"}
        return {**out, "status": DrawStatus.KEPT, "kept": True, "reason": None, "message": None, "_composite": comp_jpg}

    def _write(self, paths: dict, real_jpg: bytes, mask: np.ndarray, comp_jpg: bytes, written: set) -> None:
        """Real image and mask once (when a first sample uses them), then the composite, each atomically."""
        cfg = self.cfg
        if paths["real"] not in written:
            write_with_retries(join(cfg.output, paths["real"]), real_jpg, cfg.storage_options, cfg.retries)
            written.add(paths["real"])
        if paths["mask"] not in written:
            write_with_retries(join(cfg.output, paths["mask"]), _grey_png(mask), cfg.storage_options, cfg.retries)
            written.add(paths["mask"])
        write_with_retries(join(cfg.output, paths["composite"]), comp_jpg, cfg.storage_options, cfg.retries)
        if cfg.layout == "cutout":
            cutout, placement = _cutout(_decode_stored(comp_jpg), mask)
            write_with_retries(join(cfg.output, paths["foreground"]), cutout, cfg.storage_options, cfg.retries)
            return placement
        return None


@dataclass
class InverseSynthesizeStage(SynthesizeStage):
    """Inverse harmonization (DiffHarmony's training-data path): the inverse model re-renders the real
    image's foreground (the stage-1 sampler with the real image where a composite would go) and the
    result is pasted onto the stored real image, so the background is bit-identical to it (composites
    are PNG, unlike the reference's JPEG path). Each sample gets `candidates` seeded renderings; the one
    whose fMSE lies in range and is largest is kept. The reference ranks candidates with a classifier
    whose weights were never released, so the fMSE rule stands in for it. A stateful stage: the
    model loads once per actor, on a GPU when the cluster has one."""

    name = "inverse_synthesize"
    stateful = True
    composite_ext = "png"

    def setup(self) -> None:
        from pipelines.core.engine import load_actor_engine

        self.engine = load_actor_engine(self.cfg.model, self.pool, self.cfg.storage_options)

    def _sample_draws(self, base: dict, source: Source, mask: np.ndarray, mask_params: dict | None, real_stored: np.ndarray,
                      real_fg_lab: np.ndarray, source_id: str, k: int) -> list[dict]:
        from harmony_ops.regions import finish, prepare
        from pipelines.io.manifest import row_seed

        cfg = self.cfg
        seeds = [row_seed(cfg.seed, f"{source_id}/{k}/{c}") for c in range(cfg.candidates)]
        params = _json({"mask": mask_params, "steps": cfg.model.steps, "scheduler": cfg.model.scheduler})
        rows = [{**base, "draw": c, "candidate": c, "seed": s, "kind": "inverse", "params": params} for c, s in enumerate(seeds)]
        try:
            item = prepare(real_stored, mask, cfg.resolution.policy(), resize=self.engine.needs_resize)
            regions = self.engine.run([item] * len(seeds), seeds).regions
        except Exception as exc:  # noqa: BLE001 - one sample's model failure, not the job's
            kind, message = classify(exc, ErrorKind.MODEL_ERROR)
            return [{**rows[0], "status": DrawStatus.FAILED, "reason": kind, "message": message[:2000]}]
        best = None
        for row, region in zip(rows, regions):
            comp = finish(real_stored, mask, item.plan.region, region)
            stats, metrics = self._statistics(comp, real_stored, mask, real_fg_lab)
            row.update(stats)
            reason = filter_reason(metrics.fmse, cfg.fmse_range)
            if reason is not None:
                row.update(status=DrawStatus.REJECTED, reason=reason,
                           message=f"fMSE {metrics.fmse:.1f} outside [{cfg.fmse_range[0]:g}, {cfg.fmse_range[1]:g}]")
                continue
            row["_composite_pixels"] = comp
            if best is None or row["fmse"] > best["fmse"]:
                best = row
        for row in rows:
            if "_composite_pixels" not in row:
                continue
            comp = row.pop("_composite_pixels")
            if row is best:
                row.update(status=DrawStatus.KEPT, kept=True, reason=None, message=None, _composite=encode_image(comp, "png"))
            else:
                row.update(status=DrawStatus.REJECTED, reason=ErrorKind.NOT_SELECTED,
                           message=f"fMSE {row['fmse']:.1f} in range; candidate {best['candidate']} has a larger one")
        return rows


def _decode_stored(data: bytes) -> np.ndarray:
    return np.asarray(decode_image(data, "encoded image")[0], dtype=np.uint8)


# Soft edge of the cutouts --layout cutout writes: the alpha ramps from 0 to 255 over this many pixels inside
# the mask's edge, as a matting tool's cutout of a product does.
CUTOUT_EDGE = 3


def _cutout(composite: np.ndarray, mask: np.ndarray) -> tuple[bytes, tuple[int, int]]:
    """The composite's foreground as an RGBA PNG cropped to the mask's box, alpha feathered inside the
    mask's edge (0 outside it), and the box's top-left corner (x, y) on the real image."""
    from harmony_ops.compositing import feather_alpha

    ys, xs = np.nonzero(mask >= 0.5)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    # feather_alpha(r) ramps over 2r + 1 pixels inside the edge; a mask too thin for the ramp to reach 255
    # keeps a hard edge (it would otherwise lose its opaque core and be an empty mask to harmonize)
    alpha = np.rint(feather_alpha(mask, max(1, CUTOUT_EDGE // 2)) * 255).astype(np.uint8)
    if alpha.max() < 255:
        alpha = np.where(mask >= 0.5, 255, 0).astype(np.uint8)
    rgba = np.dstack([composite[y0:y1, x0:x1], alpha[y0:y1, x0:x1]])
    buf = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buf, format="PNG")
    return buf.getvalue(), (int(x0), int(y0))


def _grey_png(mask: np.ndarray) -> bytes:
    """The mask as an 8-bit greyscale PNG of 0 and 255."""
    buf = io.BytesIO()
    Image.fromarray(np.where(mask >= 0.5, 255, 0).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _json(params: dict) -> str:
    return json.dumps(params, sort_keys=True, default=_jsonable)


def _jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, LabStats):
        return v.as_dict()
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")
