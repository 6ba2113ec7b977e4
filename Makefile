# kcolor: `make demo` (set up and colorize the bundled examples), `make test` (set up and run the tests).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip --disable-pip-version-check -q

.PHONY: demo demo-prep test test-slow lint install install-dev bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: setup.cfg pyproject.toml | $(BIN)/python
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-dev: setup.cfg pyproject.toml | $(BIN)/python
	$(PIP) install -e ".[dev]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/kcolor colorize examples/demo/gray -o colorized
	$(BIN)/python tools/contact_sheet.py examples/demo/gray colorized \
		--truth examples/demo/truth -o colorized/contact-sheet.png
	@echo "Colorized photos in colorized/, side by side in colorized/contact-sheet.png"

demo-prep: install
	$(BIN)/kcolor prep examples/photos work/demo-shards --size 128

test: install-dev
	$(BIN)/python -m pytest -q

test-slow: install-dev
	$(BIN)/python -m pytest -q -m slow

lint: install-dev
	$(BIN)/ruff check kcolor tests benchmarks tools
	$(BIN)/ruff format --check kcolor tests benchmarks tools

clean:
	rm -rf $(VENV) work colorized build *.egg-info
