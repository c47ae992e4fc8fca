# PicoGPT: `make demo` (install, train briefly, export, run, bench) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CI and tests point PICOGPT_DATA at a local tinyshakespeare; otherwise it is downloaded once and cached.
DEMO_DIR ?= runs/demo
# ruff settings live here: pyproject.toml holds only the build-system table.
RUFF_FLAGS := --line-length 120 --target-version py310 --select E,F,W,I,B,UP --ignore E741,B008,B905 \
	--config "lint.isort.known-first-party=['picogpt','conftest']"

.PHONY: demo test lint install pretrained bundled-int8 clean check-torch-free web-deps

# The bundled model's recipe (see README): the base preset (the seed's 6.34M model), Muon + AdamW with a
# warmup-stable-cooldown schedule over PRETRAINED_ITERS steps, dropout 0.1 (training only), exported int8.
# It was trained with one sequence length throughout: --cooldown-windows 0 repeats that.
PRETRAINED_ITERS   ?= 3600
PRETRAINED_MINUTES ?= 150
PRETRAINED_DIR     ?= runs/pretrained

install: $(VENV)/.installed

# torch is pinned first: a CPU wheel of 2.13.0; the project then only adds what is missing.
$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[train,dev]'
	touch $@

# Train briefly (2 minutes; --model auto picks the preset measured best for that budget) -> export int8
# (verified against torch) -> generate -> benchmark.
demo: install
	$(BIN)/picogpt-train --max-minutes 2 --out $(DEMO_DIR) --overwrite
	$(BIN)/picogpt-export $(DEMO_DIR)/ckpt.pt -o $(DEMO_DIR)/model.onnx --quantize int8
	$(BIN)/picogpt-run -m $(DEMO_DIR)/model.onnx --prompt "ROMEO:" --max-new-tokens 300 --seed 0 --stats
	$(BIN)/picogpt-bench $(DEMO_DIR)/ckpt.pt --quick --markdown $(DEMO_DIR)/bench.md

lint: install
	$(BIN)/ruff check $(RUFF_FLAGS) picogpt export runtime bench tests

# Tests run in TEST_WORKERS processes (pytest-xdist): most of them wait on a subprocess or an import, so two
# workers halve the wall time on a 2-core machine.
TEST_WORKERS ?= 2
test: install lint web-deps
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) tests
	$(MAKE) check-torch-free

# The browser tests (tests/test_web_page.py) run picogpt-web's page in chromium with onnxruntime-web from npm:
# installed once into .web-deps where npm and chromium exist; otherwise one line says what is skipped and why.
CHROMIUM ?= $(or $(PICOGPT_CHROMIUM),/usr/bin/chromium)
ORT_WEB_VERSION := $(shell sed -n 's/^ORT_WEB_VERSION = "\([^"]*\)".*/\1/p' runtime/web.py)
web-deps:
	@if ! command -v npm >/dev/null || [ ! -x "$(CHROMIUM)" ]; then \
	  echo "note: tests/test_web_page.py (the browser page) will be skipped: it needs npm and chromium at $(CHROMIUM)"; \
	elif ! grep -qs '"version": "$(ORT_WEB_VERSION)"' .web-deps/node_modules/onnxruntime-web/package.json; then \
	  npm install --prefix .web-deps --no-audit --no-fund --loglevel=error "onnxruntime-web@$(ORT_WEB_VERSION)" \
	    || echo "note: tests/test_web_page.py (the browser page) will be skipped: npm could not install onnxruntime-web"; \
	fi

# The runtime on a base install (onnxruntime + numpy + click): a second venv without torch.
NOTORCH := $(CURDIR)/.venv-notorch
check-torch-free:
	rm -rf $(NOTORCH)
	$(PYTHON) -m venv $(NOTORCH)
	$(NOTORCH)/bin/pip install --quiet .
	@if $(NOTORCH)/bin/python -c "import torch" 2>/dev/null; then echo "torch is importable in the base install"; exit 1; fi
	cd /tmp && $(NOTORCH)/bin/picogpt-run --verify
	cd /tmp && $(NOTORCH)/bin/picogpt-run --prompt "ROMEO:" --max-new-tokens 200 --seed 0 --stats
	rm -rf /tmp/picogpt-web-check && cd /tmp && $(NOTORCH)/bin/picogpt-web -o /tmp/picogpt-web-check && rm -rf /tmp/picogpt-web-check
	@echo "torch-free runtime: OK"

pretrained: install
	$(BIN)/picogpt-train --out $(PRETRAINED_DIR) --model base --batch-size 8 --dropout 0.1 --cooldown-windows 0 \
		--max-iters $(PRETRAINED_ITERS) --max-minutes $(PRETRAINED_MINUTES) --eval-interval 100 --quiet
	$(BIN)/picogpt-export $(PRETRAINED_DIR)/ckpt.pt -o runtime/models/tinyshakespeare-int8.onnx --quantize int8

# The bundled file rewritten in place to int8 and today's graph (export/convert.py, no checkpoint needed): the
# same codes and scales, integer arithmetic, residual Add + LayerNormalization; its greedy fingerprint is re-run
# on the new file and must still match.
bundled-int8: install
	$(BIN)/python -m picogpt.export.convert runtime/models/tinyshakespeare-int8.onnx --to int8 \
		-o runtime/models/tinyshakespeare-int8.onnx

clean:
	rm -rf $(VENV) $(NOTORCH) runs build *.egg-info
