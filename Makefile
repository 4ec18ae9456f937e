# metafsl — `make demo` and `make test` do everything on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip -q --disable-pip-version-check
STAMP := $(VENV)/.metafsl-installed

.DEFAULT_GOAL := help
.PHONY: help setup demo test check-noop bench bench-maml-speed bench-export bench-memory bench-taskmap bench-pretrained bench-distributed fidelity faults lint clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create .venv and install everything (idempotent)

$(STAMP): pyproject.toml scripts/build_learn2learn.sh scripts/setup_env.sh
	@bash scripts/setup_env.sh "$(PYTHON)" "$(VENV)"
	@touch $@

demo: setup  ## meta-train + test ProtoNet and MAML on the built-in glyphs dataset
	@$(VENV)/bin/metafsl demo

# three workers on two cores: many tests wait on a training subprocess that hangs, sleeps or
# holds a lock, leaving a core idle (fresh clone, 2026-12-04: 5 min 13 s with -n 2, 4 min 33 s with -n 3)
test: setup  ## run the test suite (three pytest-xdist workers)
	@$(PY) -m pytest -q -n 3 --dist loadgroup $(PYTEST_ARGS)

check-noop: setup  ## with every optimiser step a no-op, each learning test must fail
	@$(PY) tests/check_noop.py -n 2 $(PYTEST_ARGS)

bench: setup  ## speed benchmarks (results go to docs/benchmarks.md by hand)
	@$(PY) scripts/bench.py $(BENCH_ARGS)
	@$(PY) scripts/bench_maml_speed.py --out docs/evidence/maml_speed $(MAML_SPEED_ARGS)

bench-maml-speed: setup  ## MAML on the CPU: learn2learn vs metafsl and each speed lever (MAML_SPEED_ARGS=--smoke)
	@$(PY) scripts/bench_maml_speed.py --out docs/evidence/maml_speed $(MAML_SPEED_ARGS)

bench-export: setup  ## exported classifiers: file size, CPU images/s, fp32 vs int8 accuracy (BENCH_ARGS=--smoke)
	@nice -n 10 $(PY) scripts/bench_export.py --out docs/evidence/export $(BENCH_ARGS)

bench-distributed: setup  ## 1 process x 2 threads vs 2 workers x 1 thread, ProtoNet and MAML (BENCH_ARGS=--smoke | --device cuda)
	@$(PY) scripts/bench_distributed.py docs/evidence/distributed $(BENCH_ARGS)

bench-memory: setup  ## second-order MAML: peak memory and time with algo.recompute_inner on/off (BENCH_ARGS=--smoke | --device cuda)
	@$(PY) scripts/bench_maml_memory.py --out docs/evidence/maml_memory $(BENCH_ARGS)

bench-taskmap: setup  ## the map of tasks of RUN=<run dir> into docs/evidence/taskmap (TASKS_ARGS=episodes=400 ...)
	@nice -n 10 bash scripts/bench_taskmap.sh docs/evidence/taskmap "$(RUN)" $(TASKS_ARGS)

bench-pretrained: setup  ## torchvision/timm backbones: frozen SimpleShot, meta-trained, fine-tuned vs conv4 (~25 min)
	@nice -n 10 $(PY) scripts/bench_pretrained.py --out docs/evidence/pretrained $(BENCH_ARGS)

fidelity: setup  ## issue 30's hour-long trainings + tests, table in outputs/fidelity (FIDELITY_ARGS=all; ~7 h)
	@$(PY) scripts/run_fidelity.py $(or $(FIDELITY_ARGS),all) --data-dir ../shared/data --out outputs/fidelity

faults: setup  ## kill trainings at random points, resume, compare (docs/benchmarks.md; FAULTS_ARGS=--trials 30)
	@nice -n 10 $(PY) scripts/faults.py $(FAULTS_ARGS)

lint: setup  ## static checks
	@$(VENV)/bin/ruff check src tests scripts

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .cache build *.egg-info src/*.egg-info
