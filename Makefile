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

.PHONY: demo results test sync nbtest pytest docs bench install clean wheelhouse devdata gpu-check

install: $(STAMP)

# A virtual environment with the package (editable) and its dev tools; rebuilt when the settings change.
$(STAMP): settings.ini setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]' 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
	touch $@

# The main job: the autoencoder experiment for SGD, RMSProp and Adam (two seeds) on the embedded digits, through the
# batch runner, then the report (figures 3-6 and the claims table).
DEMO_EPOCHS ?= 20
# learning-rate trials (two seeds, a half-decade grid extended at its edges) train this fraction of each run
DEMO_TUNE_FRACTION ?= 0.2
demo: $(STAMP)
	mkdir -p $(DEMO_DIR)
	$(BIN)/ntaylor-batch nbs/experiments/autoencoder.ipynb --out $(DEMO_DIR)/autoencoder --grid optimizer=sgd,rmsprop,adam --grid seed=0,1 --param epochs=$(DEMO_EPOCHS) --param tune_fraction=$(DEMO_TUNE_FRACTION)
	# (ipykernel warns at each start that its local sockets are unencrypted: that one line is dropped, all else kept)
	$(BIN)/papermill --log-level WARNING -k python3 nbs/experiments/report.ipynb $(DEMO_DIR)/report.ipynb -p runs_dir $(DEMO_DIR) -p interactive False \
	  2> >(grep -v 'Kernel is running over TCP without encryption' >&2)
	echo; echo "The paper's claims against this run ($(DEMO_DIR)/report/claims.md):"; cat $(DEMO_DIR)/report/claims.md
	echo; echo "executed notebooks: $(DEMO_DIR)/autoencoder/*/notebook.ipynb and $(DEMO_DIR)/report.ipynb"
	echo "figures: $$(ls $(DEMO_DIR)/report/*.png | tr '\n' ' ')"

# The docs site's results page: the report executed on the demo runs (commit the notebook it writes).
RESULTS_NB := nbs/results/demo_report.ipynb
results: demo
	$(PY) tools/publish_report.py $(DEMO_DIR)/report.ipynb $(RESULTS_NB) "the make demo runs"
	$(BIN)/nbdev_clean --fname $(RESULTS_NB)
	echo "wrote $(RESULTS_NB) ($$(du -h $(RESULTS_NB) | cut -f1)); commit it with the code it was run by"

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
# (tests/test_docs.py runs the processing and checks every exported symbol is documented and the sidebar's order.)
# The sidebar is nbs/sidebar.yml, written by tools/sidebar.py from the notebooks present (custom_sidebar = True).
docs: $(STAMP)
	$(PY) tools/sidebar.py
	if command -v quarto >/dev/null; then $(BIN)/nbdev_docs; \
	else echo "docs: quarto is not on PATH, so the site was not rendered (processing and doc checks passed). Install it with: $(BIN)/nbdev_install_quarto"; fi

bench: $(STAMP)
	$(PY) -m benchmarks

clean:
	rm -rf _proc _docs runs .pytest_cache

# The GPU path through papermill (benchmarks/RESULTS.md, "How to run P4 on a GPU"). The GPU machine has Python 3.12 and
# the science stack but no Jupyter stack and no internet: `wheelhouse` downloads the 3.12 wheels of papermill,
# ipykernel, nbformat, nbclient and fastcore with every dependency, leaves out what that machine already holds
# (tools/gpu-preinstalled.txt), proves the set resolves offline and prints its size; `devdata` copies the real data
# into .devdata/. Both folders are ignored; name them in the device tool's `carry`, then run tools/gpu_reproduction.sh.
# (Any Python with pip builds the wheelhouse: it needs no virtual environment.)
SHARED_DATA ?= ../shared/data
wheelhouse:
	$(PYTHON) tools/wheelhouse.py build .whl/gpu-py312 --python-version 3.12
	echo "carry: .whl/gpu-py312 ($$(du -sh .whl/gpu-py312 | cut -f1))"

devdata:
	mkdir -p .devdata/MNIST/raw
	cp $(SHARED_DATA)/mnist/MNIST/raw/*.gz .devdata/MNIST/raw/
	cp $(SHARED_DATA)/cifar10/cifar10-jpeg75.tar.gz .devdata/
	echo "carry: .devdata ($$(du -sh .devdata | cut -f1))"

# On this CPU, what the GPU run does, at tiny size: the same recipe built for this Python, installed offline into an
# empty target that a fresh Python sees beside the repo and a stand-in for the GPU's site-packages (links into this
# venv's copies of the packages that machine holds), then tools/gpu_reproduction.sh with SIZE=tiny on the real data.
# Also the offline checks of the 3.12 wheelhouse (tests/test_wheelhouse.py; the end-to-end test runs only here).
gpu-check: $(STAMP)
	NTAYLOR_GPU_CHECK=1 NTAYLOR_SHARED_DATA=$(SHARED_DATA) $(PY) -m pytest tests/test_wheelhouse.py -v
