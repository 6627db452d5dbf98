#!/usr/bin/env bash
# P4 through papermill on a machine with Python and the science stack but no Jupyter stack and no internet (the GPU
# machine): install the carried wheelhouse into a target folder, register a kernel, extract the carried data, run the
# experiment notebooks with the batch runner and the report notebook with papermill, and write results and timings under
# OUT_DIR. See benchmarks/RESULTS.md, "How to run P4 on a GPU". Run from the repo root.
#
# gputests, when asked for, runs first and alone (within GPUTESTS_SECONDS): on a GPU shared with the notebooks its solves
# crawled (twelfth session, benchmarks/RESULTS.md). The other tasks run side by side (one GPU, the machine's cores shared:
# THREADS each notebook), each within TASK_SECONDS:
#   autoencoder  the paper's autoencoder on MNIST, SGD, RMSProp and Adam at tuned rates, regret and exploration
#   convnet      the paper's convnet on CIFAR-10 (figure 4(a)'s configuration with SIZE=full: layer-wise regret of
#                conv layer 1), the three optimizers at tuned rates, and exploration
#   figure3      figure 3's configuration (RMSProp at its tuned rate, 50 neurons of each convolution); its own folder,
#                outside the report's runs (its neuron scopes are not a seed of the convnet configuration above)
#   gputests     tests/test_gpu.py and the CUDA tests (pytest, where the machine has it): CUDA values against the CPU's;
#                and tests/test_vcuda.py's device rules on the real card (the virtual CUDA harness the CPU tests use)
#   p2b          (not in the default list) the P2b benchmark on the device: the autoencoder's layer-1 scope at P2B_ROUNDS
#                (10,000) rounds and 64 prefixes, its agreement with the direct solve on the 10 x 10 crop (P2B_CHECK_ROUNDS)
# then the report over OUT_DIR/runs (autoencoder and convnet) within REPORT_SECONDS.
#
# Settings (environment):
#   SIZE=full|tiny      full: the reproduction's sizes (default); tiny: a few rounds per run, fixed learning rates
#   TASKS=autoencoder,convnet,figure3,gputests   PYTHON=python3   OUT_DIR=runs/p4   WHEELS=.whl/gpu-py312   DEVDATA=.devdata
#   SITE=/tmp/ntaylor-site (the install target)  DATA_ROOT=/tmp/ntaylor-data (the data, extracted)
#   TASK_SECONDS (full: 420; tiny: 0, no limit)  P2B_SECONDS (the p2b task's: 540)  REPORT_SECONDS (full: 100; tiny: 0)
#   WORKERS (3: the notebooks of a task at once)   THREADS (cores / the notebooks running at once)   GPUTESTS_SECONDS (150)
#   BASE_PATH=          extra path after the repo on PYTHONPATH (the CPU test's stand-in for the GPU's site-packages)
#   PACK=               a folder: write p4_results.tar.gz there (figures, tables, executed notebooks, timings; no recordings)
#   AE_PARAMS, CONV_PARAMS, FIG3_PARAMS   override the notebook parameters of each task ("name=value name=value ...")
set -euo pipefail
REPO=$(pwd)
PY=${PYTHON:-python3}; SIZE=${SIZE:-full}; TASKS=${TASKS:-autoencoder,convnet,figure3,gputests}
OUT_DIR=${OUT_DIR:-runs/p4}; WHEELS=${WHEELS:-.whl/gpu-py312}; DEVDATA=${DEVDATA:-.devdata}
SITE=${SITE:-/tmp/ntaylor-site}; DATA_ROOT=${DATA_ROOT:-/tmp/ntaylor-data}; KERNEL=ntaylor-p4
SHOW="probe_size=1000 exploration_units=500 snapshots=101"  # exploration: 1,000 probe points, 101 snapshots (> the 50 singular values)
case $SIZE in
  full) AE_DEFAULT="dataset=mnist epochs=5 lr=tune tune_fraction=0.2 snapshots=101 probe_size=1000 neurons_per_layer=50 prefixes=64"
        CONV_DEFAULT="figure=figure4a lr=tune tune_fraction=0.2 $SHOW prefixes=16"
        FIG3_DEFAULT="figure=figure3 lr=tune tune_fraction=0.2 $SHOW prefixes=16"
        TASK_SECONDS=${TASK_SECONDS:-420}; REPORT_SECONDS=${REPORT_SECONDS:-100}; GPUTESTS_SECONDS=${GPUTESTS_SECONDS:-150} ;;
  tiny) AE_DEFAULT="dataset=mnist rounds=12 lr=0.01 neurons_per_layer=2 probe_size=30 prefixes=4"
        CONV_DEFAULT="dataset=cifar10 rounds=4 batch_size=16 lr=0.001 neurons_per_layer=2 probe_size=10 exploration_units=10 prefixes=2"
        FIG3_DEFAULT="dataset=cifar10 rounds=4 batch_size=16 lr=0.001 layers=[] neuron_layers=[1,2,3] neurons_per_layer=2 regret_every=1 probe_size=10 exploration_units=10 prefixes=2"
        TASK_SECONDS=${TASK_SECONDS:-0}; REPORT_SECONDS=${REPORT_SECONDS:-0}; GPUTESTS_SECONDS=${GPUTESTS_SECONDS:-0} ;;
  *) echo "SIZE must be full or tiny, got $SIZE" >&2; exit 2 ;;
