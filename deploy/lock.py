"""Write deploy/requirements.lock: exact versions of the project's runtime dependencies and everything
they pull in, as installed in the environment that ran the tests.

    .venv/bin/python deploy/lock.py > deploy/requirements.lock

Only runtime requirements are followed (no `test`/`demo` extras); `ray[data]` brings its `data`
extra. Local version labels are dropped (`torch==2.13.0+cpu` -> `torch==2.13.0`) so one lock serves
the CUDA image (PyPI's default torch wheels) and the CPU image (the CPU wheel index).
tests/unit/deploy/test_deploy.py checks that the lock still matches the environment.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = "harmony"
# Environment markers evaluated for the images: Linux x86_64, CPython 3.11.
IMAGE_ENV = {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
             "python_version": "3.11", "python_full_version": "3.11.0", "implementation_name": "cpython",
             "platform_python_implementation": "CPython", "os_name": "posix"}


def _applies(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**IMAGE_ENV, "extra": e}) for e in (extras or {""}))


def closure(root: str = ROOT) -> dict[str, str]:
    """{canonical name: installed version} of root's runtime requirements, transitively."""
    seen: dict[str, str] = {}
    todo: list[tuple[str, set[str]]] = [(root, set())]
    while todo:
        name, extras = todo.pop()
        dist = md.distribution(name)
        key = canonicalize_name(dist.metadata["Name"])
        for raw in dist.requires or []:
            req = Requirement(raw)
            if not _applies(req, extras):
                continue
            dep = canonicalize_name(req.name)
            try:
                version = md.version(dep)
            except md.PackageNotFoundError:
                print(f"# warning: {dep} (needed by {key}) is not installed", file=sys.stderr)
                continue
            new_extras = set(req.extras)
            if dep not in seen or new_extras:
                if dep not in seen:
                    seen[dep] = version
                todo.append((dep, new_extras))
    seen.pop(canonicalize_name(root), None)
    return seen


def public_version(v: str) -> str:
    return re.sub(r"\+.*$", "", v)


def main() -> None:
    direct = {canonicalize_name(Requirement(r).name) for r in md.requires(ROOT) or [] if "extra ==" not in r}
    pins = closure()
    print("# Exact runtime dependencies of harmony, from the environment its tests passed in.")
    print("# Regenerate: .venv/bin/python deploy/lock.py > deploy/requirements.lock")
    print("# Direct dependencies first, then what they pull in.")
    for group in (sorted(n for n in pins if n in direct), sorted(n for n in pins if n not in direct)):
        for name in group:
            extra = "[data]" if name == "ray" else ""
            print(f"{name}{extra}=={public_version(pins[name])}")
        print()


if __name__ == "__main__":
    main()
