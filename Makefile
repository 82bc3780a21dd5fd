PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint demo demo-pg bench stress clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check treadle_cli tests pipelines bench
	$(BIN)/ruff format --check treadle_cli tests pipelines bench
	$(BIN)/mypy

demo: $(STAMP)
	bash scripts/demo.sh

demo-pg: $(STAMP)
	bash scripts/demo.sh --postgres

bench: $(STAMP)
	$(BIN)/python bench/run.py

stress: $(STAMP)
	TREADLE_STRESS=1 $(BIN)/python -m pytest tests/reliability -m stress -p no:cacheprovider

clean:
	test ! -d .demo-pg || $(BIN)/python scripts/pgcluster.py stop .demo-pg
	rm -rf $(VENV) .demo .demo-pg .pytest_cache build *.egg-info