esac
AE_PARAMS=${AE_PARAMS:-$AE_DEFAULT}; CONV_PARAMS=${CONV_PARAMS:-$CONV_DEFAULT}; FIG3_PARAMS=${FIG3_PARAMS:-$FIG3_DEFAULT}
TASK_LIST=()  # the tasks, checked once: known, each once (two runs of one task would share its folder, log and marker)
for t in ${TASKS//[, ]/ }; do
  case $t in autoencoder|convnet|figure3|gputests|p2b) ;; *) echo "TASKS: unknown task $t; allowed: autoencoder, convnet, figure3, gputests, p2b" >&2; exit 2 ;; esac
  [[ " ${TASK_LIST[*]} " == *" $t "* ]] && { echo "TASKS: $t is named twice" >&2; exit 2; }
  TASK_LIST+=("$t")
done
for v in TASK_SECONDS REPORT_SECONDS P2B_SECONDS GPUTESTS_SECONDS THREADS WORKERS; do
  [ -z "${!v:-}" ] || [[ ${!v} =~ ^[0-9]+$ ]] || { echo "$v=${!v}: a whole number of seconds (threads, workers) is wanted" >&2; exit 2; }
done
WORKERS=${WORKERS:-3}; [[ $WORKERS =~ ^[1-9][0-9]*$ ]] || { echo "WORKERS=$WORKERS: a whole number, at least 1 (no leading zeros)" >&2; exit 2; }
ls "$WHEELS"/*.whl >/dev/null || { echo "no wheels in $WHEELS: build them with 'make wheelhouse' and carry the folder" >&2; exit 2; }
NB=0; for t in "${TASK_LIST[@]}"; do case $t in autoencoder|convnet) NB=$((NB + (WORKERS < 3 ? WORKERS : 3))) ;; figure3|p2b) NB=$((NB + 1)) ;; esac; done
CORES=$(nproc); export OMP_NUM_THREADS=${THREADS:-$(( NB > 0 && CORES / NB > 0 ? CORES / NB : 1 ))}  # the notebooks (and p2b) at once
mkdir -p "$OUT_DIR"; OUT_DIR=$(cd "$OUT_DIR" && pwd)
TIMES="$OUT_DIR/timing.tsv"; : > "$TIMES"; T0=$SECONDS; FAILED=0
RUN_ID="$$-$RANDOM"  # each task's programs carry NTAYLOR_P4_TASK=$RUN_ID-<task> (jupyter kernels start sessions of their own)
# a step: run it (within a limit in seconds, 0: none), log its seconds and status (ok, failed, timeout, killed: by a
# signal before its limit, e.g. out of memory; skipped: it could not run here, exit status 99) to timing.tsv
step() { local name=$1 limit=$2; shift 2; local t=$SECONDS rc=0 s; echo "== $name (started at $((SECONDS - T0)) s)"
         if [ "$limit" -gt 0 ]; then timeout --kill-after=15 "$limit" bash -c '"$@"' _ "$@" || rc=$?; else "$@" || rc=$?; fi
         case $rc in 0) s=ok ;; 124) s=timeout ;; 137) [ "$limit" -gt 0 ] && [ $((SECONDS - t)) -ge "$limit" ] && s=timeout || s=killed ;; 99) s=skipped ;; *) s=failed ;; esac
         printf '%s\t%s\t%s\n' "$name" $((SECONDS - t)) $s >> "$TIMES"; echo "== $name: $s in $((SECONDS - t)) s"; [ $s = ok ]; }

# 1. the Jupyter stack into an empty target, without the index (pip's resolver is not needed: the set was proved whole
#    when it was built, and `wheelhouse.py verify` checks every requirement against what this Python sees)
install() {
  rm -rf "$SITE" && "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl \
    && "$PY" tools/wheelhouse.py verify "$WHEELS"
}
export PYTHONPATH="$SITE:$REPO${BASE_PATH:+:$BASE_PATH}"
step install 0 install || FAILED=1
# 2. a kernel of this Python (it inherits PYTHONPATH), registered under the target, found through JUPYTER_PATH
export JUPYTER_PATH="$SITE/jupyter/share/jupyter"
step kernel 0 "$PY" -m ipykernel install --prefix "$SITE/jupyter" --name "$KERNEL" --display-name "ntaylor P4 (${PY})" || FAILED=1
# 3. the carried data into a writable root, read there through torchvision exactly as a downloaded copy would be
data() {
  mkdir -p "$DATA_ROOT/MNIST/raw" "$DATA_ROOT/cifar10" && cp -n "$DEVDATA"/MNIST/raw/*.gz "$DATA_ROOT/MNIST/raw/" \
    && { [ -d "$DATA_ROOT/cifar10/train" ] || tar xzf "$DEVDATA/cifar10-jpeg75.tar.gz" -C "$DATA_ROOT/cifar10"; }
}
step data 0 data || FAILED=1
# 4. the tasks, side by side: one executed notebook and run folder per optimizer (ntaylor-batch; the console script is
#    not installed there, so its main() is called directly), each task's output in OUT_DIR/<task>.log
batch() {
  local nb=$1 out=$2 grid=$3; shift 3; local args=()
  for p in "$@"; do args+=(--param "$p"); done
  "$PY" -c 'import sys; from ntaylor_nb.batch import main; sys.exit(main())' "nbs/experiments/$nb.ipynb" --out "$out" \
    --grid "$grid" --workers "$WORKERS" --kernel "$KERNEL" --param "data_root=$DATA_ROOT" "${args[@]}"
}
gputests() {  # CUDA values against the CPU's; where pytest is missing they are not run: the step says skipped, not ok
  "$PY" -c 'import pytest' 2>/dev/null || { echo "no pytest here: the GPU tests were not run"; return 99; }
  local rc=0 limit=(); export OMP_NUM_THREADS=$(nproc)  # alone: every core for the CPU's side of the comparisons
  "$PY" -c 'import pytest_timeout' 2>/dev/null && limit=(--timeout 90)  # one slow test must not take the step's whole limit
  # the virtual CUDA harness's device rules (which mixes raise, which pass) on the real card: where they differ, the harness is wrong
  "$PY" -m pytest -q -p no:cacheprovider "${limit[@]}" tests/test_vcuda.py -k real || rc=$?
  "$PY" -m pytest -q -p no:cacheprovider "${limit[@]}" --durations=10 tests/test_gpu.py tests/test_taylor.py tests/test_exploration.py -k 'cuda or gpu' || rc=$?
  return $rc
}
task() {
  case $1 in
    autoencoder) batch autoencoder "$OUT_DIR/runs/autoencoder" optimizer=sgd,rmsprop,adam $AE_PARAMS ;;
    convnet) batch convnet "$OUT_DIR/runs/convnet" optimizer=sgd,rmsprop,adam $CONV_PARAMS ;;
    figure3) batch convnet "$OUT_DIR/figure3" optimizer=rmsprop $FIG3_PARAMS ;;
    gputests) gputests ;;
    p2b) P2B_DEVICE=${P2B_DEVICE:-auto} P2B_PROGRESS=1 P2B_MNIST=$DATA_ROOT "$PY" -m benchmarks P2b \
           && cp benchmarks/results.json "$OUT_DIR/p2b_results.json" ;;
  esac
}
export -f task batch gputests; export PY KERNEL DATA_ROOT OUT_DIR WORKERS AE_PARAMS CONV_PARAMS FIG3_PARAMS  # for `timeout bash -c`
# what a stopped task left running (its kernels, in sessions of their own): every process marked with its name
leftovers() { for p in /proc/[0-9]*; do grep -qxz "NTAYLOR_P4_TASK=$1" "$p/environ" 2>/dev/null && echo "${p#/proc/}"; done; return 0; }
stop_leftovers() { local ps; ps=$(leftovers "$1"); [ -z "$ps" ] && return 0
                   echo "stopping what $1 left running: $ps"; kill $ps 2>/dev/null || true  # (some may have ended since the scan)
                   sleep 3; ps=$(leftovers "$1"); [ -z "$ps" ] || kill -9 $ps 2>/dev/null || true; }
run_task() { local t=$1 limit=$TASK_SECONDS
             case $t in p2b) limit=${P2B_SECONDS:-540} ;; gputests) limit=$GPUTESTS_SECONDS ;; esac
             ( export NTAYLOR_P4_TASK="$RUN_ID-$t"; step "$t" "$limit" task "$t" && rc=0 || rc=$?; stop_leftovers "$RUN_ID-$t"; exit $rc ) > "$OUT_DIR/$t.log" 2>&1; }
[[ " ${TASK_LIST[*]} " == *" gputests "* ]] && { run_task gputests || FAILED=1; }  # first, alone on the GPU
pids=()
for t in "${TASK_LIST[@]}"; do [ "$t" = gputests ] || { run_task "$t" & pids+=($!); }; done
for p in "${pids[@]}"; do wait "$p" || FAILED=1; done
cat "$TIMES"
for t in "${TASK_LIST[@]}"; do echo "--- $t.log, last lines:"; tail -n 4 "$OUT_DIR/$t.log" | cut -c1-300; done
# figure 3's solves that met their stop rule (`certified`), per layer at each prefix: an uncertified Taylor optimum is one the
# solver did not reach (its regret understated; benchmarks/RESULTS.md, P4, eighteenth session). Only a finished analysis has a table.
for f in $(find "$OUT_DIR/figure3" -path '*/analysis/regret.csv' 2>/dev/null); do
  "$PY" - "$f" <<'EOF' || echo "figure 3's certified solves could not be read from $f (the steps above are not affected)"
