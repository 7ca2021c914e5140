"""Every exception a job raises to its caller: the CLI prints these as one line and exits 2."""

from __future__ import annotations


class ConfigError(ValueError):
    """Configuration that cannot run; the message names the field."""


class JobError(RuntimeError):
    """The job cannot run (bad manifest, unreachable storage, broken checkpoint)."""


class ManifestError(JobError, ValueError):
    """The manifest as a whole cannot be read (a row that cannot be used is a row status instead)."""


class StageContractError(TypeError):
    """A stage read a column nothing before it writes, or wrote one it did not declare: a bug, not bad input."""


class LeaseHeld(JobError):
    """Another run holds the output prefix's lease: this run refuses to start (the message names it)."""


class LeaseLost(JobError):
    """This run's lease was taken over (`--force`) or removed while it ran: it stops before consolidating."""
