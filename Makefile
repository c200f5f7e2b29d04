# The two commands of the README: `make demo` and `make test`. Both create .venv and install what they need.
# `make test` runs ruff, mypy (configured in pyproject.toml) and pytest (which also builds the docs, executes every
# Python example of the README and the docs, runs the notebook and installs the wheel into a fresh environment).
# Every pip call gets -c constraints.txt: the exact versions CI tests; pyproject.toml only declares ranges.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint docs dist bench clean chromium

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/vital demo --out out/demo

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

# The gallery test opens report.html in Debian's headless Chromium (installed here when missing and we are root).
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: the gallery browser test will be skipped"; }

# The documentation site (mkdocs-material + mkdocstrings), warnings as errors, into site/.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The sdist and the wheel in dist/, checked by twine (built without isolation: no network needed).
dist: install
	$(BIN)/python -m build --no-isolation --outdir dist
	$(BIN)/twine check --strict dist/*

test: install lint chromium
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/step_time.py
	$(BIN)/python bench/quality_class.py

clean:
	rm -rf $(VENV) out .pytest_cache site dist build
