# Two entry points a fresh machine needs: `make test` and `make demo`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch lies on this workplace's disk; elsewhere override TORCH_SPEC
# (e.g. TORCH_SPEC="torch" for the default CUDA build).
TORCH_SPEC ?= torch==2.13.0
# constraints.txt pins every dependency to versions tested together (pip freeze of a working
# environment, torch left to TORCH_SPEC): reproducible, and pip need not backtrack through
# boto3/botocore releases.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: test demo install bench model clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -c constraints.txt -e ".[test,demo]"
	touch $(STAMP)

install: $(STAMP)

# Lint first (rules in pyproject.toml), then the suite. pytest's exit code 5 means "no test
# collected": not a failure of the build. TEST_WORKERS pytest-xdist processes (whole files per
# process, so module fixtures are built once): on 2 cores the serial suite left ~30% of the CPU idle
# while Ray started processes; each process runs its own local Ray. TEST_WORKERS=0 runs it serially.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

demo: $(STAMP)
	$(VENV)/bin/harmony demo $(DEMO_ARGS)

# The embedded model (harmony_ops/weights/demo): the whole recipe, from scratch, on this machine's CPUs.
# Finished steps are skipped and interrupted training resumes; RECIPE_ARGS=--restart redoes all.
model: $(STAMP)
	$(VENV)/bin/harmony recipe configs/recipes/demo --work build/recipe-demo $(RECIPE_ARGS)

bench: $(STAMP)
	$(VENV)/bin/harmony bench $(BENCH_ARGS)

clean:
	rm -rf demo-output bench-results .pytest_cache
