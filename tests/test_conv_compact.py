"""Compact convolution records (`conv_compact`, format 3): same hindsight numbers as format 2's `ConvRecord`, smaller
on disk where the recorder chooses them, size estimate exact, format-2 recordings still read."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

import ntaylor_nb.hindsight as hs
from ntaylor_nb.hindsight import hindsight
from ntaylor_nb.hindsight_generic import hindsight_generic
from ntaylor_nb.regret import RegretRecorder, RegretRecording, conv_numbers

from test_regret import train


def two_convs():
    "Conv layer 0 (K+1 = 10, 16 positions: ConvRecord is smaller) and conv layer 2 (K+1 = 37: the compact record is)."
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 3))

SCOPES = ['neuron:0:1', 'neuron:2:0', 'neuron:2:2', 'layer:2']


@pytest.fixture(scope='module')
def recs(tmp_path_factory):
    t = tmp_path_factory.mktemp('cc')
    out = {}
    for kind in ('auto', 'conv'):
        model, _ = train(two_convs, 'cross_entropy', SCOPES, t / kind, rounds=8, B=12, chunk_rounds=3, store_weights=True, conv_record=kind)
        out[kind] = RegretRecording(t / kind)
    return model, out, t


def test_auto_picks_the_smaller_record(recs):
    _, r, _ = recs
    lay = r['auto'].manifest['layers']
    assert (lay['0']['record'], lay['2']['record']) == ('conv', 'conv_compact')
    assert lay['2']['conv'] == dict(kernel_size=[3, 3], stride=[1, 1], padding=[1, 1], dilation=[1, 1])
    assert r['auto'].manifest['format'] == 'ntaylor_nb.regret/3'
    # by the count of conv_numbers: layer 2 records U = 3 units (the layer scope), p = 3 outputs, 16 positions
    old, new = conv_numbers(nn.Conv2d(4, 3, 3, padding=1), (1, 4, 4, 4), (1, 3, 4, 4), 3, 3)
    assert (old, new) == (3 * 3 * 37 + 9, 64 + 3 * 3 * 16 + 9)
    a, c = (rr.chunk(0) for rr in (r['auto'], r['conv']))
    assert a['2/x'].shape == (36, 4, 4, 4) and a['2/J'].shape == (36, 3, 3, 16) and c['2/M'].shape == (36, 3, 3, 37)
    per = lambda d: sum(v.nbytes for k, v in d.items() if k.startswith('2/'))
    assert per(a) / per(c) == pytest.approx(new / old)


def test_compact_equals_format2_values(recs, monkeypatch):
    model, r, _ = recs
    c = hindsight(r['conv'], [3, 8], progress=False).set_index(['scope', 'N'])
    monkeypatch.setattr(hs, '_COMPACT_NEWTON', False)  # the baseline: M formed again from the compact record, dense Newton
    d = hindsight(r['auto'], [3, 8], progress=False).set_index(['scope', 'N'])
    monkeypatch.setattr(hs, '_COMPACT_NEWTON', True)
    a = hindsight(r['auto'], [3, 8], progress=False).set_index(['scope', 'N'])
    assert len(a) == 2 * len(SCOPES)
    for col in ('taylor_optimum', 'regret', 'cumulative_loss'):
        np.testing.assert_allclose(d[col], c.loc[d.index][col], rtol=1e-10, atol=1e-13)  # same solver, same numbers
    # conv_newton (the default for compact neurons) against the dense Newton: each value lies within about its
    # optimum_gap (a round; half the Newton decrement, an estimate: on a separable neuron's exponential tail f = c e^-mt
    # the decrement is f itself, so the distance is twice the estimate; with several margins it can be more), so the two
    # agree to about twice the sum of their gaps: 2.5 is an empirical allowance, on gaps both held to tol (on separable
    # neurons the dense Newton's expanding line search reaches 0 while conv_newton stops within tol)
    ref, N = c.loc[a.index], a.index.get_level_values('N').to_numpy()
    gap = (a.optimum_gap + ref.optimum_gap).to_numpy()
    assert (np.abs(a.taylor_optimum - ref.taylor_optimum).to_numpy() <= 1e-8 * np.abs(ref.taylor_optimum.to_numpy()) + 2.5 * gap + 1e-13).all()
    assert (np.abs(a.regret - ref.regret).to_numpy() <= 1e-8 * np.abs(ref.regret.to_numpy()) + 2.5 * N * gap + 1e-12).all()
    np.testing.assert_allclose(a.cumulative_loss, ref.cumulative_loss, rtol=1e-12)
    assert (a.optimum_gap <= 1e-9 * 1.0001).all() and (ref.optimum_gap <= 1e-9 * 1.0001).all()
    # the stop rule is the decrement, not the gradient: on the ill-conditioned neuron 2:2 at N = 8 the expanded solve ends
    # with a gradient of 1.4e-6 at a value 4e-10 below the dense solve's (the dense one: 1.7e-7)
    assert (a.grad_norm < 1e-5).all()
    gen = hindsight_generic(model, r['auto'], [8], progress=False).set_index('scope')
    for s in SCOPES:
        # the generic path (torch.func Jacobians, L-BFGS) stops earlier on the near-separable layer scope (2e-6 above here);
        # elsewhere the two are within their tolerances (1e-9 relative): Newton is never above by more, and they agree to 1e-5
        f, g = a.loc[(s, 8)].taylor_optimum, gen.loc[s].taylor_optimum
        assert f <= g * (1 + 1e-8) and f == pytest.approx(g, rel=1e-5), s


def test_compact_size_estimate_is_what_is_written(recs):
    model, r, _ = recs
    # known, not of this change: with store_weights the estimate counts weights and inputs at 4 bytes, and this
    # float64 model stores 8 (1,528 bytes a round here: 190 parameters and 12 x 16 inputs)
    f64 = 4 * (sum(p.numel() for p in model.parameters()) + 12 * 16)
    for rr in r.values():
        written = sum(c['bytes'] for c in rr.manifest['chunks']) / len(rr)
        assert written == rr.manifest['estimate']['bytes_per_round'] + f64
    assert r['auto'].manifest['estimate']['bytes_per_round'] < r['conv'].manifest['estimate']['bytes_per_round']


def test_format2_recordings_still_read(recs, tmp_path):
    "A format-2 recording (ConvRecord only; no geometry field) is read by the same reader, with the same numbers."
    import shutil
    _, r, t = recs
    shutil.copytree(t / 'conv', tmp_path / 'f2')
    mf = json.loads((tmp_path / 'f2' / 'manifest.json').read_text())
    assert all('conv' not in e for e in mf['layers'].values())  # format 2 wrote no geometry for ConvRecord layers
    mf['format'] = 'ntaylor_nb.regret/2'
    (tmp_path / 'f2' / 'manifest.json').write_text(json.dumps(mf))
    old = RegretRecording(tmp_path / 'f2')
    assert old.manifest['format'] == 'ntaylor_nb.regret/2'
    pd.testing.assert_frame_equal(hindsight(old, [8], progress=False), hindsight(r['conv'], [8], progress=False))


def test_bad_conv_record(tmp_path):
    with pytest.raises(ValueError, match='allowed: auto, conv, conv_compact'):
        train(two_convs, 'cross_entropy', SCOPES, tmp_path / 'b', rounds=2, conv_record='small')


NEURONS = ['neuron:2:0', 'neuron:2:2']  # the compact layer's neuron scopes (conv_newton's)


def test_conv_newton_is_the_default_for_compact_neurons(recs, monkeypatch):
    "hindsight solves compact neurons by conv_newton and never forms M for them; the dense path only with the private switch."
    _, r, _ = recs
    calls, formed = [], []
    real_cn, real_M = hs.conv_newton, hs._compact_M
    monkeypatch.setattr(hs, 'conv_newton', lambda *a, **k: calls.append(len(a[2])) or real_cn(*a, **k))
    monkeypatch.setattr(hs, '_compact_M', lambda *a, **k: formed.append(1) or real_M(*a, **k))
    hindsight(r['auto'], [3, 8], NEURONS, progress=False)
    assert calls == [2, 2] and not formed
    monkeypatch.setattr(hs, '_COMPACT_NEWTON', False)
    calls.clear(); hindsight(r['auto'], [8], NEURONS, progress=False)
    assert not calls and formed


def test_conv_newton_warm_equals_cold_and_generic(recs):
    "Warm starts across prefixes give the cold solve's minima (1e-8), and the generic path's (torch.func, L-BFGS) to 1e-6."
    model, r, _ = recs
    warm = hindsight(r['auto'], [2, 5, 8], NEURONS, progress=False).set_index(['scope', 'N'])
    for N in (5, 8):
        cold = hindsight(r['auto'], [N], NEURONS, progress=False).set_index(['scope', 'N'])
        np.testing.assert_allclose(warm.loc[cold.index].taylor_optimum, cold.taylor_optimum, rtol=1e-8)
    assert (warm.optimum_gap <= 1e-9).all()  # half the Newton decrement per round: the stop rule's certificate
    gen = hindsight_generic(model, r['auto'], [8], NEURONS, progress=False).set_index('scope')
    for s in NEURONS:
        assert warm.loc[(s, 8)].taylor_optimum == pytest.approx(gen.loc[s].taylor_optimum, rel=1e-6), s
