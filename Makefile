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

.PHONY: run test venv dev curate train ui ui-stop lint data bench-ingest bench-dedup bench-filters bench-tokenize clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e .
	touch $@

$(BIN)/.installed-dev: $(BIN)/.installed
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/.installed
dev: $(BIN)/.installed-dev

run: venv  ## the whole pipeline on the bundled sample
	$(BIN)/peftpipe run --config $(CONFIG) $(SET)

curate: venv
	$(BIN)/peftpipe curate --config $(CONFIG) $(SET)

train: venv
	$(BIN)/peftpipe train --config $(CONFIG) $(SET)

test: dev  ## the test suite (CI runs exactly this)
	$(BIN)/python -m pytest -q

lint: dev
	$(BIN)/ruff check .

data:  ## regenerate the bundled sample (deterministic)
	$(BIN)/python data/make_sample.py

ui: venv  ## Prefect UI on :4200 and MLflow UI on :5000, both on 127.0.0.1 with SQLite
	mkdir -p .cache
	nohup $(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT) > .cache/prefect-server.log 2>&1 &
	nohup $(BIN)/mlflow server --host 127.0.0.1 --port $(MLFLOW_PORT) --backend-store-uri sqlite:///mlruns.db > .cache/mlflow-server.log 2>&1 &
	@echo "Prefect UI: http://127.0.0.1:$(PREFECT_PORT)   MLflow UI: http://127.0.0.1:$(MLFLOW_PORT)"
	@echo "To send flow runs to this Prefect server: export PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api"

ui-stop:
	-pkill -f "prefect server start" ; pkill -f "mlflow server"

clean:
	rm -rf work mlruns.db mlartifacts mlruns .cache
