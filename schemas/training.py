"""Training metrics tables under `metrics/`: one row per optimisation step, one per validation."""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

TRAIN_COLUMNS = ("step", "loss", "lr", "samples", "samples_per_second", "seconds")
VALIDATION_COLUMNS = ("step", "fmse", "psnr", "mse", "images")
TRAIN_FILE = "metrics/train.parquet"
VALIDATION_FILE = "metrics/validation.parquet"


class TrainMetrics(pa.DataFrameModel):
    step: Series[int] = pa.Field(ge=1, unique=True)
    loss: Series[float]
    lr: Series[float] = pa.Field(ge=0)
    samples: Series[int] = pa.Field(ge=1)
    samples_per_second: Series[float] = pa.Field(ge=0)
    seconds: Series[float] = pa.Field(ge=0)

    class Config:
        strict = True
        coerce = True


class ValidationMetrics(pa.DataFrameModel):
    step: Series[int] = pa.Field(ge=1, unique=True)
    fmse: Series[float] = pa.Field(nullable=True)
    psnr: Series[float] = pa.Field(nullable=True)
    mse: Series[float] = pa.Field(nullable=True)
    images: Series[int] = pa.Field(ge=1)

    class Config:
        strict = True
        coerce = True


def train_table(rows: pd.DataFrame) -> pd.DataFrame:
    return TrainMetrics.validate(rows.reindex(columns=list(TRAIN_COLUMNS)).sort_values("step").reset_index(drop=True))


def validation_table(rows: pd.DataFrame) -> pd.DataFrame:
    return ValidationMetrics.validate(
        rows.reindex(columns=list(VALIDATION_COLUMNS)).sort_values("step").reset_index(drop=True))
