"""Rows against variables: `hindsight` counts, for every scope and prefix, the Taylor outputs the prefix fixes (`rows`)
and the scope's `variables`; where rows <= variables the Taylor optimum interpolates (0) and the regret is the
cumulative loss by construction. The recorder warns of a recording too short for a scope."""
import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

from ntaylor_nb.hindsight import hindsight, interpolating, scope_variables
from ntaylor_nb.hindsight_generic import _taylor_affine
from ntaylor_nb.regret import RegretRecording
from ntaylor_nb.taylor import Scope

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
    with pytest.warns(UserWarning, match=r'1 scope\(s\) .* \(96: .*layer:2 \(111 variables\)'):
        train(two_convs, 'cross_entropy', ['layer:2', 'neuron:2:0'], tmp_path / 'r', rounds=4, B=12, chunk_rounds=3)
