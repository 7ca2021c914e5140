#!/usr/bin/env bash
# The GPU check: the model section (stage 1 and the refiner of --arch sd15-inpaint) over a grid of sizes,
# batches, precisions and optimisations, then the train section (one optimisation step of stage 1 and of the
# refiner: samples/s per worker, bf16 autocast and fp32), in one call of at most 8 minutes on a lent GPU machine.
# BENCHMARKS.md ("GPU check") says how to fill .whl/ and which `run` call to make.
#
#   bash bench/gpu-check.sh               # GPU machine: installs the carried .whl/*.whl, runs both sections
#   bash bench/gpu-check.sh --dry-run     # any machine: the same logic on the CPU, tiny model, seconds
#   bash bench/gpu-check.sh --resolution 512 --budget-s 200   # other flags go to pipelines.devtools.gpu_check
#
# Writes to $OUT (default bench-results/gpu): gpu-bench.jsonl (a line per row), gpu-bench.json and
# gpu-bench.md (rewritten after every row, so a stop at the time limit keeps the rows done), gpu-check.log.
# Environment: PYTHON (python3: on the GPU machine, the one that holds torch), WHEELS (.whl), SITE
# (/tmp/site: where the wheels go), BUDGET_S (420 s for both sections, 120 with --dry-run; the train
# section has the last --train-share of it, 15%; the run is stopped at BUDGET_S + 40 s whatever happens),
# SECTIONS (model,train).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
PYTHON=${PYTHON:-python3}
OUT=${OUT:-bench-results/gpu}
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/site}
SECTIONS=${SECTIONS:-model,train}
dry=0
for arg in "$@"; do [[ $arg == --dry-run ]] && dry=1; done
if [[ -z ${BUDGET_S:-} ]]; then
  if ((dry)); then BUDGET_S=120; else BUDGET_S=420; fi
fi
mkdir -p "$OUT"
LOG=$OUT/gpu-check.log
: >"$LOG"
say() { echo "gpu-check: $*" | tee -a "$LOG"; }

# 1. The carried wheels (diffusers): nothing can be downloaded on the GPU machine.
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
shopt -u nullglob
if ((${#wheels[@]})); then
  say "installing ${#wheels[@]} wheel(s) from $WHEELS into $SITE"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" 2>&1 | tee -a "$LOG"
  [[ ${PIPESTATUS[0]} == 0 ]] || { say "installing the wheels failed"; exit 1; }
  export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
  say "no wheels in $WHEELS: using the packages $PYTHON has"
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi

# 2. What we run on: the card as found (queries only: nothing here changes its settings), and versions
#    (read from package metadata, without importing torch: the grid records torch's CUDA and the device).
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu \
    --format=csv 2>&1 | tee -a "$LOG"
fi
"$PYTHON" - ${wheels[@]+"${wheels[@]}"} <<'EOF' 2>&1 | tee -a "$LOG"
import importlib.metadata as md
import importlib.util
import os
import sys


def present(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


print("python", sys.version.split()[0], sys.executable)
for w in sys.argv[1:]:  # each carried wheel as this Python sees it: it must come from SITE
    name = os.path.basename(w).split("-")[0]
    try:
        dist = md.distribution(name)
        print(f"carried: {name} {dist.version} from {dist.locate_file('')}")
    except md.PackageNotFoundError:
        print(f"carried: {name} NOT FOUND after the install")
for name in ("torch", "diffusers", "huggingface_hub", "safetensors", "numpy", "pillow", "fsspec"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name} missing")
print("not needed by the model and train sections:",
      ", ".join(f"{n} {'present' if present(n) else 'absent'}" for n in ("ray", "pandera", "s3fs", "pydantic")))
if not present("diffusers"):  # found, not imported: the grid imports it (and torch) once, and records versions
    sys.exit("gpu-check: diffusers is missing: fill .whl/ with bench/fetch-wheels.sh where pip works, and carry it")
EOF
[[ ${PIPESTATUS[0]} == 0 ]] || exit 1

# 3. The sections (model grid, then train rows), stopped at the budget plus a margin whatever happens;
#    the rows done stay in $OUT.
say "sections $SECTIONS, budget ${BUDGET_S} s, writing $OUT"
PYTHONUNBUFFERED=1 timeout -k 10 $((BUDGET_S + 40)) "$PYTHON" -m pipelines.devtools.gpu_check \
  --out "$OUT" --budget-s "$BUDGET_S" --sections "$SECTIONS" "$@" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
if ((rc == 124 || rc == 137)); then
  say "stopped at the time limit (exit $rc); the rows finished are in $OUT/gpu-bench.{json,jsonl,md}"
elif ((rc != 0)); then
  say "failed (exit $rc); see $LOG"
else
  say "done: $OUT/gpu-bench.md"
fi
exit "$rc"
