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
    # optimum_gap (a round; half the Newton decrement, an estimate, or the value's height above its floor where smaller: on
    # a separable neuron's exponential tail f = c e^-mt the decrement is f itself, so the distance is twice the estimate;
    # with several margins it can be more), so the two
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
    monkeypatch.setattr(hs, 'conv_newton', lambda *a, **k: (isinstance(a[0], hs.CompactConv) and calls.append(len(a[2]))) or real_cn(*a, **k))  # (formed samples go by it too, on DenseProblems)
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
    assert (warm.optimum_gap <= 1e-9).all()  # the stop rule's certificate per round (half the decrement, or the value above the floor)
    gen = hindsight_generic(model, r['auto'], [8], NEURONS, progress=False).set_index('scope')
    for s in NEURONS:
        assert warm.loc[(s, 8)].taylor_optimum == pytest.approx(gen.loc[s].taylor_optimum, rel=1e-6), s


def test_conv_move_and_back_are_the_formed_rows():
    """The factored form's products, the weights times the patches (`_conv_move`) and its adjoint (`_conv_back`), at a
    stride, dilation and uneven padding: the move is the layer's own pre-activations (nn.Conv2d with those weights), the
    outputs' move through J equals M_b formed (`_conv_rows`), and <G, move(W)> = <back(G), W>."""
    from ntaylor_nb.solvers import _conv_back, _conv_move, _conv_rows, _patches
    g = torch.Generator().manual_seed(0)
    geom = dict(kernel_size=[3, 2], stride=[2, 1], padding=[1, 0], dilation=[1, 2])
    conv = nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)).double()
    x = torch.randn(5, 3, 7, 6, generator=g, dtype=torch.float64)
    W = torch.randn(4, 3 * 3 * 2 + 1, generator=g, dtype=torch.float64)
    conv.weight.data, conv.bias.data = W[:, :-1].reshape(4, 3, 3, 2).clone(), W[:, -1].clone()
    Xt = _patches(x, geom)
    torch.testing.assert_close(_conv_move(Xt, W), conv(x).flatten(2), rtol=1e-12, atol=1e-12)
    Q = Xt.shape[2]
    J = torch.randn(5, 2, 4, Q, generator=g, dtype=torch.float64)  # 2 outputs, 4 units
    M = _conv_rows(J, Xt)[0]  # (m, p, C (K+1))
    torch.testing.assert_close(torch.einsum('mpcq,mcq->mp', J, _conv_move(Xt, W)), M @ W.reshape(-1), rtol=1e-12, atol=1e-12)
    G = torch.randn(5, 4, Q, generator=g, dtype=torch.float64)
    back = _conv_back(Xt, G)
    assert abs(float((G * _conv_move(Xt, W)).sum() - (back * W).sum())) < 1e-12 * float((G.abs() * _conv_move(Xt, W).abs()).sum())
    # the adjoint is the convolution's weight and bias gradient (autograd)
    conv.zero_grad(); (conv(x).flatten(2) * G).sum().backward()
    torch.testing.assert_close(back, torch.cat([conv.weight.grad.reshape(4, -1), conv.bias.grad[:, None]], 1), rtol=1e-12, atol=1e-12)


