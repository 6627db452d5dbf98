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

# One recipe at a time even under `make -j`: `test`'s steps share files (sync rewrites the notebooks the others read, docs
# writes the _proc/ that tests/test_docs.py reads), and the protocol's steps run in order by design.
.NOTPARALLEL:

.PHONY: demo reproduce reproduce-convnet results report test sync nbtest pytest docs bench install clean wheelhouse devdata gpu-check

install: $(STAMP)

# A virtual environment with the package (editable) and its dev tools; rebuilt when the settings change.
$(STAMP): settings.ini setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]' 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
	touch $@

# The claims protocol (issue 11), the same for the demo and the MNIST reproduction, for the autoencoder experiment:
#  1. learning rates: each optimizer's rate searched once (ntaylor_nb.tune.tune_lr: a half-decade grid extended while
#     the best rate is at an end, trials on two seeds of their own (ntaylor_nb.tune.TUNE_SEEDS) over TUNE_FRACTION of the run's rounds), kept in tuning/ and
#     reused by every run of that optimizer (each run keeps its trial table, chosen rate and at-edge flag);
#  2. main/: SGD, RMSProp and Adam at their tuned rates on every seed, Taylor losses and activations recorded;
#  3. sgd_rates/: SGD at SGD_FACTORS times its tuned rate (the paper's exploration claim is for several SGD rates),
#     activations only;
#  4. tf/: TensorFlow 1's RMSProp and Adam (the paper's defaults) at their own tuned rates, activations only;
#     tf_rates/: the same at the rates tuned for PyTorch's RMSProp and Adam (the control: the implementation without its rate);
#  5. the report (papermill): learning-rate searches, figures 3-6, the claims table with intervals over seeds.
# Every run snapshots the probe set SNAPSHOTS times, evenly over training (more than the 50 singular values figure 5
# uses). A point that fails (a rate that diverges) is listed in its results.csv and the report says what is missing.
SEEDS ?= 0,1,2
SGD_FACTORS ?= 0.3,3
SNAPSHOTS ?= 101
# notebooks executed at once; the grids go seed by seed, so concurrent runs tune different optimizers
WORKERS ?= 2
PAPERMILL := $(BIN)/papermill --log-level WARNING -k python3
define protocol
	mkdir -p $(1)  # the runs folder, and in it the commit that makes the runs, for the published page (tools/publish_report.py)
	{ git rev-parse --short HEAD && { test -n "$$(git status --porcelain --untracked-files=no)" && echo dirty || echo clean; }; } > $(1)/commit.txt 2>/dev/null || rm -f $(1)/commit.txt
	nb=nbs/experiments/$(or $(3),autoencoder).ipynb; common=(--workers $(WORKERS) --param snapshots=$(SNAPSHOTS) --param tune_cache=$(1)/tuning $(2))
	$(BIN)/ntaylor-batch $$nb --out $(1)/main --grid seed=$(SEEDS) --grid optimizer=sgd,rmsprop,adam "$${common[@]}" \
	  || echo "WARNING: some runs of $(1)/main failed (see its results.csv); the report uses the others"
	$(BIN)/ntaylor-batch $$nb --out $(1)/sgd_rates --grid seed=$(SEEDS) --grid lr_factor=$(SGD_FACTORS) --param optimizer=sgd \
	  "$${common[@]}" --param 'layers=[]' --param 'neuron_layers=[]' || echo "WARNING: some runs of $(1)/sgd_rates failed (see its results.csv)"
	$(BIN)/ntaylor-batch $$nb --out $(1)/tf --grid seed=$(SEEDS) --grid optimizer=rmsprop_tf,adam_tf \
	  "$${common[@]}" --param 'layers=[]' --param 'neuron_layers=[]' || echo "WARNING: some runs of $(1)/tf failed (see its results.csv)"
	$(BIN)/ntaylor-batch $$nb --out $(1)/tf_rates --grid seed=$(SEEDS) --grid optimizer=rmsprop_tf,adam_tf --param lr_of=torch \
	  "$${common[@]}" --param 'layers=[]' --param 'neuron_layers=[]' || echo "WARNING: some runs of $(1)/tf_rates failed (see its results.csv)"
	# (ipykernel warns at each start that its local sockets are unencrypted: that one line is dropped, all else kept)
	$(PAPERMILL) nbs/experiments/report.ipynb $(1)/report.ipynb -p runs_dir $(1) -p interactive False \
	  2> >(grep -v 'Kernel is running over TCP without encryption' >&2)
	echo; echo "The paper's claims against these runs ($(1)/report/claims.md):"; cat $(1)/report/claims.md
	echo; echo "executed notebooks: $(1)/*/*/notebook.ipynb and $(1)/report.ipynb"
	echo "figures: $$(ls $(1)/report/*.png | tr '\n' ' ')"
