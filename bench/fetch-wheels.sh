#!/usr/bin/env bash
# Fill .whl/ with the wheels bench/gpu-check.sh installs on a lent GPU machine, where nothing can be
# downloaded. Run it here (where pip reaches the package index), in the root of the checkout the device
# tool sends, before the `run` call that names ".whl" in carry (BENCHMARKS.md, "GPU check").
#
#   bash bench/fetch-wheels.sh
#
# The GPU machine's image has torch, CUDA and most of what diffusers needs (KINDS.md, "Python packages
# already there"), for its own Python (3.12, x86-64). Carried: diffusers, pure Python, at the version
# constraints.txt pins. Its requirements are checked below against that image's list; importlib_metadata
# is imported by diffusers only on Python < 3.8. .whl/ is ignored by git and travels only when carried;
# everything that travels must stay under 64 MiB, so this stops above MAX_MIB.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEST=${WHEELS:-.whl}
PACKAGES=${PACKAGES:-diffusers}
MAX_MIB=${MAX_MIB:-40}
# Requirements that need no wheel: on the GPU image already (KINDS.md), or never imported there.
ON_IMAGE="filelock huggingface-hub numpy pillow regex requests safetensors importlib-metadata"

mkdir -p "$DEST"
for pkg in $PACKAGES; do
  version=$(grep -i "^${pkg}==" constraints.txt | head -1 | cut -d= -f3)
  [[ -n $version ]] || { echo "fetch-wheels: no pin for $pkg in constraints.txt" >&2; exit 1; }
  rm -f "$DEST/${pkg//-/_}"-*.whl "$DEST/${pkg}"-*.whl  # one version of each: two stop the install there
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${pkg}==${version}"
done

"$PYTHON" - "$DEST" "$MAX_MIB" $ON_IMAGE <<'EOF'
import re
import sys
import zipfile
from pathlib import Path

dest, max_mib, on_image = Path(sys.argv[1]), float(sys.argv[2]), set(sys.argv[3:])
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()  # noqa: E731
wheels = sorted(dest.glob("*.whl"))
carried = {norm(w.name.split("-")[0]) for w in wheels}
if len(carried) != len(wheels):
    sys.exit(f"fetch-wheels: two versions of one package in {dest}: {[w.name for w in wheels]}")
missing = []
for w in wheels:
    with zipfile.ZipFile(w) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        for line in z.read(meta).decode().splitlines():
            if line.startswith("Requires-Dist:") and "extra ==" not in line:
                name = norm(re.match(r"[A-Za-z0-9_.-]+", line.split(":", 1)[1].strip()).group(0))
                if name not in on_image and name not in carried:
                    missing.append(f"{name} (needed by {w.name})")
total = sum(w.stat().st_size for w in wheels) / 2**20
for w in wheels:
    print(f"{w.stat().st_size / 2**20:7.2f} MiB  {w}")
print(f"{total:7.2f} MiB  in all (limit {max_mib:.0f} MiB; the working tree and everything carried must stay under 64)")
if missing:
    sys.exit("fetch-wheels: not on the GPU image and not carried: " + ", ".join(missing))
if total > max_mib:
    sys.exit(f"fetch-wheels: {total:.1f} MiB of wheels is over {max_mib:.0f} MiB")
EOF
