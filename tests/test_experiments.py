"""Smoke runs of every experiment notebook through papermill at tiny size, and the batch runner (local pool and Dask)."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import papermill as pm
import pytest

from ntaylor_nb.batch import main as batch_main, run_grid

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / 'nbs' / 'experiments').glob('*.ipynb'))
AE_TINY = dict(epochs=2, rounds=30, lr=0.01, neurons_per_layer=2, probe_size=30, prefixes=4)

# Tiny parameters for each notebook, and the files a run must leave in its out_dir ('report' is run on batch output below).
SMOKE = {
    'taylor_tour': (dict(steps=5, seed=1), ['taylor_error.png', 'taylor_slice.png', 'results.json']),
    'autoencoder': (dict(AE_TINY, seed=2), ['done.json', 'figures/figure3.png', 'figures/figure5.png', 'figures/layer_regret.png', 'analysis/regret.csv']),
    'convnet': (dict(rounds=4, batch_size=16, lr=0.001, neurons_per_layer=2, probe_size=10, exploration_units=10, prefixes=2, seed=3),
                ['done.json', 'figures/figure5.png', 'analysis/regret.csv']),
}


def test_every_experiment_has_a_smoke_test():
    assert {p.stem for p in EXPERIMENTS} == set(SMOKE) | {'report'}


@pytest.mark.parametrize('nb', EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_parameters_parse(nb, caplog):
    "papermill reads every parameter with its type and help (a '=' in a comment, say, makes it skip the line with a warning)."
    from papermill.translators import PythonTranslator
    cell = next(c for c in json.loads(nb.read_text())['cells'] if 'parameters' in c['metadata'].get('tags', []))
    src = ''.join(cell['source'])
    names = [l.split('=')[0].strip() for l in src.splitlines() if l and not l.startswith('#')]
    found = PythonTranslator.inspect(dict(source=src))
    assert [p.name for p in found] == names and all(p.help for p in found), caplog.text


@pytest.mark.parametrize('nb', [p for p in EXPERIMENTS if p.stem in SMOKE], ids=[p.stem for p in EXPERIMENTS if p.stem in SMOKE])
def test_papermill_smoke(nb, tmp_path):
    params, files = SMOKE[nb.stem]
    out_dir = tmp_path / 'out'
    pm.execute_notebook(str(nb), str(tmp_path / nb.name), parameters=dict(params, out_dir=str(out_dir)),
                        kernel_name='python3', cwd=str(ROOT), progress_bar=False)
    for f in files: assert (out_dir / f).stat().st_size > 0, f
    if nb.stem == 'taylor_tour':
        res = json.loads((out_dir / 'results.json').read_text())
        for k, v in params.items(): assert res['parameters'][k] == v, f'parameter {k} was not injected'
    else:
        cfg = json.loads((out_dir / 'params.json').read_text())['config']
        for k in ('seed', 'lr', 'rounds'): assert cfg[k] == params[k], f'parameter {k} was not injected'


@pytest.mark.parametrize('nb,bad,message', [('taylor_tour', dict(dataset='imagenet'), 'allowed'),
                                            ('autoencoder', dict(optimizer='lion'), 'allowed: sgd, rmsprop, adam'),
                                            ('autoencoder', dict(lr=0.1, lr_factor=0.3), 'lr_factor=0.3 multiplies a tuned rate'),
                                            ('autoencoder', dict(snapshots=1), 'snapshots=1 must be None'),
                                            ('autoencoder', dict(optimizer='rmsprop', lr_of='torch'), "optimizer='rmsprop' is no such variant"),
                                            ('convnet', dict(lr=0.1, lr_of='rmsprop'), "lr_of='rmsprop' says whose tuned rate to take: use it with lr='tune'"),
                                            ('convnet', dict(lr_of='adagrad'), "lr_of='adagrad': allowed are None"),
                                            ('convnet', dict(lr=-1.0), "lr=-1.0: a positive number or 'tune'"),
                                            ('convnet', dict(figure='figure9'), "figure='figure9'; allowed: None, figure3, figure4a"),
                                            ('convnet', dict(figure='figure4a', figure_settings={'layerz': [4]}), r"figure_settings: unknown field\(s\) \['layerz'\]"),
                                            ('convnet', dict(figure_settings={'layers': [4]}), 'give figure too'),
                                            ('convnet', dict(figure='figure4a', figure_settings=8), 'figure_settings=8 must be a dict')])
def test_notebooks_reject_bad_parameters(nb, bad, message, tmp_path):
    with pytest.raises(pm.PapermillExecutionError, match=message):
        pm.execute_notebook(str(ROOT / f'nbs/experiments/{nb}.ipynb'), str(tmp_path / 'o.ipynb'),
                            parameters=dict(bad, out_dir=str(tmp_path / 'out')), kernel_name='python3', progress_bar=False, cwd=str(ROOT))
    assert not (tmp_path / 'out').exists() or not any((tmp_path / 'out').iterdir()), 'a rejected run must leave nothing behind'


def test_batch_runner_local_skip_and_report(tmp_path, capsys):
    nb = ROOT / 'nbs/experiments/autoencoder.ipynb'
    grid = {'optimizer': ['sgd', 'rmsprop', 'adam']}
    t = run_grid(nb, grid, tmp_path / 'runs', params=AE_TINY, workers=2, cwd=ROOT, progress=False)
    assert list(t.status) == ['complete'] * 3 and set(t.optimizer) == {'sgd', 'rmsprop', 'adam'}
    assert (tmp_path / 'runs' / 'results.csv').exists() and 'last_epoch_loss' in t
    stamp = (tmp_path / 'runs' / 'optimizer=sgd' / 'done.json').stat().st_mtime_ns
    # the command line, run again: complete points are skipped, nothing is recomputed
    assert batch_main([str(nb), '--out', str(tmp_path / 'runs'), '--grid', 'optimizer=sgd,rmsprop,adam'] +
                      [f'--param={k}={v}' for k, v in AE_TINY.items()]) == 0
    assert (tmp_path / 'runs' / 'optimizer=sgd' / 'done.json').stat().st_mtime_ns == stamp
    assert 'results table' in capsys.readouterr().out
    summary = tmp_path / 'runs' / 'optimizer=sgd' / 'analysis' / 'summary.json'
    analysed = summary.stat().st_mtime_ns
    # the report reads the runs and draws every figure and the claims table
    rep = tmp_path / 'runs' / 'report'
    pm.execute_notebook(str(ROOT / 'nbs/experiments/report.ipynb'), str(tmp_path / 'report.ipynb'),
                        parameters=dict(runs_dir=str(tmp_path / 'runs'), interactive=False), kernel_name='python3', progress_bar=False, cwd=str(ROOT))
    for f in ('figure3_autoencoder_digits.png', 'figure4_autoencoder_digits.png', 'figure5_autoencoder_digits.png', 'figure6.png',
              'explorer_static.png', 'claims.csv', 'claims.md', 'claims_all.csv', 'runs.csv'):
        assert (rep / f).stat().st_size > 0, f
    assert summary.stat().st_mtime_ns == analysed, 'the report must reuse the analysis the experiment saved'
    assert '...</td>' not in (tmp_path / 'report.ipynb').read_text(), 'a table cell cut off (an interval or a note lost on the page)'
    # one seed per optimizer at fixed rates: every growth verdict is inconclusive (3 seeds needed), and the comparisons
    # with SGD at its tuned rate are not measured (no run was tuned); every row names its dataset
    claims = pd.read_csv(rep / 'claims.csv')
    c1 = claims[claims.claim == 'C1: regret grows like sqrt(N)']
    assert len(c1) == 3 * 2 * 4 and (c1.verdict == 'inconclusive').all() and c1.note.str.contains('1 seeds; at least 3 needed').all()
    assert set(claims.dataset) == {'digits'} and claims.verdict.isin(['inconclusive', 'not measured']).all()
    # run again with another parameter: the complete runs are not touched, and each point is reported failed with what differs
    nbfile = tmp_path / 'runs' / 'optimizer=sgd' / 'notebook.ipynb'; nbstamp = nbfile.stat().st_mtime_ns
    t = run_grid(nb, grid, tmp_path / 'runs', params=dict(AE_TINY, epochs=3), workers=2, cwd=ROOT, progress=False)
    assert list(t.status) == ['failed'] * 3, t[['status', 'error']]
    assert t.error.str.contains('holds a complete run made with other parameters (epochs: 2 there, 3 asked)', regex=False).all(), t.error[0]
    assert (tmp_path / 'runs' / 'optimizer=sgd' / 'done.json').stat().st_mtime_ns == stamp and nbfile.stat().st_mtime_ns == nbstamp
    assert 'last_epoch_loss' not in t  # no old summary beside the new parameters
    from ntaylor_nb.report import failed_points
    f = failed_points(tmp_path / 'runs')
    assert len(f) == 3 and set(f.run) == {'optimizer=sgd', 'optimizer=rmsprop', 'optimizer=adam'} and f.error.str.contains('epochs: 2 there').all() and f.in_tables.all()


def test_report_over_runs_without_neuron_scopes(tmp_path):
    "A run that recorded layer scopes only (as figure 4(a)'s convnet runs do): the report runs, and its explorer says there is nothing to explore."
    nb = ROOT / 'nbs/experiments/autoencoder.ipynb'
    t = run_grid(nb, {'seed': [4]}, tmp_path / 'runs', params=dict(AE_TINY, neuron_layers=[]), workers=1, cwd=ROOT, progress=False)
    assert list(t.status) == ['complete']
    out = tmp_path / 'report.ipynb'
    pm.execute_notebook(str(ROOT / 'nbs/experiments/report.ipynb'), str(out),
                        parameters=dict(runs_dir=str(tmp_path / 'runs'), interactive=False), kernel_name='python3', progress_bar=False, cwd=str(ROOT))
    assert 'no run recorded neuron scopes: nothing to explore' in out.read_text()
    assert (tmp_path / 'runs' / 'report' / 'claims.csv').stat().st_size > 0


def test_batch_runner_on_a_dask_local_cluster(tmp_path):
    from distributed import LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        t = run_grid(ROOT / 'nbs/experiments/autoencoder.ipynb', {'seed': [0, 1]}, tmp_path / 'dask', params=AE_TINY,
                     scheduler=cluster.scheduler_address, cwd=ROOT, progress=False)
    assert list(t.status) == ['complete', 'complete'] and t.seed.tolist() == [0, 1]


def test_batch_runner_reports_failures(tmp_path):
    t = run_grid(ROOT / 'nbs/experiments/autoencoder.ipynb', {'optimizer': ['nope']}, tmp_path / 'f', params=AE_TINY, cwd=ROOT, progress=False)
    assert t.status.tolist() == ['failed'] and 'allowed' in t.error[0]
    with pytest.raises(ValueError, match='must be lists'): run_grid(ROOT / 'nbs/experiments/autoencoder.ipynb', {'seed': 1}, tmp_path / 'g')