import sys, pandas as pd
d = pd.read_csv(sys.argv[1])
print(f'figure 3, certified solves per layer at each prefix N ({sys.argv[1]}):')
for (kind, num), g in d.groupby(['kind', 'layer_number']):
    c = g.groupby('N').certified.agg(['sum', 'size'])
    print(f'  {kind} scopes of layer {num}: ' + ', '.join(f'N={n}: {int(r["sum"])}/{int(r["size"])}' for n, r in c.iterrows()))
EOF
done
# a figure-3 run stopped before its table: the last updates of its hindsight bar (saved in the notebook as it ran), which
# say at each prefix N how many of that prefix's solves did not meet their stop rule
for nb in $(find "$OUT_DIR/figure3" -name notebook.ipynb 2>/dev/null); do
  [ -f "$(dirname "$nb")/analysis/regret.csv" ] && continue
  echo "figure 3 stopped before its table ($nb); its hindsight bar's last updates:"
  "$PY" tools/notebook_bars.py "$nb" hindsight 3 || echo "  (the notebook could not be read; the steps above are not affected)"
done
# 5. the report: figures 3-6 and the claims table from the finished runs of the autoencoder and convnet tasks. A run
#    that trained but was stopped before its analysis was saved moves to OUT_DIR/unfinished (the report would analyse it)
if [ -d "$OUT_DIR/runs" ]; then
  for f in $(find "$OUT_DIR/runs" -name done.json); do
    d=$(dirname "$f"); [ -f "$d/analysis/summary.json" ] && continue
    u="$OUT_DIR/unfinished/${d#$OUT_DIR/runs/}"; mkdir -p "$(dirname "$u")"; mv "$d" "$u"; echo "not analysed in time, left out of the report: $u"
  done
