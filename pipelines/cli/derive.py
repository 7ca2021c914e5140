"""Flags derived from the config models: a field's name, type, default and description become its flag
and help text once (pydantic-settings' `CliSettingsSource` on our argparse parsers).

What stays here is how this project's command line reads: kebab-case flags, `--x/--no-x` for booleans,
flat names for nested fields that users type often (`--batch-size` for `pools.model.batch_size`),
argparse-style metavars, and a flag that was not given meaning "not given" (never a default that would
override the YAML file).
"""

from __future__ import annotations

import argparse
import re
from typing import Any, Mapping

from pydantic import BaseModel
from pydantic_settings import CliSettingsSource

# pydantic-settings writes the type as the metavar (`int`, `{png,jpg,webp}`); the scalar ones are also
# converted on the namespace so a parsed flag reads as its type (`args.per_image == 3`). A value that does
# not convert stays text: the model's validation then says which field is wrong and why.
_SCALARS = {"int": int, "float": float}
# "(default factory: _evaluate_pool)" says nothing to a user; the description says what the default is
_FACTORY = re.compile(r" ?\(default factory: [^)]*\)")


def _lenient(kind):
    def convert(text: str):
        try:
            return kind(text)
        except ValueError:
            return text

    return convert


def _adder(shortcuts: Mapping[str, str]):
    def add_argument(parser: argparse.ArgumentParser, *names: str, **kw: Any):
        if kw.get("metavar") == "JSON":
            return None  # a whole nested model as one JSON flag: its fields have flags of their own
        if kw.get("dest") in shortcuts:
            names = (*names, shortcuts[kw["dest"]])
        if kw.get("default") == argparse.SUPPRESS:
            kw["default"] = None  # every flag is an attribute of the namespace; None: not given (see `values`)
        metavar = kw.get("metavar")
        if isinstance(metavar, str):
            if metavar in _SCALARS and kw.get("action") in (None, "store"):
                kw["type"] = _lenient(_SCALARS[metavar])
            if not names[0].startswith("-"):
                kw.pop("metavar")  # a positional reads as its name in the help, as argparse writes it
            elif not metavar.startswith("{"):  # argparse's own style, --seed SEED, rather than the type's name
                kw["metavar"] = [n for n in names if n.startswith("--")][-1][2:].replace("-", "_").replace(".", "_").upper()
        if kw.get("help"):
            kw["help"] = _FACTORY.sub("", kw["help"])
        return parser.add_argument(*names, **kw)

    return add_argument


def add_model_flags(parser: argparse.ArgumentParser, model: type[BaseModel],
                    shortcuts: Mapping[str, str] | None = None) -> CliSettingsSource:
    """Add a flag for every field of `model` to `parser` (nested fields as `--parent.field`; `shortcuts`
    give a field a second, flat name: {"pools.model.batch_size": "--batch-size"}); returns the source that
    turns a namespace parsed by it back into the model's nested input."""
    return CliSettingsSource(
        model,  # type: ignore[arg-type]  - any pydantic model: only its fields are read
        root_parser=parser,
        cli_implicit_flags="dual",
        cli_kebab_case=True,
        cli_hide_none_type=True,
        cli_avoid_json=True,
        add_argument_method=_adder(dict(shortcuts or {})),
    )


def values(source: CliSettingsSource, args: argparse.Namespace) -> dict[str, Any]:
    """The flags given on the command line, as the model's nested input (flags not given absent)."""
    given = argparse.Namespace(**{k: v for k, v in vars(args).items() if v is not None})
    return source(parsed_args=given)()
