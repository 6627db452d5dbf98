"""Training runs: kill-and-resume is bit-identical, NaN stops cleanly, real MNIST / CIFAR-10 files load through torchvision."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ntaylor_nb.data import CIFAR10_CLASSES, load_dataset
from ntaylor_nb.exploration import ExplorationRecording
from ntaylor_nb.hindsight import hindsight
from ntaylor_nb.regret import RegretRecording
from ntaylor_nb.train import RunConfig, train_run

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / 'shared' / 'data'
CFG = dict(epochs=40, lr=1e-2, neurons_per_layer=3, probe_size=60, checkpoint_every=25, seed=3)


def test_killed_run_resumes_bit_identical(tmp_path):
    ref = train_run(RunConfig(**CFG), tmp_path / 'ref', progress=False)
    run = tmp_path / 'killed'
    code = f'from ntaylor_nb.train import *; train_run(RunConfig(**{CFG!r}), {str(run)!r}, progress=False)'
    p = subprocess.Popen([sys.executable, '-c', code], cwd=ROOT)
    t0 = time.time()
    while time.time() - t0 < 120:  # kill -9 once a few checkpoints are on disk, mid-run
        m = run / 'metrics.csv'
        if m.exists() and len(m.read_text().splitlines()) > 150: break
        if p.poll() is not None: break
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL); p.wait()
    assert p.returncode == -signal.SIGKILL, 'the run finished before it could be killed: make it longer'
    assert not (run / 'done.json').exists() and (run / 'checkpoint.pt').exists()
    train_run(RunConfig(**CFG), run, progress=False)  # resume
    a, b = torch.load(ref / 'model.pt'), torch.load(run / 'model.pt')
    for k in a: assert torch.equal(a[k], b[k]), k
    for f in ('metrics.csv', 'epochs.csv'): assert (ref / f).read_text() == (run / f).read_text(), f
    np.testing.assert_array_equal(ExplorationRecording(ref / 'exploration').dense(), ExplorationRecording(run / 'exploration').dense())
    ra, rb = RegretRecording(ref / 'regret'), RegretRecording(run / 'regret')
    assert len(ra) == len(rb) == 880
    ca, cb = list(ra.chunks()), list(rb.chunks())
    for k in ca[0]: np.testing.assert_array_equal(np.concatenate([c[k] for c in ca]), np.concatenate([c[k] for c in cb]), err_msg=k)
    pd.testing.assert_frame_equal(hindsight(ra, [10, 880], progress=False), hindsight(rb, [10, 880], progress=False))


def test_nan_loss_stops_and_keeps_the_recording(tmp_path):
    with pytest.raises(FloatingPointError, match='the loss became .* try a smaller learning rate'):
        train_run(RunConfig(optimizer='sgd', lr=1e4, epochs=3, scopes=['layer:3'], probe_size=20), tmp_path / 'nan', progress=False)
    failed = json.loads((tmp_path / 'nan' / 'failed.json').read_text())
    rec = RegretRecording(tmp_path / 'nan' / 'regret')
    assert len(rec) == failed['round'] >= 1 and not (tmp_path / 'nan' / 'done.json').exists()
    assert np.isfinite(rec.column('loss')).all()


def test_convnet_run_on_digits32(tmp_path):
    run = train_run(RunConfig(task='convnet', dataset='digits32', rounds=3, batch_size=16, lr=1e-3, scopes=['neuron:0:1', 'layer:12'],
                              probe_size=10, exploration_units=20), tmp_path / 'cn', progress=False)
    m = pd.read_csv(run / 'metrics.csv')
    assert len(m) == 3 and m.accuracy.between(0, 1).all()
    df = hindsight(run / 'regret', progress=False)
    assert set(df.scope) == {'neuron:0:1', 'layer:12'} and (df.grad_norm < 1e-5).all()


def test_bad_configs(tmp_path):
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda' but no CUDA"): RunConfig(device='cuda').validate()
    with pytest.raises(ValueError, match="scopes='some'"): RunConfig(scopes='some').validate()
    with pytest.raises(ValueError, match='batch_size=5000 is larger than the dataset'):
        train_run(RunConfig(batch_size=5000), tmp_path / 'b', progress=False)



def interrupted(cfg, folder, at, monkeypatch):
    "Train `cfg` into `folder` and stop it (KeyboardInterrupt) as round `at` begins."
    import ntaylor_nb.train as tr
    real = tr._round
    def stop(t, r, *a):
        if r == at: raise KeyboardInterrupt
        return real(t, r, *a)
    with monkeypatch.context() as m:
        m.setattr(tr, '_round', stop)
        with pytest.raises(KeyboardInterrupt): train_run(cfg, folder, progress=False)


def test_a_run_stopped_before_its_first_checkpoint_starts_again(tmp_path, monkeypatch):
    "Killed (here: interrupted) before any checkpoint, a run's folder holds nothing to resume: training it again starts afresh and equals a run never stopped."
    cfg = RunConfig(epochs=2, lr=1e-2, neurons_per_layer=3, probe_size=30, checkpoint_every=500, seed=4)
    ref = train_run(cfg, tmp_path / 'ref', progress=False)
    interrupted(cfg, tmp_path / 'again', 3, monkeypatch)
    assert (tmp_path / 'again' / 'regret' / 'manifest.json').exists() and not (tmp_path / 'again' / 'checkpoint.pt').exists()
    train_run(cfg, tmp_path / 'again', progress=False)  # it raised "already holds a recording" before
    for f in ('metrics.csv', 'epochs.csv'): assert (ref / f).read_text() == (tmp_path / 'again' / f).read_text(), f
    a, b = torch.load(ref / 'model.pt'), torch.load(tmp_path / 'again' / 'model.pt')
    assert all(torch.equal(a[k], b[k]) for k in a)
    np.testing.assert_array_equal(ExplorationRecording(ref / 'exploration').dense(), ExplorationRecording(tmp_path / 'again' / 'exploration').dense())
    ra, rb = list(RegretRecording(ref / 'regret').chunks()), list(RegretRecording(tmp_path / 'again' / 'regret').chunks())
    for k in ra[0]: np.testing.assert_array_equal(np.concatenate([c[k] for c in ra]), np.concatenate([c[k] for c in rb]), err_msg=k)


def test_bad_input_leaves_nothing_half_written(tmp_path):
    "Refused before training (validate) or while preparing (a layer the model lacks, data not found): no folder, or the folder as it was."
    for bad, msg in ((dict(seed=-1), 'seed=-1 must be an integer >= 0'), (dict(exploration_units=0), 'exploration_units=0 must be None'),
                     (dict(task='convnet', dataset='mnist'), "side divides by 8.*not dataset='mnist'")):
        with pytest.raises(ValueError, match=msg): train_run(RunConfig(**bad), tmp_path / 'v', progress=False)
        assert not (tmp_path / 'v').exists()
    for bad, err in ((dict(layers=[9]), ValueError), (dict(dataset='mnist', data_root=str(tmp_path / 'nowhere')), FileNotFoundError),
                     (dict(batch_size=5000), ValueError)):
        with pytest.raises(err): train_run(RunConfig(**bad), tmp_path / 'p', progress=False)
        assert not (tmp_path / 'p').exists(), list((tmp_path / 'p').iterdir())
        (tmp_path / 'q').mkdir(exist_ok=True); (tmp_path / 'q' / 'notebook.ipynb').write_text('{}')  # a folder the caller made (papermill's notebook in it)
        with pytest.raises(err): train_run(RunConfig(**bad), tmp_path / 'q', progress=False)
        assert [p.name for p in (tmp_path / 'q').iterdir()] == ['notebook.ipynb']
    train_run(RunConfig(rounds=3, probe_size=10, neurons_per_layer=2), tmp_path / 'q', progress=False)  # and the corrected run trains there
    assert (tmp_path / 'q' / 'done.json').exists()
    with pytest.raises(ValueError): train_run(RunConfig(layers=[9]), tmp_path / 'n' / 'e' / 's', progress=False)
    assert not (tmp_path / 'n').exists(), 'the folders the call made are gone, the nested ones too'
    (tmp_path / 'f' / 'exploration').mkdir(parents=True); (tmp_path / 'f' / 'exploration' / 'notes.txt').write_text('mine')
    (tmp_path / 'f' / 'metrics.csv').write_text('x')  # names a run uses, in a folder no run made: never removed
    with pytest.raises(ValueError, match=r"holds \['metrics.csv', 'exploration'\] but no params.json of a run"):
        train_run(RunConfig(rounds=3, probe_size=10, neurons_per_layer=2), tmp_path / 'f', progress=False)
    assert (tmp_path / 'f' / 'exploration' / 'notes.txt').read_text() == 'mine' and (tmp_path / 'f' / 'metrics.csv').read_text() == 'x'


def test_more_rounds_than_the_epochs_hold_is_said(tmp_path):
    import math
    from ntaylor_nb.train import TASKS
    per = len(load_dataset('digits')[0]) // TASKS['autoencoder']['batch_size']  # 1,437 training digits in batches of 64: 22
    with pytest.warns(UserWarning, match=rf'rounds=100 is more than epochs=1 hold \({per} rounds an epoch\): the run stops after {per} rounds; give epochs={math.ceil(100 / per)}'):
        run = train_run(RunConfig(rounds=100, probe_size=0, scopes=None), tmp_path / 'r', progress=False)
    assert json.loads((run / 'done.json').read_text())['rounds'] == per == 22

@pytest.mark.skipif(not (SHARED / 'mnist').exists(), reason='needs ../shared/data (real MNIST files)')
def test_real_mnist_through_torchvision(tmp_path):
    shutil.copytree(SHARED / 'mnist' / 'MNIST', tmp_path / 'MNIST')
    for p in (tmp_path / 'MNIST').rglob('*'): p.chmod(0o644 if p.is_file() else 0o755)
    x, y = load_dataset('mnist', root=tmp_path)
    assert x.shape == (60000, 1, 28, 28) and y.shape == (60000,)
    assert float(x.mean()) * 255 == pytest.approx(33.32, abs=0.01)
    xt, _ = load_dataset('mnist', root=tmp_path, train=False)
    assert float(xt.mean()) * 255 == pytest.approx(33.79, abs=0.01)


@pytest.mark.skipif(not (SHARED / 'cifar10' / 'exact').exists(), reason='needs ../shared/data (CIFAR-10 exact subsets)')
def test_cifar10_imagefolder_is_pixel_exact(tmp_path):
    "An ImageFolder copy (lossless PNGs of the exact subset) reads back pixel for pixel, in class order."
    from PIL import Image
    z = np.load(SHARED / 'cifar10' / 'exact' / 'cifar10_test_first1000_lossless.npz')
    xs, ys = z['x'][:120], z['y'][:120]
    for i, (im, c) in enumerate(zip(xs, ys)):
        d = tmp_path / 'cifar10' / 'test' / CIFAR10_CLASSES[c]; d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(d / f'{i:04d}.png')
    x, y = load_dataset('cifar10', root=tmp_path, train=False)
    order = np.lexsort((np.arange(120), ys))  # ImageFolder: by class, then by file name
    np.testing.assert_array_equal((x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8), xs[order])
    np.testing.assert_array_equal(y.numpy(), ys[order])
    assert (tmp_path / 'cifar10' / 'test_uint8.npz').exists()  # decoded once, cached
    x2, _ = load_dataset('cifar10', root=tmp_path, train=False)
    assert torch.equal(x, x2)


# --- learning-rate search (issue 11, item 1) ---

from ntaylor_nb.run import Run
from ntaylor_nb.tune import LR_GRID, half_decade, search_lr, tune_lr

HALVES = [half_decade(1.0, e) for e in range(-14, 9)]  # 1e-7 ... 1e4 on the half-decade grid


def bowl(best, diverge=float('inf'), calls=None):
    "A synthetic final loss: quadratic in log10(lr) around `best`, a seed offset, infinite (diverged) from `diverge` up."
    def trial(lr, seed):
        if calls is not None: calls.append((lr, seed))
        return float('inf') if lr >= diverge else (np.log10(lr) - np.log10(best)) ** 2 + 0.01 * seed
    return trial


@pytest.mark.parametrize('k', range(-12, 7))  # optimum from far below the grid to far above it
@pytest.mark.parametrize('cap', [1, 2, 4])
def test_search_lr_finds_the_optimum_or_flags_the_edge(k, cap):
    grid, best, calls = [1e-3, 3e-3, 1e-2], half_decade(1.0, k), []
    s = search_lr(bowl(best, calls=calls), grid, seeds=(0, 1, 2), max_extend=cap)
    reach = [half_decade(1.0, e) for e in range(-6 - cap, -4 + cap + 1)]  # the grid and `cap` half-decades each side
    assert s.lr == min(reach, key=lambda r: bowl(best)(r, 0))  # the brute-force best of what the cap lets it reach
    assert s.at_edge == (best not in reach[1:-1])  # interior exactly when the optimum is reachable with a rate beyond it
    assert len(calls) == len(set(calls)) == len(s.trials)  # no trial is run twice
    assert set(s.trials.seed) == {0, 1, 2} and s.trials[s.trials.chosen].lr.unique().tolist() == [s.lr]
    assert s.trials.at_edge.eq(s.at_edge).all() and set(s.trials[~s.trials.extended].lr) == set(grid)
    np.testing.assert_allclose(s.trials.groupby('lr').final_loss.mean(), s.trials.groupby('lr').mean_loss.first(), rtol=0, atol=1e-15)


@pytest.mark.parametrize('diverge', [0.03, 0.1, 1.0])
def test_search_lr_stops_at_divergence(diverge):
    s = search_lr(bowl(100.0, diverge), [1e-3, 3e-3, 1e-2], max_extend=10)
    assert s.lr == half_decade(diverge, -1) and not s.at_edge  # the last rate below the one that diverged
    assert s.trials.lr.max() == diverge and s.trials[s.trials.lr == diverge].diverged.all()


def test_search_lr_one_diverged_seed_rules_a_rate_out():
    trial = lambda lr, seed: float('nan') if (lr == 0.1 and seed == 1) else -np.log10(lr)  # lower loss at higher rates
    s = search_lr(trial, [0.01, 0.03, 0.1], max_extend=0)
    assert s.lr == 0.03 and not s.at_edge and s.trials.diverged.sum() == 1


def test_search_lr_all_diverged_goes_down_then_fails():
    calls = []
    with pytest.raises(FloatingPointError, match='every rate diverged, down to 0.0001'):
        search_lr(bowl(1.0, diverge=0.0, calls=calls), [1e-3, 1e-2], max_extend=2)
    assert sorted({lr for lr, _ in calls}) == [1e-4, 3e-4, 1e-3, 1e-2]  # never up: a diverged top is no reason to go higher


def test_tune_lr_on_digits_a_fraction_of_the_run():
    # 1437 // 64 = 22 rounds; a quarter: 6. The run's 20 snapshots do not fit 6 rounds: trials take none (they need only losses)
    cfg = RunConfig(optimizer='sgd', epochs=1, seed=7, snapshots=20)
    s = tune_lr(cfg, lrs=[0.01], fraction=0.25, seeds=(0, 1), max_extend=1, progress=False)
    assert s.trials.rounds.unique().tolist() == [6] and set(s.trials.lr) == {0.01, 0.03}
    assert s.lr == 0.03 and s.at_edge  # SGD wants more than 0.03 here: the cap of one rate beyond the grid stops it at the edge
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        direct = [Run(train_run(RunConfig(optimizer='sgd', rounds=6, lr=0.03, seed=k, scopes=None, probe_size=0), f'{d}/{k}', progress=False)).metrics.loss
                  for k in (0, 1)]
    # 6 rounds, shorter than an epoch: scored on their last quarter, ceil(6 / 4) = 2 rounds (not the whole trial's mean)
    np.testing.assert_allclose(s.trials[s.trials.chosen].final_loss, [l.iloc[-2:].mean() for l in direct], rtol=1e-12)
    assert not np.allclose(s.trials[s.trials.chosen].final_loss, [l.mean() for l in direct])
    with pytest.raises(ValueError, match='fraction=0 must lie in'): tune_lr(cfg, fraction=0)
    with pytest.raises(ValueError, match='at least two distinct seeds'): tune_lr(cfg, seeds=(0,))


def test_tune_lr_scores_a_horizon_past_an_epoch_on_more_than_one_minibatch():
    "23 rounds of 22 a digits epoch: the score is the mean of the last ceil(23 / 4) = 6 rounds, not round 22's loss alone."
    cfg = RunConfig(optimizer='sgd', epochs=2, seed=5)  # (a run seed none of the trials uses)
    s = tune_lr(cfg, lrs=[0.1], fraction=0.51, seeds=(0, 1), max_extend=0, progress=False)
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        direct = [Run(train_run(RunConfig(optimizer='sgd', epochs=2, rounds=23, lr=0.1, seed=k, scopes=None, probe_size=0), f'{d}/{k}', progress=False)) for k in (0, 1)]
        loss = [r.metrics.loss for r in direct]
        assert [r.result['last_epoch_loss'] for r in direct] == pytest.approx([l.iloc[-1] for l in loss], rel=1e-12)  # the old score: one minibatch
    assert s.trials.rounds.unique().tolist() == [23]
    np.testing.assert_allclose(s.trials.final_loss, [l.iloc[-6:].mean() for l in loss], rtol=1e-12)


def test_lr_grids_are_half_decade_log_grids():
    for opt, g in LR_GRID.items():
        assert all(half_decade(a, 1) == b for a, b in zip(g, g[1:])), opt


def test_resuming_on_another_device_is_said(tmp_path, monkeypatch):
    "A run started on one kind of device and resumed on another is not bit-for-bit an uninterrupted run: a warning says so."
    cfg = RunConfig(epochs=2, lr=1e-2, probe_size=0, scopes=None, checkpoint_every=5, device='cpu')
    interrupted(cfg, tmp_path / 'r', 7, monkeypatch)
    p = json.loads((tmp_path / 'r' / 'params.json').read_text()); (tmp_path / 'r' / 'params.json').write_text(json.dumps(dict(p, device='cuda')))
    with pytest.warns(UserWarning, match='started on cuda and resumes on cpu'): train_run(cfg, tmp_path / 'r', progress=False)
    assert (tmp_path / 'r' / 'done.json').exists()
