"""The `harmony` command line (pipelines/cli/main.py); each command's flags are derived from its options
model (pipelines/cli/derive.py)."""

from pipelines.cli.main import build_parser, command_flags, load_options, main

__all__ = ["build_parser", "command_flags", "load_options", "main"]