endef

# The main job: the protocol above on the embedded digits (autoencoder 64-50-30-20-30-50-64), CPU, about 10 minutes.
DEMO_EPOCHS ?= 20
# trials over the runs' whole horizon: at a fifth of it SGD's rates 0.3 to 3 sat on one loss plateau and the search chose
# 1.0, where the whole horizon ranks 10 first (an SGD handicapped by its own trials; the search now flags such ties)
DEMO_TUNE_FRACTION ?= 1
demo: $(STAMP)
	$(call protocol,$(DEMO_DIR),--param epochs=$(DEMO_EPOCHS) --param tune_fraction=$(DEMO_TUNE_FRACTION))

# The autoencoder half of the paper at its scale on real MNIST (784-50-30-20-30-50-784, batch 64), the same protocol,
# on the CPU (at most an hour on 2 cores), then its executed report published on the docs site (commit it).
# DATA_ROOT: a folder with MNIST/raw/*.gz as torchvision downloads it (here: a copy of ../shared/data/mnist).
DATA_ROOT ?= data
REPRO_DIR ?= runs/mnist
REPRO_EPOCHS ?= 5
REPRO_TUNE_FRACTION ?= 1
REPRO_NB := nbs/results/mnist_report.ipynb
reproduce: $(STAMP)
	test -d $(DATA_ROOT)/MNIST/raw || { echo "DATA_ROOT=$(DATA_ROOT) has no MNIST/raw: point it at a data root holding MNIST (torchvision's layout)"; exit 2; }
	start=$$SECONDS
	$(call protocol,$(REPRO_DIR),--param dataset=mnist --param data_root=$(abspath $(DATA_ROOT)) --param epochs=$(REPRO_EPOCHS) --param tune_fraction=$(REPRO_TUNE_FRACTION))
	echo "reproduction: $$(( (SECONDS - start) / 60 )) min $$(( (SECONDS - start) % 60 )) s" | tee $(REPRO_DIR)/timing.txt
	$(PY) tools/publish_report.py $(REPRO_DIR)/report.ipynb $(REPRO_NB) "the MNIST reproduction's runs ($$(cut -d' ' -f2- $(REPRO_DIR)/timing.txt) on $$(nproc) cores)" reproduce
	$(BIN)/nbdev_clean --fname $(REPRO_NB)

# The convnet half on real CIFAR-10 at a size this CPU can run (about an hour on 2 cores with trials over half the run,
# some 10 minutes more over the whole run, by the searches' times; the paper's scale needs a GPU:
# benchmarks/RESULTS.md, "How to run P4 on a GPU"): the same protocol with the paper's convnet (batch 128) for
# CONV_ROUNDS minibatches, exploration snapshots at every round (CONV_ROUNDS + 1 > 50 singular values), neuron-wise
# regret of CONV_NEURONS neurons of conv layer 1 (figure 3(b)), and the layer-wise regret of CONV_LAYERS (weight layers
# numbered from 1 at the input; none by default: the fully connected layer's scope, layer 4, fits every sample of a run
# this short, its infimum is 0, its regret the cumulative loss, and its matrix-free solve takes minutes a run here).
# DATA_ROOT: a folder with CIFAR-10 as torchvision downloads it (cifar-10-batches-py/), or an ImageFolder copy in
# cifar10/train and cifar10/test (here: ../shared/data/cifar10/cifar10-jpeg75.tar.gz extracted into DATA_ROOT/cifar10).
CONV_DIR ?= runs/cifar10
CONV_ROUNDS ?= 60
# trials over the whole run, as the demo's and the MNIST reproduction's: over half of it SGD's search chose 0.3, over all
# 60 rounds 0.1 (twenty-fifth session; the published CIFAR-10 page was made with half)
CONV_TUNE_FRACTION ?= 1
CONV_NEURONS ?= 50
CONV_LAYERS ?= []
CONV_NB := nbs/results/cifar10_report.ipynb
CONV_EPOCHS = $(shell expr \( $(CONV_ROUNDS) + 389 \) / 390 2>/dev/null)# enough epochs of 390 rounds (50,000 images, batch 128) for CONV_ROUNDS
CONV_PARAMS = --param dataset=cifar10 --param data_root=$(abspath $(DATA_ROOT)) --param rounds=$(CONV_ROUNDS) \
  --param epochs=$(CONV_EPOCHS) --param tune_fraction=$(CONV_TUNE_FRACTION) --param regret_every=1 \
  --param neurons_per_layer=$(CONV_NEURONS) --param 'neuron_layers=[1]' --param 'layers=$(CONV_LAYERS)' --param prefixes=16
