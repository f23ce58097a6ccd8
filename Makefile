# Set-up and everyday commands. Everything installs into .venv with the pins in constraints.txt
# (torch==2.13.0 is the CPU wheel; an unpinned torch would pull gigabytes of CUDA packages).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODELS ?= models

.PHONY: install demo test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $@

demo: install
	$(BIN)/recsys train --out $(MODELS)
	$(BIN)/recsys evaluate --bundle $(MODELS)
	$(BIN)/recsys recommend --bundle $(MODELS) --user 1 --k 5
	$(BIN)/recsys recommend --bundle $(MODELS) --user 414 --k 5
	$(BIN)/recsys similar --bundle $(MODELS) --item 1 --k 5
	$(BIN)/recsys similar --bundle $(MODELS) --item 2571 --k 5

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check recsys server tests benchmarks

clean:
	rm -rf $(VENV) $(MODELS) .pytest_cache
