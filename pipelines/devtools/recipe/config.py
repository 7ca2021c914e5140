"""`harmony recipe`: its options."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import CliPositionalArg

from pipelines.config import Strict


class RecipeOptions(Strict):
    recipe: CliPositionalArg[str] = Field("configs/recipes/demo", description="recipe folder (default "
                                          "configs/recipes/demo)")
    work: str = Field("build/recipe-demo", description="work folder: data, checkpoints, step markers")
    restart: bool = Field(False, description="run every step again (default: skip finished steps, resume training)")
    only: str | None = Field(None, description="run this step alone (e.g. 08-evaluate)")
    until: str | None = Field(None, description="stop after this step")
    cap: list[str] = Field(default_factory=list, description="upper bound KEY=N on a numeric step setting, e.g. "
                           "max_steps=5 (trial runs; repeatable)")
