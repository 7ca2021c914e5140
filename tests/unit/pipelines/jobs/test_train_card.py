"""pipelines/jobs/train/card.py: a fine-tuned model's card from its run's summary."""

from __future__ import annotations

from pipelines.jobs.train.card import render_card, training_card

SUMMARY = {
    "task": "refiner", "steps": 40, "resumed_from_step": 20, "final_loss": 0.01234, "rows": 12, "rows_skipped": 1,
    "skipped_reasons": {"corrupt": 1}, "wall_seconds": 61.23,
    "validation": {"step": 40, "fmse": 512.25, "psnr": 31.5, "mse": 60.0, "images": 4},
    "config": {"init": "s3://m/init", "data": "s3://d/train.parquet", "validate_data": "s3://d/val.parquet",
               "resolution": 256, "batch_size": 4, "workers": 2, "lr": 1e-5, "warmup_steps": 0, "weight_decay": 0.01,
               "ema": True, "ema_decay": 0.9999, "precision": "auto", "plain_mse": False, "sampler_steps": 5, "seed": 3},
}


def test_card_fields_and_text():
    card = training_card(SUMMARY, "abc123", trained_rows=11)
    assert card["init"] == {"uri": "s3://m/init", "model_id": "abc123"}
    assert card["data"]["rows_trained_on"] == 11 and card["steps"] == 40 and card["training"]["seed"] == 3
    text = render_card(card)
    assert "harmony train --task refiner" in text and "model id `abc123`" in text
    assert "| 40 | 512.2 | 31.50 | 60.0 | 4 |" in text and "corrupt: 1" in text


def test_card_without_validation_says_so():
    card = training_card({**SUMMARY, "validation": None}, "abc123", trained_rows=11)
    assert "no held-out figures" in render_card(card)
