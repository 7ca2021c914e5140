"""The stages of `harmony synthesize` (CPU tasks): donor statistics, and synthesis itself.

`SynthesizeStage` turns each input row (id, real, mask) into parameter-table rows: for each of
`per_image` samples, up to `max_draws` draws (kind, strength, parameters), each perturbed, encoded,
scored against the stored real image and filtered on fMSE; the first draw that passes is written
in the iHarmony4 layout. Bad input rows become one row with a reason. Every random choice comes
from `rng_for(seed, row id, sample, draw | "mask")`, so a sample never depends on batching or worker.
"""

from __future__ import annotations

import json
import math
import io
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image

from harmony_ops.color import delta_e76, rgb_to_lab
from harmony_ops.imageio import ImageError, apply_orientation, decode_image, encode_image
from harmony_ops.inputs import load_sample
from harmony_ops.masks import random_mask
from harmony_ops.metrics import evaluate_arrays
from harmony_ops.perturb import DonorPool, LabStats, draw_kind, fg_lab_stats, filter_reason, perturb, rng_for

from schemas.synthesis import to_arrow

from pipelines.config import SynthesizeJobConfig
from pipelines.jobs.harmonize.stages import storage_error
from pipelines.io.manifest import is_safe_name, manifest_dir, resolve_uri
from pipelines.core.stage import Resources, Stage
from pipelines.io.storage import join, read_with_retries, write_with_retries

COMPOSITES, MASKS, REALS = "composite_images", "masks", "real_images"
# Scalar copies of these parameters go to their own columns (the JSON column has them all).
SCALAR_PARAMS = ("exposure_ev", "gamma", "contrast", "temperature", "tint", "saturation")


def sanitise_name(row_id: str) -> str:
    """The iHarmony4 <name> of a manifest id: the id itself, with `_` replaced by `-` so that
    `<name>_<m>_<k>` still splits into name, mask number and sample number."""
    return row_id.replace("_", "-")


def layout(name: str, m: int, k: int) -> dict[str, str]:
    """Paths relative to the output prefix, in iHarmony4 naming: real `<name>.jpg`, mask
    `<name>_<m>.png`, composite `<name>_<m>_<k>.jpg`; `id` is the composite's stem."""
    sample_id = f"{name}_{m}_{k}"
    return {
        "id": sample_id,
        "composite": f"{COMPOSITES}/{sample_id}.jpg",
        "mask": f"{MASKS}/{name}_{m}.png",
        "real": f"{REALS}/{name}.jpg",
    }


def mask_index(cfg: SynthesizeJobConfig, k: int) -> int:
    """Given masks: one mask per real image (m = 1, samples k = 1..K share it); random masks: one per
    sample (m = k)."""
    return 1 if cfg.mask_source == "given" else k


def input_problem(rec: dict, cfg: SynthesizeJobConfig) -> str:
    """Why an input row cannot be used (empty string when it can)."""
    rid = rec.get("id")
    if not isinstance(rid, str) or not rid:
        return "id: must be a non-empty string"
    if not is_safe_name(rid):
        return "id: must be one file name of [A-Za-z0-9._-], at most 200 characters, without '..'"
    longest = layout(sanitise_name(rid), mask_index(cfg, cfg.per_image), cfg.per_image)["id"]
    if not is_safe_name(longest):
        return f"id: too long for the sample ids it names (e.g. {len(longest)} characters > 200)"
    problems = []
    if not _is_uri(rec.get("real")):
        problems.append("real: must be a non-empty string (required)")
    if cfg.mask_source == "given" and not _is_uri(rec.get("mask")):
        problems.append("mask: must be a non-empty string (required with --mask-source given)")
    return "; ".join(problems)


def _is_uri(v) -> bool:
    return isinstance(v, str) and bool(v.strip())


