"""What every engine returns and offers, without torch: the baseline engine and the CPU stages that
handle its results must not pay torch's import (seconds per Ray worker) for a type."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

    from .regions import Prepared


@dataclass
class RunResult:
    regions: list[np.ndarray]  # uint8, one per input, at each region's size
    seconds: dict[str, float] = field(default_factory=dict)  # per stage, for the whole call


class Engine(Protocol):
    name: str
    model_id: str
    needs_resize: bool

    def run(self, items: list[Prepared], seeds: list[int]) -> RunResult: ...
