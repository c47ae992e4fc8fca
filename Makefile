# PicoGPT: `make demo` (install, train briefly, export, run, bench) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CI and tests point PICOGPT_DATA at a local tinyshakespeare; otherwise it is downloaded once and cached.
DEMO_DIR ?= runs/demo
# ruff settings live here: pyproject.toml holds only the build-system table.
RUFF_FLAGS := --line-length 120 --target-version py310 --select E,F,W,I,B,UP --ignore E741,B008,B905 \
	--config "lint.isort.known-first-party=['picogpt','conftest']"

.PHONY: demo test lint install pretrained clean

install: $(VENV)/.installed

# torch is pinned first: a CPU wheel of 2.13.0; the project then only adds what is missing.
$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[train,dev]'
	touch $@

demo: install
	$(BIN)/picogpt-train --max-minutes 2 --eval-interval 10 --out $(DEMO_DIR)

lint: install
	$(BIN)/ruff check $(RUFF_FLAGS) picogpt export runtime bench tests

test: install lint
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) runs