reproduce-convnet: SNAPSHOTS = $(shell expr $(CONV_ROUNDS) + 1 2>/dev/null)
reproduce-convnet: $(STAMP)
	case '$(CONV_ROUNDS)' in ''|*[!0-9]*|0*) echo "CONV_ROUNDS=$(CONV_ROUNDS): give the number of minibatches as a positive whole number without leading zeros (e.g. 60; one epoch is 390)"; exit 2;; esac
	test -d $(DATA_ROOT)/cifar-10-batches-py -o -d $(DATA_ROOT)/cifar10/train || { echo "DATA_ROOT=$(DATA_ROOT) holds no CIFAR-10 (cifar-10-batches-py/ or cifar10/train/): point it at a data root holding it"; exit 2; }
	start=$$SECONDS
	$(call protocol,$(CONV_DIR),$(CONV_PARAMS),convnet)
	echo "reproduction: $$(( (SECONDS - start) / 60 )) min $$(( (SECONDS - start) % 60 )) s" | tee $(CONV_DIR)/timing.txt
	$(PY) tools/publish_report.py $(CONV_DIR)/report.ipynb $(CONV_NB) "the CIFAR-10 convnet reproduction's runs ($$(cut -d' ' -f2- $(CONV_DIR)/timing.txt) on $$(nproc) cores)" reproduce-convnet
	$(BIN)/nbdev_clean --fname $(CONV_NB)

# The report alone, executed again over runs already made (after the report notebook changed, say), and with PAGE put on
# the docs site in place of the old one: make report RUNS=runs/mnist PAGE=nbs/results/mnist_report.ipynb WHAT="..." (the
# page names the commit that executed the report and the one that made the runs).
RUNS ?=
PAGE ?=
WHAT ?= the runs in $(RUNS)
report: $(STAMP)
	test -n '$(RUNS)' -a -d '$(RUNS)' || { echo "RUNS=$(RUNS): give a runs folder of the protocol (make demo, reproduce or reproduce-convnet)"; exit 2; }
	$(PAPERMILL) nbs/experiments/report.ipynb $(RUNS)/report.ipynb -p runs_dir $(RUNS) -p interactive False \
	  2> >(grep -v 'Kernel is running over TCP without encryption' >&2)
	if [ -n '$(PAGE)' ]; then $(PY) tools/publish_report.py $(RUNS)/report.ipynb $(PAGE) "$(WHAT)" "report RUNS=$(RUNS)" && $(BIN)/nbdev_clean --fname $(PAGE); fi

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
	# one thread per notebook: two processes of two threads each on 2 cores wait for each other (14_batch measures it)
	OMP_NUM_THREADS=1 $(BIN)/nbdev_test --n_workers 2

# Two processes of one thread each on 2 cores (pytest-xdist; each test file on one process, for its module fixtures):
# 197 s against about 330 s in one process with two threads (twenty-fourth session). PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= 2
pytest: $(STAMP)
	if [ "$(PYTEST_WORKERS)" = 0 ]; then $(PY) -m pytest tests; \
	else OMP_NUM_THREADS=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile tests; fi

# nbdev's docs processing (always); the site itself wherever the Quarto CLI is installed.
# (tests/test_docs.py runs the processing and checks every exported symbol is documented and the sidebar's order.)
# The sidebar is nbs/sidebar.yml, written by tools/sidebar.py from the notebooks present (custom_sidebar = True).
docs: $(STAMP)
	$(PY) tools/sidebar.py
	if command -v quarto >/dev/null; then $(BIN)/nbdev_docs; \
	else echo "docs: quarto is not on PATH, so the site was not rendered (processing and doc checks passed). Install it with: $(BIN)/nbdev_install_quarto"; fi

# Every measure but P2b (on request): about an hour on 2 cores (P5 alone about 25 minutes, P4-CE about 15);
# `$(PY) -m benchmarks P3` runs one, and P5_EVERY=30 makes P5 shorter (benchmarks/RESULTS.md).
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
