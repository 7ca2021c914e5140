"""Flags derived from a dataclass, with the standard library only: for the developer tools that also run
on a bare GPU machine (`harmony bench --sections model`, the GPU check), where pydantic is not installed.
The product's commands derive theirs from pydantic models (pipelines/cli/derive.py).

A field becomes `--field-name`; its metadata holds the help text (`opt(help, default)`), and optionally
`choices` and `const` (the value of a flag given without one: `--compile` alone means `default`). A bool
that defaults to False is a switch; one that defaults to True gets `--x/--no-x`.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

_TYPES = {"int": int, "float": float, "str": str}


def opt(help: str, default: Any = None, **extra: Any) -> Any:  # noqa: A002 - the flag's help text
    return dataclasses.field(default=default, metadata={"help": help, **extra})


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    for f in dataclasses.fields(cls):
        flag, meta = "--" + f.name.replace("_", "-"), dict(f.metadata)
        kind = str(f.type).replace(" | None", "")
        if kind == "bool":
            action = argparse.BooleanOptionalAction if f.default else "store_true"
            parser.add_argument(flag, action=action, default=f.default, help=meta["help"])
            continue
        extra = {"nargs": "?", "const": meta["const"]} if "const" in meta else {}
        parser.add_argument(flag, type=_TYPES[kind], default=f.default, choices=meta.get("choices"),
                            metavar=None if meta.get("choices") else f.name.upper(), help=meta["help"], **extra)


def dataclass_of(cls: type, args: argparse.Namespace):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