def _layer2_samples(rec, dtype=None):
    "Layer 2's layer scope from the first chunk of a conv_compact recording, in both forms: (factored, formed, geom)."
    from ntaylor_nb.regret import ConvCompactRecord, OutputRecord
    from ntaylor_nb.solvers import ConvFactoredSamples, ConvSamples
    d = rec.chunk(0); o, c = OutputRecord.from_arrays(d), ConvCompactRecord.from_arrays(d, '2/')
    geom = rec.manifest['layers']['2']['conv']
    t = lambda a: torch.from_numpy(np.array(a, dtype=np.float64))
    y, s = torch.from_numpy(np.array(o.y)).long(), torch.rand(len(o.y), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x, J = torch.from_numpy(np.array(c.x)), torch.from_numpy(np.array(c.J))
    if dtype is not None: x, J = x.to(dtype), J.to(dtype)
    fac = ConvFactoredSamples(t(o.f0), y, s, x, J, t(c.m0))
    full = ConvSamples(t(o.f0), y, s, hs._compact_M(x.numpy(), J.numpy(), geom), t(c.m0))
    return fac, full, geom


@pytest.mark.parametrize('dtype', [None, torch.float32])
def test_factored_layer_scope_equals_formed(recs, dtype):
    """A conv layer scope's problem from the factored samples (the layer's input and the Jacobian per unit and position,
    as a conv_compact record holds them, also kept in float32) gives the formed-M problem's value, gradient, Hessian
    products and preconditioner (1e-12 relative), and refuses a Hessian or neurons."""
    from ntaylor_nb.solvers import Problems
    _, r, _ = recs
    fac, full, geom = _layer2_samples(r['auto'], dtype)
    pf, pm = Problems(fac, 'cross_entropy', geom=geom, chunk_bytes=2 ** 14), Problems(full, 'cross_entropy')  # small chunks: several blocks
    P = pm.size(); assert pf.size() == P == 3 * 37
    g = torch.Generator().manual_seed(2); zero = torch.zeros(1, dtype=torch.long)
    V, W = (torch.randn(P, generator=g, dtype=torch.float64) for _ in range(2))
    (ff, gf, _), (fm, gm, H) = pf.evaluate(V[None], zero, hess=False), pm.evaluate(V[None], zero)
    torch.testing.assert_close(ff, fm, rtol=1e-12, atol=0); torch.testing.assert_close(gf, gm, rtol=1e-11, atol=1e-13)
    torch.testing.assert_close(pf.hvp(V, W), H[0] @ W, rtol=1e-11, atol=1e-13)
    torch.testing.assert_close(pf.hvp(V, W), pm.hvp(V, W), rtol=1e-11, atol=1e-13)
    (Mf, df), (Mm, dm) = pf.precond(V), pm.precond(V)
    assert df == pytest.approx(dm, rel=1e-12) and df == pytest.approx(float(H[0].diagonal().max()), rel=1e-12)
    torch.testing.assert_close(Mf(W), Mm(W), rtol=1e-11, atol=1e-13)
    # two points at once (the line search's batch) give each point's value
    f2 = pf.evaluate(torch.stack([V, W]), torch.zeros(2, dtype=torch.long), hess=False)[0]
    torch.testing.assert_close(f2, torch.cat([pm.evaluate(v[None], zero, hess=False)[0] for v in (V, W)]), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match='no Hessian'): pf.evaluate(V[None], zero)
    with pytest.raises(ValueError, match='layer scope'): Problems(fac, 'cross_entropy', cols=torch.tensor([0]), geom=geom)
    with pytest.raises(ValueError, match='geometry'): Problems(fac, 'cross_entropy')


def test_hindsight_keeps_large_conv_layer_scopes_factored(recs, monkeypatch):
    """A conv_compact layer scope solved matrix-free (solver="newton-cg", or above MAX_DIRECT variables) keeps the record's
    factors and never forms M for all its samples at once (`_compact_M`; the preconditioner forms M_b a block at a time);
    its minima equal the dense Newton's on the formed M."""
    _, r, _ = recs
    formed, real_M = [], hs._compact_M
    monkeypatch.setattr(hs, '_compact_M', lambda *a, **k: formed.append(1) or real_M(*a, **k))
    dense = hindsight(r['auto'], [3, 8], ['layer:2'], progress=False).set_index(['scope', 'N'])  # 111 variables: Newton on the formed M
    assert formed and dense.certified.all()
    formed.clear()
    free = hindsight(r['auto'], [3, 8], ['layer:2', 'neuron:2:0'], progress=False, solver='newton-cg').set_index(['scope', 'N'])
    assert not formed and free.certified.all()
    np.testing.assert_allclose(free.loc[dense.index].taylor_optimum, dense.taylor_optimum, rtol=1e-7)
    monkeypatch.setattr(hs, 'MAX_DIRECT', 100)  # the default solver, the layer scope above MAX_DIRECT: factored too
    big = hindsight(r['auto'], [3, 8], ['layer:2'], progress=False).set_index(['scope', 'N'])
    assert not formed and big.certified.all()
    np.testing.assert_allclose(big.taylor_optimum, dense.taylor_optimum, rtol=1e-7)


def _compact_problem(loss, cache_bytes):
    """A CompactConv of 2 neurons of a small convolution (2 input channels, 3x3, padding 1, 4x4 input: 16 positions, K+1 = 19),
    3 outputs, 14 samples added in two blocks: some samples with no active position (a constant loss), some with more
    active positions than outputs (kept as the p rows of M_b), the rest with 1 to 3; and an independent reference of each
    neuron's summed loss, its outputs' move made by nn.functional.conv2d (not the package's patches)."""
    import torch.nn.functional as F
    from ntaylor_nb.conv_solvers import CompactConv
    g = torch.Generator().manual_seed(3)
    n, p, U, P, geom = 14, 3, 2, 16, dict(kernel_size=[3, 3], stride=[1, 1], padding=[1, 1], dilation=[1, 1])
    x = torch.randn(n, 2, 4, 4, generator=g, dtype=torch.float64)
    J = torch.randn(n, p, U, P, generator=g, dtype=torch.float64)
    act = torch.zeros(n, U, P, dtype=torch.bool)
    for b in range(n):
        for u in range(U):
            c = [0, 0, 1, 2, 3, 5, 9, 16][(b + 3 * u) % 8]  # active positions of this sample
            act[b, u, torch.randperm(P, generator=g)[:c]] = True
    J = J * act[:, None]
    f0, m0 = torch.randn(n, p, generator=g, dtype=torch.float64), torch.randn(n, p, U, generator=g, dtype=torch.float64)
    y = torch.randint(0, p, (n,), generator=g) if loss == 'cross_entropy' else torch.randn(n, p, generator=g, dtype=torch.float64)
    s = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    cc = CompactConv(geom, loss, cache_bytes=cache_bytes)
    for sl in (slice(0, 6), slice(6, n)): cc.add(f0[sl], y[sl], s[sl], x[sl], J[sl], m0[sl])

    def ref(u, keep=None):  # keep: the samples summed (all)
        def f(v):
            move = F.conv2d(x, v[:-1].reshape(1, 2, 3, 3), v[-1:], padding=1).reshape(n, P)  # the neuron's pre-activation move
            z = f0 - m0[:, :, u] + torch.einsum('bpq,bq->bp', J[:, :, u], move)
            per = F.cross_entropy(z, y, reduction='none') if loss == 'cross_entropy' else ((z - y) ** 2).sum(1)
            return (per * s * (1.0 if keep is None else keep)).sum()
        return f
    inactive = ~act.any(2)  # (n, U): samples where the neuron moves no output
    return cc, ref, inactive, (f0, m0, y, s)


@pytest.mark.parametrize('loss', ['cross_entropy', 'mse'])
@pytest.mark.parametrize('cache_bytes', [None, 0])  # rows kept (and merged), or made again from the input at every product
@pytest.mark.parametrize('closed', [False, True], ids=['eigh-rows', 'closed-form'])  # the Hessian's rows as on the CPU, or as on a GPU
def test_compact_conv_products_equal_autograd(loss, cache_bytes, closed, monkeypatch):
    "CompactConv's value, gradient, Hessian products, Hessian (all samples, and a subsample's with the full diagonal) and floor against the reference by autograd."
    import torch.nn.functional as F
    from torch.func import grad, hessian
    import ntaylor_nb.conv_solvers as cs
    if closed: monkeypatch.setattr(cs, '_CLOSED_FORM', ('cuda', 'cpu'))
    asked = []
    real_eigh = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, 'eigh', lambda A, *a, **k: asked.append(1) or real_eigh(A, *a, **k))
    cc, ref, inactive, (f0, m0, y, s) = _compact_problem(loss, cache_bytes)
    g = torch.Generator().manual_seed(4)
    V, W = (torch.randn(2, 19, generator=g, dtype=torch.float64) * 0.3 for _ in range(2))
    idx = torch.tensor([1, 0])  # neurons in another order than stored
    f, gr = cc.evaluate(V, idx)
    Hv, (H, dg) = cc.hvp(W, torch.arange(2)), cc.hessian(V, idx)
    for k, u in enumerate(idx.tolist()):
        torch.testing.assert_close(f[k], ref(u)(V[k]), rtol=1e-12, atol=0)
        torch.testing.assert_close(gr[k], grad(ref(u))(V[k]), rtol=1e-11, atol=1e-13)
        Href = hessian(ref(u))(V[k])
        torch.testing.assert_close(Hv[k], Href @ W[k], rtol=1e-11, atol=1e-13)
        torch.testing.assert_close(H[k], Href, rtol=1e-10, atol=1e-13 * float(Href.abs().max()))
        torch.testing.assert_close(dg[k], Href.diagonal(), rtol=1e-10, atol=1e-13 * float(Href.abs().max()))
        # the floor: the loss of the samples where the neuron moves nothing, whatever v is
        z = f0[inactive[:, u]] - m0[inactive[:, u]][:, :, u]
        per = F.cross_entropy(z, y[inactive[:, u]], reduction='none') if loss == 'cross_entropy' else ((z - y[inactive[:, u]]) ** 2).sum(1)
        assert float(cc.floor(idx)[k]) == pytest.approx(float((per * s[inactive[:, u]]).sum()), rel=1e-12)
    # a subsample's Hessian (every 3rd sample, scaled to all the weights) with the diagonal from all samples
    Hs, dgs = cc.hessian(V, idx, m_max=5)
    torch.testing.assert_close(dgs, dg, rtol=1e-10, atol=1e-13 * float(dg.abs().max()))
    keep = (torch.arange(14) % 3 == 0).double()
    for k, u in enumerate(idx.tolist()):
        Href = hessian(ref(u, keep))(V[k]) * float(s.sum() / (s * keep).sum())
        torch.testing.assert_close(Hs[k], Href, rtol=1e-10, atol=1e-13 * float(Href.abs().max()))
    assert bool(asked) != closed  # the closed form asks no eigensolver


