#!/usr/bin/env bash
# P4 through papermill on a machine with Python and the science stack but no Jupyter stack and no internet (the GPU
# machine): install the carried wheelhouse into a target folder, register a kernel, extract the carried data, run the
# experiment notebooks over the optimizers with the batch runner and the report notebook with papermill, and write
# results and timings under OUT_DIR. See benchmarks/RESULTS.md, "How to run P4 on a GPU". Run from the repo root.
#
# Settings (environment):
#   SIZE=full|tiny      full: the reproduction's sizes (default); tiny: a few rounds per run, fixed learning rates
#   TASKS=autoencoder,convnet   PYTHON=python3   OUT_DIR=runs/p4   WHEELS=.whl/gpu-py312   DEVDATA=.devdata
#   SITE=/tmp/ntaylor-site (the install target)  DATA_ROOT=/tmp/ntaylor-data (the data, extracted)
#   BASE_PATH=          extra path after the repo on PYTHONPATH (the CPU test's stand-in for the GPU's site-packages)
#   PACK=               a folder: write p4_results.tar.gz there (figures, tables, executed notebooks, timings; no recordings)
#   AE_PARAMS, CONV_PARAMS   override the notebook parameters of each task ("name=value name=value ...")
set -euo pipefail
REPO=$(pwd)
PY=${PYTHON:-python3}; SIZE=${SIZE:-full}; TASKS=${TASKS:-autoencoder,convnet}
OUT_DIR=${OUT_DIR:-runs/p4}; WHEELS=${WHEELS:-.whl/gpu-py312}; DEVDATA=${DEVDATA:-.devdata}
SITE=${SITE:-/tmp/ntaylor-site}; DATA_ROOT=${DATA_ROOT:-/tmp/ntaylor-data}; KERNEL=ntaylor-p4
case $SIZE in
  full) AE_DEFAULT="dataset=mnist epochs=5 lr=tune tune_fraction=0.2 snapshots=101 probe_size=1000 neurons_per_layer=50 prefixes=64"
        CONV_DEFAULT="dataset=cifar10 epochs=2 lr=tune tune_epochs=1 layers=[5] neuron_layers=[1,4] neurons_per_layer=10 regret_every=10 probe_size=1000 exploration_units=500 prefixes=16" ;;
  tiny) AE_DEFAULT="dataset=mnist rounds=12 lr=0.01 neurons_per_layer=2 probe_size=30 prefixes=4"
        CONV_DEFAULT="dataset=cifar10 rounds=4 batch_size=16 lr=0.001 neurons_per_layer=2 probe_size=10 exploration_units=10 prefixes=2" ;;
  *) echo "SIZE must be full or tiny, got $SIZE" >&2; exit 2 ;;
esac
AE_PARAMS=${AE_PARAMS:-$AE_DEFAULT}; CONV_PARAMS=${CONV_PARAMS:-$CONV_DEFAULT}
ls "$WHEELS"/*.whl >/dev/null || { echo "no wheels in $WHEELS: build them with 'make wheelhouse' and carry the folder" >&2; exit 2; }
mkdir -p "$OUT_DIR"; OUT_DIR=$(cd "$OUT_DIR" && pwd)
TIMES="$OUT_DIR/timing.tsv"; : > "$TIMES"; T0=$SECONDS; FAILED=0
step() { local name=$1; shift; local t=$SECONDS; echo "== $name"; if "$@"; then s=ok; else s=failed; FAILED=1; fi
         printf '%s\t%s\t%s\n' "$name" $((SECONDS - t)) $s >> "$TIMES"; echo "== $name: $s in $((SECONDS - t)) s"; }

# 1. the Jupyter stack into an empty target, without the index (pip's resolver is not needed: the set was proved whole
#    when it was built, and `wheelhouse.py verify` checks every requirement against what this Python sees)
install() {
  rm -rf "$SITE" && "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl \
    && "$PY" tools/wheelhouse.py verify "$WHEELS"
}
export PYTHONPATH="$SITE:$REPO${BASE_PATH:+:$BASE_PATH}"
step install install
# 2. a kernel of this Python (it inherits PYTHONPATH), registered under the target, found through JUPYTER_PATH
export JUPYTER_PATH="$SITE/jupyter/share/jupyter"
step kernel "$PY" -m ipykernel install --prefix "$SITE/jupyter" --name "$KERNEL" --display-name "ntaylor P4 (${PY})"
# 3. the carried data into a writable root, read there through torchvision exactly as a downloaded copy would be
data() {
  mkdir -p "$DATA_ROOT/MNIST/raw" "$DATA_ROOT/cifar10" && cp -n "$DEVDATA"/MNIST/raw/*.gz "$DATA_ROOT/MNIST/raw/" \
    && { [ -d "$DATA_ROOT/cifar10/train" ] || tar xzf "$DEVDATA/cifar10-jpeg75.tar.gz" -C "$DATA_ROOT/cifar10"; }
}
step data data
# 4. the experiments: one executed notebook and run folder per optimizer (ntaylor-batch; the console script is not
#    installed there, so its main() is called directly)
batch() {
  local nb=$1 out=$2; shift 2; local args=()
  for p in "$@"; do args+=(--param "$p"); done
  "$PY" -c 'import sys; from ntaylor_nb.batch import main; sys.exit(main())' "nbs/experiments/$nb.ipynb" --out "$out" \
    --grid optimizer=sgd,rmsprop,adam --kernel "$KERNEL" --param "data_root=$DATA_ROOT" "${args[@]}"
}
for task in ${TASKS//,/ }; do
  case $task in
    autoencoder) step autoencoder batch autoencoder "$OUT_DIR/autoencoder" $AE_PARAMS ;;
    convnet) step convnet batch convnet "$OUT_DIR/convnet" $CONV_PARAMS ;;
    *) echo "unknown task $task" >&2; FAILED=1 ;;
  esac
done
# 5. the report: figures 3-6 and the claims table from the saved runs
step report "$PY" -m papermill --log-level WARNING -k "$KERNEL" nbs/experiments/report.ipynb "$OUT_DIR/report.ipynb" \
  -p runs_dir "$OUT_DIR" -p interactive False
# 6. timings and the machine
"$PY" - "$TIMES" "$OUT_DIR/timing.json" "$SIZE" $((SECONDS - T0)) <<'EOF'
import json, sys, torch
rows = [l.split('\t') for l in open(sys.argv[1]).read().splitlines()]
json.dump(dict(size=sys.argv[3], total_seconds=int(sys.argv[4]), steps={n: dict(seconds=int(s), status=st) for n, s, st in rows},
               device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu', torch=torch.__version__,
               python=sys.version.split()[0]), open(sys.argv[2], 'w'), indent=1)
print(open(sys.argv[2]).read())
EOF
if [ -n "${PACK:-}" ]; then
  mkdir -p "$PACK"
  (cd "$OUT_DIR" && find . \( -name '*.csv' -o -name '*.json' -o -name '*.md' -o -name '*.png' -o -name '*.ipynb' -o -name timing.tsv \) \
     -not -path '*/recordings/*' -print0 | tar czf "$PACK/p4_results.tar.gz" --null -T -)
  echo "packed: $PACK/p4_results.tar.gz ($(du -h "$PACK/p4_results.tar.gz" | cut -f1))"
fi
[ -f "$OUT_DIR/report/claims.md" ] && cat "$OUT_DIR/report/claims.md"
echo "done in $((SECONDS - T0)) s; failed steps: $(awk -F'\t' '$3 == "failed" {print $1}' "$TIMES" | tr '\n' ' ')"
exit $FAILED
