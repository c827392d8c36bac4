# Two entry points: `make demo` (the main job on the embedded data) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint clean
setup: $(VENV)/.installed

# The last pip line is test-only: timm for the parity tests (tests/test_timm.py), --no-deps
# because timm requires torchvision, which has no wheel for our CPU torch; the tests import timm
# against a torchvision stand-in (tests/conftest.py) and skip, saying why, if that fails.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	$(BIN)/pip install -q --no-deps timm==1.0.31
	touch $@

demo: setup
	$(BIN)/tokenmix train --config configs/digits_demo.yaml

test: setup
	$(BIN)/tokenmix info --brief
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
