"""`harmony`: parse the command line into the command's typed options, then run it.

Only the chosen command's options are imported and turned into flags (`harmony bench` thereby runs where
pydantic is absent, and a command starts without importing every job)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from pipelines.cli.commands import BY_NAME, COMMANDS, Command
from pipelines.errors import ConfigError


class Parser(argparse.ArgumentParser):
    """argparse, with the closest known flag named when one is mistyped (Python 3.11's argparse names none)."""

    def unknown(self, extras: list[str]) -> None:
        import difflib

        known = [s for a in self._actions for s in a.option_strings if s.startswith("--")]
        hints = []
        for arg in extras:
            flag = arg.split("=", 1)[0]
            close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6) if flag.startswith("-") else []
            hints.append(f"{arg} (did you mean {close[0]}?)" if close else arg)
        self.error("unrecognized arguments: " + ", ".join(hints))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("harmony")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _add_flags(s: argparse.ArgumentParser, cmd: Command) -> None:
    cls = cmd.options_class()
    if not hasattr(cls, "model_fields"):  # a dataclass (bench): flags without pydantic
        from pipelines.devtools.flags import add_dataclass_flags

        add_dataclass_flags(s, cls)
        s.set_defaults(_sources={})
        return
    from pipelines.cli.derive import add_model_flags
    from pipelines.cli.options import ConfigFile, OutputFlags

    sources = {"options": add_model_flags(s, cls, cmd.shortcuts)}
    if cmd.yaml:
        sources["config"] = add_model_flags(s, ConfigFile)
    if cmd.ray_job:
        sources["output"] = add_model_flags(s, OutputFlags)
    s.set_defaults(_sources=sources)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with `only`, the flags of that command alone (the others listed by name)."""
    p = Parser(prog="harmony", description="Image harmonization with DiffHarmony, from one image to a Ray cluster.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"harmony {_version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for cmd in COMMANDS:
        s = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        if only in (None, cmd.name):
            _add_flags(s, cmd)
        s.set_defaults(func=cmd.run)
    return p


def command_flags(args: argparse.Namespace, part: str = "options") -> dict[str, Any]:
    """What the command line gave for the command's options (`part`: or its config/output flags), as the
    options model's nested input: flags not given are absent, so YAML values and defaults stay."""
    from pipelines.cli.derive import values

    source = args._sources.get(part)
    return {} if source is None else values(source, args)


def load_options(args: argparse.Namespace):
    """The command's typed options: defaults < YAML file (--config) < flags."""
    cmd = BY_NAME[args.command]
    cls = cmd.options_class()
    if not hasattr(cls, "model_fields"):
        from pipelines.devtools.flags import dataclass_of

        return dataclass_of(cls, args)
    from pipelines.config import build

    return build(cls, command_flags(args, "config").get("config"), command_flags(args))


def _command_of(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    name = _command_of(argv)
    parser = build_parser(only=name if name in BY_NAME else None)
    args, extras = parser.parse_known_args(argv)
    if extras:  # said by the subcommand's parser, which knows its flags
        parser._subparsers._group_actions[0].choices[args.command].unknown(extras)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from harmony_ops.checkpoints import CheckpointError
    from harmony_ops.imageio import ImageError

    from pipelines.core.console import Console
    from pipelines.errors import JobError

    cmd = BY_NAME[args.command]
    console = Console()
    try:
        out = None
        if cmd.ray_job:
            from pipelines.cli.options import OutputFlags
            from pipelines.config import build

            out = build(OutputFlags, None, command_flags(args, "output"))
            console = Console(out.log_format, out.quiet, out.progress_every)
        options = load_options(args)
        if out is None:
            return cmd.run(options, console)
        from pipelines.core.logs import ray_logs_to_file

        with ray_logs_to_file(args.command, verbose=out.verbose) as log:
            if log is not None:
                console(f"Ray's logs and warnings: {log}")
            return cmd.run(options, console)
    except (ConfigError, CheckpointError, ImageError, JobError, ValueError, FileNotFoundError) as exc:
        console(f"harmony {args.command}: error: {exc}", file=sys.stderr)
        return 2