def test_count_ops_tool(recs, capsys):
    """tools/count_ops.py (operations and synchronisations of hindsight by solver phase, a proxy for its time on a GPU): views
    and allocations are not counted as operations, a value read on the host is a synchronisation; on a recording its table
    is hindsight's, and a bad prefix list is refused with what is allowed."""
    import importlib.util
    import pathlib
    spec = importlib.util.spec_from_file_location('count_ops', pathlib.Path(__file__).parents[1] / 'tools' / 'count_ops.py')
    co = importlib.util.module_from_spec(spec); spec.loader.exec_module(co)
    a, b = torch.ones(3, dtype=torch.float64), torch.arange(3.0, dtype=torch.float64)
    c = co.Counter()
    with c:
        s = torch.add(a, b).view(-1, 1).sum()
        assert float(s) == 6.0
    assert (sum(c.ops.values()), sum(c.syncs.values())) == (2, 1)  # add and sum; the view is none; float() waits for the value
    _, r, _ = recs
    import ntaylor_nb.conv_newton as cn
    import ntaylor_nb.conv_solvers as cs
    before = [cs.CompactConv.hessian, cn.batched_pcg, cn.grid_search, torch.Tensor.tolist]
    with c.phases([(cs.CompactConv, 'hessian')]):
        assert torch.arange(2).tolist() == [0, 1]  # a host read that reaches no ATen operation on the CPU
    assert c.syncs['other'] == 2
    df = co.main([str(r['auto'].path), '1,3'])
    out = capsys.readouterr().out
    assert out.startswith('ops=') and ' hessian ' in out and ' evaluate ' in out
    pd.testing.assert_frame_equal(df, hindsight(r['auto'], [1, 3], progress=False))
    assert [cs.CompactConv.hessian, cn.batched_pcg, cn.grid_search, torch.Tensor.tolist] == before  # the counted functions put back
    with pytest.raises(SystemExit, match='whole numbers separated by commas'): co.main([str(r['auto'].path), '1;3'])
    with pytest.raises(SystemExit, match='no regret recording'): co.main([str(r['auto'].path) + '-missing'])
    closed = co.main([str(r['auto'].path), '1,3', '--gpu-path'])  # the GPU's Hessian rows on the CPU: the same optima to the stops
    assert cs._CLOSED_FORM == ('cuda',) and (closed.taylor_optimum - df.taylor_optimum).abs().max() <= 1.5e-8  # within the stops (1e-9 a round, estimates)


