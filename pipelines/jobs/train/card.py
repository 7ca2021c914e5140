"""model/card.json and model/MODEL_CARD.md of a fine-tuned model: what `harmony train` made it from.

A trained model never carries its --init's card (the embedded model's quality table and commit
describe another model); this one says what this run did, from its summary."""

from __future__ import annotations

import json
import time

from pipelines.io.storage import join, write_bytes_atomic

CARD_JSON = "card.json"
CARD_MD = "MODEL_CARD.md"
# Files of --init that describe --init, not the trained model: never copied into model/.
INIT_ONLY = (CARD_JSON, CARD_MD)


def training_card(summary: dict, init_id: str, trained_rows: int) -> dict:
    """The card's fields (pure: from the run's summary.json and the init model's id)."""
    cfg = summary["config"]
    return {
        "made_by": "harmony train",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "task": summary["task"],
        "init": {"uri": cfg["init"], "model_id": init_id},
        "data": {"manifest": cfg["data"], "rows": summary["rows"], "rows_trained_on": trained_rows,
                 "rows_skipped": summary["rows_skipped"], "skipped_reasons": summary["skipped_reasons"]},
        "validation_manifest": cfg.get("validate_data"),
        "steps": summary["steps"], "resumed_from_step": summary["resumed_from_step"],
        "final_loss": summary["final_loss"],
        "training": {k: cfg[k] for k in ("resolution", "batch_size", "workers", "lr", "warmup_steps", "weight_decay",
                                         "ema", "ema_decay", "precision", "plain_mse", "sampler_steps", "seed")},
        "wall_seconds": round(summary["wall_seconds"], 1),
        "validation": summary.get("validation"),
    }


def render_card(card: dict) -> str:
    v = card["validation"]
    val = ("| step | fMSE | PSNR | MSE | images |\n|---|---|---|---|---|\n"
           f"| {v['step']} | {v['fmse']:.1f} | {v['psnr']:.2f} | {v['mse']:.1f} | {v['images']} |"
           if v else "No validation manifest was given (`--validate`): no held-out figures.")
    t = card["training"]
    d = card["data"]
    return f"""# Model card: fine-tuned by `harmony train --task {card['task']}`

- Made on {card['date']} from `{card['init']['uri']}` (model id `{card['init']['model_id']}`); only the
  trained part differs from it.
- Data: `{d['manifest']}`, {d['rows']} rows, {d['rows_trained_on']} trained on, {d['rows_skipped']} skipped
  ({', '.join(f'{k}: {n}' for k, n in d['skipped_reasons'].items()) or 'none'}).
- {card['steps']} optimisation steps (resumed from step {card['resumed_from_step']}), final loss
  {card['final_loss']:.4f}; {round(card['wall_seconds'])} s of wall time on the last attempt.
- Resolution {t['resolution']} px, batch {t['batch_size']} per worker x {t['workers']} workers, lr {t['lr']:g}
  (warmup {t['warmup_steps']}), weight decay {t['weight_decay']:g}, EMA {t['ema']} ({t['ema_decay']}),
  precision {t['precision']}, seed {t['seed']}.

## Final validation ({card['validation_manifest'] or 'none'})

{val}

The same fields are in `card.json`.
"""


def write_card(model_uri: str, card: dict, options: dict) -> None:
    write_bytes_atomic(join(model_uri, CARD_JSON), json.dumps(card, indent=2, default=str).encode(), options)
    write_bytes_atomic(join(model_uri, CARD_MD), render_card(card).encode(), options)