fi
if [[ " ${TASK_LIST[*]} " != *" autoencoder "* && " ${TASK_LIST[*]} " != *" convnet "* ]]; then
  echo "neither autoencoder nor convnet was asked for: no report"
elif [ -n "$(find "$OUT_DIR/runs" -name done.json 2>/dev/null)" ]; then
  step report "$REPORT_SECONDS" "$PY" -m papermill --log-level WARNING -k "$KERNEL" nbs/experiments/report.ipynb "$OUT_DIR/report.ipynb" \
    -p runs_dir "$OUT_DIR/runs" -p out_dir "$OUT_DIR/report" -p interactive False || FAILED=1
else
  echo "no finished runs of the autoencoder or convnet tasks: no report"; FAILED=1
fi
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
  (cd "$OUT_DIR" && find . \( -name '*.csv' -o -name '*.json' -o -name '*.md' -o -name '*.png' -o -name '*.ipynb' -o -name '*.log' -o -name timing.tsv \) \
     -not -path '*/recordings/*' -print0 | tar czf "$PACK/p4_results.tar.gz" --null -T -)
  echo "packed: $PACK/p4_results.tar.gz ($(du -h "$PACK/p4_results.tar.gz" | cut -f1))"
fi
[ -f "$OUT_DIR/report/claims.md" ] && cat "$OUT_DIR/report/claims.md"
echo "done in $((SECONDS - T0)) s; steps not ok: $(awk -F'\t' '$3 != "ok" {print $1 " (" $3 ")"}' "$TIMES" | tr '\n' ' ')"
exit $FAILED