def test_conv_newton_stops_a_separable_neuron_by_its_value(monkeypatch):
    """Neuron 0 of the small problem fits its active samples exactly (its infimum is its floor, the loss of its inactive
    samples, approached only as |v| grows): conv_newton stops it once its value is within tol of the floor, after one
    iteration, with no decrement made, and hindsight's certificate is that height; without the floor it ran to the
    100-iteration cap, uncertified (half a decrement of 6e-7 against tol 1e-9; 1e-2 before the ridged directions and the
    grid search), at the same value. Neuron 1 stops by its decrement."""
    from ntaylor_nb.conv_solvers import CompactConv
    from ntaylor_nb.conv_newton import conv_newton
    cc, ref, _, _ = _compact_problem('cross_entropy', None)
    idx, tol, V0 = torch.arange(2), 1e-9, torch.zeros(2, 19, dtype=torch.float64)
    V, f, gn, lam, it = conv_newton(cc, idx, V0, tol)
    fl = cc.floor(idx)
    assert 0 <= float(f[0] - fl[0]) <= tol and lam[0] == float('inf') and int(it[0]) <= 2
    assert float(lam[1]) / 2 <= tol and float(f[1] - fl[1]) > 0.1
    for k in range(2): assert float(f[k]) == pytest.approx(float(ref(k)(V[k])), rel=1e-12)  # the values, by the reference
    assert hs._gap(lam[0], f[0], fl[0]) == pytest.approx(float(f[0] - fl[0]), abs=1e-15) and hs._gap(lam[1], f[1], fl[1]) == float(lam[1]) / 2
    monkeypatch.setattr(CompactConv, 'floor', lambda self, idx: torch.full((len(idx),), -float('inf'), dtype=torch.float64))
    V2, f2, _, lam2, it2 = conv_newton(cc, idx, V0, tol)
    assert int(it2[0]) == 100 and float(lam2[0]) / 2 > 100 * tol and float(f2[0] - fl[0]) <= tol
    assert abs(float(f2[1] - f[1])) <= 5 * tol  # neuron 1 within the two stops (its path can differ: the batch decides when CG is tried)


