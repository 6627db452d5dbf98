"""Rows against variables: `hindsight` counts, for every scope and prefix, the Taylor outputs the prefix fixes (`rows`)
and the scope's `variables`; where rows <= variables the Taylor optimum interpolates (0) and the regret is the
cumulative loss by construction. The recorder warns of a recording too short for a scope."""
import copy
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from ntaylor_nb.growth import interpolating
from ntaylor_nb.hindsight import hindsight
from ntaylor_nb.hindsight_generic import _taylor_affine, hindsight_generic
from ntaylor_nb.regret import RegretRecording
from ntaylor_nb.taylor import Scope, scope_variables

from test_conv_compact import two_convs
from test_regret import train


def mlp(): return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


@pytest.mark.parametrize('make,x_shape,layers', [(mlp, (3, 6), ['0', '2', '4']), (two_convs, (3, 1, 4, 4), ['0', '2', '6'])])
def test_scope_variables_are_the_taylor_jacobians_columns(make, x_shape, layers):
    "Variables counted from the parameter shapes equal the columns of the scope's Taylor map, its Jacobian by torch.func."
    torch.manual_seed(0)
    m64 = make().double()
    W = {k: v.detach().clone() for k, v in m64.named_parameters()}
    shapes = {k: list(v.shape) for k, v in W.items()}
    x = torch.randn(*x_shape, dtype=torch.float64)
    scopes = ['network', 'network:nobias'] + [f'{kind}:{l}{n}{b}' for l in layers for kind, n in (('layer', ''), ('neuron', ':1')) for b in ('', ':nobias')]
    for s in scopes:
        M, _ = _taylor_affine(m64, Scope.parse(s), W, x, 3)
        assert scope_variables(shapes, s) == M.shape[-1], s
    with pytest.raises(ValueError, match='no parameter'): scope_variables(shapes, 'layer:1')


def test_scope_variables_of_a_bare_layer():
    "A model that is one Linear layer: its parameters have no module path (\"weight\", \"bias\"); the layer's path is ''."
    lin = nn.Linear(4, 3).double(); W = {k: v.detach().clone() for k, v in lin.named_parameters()}
    shapes = {k: list(v.shape) for k, v in W.items()}
    for s in (Scope('layer', ''), Scope('neuron', '', 1), Scope('neuron', '', 1, bias=False)):
        assert scope_variables(shapes, s) == _taylor_affine(lin, s, W, torch.randn(2, 4, dtype=torch.float64), 3)[0].shape[-1]


@pytest.fixture(scope='module')
def ce_run(tmp_path_factory):
    t = tmp_path_factory.mktemp('det')
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        train(two_convs, 'cross_entropy', ['layer:2', 'neuron:2:0'], t / 'r', rounds=8, B=12, chunk_rounds=3)
    return RegretRecording(t / 'r'), w


def test_rows_and_variables_in_the_table(ce_run):
    """rows = the prefix's samples x (3 classes - 1), from the recording's batch sizes; variables: layer 2 has 3 units of
    4 x 3 x 3 weights and a bias, a neuron one unit's share. Under-determined prefixes of the layer scope interpolate:
    their Taylor optimum is 0 (the cross-entropy's infimum) to the solver's accuracy, their regret the cumulative loss."""
    rec, _ = ce_run
    df = hindsight(rec, np.arange(1, 9), progress=False)
    samples = np.cumsum(rec.column('B'))
    np.testing.assert_array_equal(df.rows, samples[df.N - 1] * 2)
    assert set(df[df.kind == 'layer'].variables) == {3 * (4 * 9 + 1)} and set(df[df.kind == 'neuron'].variables) == {4 * 9 + 1}
    under = df[(df.rows <= df.variables) & (df.kind == 'layer')]
    assert len(under) == 4  # 24, 48, 72, 96 rows against 111 variables
    assert (under.taylor_optimum <= 1e-6).all() and under.certified.all(), under[['N', 'taylor_optimum', 'optimum_gap']]
    np.testing.assert_allclose(under.regret, under.cumulative_loss, rtol=1e-6)
    fits = interpolating(df).eq(1.0)
    assert fits[df.kind == 'layer'].sum() == 4 and set(df[fits].index) <= set(under.index) | set(df[df.kind == 'neuron'].index)