def _text(v) -> str | None:
    """A cell as text; missing cells (null, NaN, or empty as CSV has them) as None."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip()):
        return None
    return v if isinstance(v, str) else str(v)


@dataclass
class Source:
    """A decoded input row: the real image (EXIF orientation applied) and its given mask, if any."""

    real: np.ndarray
    mask: np.ndarray | None
    notes: list[str]


def load_source(rec: dict, cfg: SynthesizeJobConfig) -> Source:
    """Fetch (with retries) and decode with the harmonize job's guards. Raises the storage client's
    exceptions or ImageError(kind, message)."""
    base = manifest_dir(cfg.manifest)
    real_bytes = read_with_retries(resolve_uri(base, rec["real"]), cfg.storage_options, cfg.retries)
    if cfg.mask_source == "given":
        mask_bytes = read_with_retries(resolve_uri(base, rec["mask"]), cfg.storage_options, cfg.retries)
        try:
            # The real image plays the composite: same decoding, orientation and mask checks.
            sample = load_sample(real_bytes, mask_bytes, max_pixels=cfg.max_pixels)
        except ImageError as exc:
            raise ImageError(exc.kind, str(exc).replace("composite", "real image")) from exc
        notes = [("real_" + n.removeprefix("composite_")) if n.startswith("composite_") else n for n in sample.notes]
        return Source(real=sample.composite, mask=sample.mask, notes=notes)
    img, orientation, notes = decode_image(real_bytes, "real image", cfg.max_pixels)
    notes = [f"real_{n}" for n in notes] + (["exif_orientation"] if orientation not in (None, 1) else [])
    return Source(real=np.asarray(apply_orientation(img, orientation), dtype=np.uint8), mask=None, notes=notes)


def sample_mask(cfg: SynthesizeJobConfig, source_id: str, source: Source, k: int) -> tuple[np.ndarray, dict | None]:
    """The foreground of sample k: the given mask, or a random shape drawn from (seed, id, k)."""
    if cfg.mask_source == "given":
        return source.mask, None
    h, w = source.real.shape[:2]
    try:
        return random_mask(cfg.mask_source, h, w, rng_for(cfg.seed, source_id, k, "mask"), cfg.fg_ratio)
    except ValueError as exc:  # too small for a shape inside the border
        raise ImageError("too_small", str(exc)) from exc


def _decode_stored(data: bytes) -> np.ndarray:
    return np.asarray(decode_image(data, "encoded image")[0], dtype=np.uint8)


def _failure(exc: Exception) -> tuple[str, str]:
    if isinstance(exc, ImageError):
        return exc.kind, str(exc)
    if isinstance(exc, OSError):
        return storage_error(exc)
    return "decode_error", f"{type(exc).__name__}: {exc}"


@dataclass
class DonorStatsStage(Stage):
    """Lab statistics of each row's foreground (sample 1's mask): the donor pool of colour transfer.
    Rows that cannot be read are left out."""

    cfg: SynthesizeJobConfig
    name: str = "donor-stats"
    resources: Resources = Resources()

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        out = []
        for rec in batch.to_dict("records"):
            if input_problem(rec, self.cfg):
                continue
            try:
                source = load_source(rec, self.cfg)
                mask, _ = sample_mask(self.cfg, rec["id"], source, 1)
                stats = fg_lab_stats(source.real, mask)
            except Exception:  # noqa: BLE001 - a donor that cannot be read is no donor; its row reports it
                continue
            out.append({"id": rec["id"], **{f"mean_{c}": float(stats.mean[i]) for i, c in enumerate("Lab")},
                        **{f"std_{c}": float(stats.std[i]) for i, c in enumerate("Lab")}})
        cols = ["id"] + [f"{s}_{c}" for s in ("mean", "std") for c in "Lab"]
        return pd.DataFrame(out, columns=cols)


def donor_pool_from(rows: list[dict]) -> DonorPool:
    return DonorPool(
        ids=tuple(r["id"] for r in rows),
        mean=np.array([[r[f"mean_{c}"] for c in "Lab"] for r in rows], dtype=np.float64).reshape(-1, 3),
        std=np.array([[r[f"std_{c}"] for c in "Lab"] for r in rows], dtype=np.float64).reshape(-1, 3),
    )


@dataclass
class SynthesizeStage(Stage):
    """Input rows in, parameter-table rows out (an Arrow table with the schemas.synthesis schema)."""

    cfg: SynthesizeJobConfig
    donors: DonorPool | None = None
    name: str = "synthesize"
    resources: Resources = Resources()

    def process(self, batch: pd.DataFrame):
        rows: list[dict] = []
        for rec in batch.to_dict("records"):
            produced = self.synthesize_row(rec)
            produced[0]["first_of_input"] = True
            rows.extend(produced)
        return to_arrow(pd.DataFrame(rows))

    def synthesize_row(self, rec: dict) -> list[dict]:
        cfg = self.cfg
        base = manifest_dir(cfg.manifest)
        source_id = _text(rec.get("id")) or ""
        common = {
            "source_id": source_id,
            "mask_source": cfg.mask_source,
            "source_real": _text(resolve_uri(base, rec.get("real"))),
            "source_mask": _text(resolve_uri(base, rec.get("mask"))) if cfg.mask_source == "given" else None,
            "source_subset": _text(rec.get("subset")),
            "kept": False,
            "first_of_input": False,
        }
        problem = input_problem(rec, cfg)
        if problem:
            return [{**common, "status": "invalid", "reason": "invalid_row", "message": problem}]
        name = sanitise_name(source_id)
        common["name"] = name
        try:
            source = load_source(rec, cfg)
        except Exception as exc:  # noqa: BLE001 - storage and decoding failures alike are this row's failure
            kind, message = _failure(exc)
            return [{**common, "status": "failed", "reason": kind, "message": message[:2000]}]
        h, w = source.real.shape[:2]
        common.update(width=w, height=h, notes=",".join(source.notes) or None)
        try:
            real_jpg = encode_image(source.real, "jpg", cfg.jpeg_quality)
            real_stored = _decode_stored(real_jpg)
        except Exception as exc:  # noqa: BLE001
            return [{**common, "status": "failed", "reason": "encode_error", "message": f"{type(exc).__name__}: {exc}"}]

        rows: list[dict] = []
        written: set[str] = set()
        for k in range(1, cfg.per_image + 1):
            m = mask_index(cfg, k)
            paths = layout(name, m, k)
            try:
                mask, mask_params = sample_mask(cfg, source_id, source, k)
            except ImageError as exc:
                return rows + [{**common, "status": "failed", "reason": exc.kind, "message": str(exc)}]
            fg = mask >= 0.5
            real_fg_lab = rgb_to_lab(real_stored[fg])
            for d in range(cfg.max_draws):
                row = {**common, "id": paths["id"], "sample": k, "draw": d, "mask_index": m,
                       "fg_ratio": float(fg.mean())}
                row.update(self._draw(source, mask, mask_params, real_stored, real_fg_lab, source_id, k, d))
                if row["status"] == "kept":
                    try:
                        self._write(paths, real_jpg, mask, row.pop("_composite_jpg"), written)
                    except Exception as exc:  # noqa: BLE001
                        kind, message = storage_error(exc) if isinstance(exc, OSError) else ("write_error", f"{type(exc).__name__}: {exc}")
                        row.update(status="failed", kept=False, reason=kind, message=message[:2000])
                    else:
                        row.update({c: paths[c] for c in ("composite", "mask", "real")}, subset=row["kind"])
                row.pop("_composite_jpg", None)
                rows.append(row)
                if row["status"] != "rejected":
                    break
        return rows

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
            return {**out, "status": "rejected", "reason": "no_donor", "message": str(exc),
                    "params": _json({"strength": strength, "mask": mask_params})}
        params = {"strength": strength, **params}
        if mask_params is not None:
            params["mask"] = mask_params
        out.update({c: params.get(c) for c in SCALAR_PARAMS}, donor_id=params.get("donor_id"), params=_json(params))
        comp_jpg = encode_image(comp, "jpg", cfg.jpeg_quality)
        comp_stored = _decode_stored(comp_jpg)
        metrics = evaluate_arrays(comp_stored, real_stored, mask)
        comp_fg_lab = rgb_to_lab(comp_stored[mask >= 0.5])
        out.update(
            mse=metrics.mse, psnr=metrics.psnr, fmse=metrics.fmse, fpsnr=metrics.fpsnr,
            fg_delta_l=float(comp_fg_lab[:, 0].mean() - real_fg_lab[:, 0].mean()),
            fg_delta_e=float(delta_e76(comp_fg_lab, real_fg_lab).mean()),
        )
        reason = filter_reason(metrics.fmse, cfg.fmse_range)
        if reason is not None:
            lo_f, hi_f = cfg.fmse_range
            return {**out, "status": "rejected", "reason": reason,
                    "message": f"fMSE {metrics.fmse:.1f} outside [{lo_f:g}, {hi_f:g}]"}
        return {**out, "status": "kept", "kept": True, "reason": None, "message": None, "_composite_jpg": comp_jpg}

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