def test_p5_neuron_investigation_forms_the_reference_loss():
    "benchmarks/p5_neuron.py's samples formed in float64 (its continuation's value, gradient and Hessian) against the autograd reference."
    from torch.func import grad, hessian
    from benchmarks.p5_neuron import Formed  # (`python -m pytest` from the repository root, as `make test` runs it)
    cc, ref, _, _ = _compact_problem('cross_entropy', None)
    V = torch.randn(19, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 0.3
    for u in range(2):
        prob = Formed([dict({k: nb[k] for k in ('rs', 'j', 'base', 'y', 's', 'const')}, X=cc._rows(nb)) for nb in cc._segments(u)])
        f, g, H = prob.fgH(V)
        assert f == pytest.approx(float(ref(u)(V)), rel=1e-12) and prob.value(V) == pytest.approx(f, rel=1e-13)
        torch.testing.assert_close(g, grad(ref(u))(V), rtol=1e-11, atol=1e-13)
        Href = hessian(ref(u))(V)
        torch.testing.assert_close(H, Href, rtol=1e-10, atol=1e-13 * float(Href.abs().max()))


def test_uncertified_cross_entropy_neurons_are_bracketed(recs, monkeypatch):
    """Newton capped at one iteration leaves the neuron solves uncertified (the format-2 neuron of conv layer 0 through
    `DenseProblems`, the compact ones of conv layer 2 through `CompactConv`); `ntaylor_nb.separable.sharpen` brackets them,
    and they come out certified, within the stop rule of the uncapped solves. With its budget at zero, or `brackets=False`, they
    stay uncertified, with the same values."""
    import ntaylor_nb.separable as sep
    rec, prefixes = recs[1]['auto'], [3, 8]
    neurons = lambda df: df[df.kind == 'neuron'].set_index(['scope', 'N'])
    full = neurons(hindsight(rec, prefixes, progress=False))
    assert full.certified.all() and len(full) == 6
    orig = hs.conv_newton
    monkeypatch.setattr(hs, 'conv_newton', lambda *a, **k: orig(*a, **dict(k, max_iter=1)))
    with monkeypatch.context() as m:
        m.setitem(sep.SEPARATE_NUMBERS, 'cpu', 0)
        capped = neurons(hindsight(rec, prefixes, progress=False))
    assert (~capped.certified).sum() >= 3, capped[['taylor_optimum', 'optimum_gap', 'certified']]
    for sc in ('neuron:0:1', 'neuron:2:0'): assert (~capped.loc[sc].certified).any(), sc  # both paths met uncertified solves
    off = neurons(hindsight(rec, prefixes, progress=False, brackets=False))
    assert off[['taylor_optimum', 'optimum_gap', 'certified']].equals(capped[['taylor_optimum', 'optimum_gap', 'certified']]), off
    with pytest.raises(ValueError, match='True or False'): hindsight(rec, prefixes, progress=False, brackets='yes')
    sharp = neurons(hindsight(rec, prefixes, progress=False))
    assert sharp.certified.all(), sharp[['taylor_optimum', 'optimum_gap']]
    assert ((sharp.taylor_optimum - full.taylor_optimum).abs() <= 2 * hs.GAP_TOL).all(), (sharp.taylor_optimum - full.taylor_optimum)
    assert (sharp.taylor_optimum <= capped.taylor_optimum + 1e-15).all()
