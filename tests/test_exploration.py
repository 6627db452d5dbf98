"""Cross-checks of ntaylor_nb.exploration against brute-force loops, storage round trips and failure injection."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

from ntaylor_nb.exploration import (ExplorationRecorder, ExplorationRecording, exploration_measures, layer_summary,
                                    log_volume, novelty, switches)
from ntaylor_nb.schedules import every
from ntaylor_nb.taylor import activation_configuration


def brute_novelty(A):
    return [np.nan] + [min(float(((A[n].astype(float) - A[k].astype(float)) ** 2).sum()) for k in range(n)) for n in range(1, len(A))]


def brute_switches(A):
    N, D, M = A.shape
    out = []
    for d in range(D):
        s = 0
        for n in range(1, N):
            for m in range(M): s += int(A[n, d, m] != A[n - 1, d, m])
        out.append(s / ((N - 1) * M))
    return np.sort(out)[::-1]


def brute_log_volume(A, k=50, floor=1e-3):
    out = []
    for m in range(A.shape[2]):
        X = A[:, :, m].astype(float); X = X - X.mean(0, keepdims=True)
        s = np.linalg.svd(X, compute_uv=False)[:k]
        s = np.concatenate([s, np.zeros(k - len(s))])
        out.append(np.log(np.maximum(s, floor)).sum())
    return np.sort(out)[::-1]


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 60), st.integers(1, 60), st.integers(1, 12), st.floats(0.05, 0.95), st.integers(0, 2**16))
def test_measures_equal_brute_force(N, D, M, p, seed):
    A = np.random.default_rng(seed).random((N, D, M)) < p
    np.testing.assert_array_equal(novelty(A), brute_novelty(A))
    np.testing.assert_allclose(switches(A), brute_switches(A), rtol=0, atol=1e-15)
    np.testing.assert_allclose(log_volume(A), brute_log_volume(A), rtol=1e-9, atol=1e-7)
    # blocks of a few units give the same numbers
    ms = exploration_measures(A, block_bytes=4 * N * D * 3)
    np.testing.assert_array_equal(ms['novelty'], brute_novelty(A))
    np.testing.assert_allclose(np.sort(ms['log_volume'])[::-1], brute_log_volume(A), rtol=1e-9, atol=1e-7)


def test_large_shapes_against_brute_force_svd():
    "More than 50 snapshots and datapoints, so the 50-value cut matters."
    A = np.random.default_rng(1).random((70, 80, 4)) < 0.2
    np.testing.assert_allclose(log_volume(A), brute_log_volume(A), rtol=1e-9, atol=1e-7)


def test_constant_configurations():
    A = np.broadcast_to(np.random.default_rng(2).random((1, 30, 7)) < 0.5, (12, 30, 7))
    assert np.all(novelty(A)[1:] == 0)
    assert np.all(switches(A) == 0)
    np.testing.assert_allclose(log_volume(A), 50 * np.log(1e-3))
    np.testing.assert_allclose(log_volume(A, floor=1e-6), 50 * np.log(1e-6))


def train(model, steps, recorder=None, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps):
        x = torch.randn(16, 6)
        loss = (model(x) - x[:, :3]).pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
        if recorder is not None: recorder.maybe(step)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def make_net():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3))


def test_recorder_never_changes_training(tmp_path):
    "Dropout (random numbers) and batch-norm (running statistics) included: bit-identical weights and buffers."
    plain = train(make_net(), 30)
    net = make_net()
    with ExplorationRecorder(net, torch.randn(20, 6), tmp_path / 'r', schedule=every(3), chunk_size=4) as rec:
        recorded = train(net, 30, rec)
    for k in plain: assert torch.equal(plain[k], recorded[k]), k
    assert len(ExplorationRecording(tmp_path / 'r')) == 10
    assert not net[2]._forward_pre_hooks and net.training, 'hooks removed and mode restored'


def test_round_trip_and_unit_order_across_chunks(tmp_path):
    "Snapshots with a known pattern (unit m of datapoint d on at snapshot n iff (n + d + m) % 3 == 0) survive chunking."
    class Pattern(nn.Module):
        def __init__(self):
            super().__init__(); self.n = 0; self.r1, self.r2 = nn.ReLU(), nn.ReLU()
        def forward(self, x):
            D = len(x)
            idx = (self.n + torch.arange(D)[:, None] + torch.arange(7)[None]) % 3 == 0
            a = torch.where(idx, 1.0, -1.0)
            return torch.cat([self.r1(a[:, :4]), self.r2(a[:, 4:].reshape(D, 3, 1))[:, :, 0]], 1)
    model = Pattern()
    with ExplorationRecorder(model, torch.zeros(5, 1), tmp_path / 'p', chunk_size=3) as rec:
        for n in range(11): model.n = n; rec.record(n)
    R = ExplorationRecording(tmp_path / 'p')
    expect = np.array([[[(n + d + m) % 3 == 0 for m in range(7)] for d in range(5)] for n in range(11)])
    np.testing.assert_array_equal(R.dense(), expect)
    for n in (0, 4, 10, -1): np.testing.assert_array_equal(R[n], expect[n])
    assert [c['n'] for c in R.manifest['chunks']] == [3, 3, 3, 2]
    assert R.modules[1]['shape'] == [3, 1] and list(R.unit_module()) == [0] * 4 + [1] * 3
    assert sum(c['bytes'] for c in R.manifest['chunks']) == 11 * ((5 * 7 + 7) // 8)


def test_convnet_unit_subsets(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 5), nn.ReLU(), nn.Linear(5, 2))
    probe = torch.randn(6, 2, 8, 8)
    with ExplorationRecorder(net, probe, tmp_path / 'c', units_per_layer=10, seed=4) as rec: rec.record(0)
    R = ExplorationRecording(tmp_path / 'c')
    full = activation_configuration(net, probe)
    u0, u1 = (np.array(m['units']) for m in R.modules)
    assert len(u0) == 10 and len(u1) == 5 and R.modules[0]['shape'] == [4, 8, 8]
    np.testing.assert_array_equal(R[0], np.concatenate([full.module('1').numpy()[:, u0], full.module('5').numpy()[:, u1]], 1))


def test_truncated_and_corrupted_files_are_detected(tmp_path):
    net = make_net()
    with ExplorationRecorder(net, torch.randn(9, 6), tmp_path / 't', chunk_size=2) as rec:
        for n in range(5): rec.record(n)
    f = tmp_path / 't' / 'chunk_00001.bin'
    data = f.read_bytes()
    f.write_bytes(data[:-1])
    with pytest.raises(ValueError, match='truncated or missing'): ExplorationRecording(tmp_path / 't')
    f.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    R = ExplorationRecording(tmp_path / 't')
    with pytest.raises(ValueError, match='does not match its checksum'): R.dense()
    (tmp_path / 't' / 'manifest.json').write_text('{"format": ')
    with pytest.raises(ValueError, match='not valid JSON'): ExplorationRecording(tmp_path / 't')


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match='no nn.ReLU modules'): ExplorationRecorder(nn.Sequential(nn.Linear(2, 2), nn.Tanh()), torch.randn(3, 2), tmp_path / 'a')
    net = make_net()
    with pytest.raises(ValueError, match=r"nn.ReLU modules are: \['2', '5'\]"): ExplorationRecorder(net, torch.randn(3, 6), tmp_path / 'b', layers=['0'])
    with pytest.raises(ValueError, match='does not fit the model'): ExplorationRecorder(net, torch.randn(3, 5), tmp_path / 'c')
    with pytest.raises(ValueError, match='shaped like a batch'): ExplorationRecorder(net, torch.randn(6), tmp_path / 'd')
    assert not (tmp_path / 'c').exists(), 'a rejected recorder writes nothing'
    with ExplorationRecorder(net, torch.randn(3, 6), tmp_path / 'e') as rec: rec.record(0)
    with pytest.raises(FileExistsError, match='already holds a recording'): ExplorationRecorder(net, torch.randn(3, 6), tmp_path / 'e')
    with pytest.raises(FileNotFoundError, match='no exploration recording'): ExplorationRecording(tmp_path / 'zzz')
    with pytest.raises(ValueError, match=r'expected an \(N, D, M\) array'): novelty(np.zeros((3, 4)))
    with pytest.raises(ValueError, match='at least 2 snapshots'): switches(np.zeros((1, 3, 4), bool))


def test_layer_summary(tmp_path):
    net = make_net()
    with ExplorationRecorder(net, torch.randn(20, 6), tmp_path / 's', schedule=every(2)) as rec: train(net, 20, rec)
    R = ExplorationRecording(tmp_path / 's')
    df = layer_summary(R)
    A = R.dense()
    assert list(df.module) == ['2', '5'] and list(df.units) == [8, 5]
    np.testing.assert_allclose(df.switches[0], brute_switches(A[:, :, :8]).mean())
    np.testing.assert_allclose(df.log_volume_mean[1], np.mean(brute_log_volume(A[:, :, 8:])), rtol=1e-9)
    for i, cols in enumerate((slice(0, 8), slice(8, 13))):  # every column, each module against the brute-force loops
        a = A[:, :, cols]
        np.testing.assert_allclose(df.novelty_per_unit[i], np.nanmean(brute_novelty(a)) / a.shape[2], rtol=1e-12)
        np.testing.assert_allclose(df.switches[i], brute_switches(a).mean(), rtol=1e-12)
        np.testing.assert_allclose(df.log_volume_median[i], np.median(brute_log_volume(a)), rtol=1e-9)
        sv = [np.linalg.svd(a[:, :, m] - a[:, :, m].mean(0), compute_uv=False) for m in range(a.shape[2])]
        np.testing.assert_allclose(df.sv_above_floor_mean[i], np.mean([(x > 1e-3).sum() for x in sv]), rtol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_recording_matches_cpu(tmp_path):
    net, probe = make_net().eval(), torch.randn(30, 6)
    cpu = activation_configuration(net, probe).A.numpy()
    netc = net.cuda().train()
    with ExplorationRecorder(netc, probe.cuda(), tmp_path / 'g') as rec: rec.record(0)
    np.testing.assert_array_equal(ExplorationRecording(tmp_path / 'g')[0], cpu)
    assert netc.training


def test_format_1_recordings_still_load():
    "A recording written by ntaylor_nb 0.1.0 (format 1: one list of steps, chunks of bare bytes) reads as today's."
    R = ExplorationRecording(Path(__file__).parent / 'data' / 'exploration_format1')
    assert R.manifest['format'] == 'ntaylor_nb.exploration/1'
    expect = np.array([[[(n + d + m) % 3 == 0 for m in range(7)] for d in range(5)] for n in range(11)])
    np.testing.assert_array_equal(R.dense(), expect)
    np.testing.assert_array_equal(R[4], expect[4])
    assert R.steps == [10 * n for n in range(11)] and len(R) == 11
