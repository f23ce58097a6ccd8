# Set-up and everyday commands. Everything installs into .venv with the pins in constraints.txt
# (torch==2.13.0 is the CPU wheel; an unpinned torch would pull gigabytes of CUDA packages).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODELS ?= models

.PHONY: install services demo test lint bench figures clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt setup.py recsys/_scan.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev,bench,notebooks,postgres,spark,text]"
	touch $@

demo: install
	@test -e $(MODELS)/current || $(BIN)/recsys train --out $(MODELS)
	$(BIN)/recsys evaluate --bundle $(MODELS)
	$(BIN)/recsys recommend --bundle $(MODELS) --user 1 --k 5
	$(BIN)/recsys recommend --bundle $(MODELS) --user 414 --k 5
	$(BIN)/recsys similar --bundle $(MODELS) --item 1 --k 5
	$(BIN)/recsys similar --bundle $(MODELS) --item 2571 --k 5
	@echo
	@echo "Starting the service on http://127.0.0.1:8000 (Ctrl-C stops it). Try, from another terminal:"
	@echo "  curl -s 'http://127.0.0.1:8000/v1/users/1/recommendations?k=5'"
	@echo "  curl -s 'http://127.0.0.1:8000/v1/users/1/recommendations?k=5&genre=Comedy'"
	@echo "  curl -s 'http://127.0.0.1:8000/v1/items/2571/similar?k=5'"
	@echo "  curl -s -X POST http://127.0.0.1:8000/v1/sessions/recommendations -H 'Content-Type: application/json' -d '{\"items\": [\"1\", \"2571\"], \"k\": 5}'"
	@echo "  curl -s http://127.0.0.1:8000/v1/model;  open http://127.0.0.1:8000/docs for the API reference"
	$(BIN)/recsys serve --bundle $(MODELS)

# What the tests start themselves: Debian's PostgreSQL (feedback shared by two service instances) and a Java
# runtime (Spark in local mode). Installed when missing (needs root and apt, as on CI); under make test the
# tests that need them fail, not skip, if they are absent.
# pyspark 4 needs Java 17 or newer.
JAVA_MAJOR = $(shell java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
DEBS = $(if $(wildcard /usr/lib/postgresql/*/bin/pg_ctl),,postgresql) \
	$(if $(shell test "0$(JAVA_MAJOR)" -ge 17 && echo ok),,openjdk-17-jre-headless)
SUDO = $(if $(filter 0,$(shell id -u)),,sudo)
services:
	@test -z "$(strip $(DEBS))" || ($(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(DEBS))

test: install services
	RECSYS_REQUIRE_SERVICES=1 $(BIN)/python -m pytest -q

figures: install  ## the README's images, from the notebooks' library calls (docs/images/)
	$(BIN)/python docs/make_figures.py

lint: install
	$(BIN)/ruff check recsys server tests benchmarks docs

clean:
	rm -rf $(VENV) $(MODELS) .pytest_cache
