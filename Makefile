# Run `make help` for the targets. Everything runs inside .venv, created on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install run report-demo test lint format bench bench-memory bench-instructions docs clean

help: ## show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-19s %s\n", $$1, $$2}'

# The project's own bytecode, written before anything runs: an editable install leaves it to
# the first import, and where PYTHONDONTWRITEBYTECODE is set (some sandboxes and CI images
# set it) no import writes it, so every `pipeline` process compiled its ~170 modules again,
# 0.15-0.2 CPU-s a start (a resume's first request waits on it). Up to date: 0.05 s.
BYTECODE := $(BIN)/python -m compileall -q pipeline

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@$(BYTECODE)
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install the project with its dev tools

run: $(STAMP) ## label the sample reviews on the built-in simulator and print a cost report
	@$(BYTECODE)
	$(BIN)/pipeline run jobs/label_reviews.toml --simulate
	$(BIN)/pipeline report out/label_reviews --by model,label

CHROMIUM := $(shell command -v chromium || command -v chromium-browser)
report-demo: $(STAMP) ## the sample job's HTML report and a screenshot of it (needs chromium)
	$(if $(CHROMIUM),,$(error make report-demo needs chromium for the screenshot (apt-get install chromium)))
	@test -f out/label_reviews/results.parquet || $(BIN)/pipeline run jobs/label_reviews.toml --simulate --no-progress
	@$(BIN)/pipeline report out/label_reviews --by label --html out/report-demo.html > /dev/null
	@$(CHROMIUM) --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
		--hide-scrollbars --user-data-dir=$${TMPDIR:-/tmp}/pipeline-report-demo-profile \
		--window-size=1280,2950 \
		--screenshot=$(CURDIR)/out/report-demo.png file://$(CURDIR)/out/report-demo.html > /dev/null 2>&1
	@echo "wrote out/report-demo.png"

# pytest-xdist workers; each test module is one unit of work and the Ray modules are two
# (tests/conftest.py), one test at a time in each. Three workers on 2 cores: most tests
# wait (on a simulator's latency, a child process), and the Ray units are the longest.
# A worker that crashes ends the run at once (--max-worker-restart 0): a crash is a failure
# to look into, and a worker started in its place was seen to wait forever for the
# crashed module's tests under the module scheduler (a run that never ends, in CI 90 min).
test: $(STAMP) ## run the whole test suite
	$(BIN)/python -m pytest -q -n 3 --max-worker-restart 0

lint: $(STAMP) ## ruff (lint + format check), mypy, and the import rules (read with ast)
	$(BIN)/ruff check pipeline tests bench scripts
	$(BIN)/ruff format --check pipeline tests bench scripts
	$(BIN)/mypy pipeline
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_structure.py

format: $(STAMP) ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix pipeline tests bench scripts
	$(BIN)/ruff format pipeline tests bench scripts

bench: $(STAMP) ## benchmarks against the simulator: prints throughput, CPU and memory figures
	@$(BYTECODE)
	$(BIN)/python -m bench.run_bench
	$(BIN)/python -m bench.limits_bench
	$(BIN)/python -m bench.resume_bench
	$(BIN)/python -m bench.pressure_bench
	$(BIN)/python -m bench.batch_bench
	$(BIN)/python -m bench.cache_bench
	$(BIN)/python -m bench.cascade_bench
	$(BIN)/python -m bench.storage_bench
	$(BIN)/python -m bench.ray_bench

bench-memory: $(STAMP) ## peak memory of a 1,000,000-row run (takes minutes)
	@$(BYTECODE)
	$(BIN)/python -m bench.memory_bench

bench-instructions: $(STAMP) ## instructions a row of a run against plain aiohttp's (valgrind; exact)
	@$(BYTECODE)
	$(BIN)/python -m bench.instructions_bench

docs: $(STAMP) ## regenerate the README's command reference from --help
	$(BIN)/python scripts/readme_help.py

clean: ## remove build debris (never out/: it holds paid results)
	rm -rf build *.egg-info .pytest_cache .mypy_cache .ruff_cache
