# The two commands: `make run` (whole pipeline on the bundled sample, CPU, offline) and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
CONFIG  ?= configs/sample.yaml
SET     ?=
# torch first, pinned: the CPU build on this disk; an unpinned torch would pull a multi-GB CUDA build.
TORCH   ?= torch==2.13.0
PREFECT_PORT ?= 4200
MLFLOW_PORT  ?= 5000

.PHONY: run test test-fast venv dev curate train ui ui-stop ui-postgres worker deploy lint data clean bench-ingest bench-dedup bench-filters bench-tokenize bench-orchestration bench-tables

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip
	$(BIN)/python -m pip install -qq $(TORCH)
	$(BIN)/python -m pip install -qq -e .
	touch $@

$(BIN)/.installed-dev: $(BIN)/.installed
	$(BIN)/python -m pip install -qq -e '.[dev]'
	touch $@

venv: $(BIN)/.installed
dev: $(BIN)/.installed-dev

run: venv  ## the whole pipeline on the bundled sample
	$(BIN)/peftpipe run --config $(CONFIG) $(SET)

curate: venv
	$(BIN)/peftpipe curate --config $(CONFIG) $(SET)

train: venv
	$(BIN)/peftpipe train --config $(CONFIG) $(SET)

# System packages first (chromium, postgresql; idempotent, a no-op once installed). Where they cannot be
# installed (no root or sudo) the tests that need them skip with the reason printed; under CI=true those
# skips fail the run (tests/conftest.py).
test: dev  ## the test suite (CI runs exactly this)
	bash .ci/setup-system.sh || test "$$CI" != true
	$(BIN)/python -m pytest -q

test-fast: dev  ## the unit tests only: no servers, browser, deployments or kill runs (a few minutes)
	$(BIN)/python -m pytest -q -m "not slow" tests/test_layout.py tests/schemas tests/tasks tests/bench

lint: dev
	$(BIN)/ruff check .

data:  ## regenerate the bundled sample (deterministic)
	$(BIN)/python data/make_sample.py

ui: venv  ## Prefect UI on :4200 and MLflow UI on :5000, both on 127.0.0.1 with SQLite
	$(BIN)/python scripts/servers.py start --prefect-port $(PREFECT_PORT) --mlflow-port $(MLFLOW_PORT)

ui-stop:  ## stop what `make ui`, `make ui-postgres` and `make worker` started (by pid, nothing else)
	$(BIN)/python scripts/servers.py stop
	if [ -f .cache/pg/data/postmaster.pid ]; then $(BIN)/python scripts/postgres.py stop --dir .cache/pg; fi

# Deployments (docs/deploy.md): servers, work pools + the `gpu` concurrency limit, a worker, prefect.yaml.
PG_PORT ?= 5433
GPUS    ?=
POOL    ?= peftpipe-cpu
API_URL ?= http://127.0.0.1:$(PREFECT_PORT)/api
.PHONY: run test test-fast venv dev curate train ui ui-stop ui-postgres worker deploy lint data clean bench-ingest bench-dedup bench-filters bench-tokenize bench-orchestration bench-tables

ui-postgres: venv  ## the production profile, locally: both servers on a PostgreSQL cluster in .cache/pg
	$(BIN)/python scripts/postgres.py start --dir .cache/pg --port $(PG_PORT)
	$(BIN)/python scripts/servers.py start --prefect-port $(PREFECT_PORT) --mlflow-port $(MLFLOW_PORT) \
		--postgres postgresql://postgres@127.0.0.1:$(PG_PORT)

worker: venv  ## work pools and the gpu limit (GPUS: default this node's visible GPUs), then a worker on POOL
	$(BIN)/python scripts/servers.py setup --api-url $(API_URL) $(if $(GPUS),--gpus $(GPUS))
	$(BIN)/python scripts/servers.py worker --api-url $(API_URL) --pool $(POOL)

deploy: venv  ## create the curate, train and pipeline deployments of prefect.yaml on the server
	PREFECT_API_URL=$(API_URL) $(BIN)/prefect --no-prompt deploy --all

clean:
	rm -rf work mlruns.db mlartifacts mlruns .cache

# Benchmarks (CPU ones here; GPU training runs on a GPU node: see BENCHMARKS.md "Training" for the command).
bench-ingest: venv
	$(BIN)/python bench/ingest/bench.py --gb 1.0

bench-dedup: venv  ## peftpipe alone; the side-by-side run with datasketch/datatrove/text-dedup is in BENCHMARKS.md
	$(BIN)/python bench/dedup/corpus.py synthetic --docs 20000 --out .cache/syn20k.jsonl
	$(BIN)/python bench/dedup/truth.py .cache/syn20k.jsonl --out .cache/syn20k.truth.json
	$(BIN)/python bench/dedup/bench.py --corpus .cache/syn20k.jsonl --truth .cache/syn20k.truth.json \
	    --name synthetic-20k --tools peftpipe --repeat 1 --out .cache/dedup_results.json

bench-filters: venv
	$(BIN)/python bench/filters/bench.py --records 1000000 --out bench/filters/results.json

bench-tokenize: venv
	$(BIN)/python bench/tokenize/bench.py --records 8000 --repeats 2 --num-proc 1 2

bench-orchestration: venv
	$(BIN)/python bench/orchestration/bench.py --max-steps 10 --skip-deployment

bench-tables: venv  ## render BENCHMARKS.md's tables from bench/<area>/*.json (tests/bench fails when they differ)
	$(BIN)/python bench/render.py
