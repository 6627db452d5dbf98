"""P4: the paper's reproduction at (reduced) paper scale on a GPU, as plain Python (the GPU machine has no papermill).

Both tasks (autoencoder on MNIST, convnet on CIFAR-10), SGD / RMSProp / Adam with learning rates tuned on
ntaylor_nb.train.LR_GRID (one-epoch trials), regret and exploration recorded, hindsight solved, figures and the
claims table written. Usage: python -m benchmarks.gpu_reproduction DATA_ROOT OUT_DIR. Every finished step writes
its files at once, so a run stopped by a time limit still leaves what it finished.
"""
import json
import os
import sys
import tarfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from ntaylor_nb.report import analyze_run, claims_table, load_runs, markdown_table, plot_figure6
from ntaylor_nb.train import RunConfig, train_run, tune_lr

TASKS = {
    'autoencoder': RunConfig(task='autoencoder', dataset='mnist', epochs=5, probe_size=1000, neurons_per_layer=50, checkpoint_every=10**9),
    'convnet': RunConfig(task='convnet', dataset='cifar10', epochs=8, layers=[5], neuron_layers=[1, 4], neurons_per_layer=10,
                         regret_every=10, probe_size=1000, exploration_units=500, checkpoint_every=10**9),
}
PREFIXES = {'autoencoder': 64, 'convnet': 16}


def main(root, out):
    root, out = Path(root), Path(out); out.mkdir(parents=True, exist_ok=True)
    t0, times = time.time(), {}
    log = lambda msg: print(f'[{time.time() - t0:7.1f} s] {msg}', flush=True)
    tar = root / 'cifar10-jpeg75.tar.gz'
    if tar.exists() and not (root / 'cifar10').exists():
        with tarfile.open(tar) as t: t.extractall(root / 'cifar10')
        log('extracted CIFAR-10 (JPEG quality 75: lossy pixels)')
    only = os.environ.get('P4_TASKS', ','.join(TASKS)).split(',')
    for task, base in [(t, b) for t, b in TASKS.items() if t in only]:
        if os.environ.get('P4_EPOCHS'): base = replace(base, epochs=int(os.environ['P4_EPOCHS']))
        for opt in ('sgd', 'rmsprop', 'adam'):
            cfg = replace(base, optimizer=opt, data_root=str(root), device='auto')
            smoke = dict(rounds=12) if os.environ.get('P4_SMOKE') else {}  # a dry run of the whole pipeline
            cfg = replace(cfg, **smoke)
            t = time.time()
            grid = json.loads(os.environ['P4_LRS'])[opt] if os.environ.get('P4_LRS') else None
            lr, trials = tune_lr(replace(cfg, epochs=1), lrs=[1e-3, 1e-2] if smoke else grid, progress=False)
            cfg = replace(cfg, lr=lr)
            run_dir = out / task / opt
            run = train_run(cfg, run_dir / 'run', progress=False)
            t_train = time.time() - t
            s = analyze_run(run, PREFIXES[task], progress=False, device='auto')
            s.update(tuning=trials.to_dict('records'), seconds_train=t_train, seconds_total=time.time() - t, out_dir=str(run_dir))
            (run_dir / 'complete.json').write_text(json.dumps(s, indent=1))
            log(f'{task} {opt}: lr {lr}, last epoch loss {s["last_epoch_loss"]:.4g}, acc {s["last_epoch_accuracy"]}, '
                f'train {t_train:.0f} s, analysis {time.time() - t - t_train:.0f} s')
            times[f'{task}/{opt}'] = time.time() - t
        runs = load_runs(out)
        runs = runs.assign(path=[str(Path(p) / 'run') for p in runs.path])
        claims = claims_table(runs)
        (out / 'claims.md').write_text(markdown_table(claims))
        plot_figure6(runs, save=out / 'figure6.png')
    summary = dict(total_seconds=time.time() - t0, per_run_seconds=times,
                   device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu', torch=torch.__version__)
    (out / 'timing.json').write_text(json.dumps(summary, indent=1))
    log(f'done: {summary}')


if __name__ == '__main__': main(*sys.argv[1:3])
