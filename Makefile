# hashrec: two commands from a fresh clone. `make demo` shows it working; `make test` proves it.
# Both create .venv (Python >= 3.11), install the package with the pinned CPU torch, and run.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PRODUCT := hashrec model index service

.PHONY: demo test install services lint clean

$(STAMP): pyproject.toml setup.py index/_scan.c
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "hashrec needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: on the project's machines this takes the CPU wheel on disk (see README).
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[serve,parquet,ray,dev]"
	@touch $(STAMP)

install: $(STAMP)

# The tests start their own redis-server and haproxy on free ports; this only makes sure the binaries exist
# (Debian packages; haproxy runs docker/haproxy.cfg in front of a real server in
# tests/service/test_load_balancer.py).
services:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing="$$missing haproxy"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing (Debian packages)"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

demo: install
	$(BIN)/hashrec demo

# The gates that keep the code as simple as it is: ruff (style, imports, complexity <= 12 per function),
# mypy (types), pylint's duplicate-code check (no copied run of 6+ lines in product code).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy $(PRODUCT)
	$(BIN)/pylint --disable=all --enable=duplicate-code --min-similarity-lines=6 --ignore-imports=yes \
		--ignore-docstrings=yes --ignore-comments=yes --score=no $(PRODUCT)

test: install services lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) demo .pytest_cache .ruff_cache .mypy_cache
