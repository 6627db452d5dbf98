# ntaylor_nb: the newcomer's two commands are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -eu -o pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo
PYTHON ?= python3

.PHONY: demo test sync nbtest pytest docs bench install clean

install: $(STAMP)

# A virtual environment with the package (editable) and its dev tools; rebuilt when the settings change.
$(STAMP): settings.ini setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]' 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
	touch $@

demo: $(STAMP)
	mkdir -p $(DEMO_DIR)
	$(BIN)/papermill --log-level WARNING -k python3 nbs/experiments/taylor_tour.ipynb $(DEMO_DIR)/taylor_tour.ipynb -p out_dir $(DEMO_DIR)/taylor_tour
	echo "executed notebook: $(DEMO_DIR)/taylor_tour.ipynb"
	echo "figures and results: $$(ls $(DEMO_DIR)/taylor_tour/* | tr '\n' ' ')"

test: sync nbtest pytest docs

# Notebooks are the source: exporting and cleaning them must change nothing.
sync: $(STAMP)
	snap() { find nbs ntaylor_nb -type f \( -name '*.ipynb' -o -name '*.py' \) -not -path '*/.ipynb_checkpoints/*' -not -path '*/__pycache__/*' | sort | xargs md5sum; }
	before=$$(snap); $(BIN)/nbdev_export; $(BIN)/nbdev_clean; after=$$(snap)
	if [ "$$before" != "$$after" ]; then
	  echo "nbdev_export / nbdev_clean changed these files: notebooks and library were out of sync (now fixed; commit them):"
	  diff <(echo "$$before") <(echo "$$after") || true; exit 1
	fi
	echo "sync: notebooks clean and library in sync"

nbtest: $(STAMP)
	$(BIN)/nbdev_test --n_workers 2

pytest: $(STAMP)
	$(PY) -m pytest tests

# nbdev's docs processing (always); the site itself wherever the Quarto CLI is installed.
# (tests/test_docs.py runs the processing and checks every exported symbol is documented.)
docs: $(STAMP)
	if command -v quarto >/dev/null; then $(BIN)/nbdev_docs; \
	else echo "docs: quarto is not on PATH, so the site was not rendered (processing and doc checks passed). Install it with: $(BIN)/nbdev_install_quarto"; fi

bench: $(STAMP)
	$(PY) -m benchmarks

clean:
	rm -rf _proc _docs runs .pytest_cache
