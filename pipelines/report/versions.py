"""Versions of the packages a result depends on (summary.json, bench results).

Its own module, importing nothing beyond the standard library, so that the benchmark's model section
can record versions on a machine without the pipeline's table stack (pandas, pandera, Ray)."""

from __future__ import annotations

import platform

PACKAGES = ("harmony", "torch", "diffusers", "ray", "pyarrow", "pandera", "numpy", "pillow")


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out
