"""Smoke runs of every experiment notebook through papermill at tiny size."""
import json
from pathlib import Path

import papermill as pm
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / 'nbs' / 'experiments').glob('*.ipynb'))

# Tiny parameters for each notebook, and the files a run must leave in its out_dir.
SMOKE = {
    'taylor_tour': (dict(steps=5, seed=1), ['taylor_error.png', 'taylor_slice.png', 'results.json']),
}


def test_every_experiment_has_a_smoke_configuration():
    assert {p.stem for p in EXPERIMENTS} == set(SMOKE)


@pytest.mark.parametrize('nb', EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_papermill_smoke(nb, tmp_path):
    params, files = SMOKE[nb.stem]
    out_dir = tmp_path / 'out'
    pm.execute_notebook(str(nb), str(tmp_path / nb.name), parameters=dict(params, out_dir=str(out_dir)),
                        kernel_name='python3', cwd=str(ROOT), progress_bar=False)
    for f in files: assert (out_dir / f).stat().st_size > 0, f
    res = json.loads((out_dir / 'results.json').read_text())
    for k, v in params.items(): assert res['parameters'][k] == v, f'parameter {k} was not injected'


def test_tour_rejects_bad_parameters(tmp_path):
    with pytest.raises(pm.PapermillExecutionError, match='allowed'):
        pm.execute_notebook(str(ROOT / 'nbs/experiments/taylor_tour.ipynb'), str(tmp_path / 'o.ipynb'),
                            parameters=dict(dataset='imagenet', out_dir=str(tmp_path)), kernel_name='python3', progress_bar=False)
    assert not any(tmp_path.glob('*.png')), 'a rejected run must not leave results behind'
