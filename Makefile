# Two commands for a fresh machine: `make demo` (install, then compress the bundled ViT) and
# `make test` (install, then run the test suite). Installs go through constraints.txt so torch
# stays the pinned CPU wheel.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test lint bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,tvm,coreml,executorch,openvino,efficientnet]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/compress vit_mnist.pt --recipe int8-ptq -o out/

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) benches/spine.py

clean:
	rm -rf out/ .pytest_cache