def test_recorder_warns_of_a_recording_too_short(ce_run, tmp_path):
    "Layer 2's scope (111 variables) over 8 rounds of 12 samples (192 rows) is not warned of; over 4 rounds (96 rows) it is, and only it."
    _, w = ce_run
    assert not [x for x in w if 'Taylor rows' in str(x.message)]
    with pytest.warns(UserWarning, match=r'1 scope\(s\) .* \(96: .*layer:2 \(111 variables\)') as w:
        train(two_convs, 'cross_entropy', ['layer:2', 'neuron:2:0'], tmp_path / 'r', rounds=4, B=12, chunk_rounds=3)
    assert [x.filename for x in w if 'Taylor rows' in str(x.message)][0].endswith('test_regret.py')  # points at the code that made the recorder


def scheduled(loss, path, steps=12, sizes=(10, 10, 7), scopes=('layer:0', 'neuron:4:0', 'network')):
    "An MLP trained `steps` steps on batches of cycling `sizes`, recorded every 2nd step with its weights; returns the sizes of the recorded batches."
    from ntaylor_nb.regret import RegretRecorder
    from ntaylor_nb.schedules import every
    torch.manual_seed(0)
    net = mlp().double(); opt = torch.optim.SGD(net.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    X = torch.randn(100, 6, generator=g, dtype=torch.float64); Y = torch.randint(0, 3, (100,), generator=g) if loss == 'cross_entropy' else X[:, :3] * 0.5
    recorded = []
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with RegretRecorder(net, loss, list(scopes), path, X[:10], steps // 2, schedule=every(2), store_weights=True) as rec:
            for step in range(steps):
                b = sizes[step % len(sizes)]; i = torch.randint(0, 100, (b,), generator=g)
                out = net(X[i]); l = nn.functional.mse_loss(out, Y[i]) if loss == 'mse' else nn.functional.cross_entropy(out, Y[i])
                opt.zero_grad(); l.backward()
                if rec.maybe(step, X[i], Y[i]): recorded.append(b)
                opt.step()
    return net, np.array(recorded)


@pytest.mark.parametrize('loss,per', [('mse', 3), ('cross_entropy', 2)])
def test_rows_follow_the_recorded_batches(loss, per, tmp_path):
    """Recorded every 2nd step, batches of 10, 10 and 7 in turn: rows are the recorded batches' samples (counted here as
    they were recorded) x outputs (MSE, 3) or classes - 1 (cross-entropy, 3 classes), in both the fast and the generic
    path; the network scope counts every parameter (6*5+5 + 5*4+4 + 4*3+3 = 74)."""
    net, sizes = scheduled(loss, tmp_path / 'r')
    assert len(set(sizes)) > 1  # the schedule and the cycle give uneven recorded batches
    fast = hindsight(tmp_path / 'r', np.arange(1, len(sizes) + 1), ['layer:0', 'neuron:4:0'], progress=False)
    # the generic path on every scope for MSE; for cross-entropy on the neuron only (its L-BFGS takes tens of seconds on the separable layer and network scopes)
    gen = hindsight_generic(net, tmp_path / 'r', np.arange(1, len(sizes) + 1), None if loss == 'mse' else ['neuron:4:0'], progress=False)
    for df in (fast, gen):
        np.testing.assert_array_equal(df.rows, np.cumsum(sizes)[df.N - 1] * per)
    if loss == 'mse': assert set(gen[gen.kind == 'network'].variables) == {74}
    both = fast.merge(gen, on=['scope', 'N'])
    assert len(both) and (both.variables_x == both.variables_y).all()


def test_a_count_alone_is_not_interpolation(tmp_path):
    """A Linear neuron's Taylor map has rank one a sample: neuron 0 of the last layer (5 variables) over one recorded batch
    of 2 samples (4 logit differences) is under-determined by count, yet keeps a positive optimum (2 samples of rank one
    cannot fit 4 differences): not marked `interpolating`; the layer scope of the same prefix fits both samples and is."""
    net, sizes = scheduled('cross_entropy', tmp_path / 'r', steps=2, sizes=(2,), scopes=('neuron:4:0', 'layer:4'))
    df = hindsight(tmp_path / 'r', [1], progress=False).set_index('scope')
    n = df.loc['neuron:4:0']
    assert n.rows == 4 and n.variables == 5 and n.rows <= n.variables  # under-determined by count ...
    assert n.taylor_optimum > 1e-3 and n.certified  # ... but one rank a sample: 2 samples cannot fit 4 logit differences
    fits = dict(zip(df.index, interpolating(df.reset_index())))
    lay = df.loc['layer:4']  # 15 variables against 4 rows: this one does fit both samples (optimum 0 to the solver's accuracy)
    assert lay.taylor_optimum <= 1e-6 and fits == {'neuron:4:0': 0.0, 'layer:4': 1.0}


def test_run_summary_has_no_gap_where_the_layer_fits_every_sample(ce_run, tmp_path):
    """A run's summary gives the layer scope's gap (average loss - Taylor optimum at the last prefix) only where it does not
    fit every sample: 8 rounds (192 rows, 111 variables) a number, 4 rounds (96 rows) NaN; the exponents leave out the
    interpolating prefixes and say how many."""
    from ntaylor_nb.run import _analyze_regret
    class FakeRun:  # what _analyze_regret uses of a Run
        def __init__(self, rec, d): self.regret_recording, self.d = rec, d
        def file(self, name): return self.d / f'{name}.csv'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        train(two_convs, 'cross_entropy', ['layer:2'], tmp_path / 'short', rounds=4, B=12, chunk_rounds=3)
    long, short = (_analyze_regret(FakeRun(r, tmp_path), 8, False, 'cpu') for r in (ce_run[0], RegretRecording(tmp_path / 'short')))
    n = int(pd.read_csv(tmp_path / 'regret_table.csv').query("kind == 'layer'").layer_number.iloc[0])  # the paper's number of module 2
    assert np.isfinite(long[f'gap_layer_{n}']) and np.isnan(short[f'gap_layer_{n}'])
    ex = pd.read_csv(tmp_path / 'exponents.csv').set_index('kind')
    assert ex.loc['layer', 'left_out'] == 3 and np.isnan(ex.loc['layer', 'exponent'])  # every prefix of the short run fits exactly (N = 2..4 in the fit's range N >= 2)


def test_quad_min_of_rank_deficient_problems_does_not_depend_on_the_units():
    "Fewer rows than variables, columns scaled by 1e-3 .. 1e3: the minimum (against lstsq on the unscaled rows) is the same; the rank decision was relative to the largest diagonal entry."
    from ntaylor_nb.quadratic import quad_min, quad_min_shared
    rng = np.random.default_rng(0)
    for _ in range(60):
        P = int(rng.integers(10, 60)); n = int(rng.integers(5, P))
        A0, r = rng.normal(size=(n, P)), rng.normal(size=n)
        A = A0 * rng.choice([1, 1e-3, 1e3], size=P)
        Q, q, c = A.T @ A, A.T @ r, r @ r
        truth = float(np.sum((A0 @ np.linalg.lstsq(A0, -r, rcond=None)[0] + r) ** 2))  # 0: more variables than rows
        assert abs(float(quad_min(Q, q, c)) - truth) <= 1e-9 * c
        assert abs(quad_min_shared(Q, q[None], c) - truth) <= 1e-9 * c
