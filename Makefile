# Two commands for a fresh machine: `make demo` (install, then compress the bundled ViT) and
# `make test` (install, then run the test suite). Installs go through constraints.txt so torch
# stays the pinned CPU wheel.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test lint bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,tvm,coreml,executorch,openvino,efficientnet,ray]'
	touch $@

# digits224 (vit_digits224.pt's calibration and test images) is generated, not committed: ~100 MB of PNGs
calibration_data/digits224/VERSION: $(VENV)/.installed scripts/make_data.py
	$(PY) scripts/make_data.py --only digits224

install: $(VENV)/.installed calibration_data/digits224/VERSION

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
