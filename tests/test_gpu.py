"""The hindsight solves on a CUDA device give the CPU's values (skipped without one; run on the GPU machine by
tools/gpu_reproduction.sh before the reproduction). Every solver path the GPU reproduction takes is covered: the Gauss-Newton
quadratic of MSE scopes (direct, the rows' Gram matrix and K-FAC CG), the batched Newton of cross-entropy neuron scopes,
compact convolution records (`conv_newton`), the matrix-free Newton-CG of layer scopes, and the Hessian of large MSE layer
scopes accumulated on the device (`_DEVICE_DENSE`)."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import ntaylor_nb.hindsight as hs
from ntaylor_nb.hindsight import hindsight
from test_large_scopes import autoencoder, record

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')


def convnet(): return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 3, 3, padding=1), nn.ReLU(),
                                    nn.Flatten(), nn.Linear(12, 4), nn.ReLU(), nn.Linear(4, 3))


def same(cpu, gpu, rtol):
    "Both tables list the same scopes and prefixes, and their Taylor optima agree to `rtol` relative (1e-12 absolute near 0)."
    assert (cpu.scope.values == gpu.scope.values).all() and (cpu.N.values == gpu.N.values).all()
    a, b = cpu.taylor_optimum.values, gpu.taylor_optimum.values
    bad = np.abs(a - b) > rtol * np.abs(a) + 1e-12
    assert not bad.any(), cpu[bad].assign(gpu=b[bad])[['scope', 'N', 'taylor_optimum', 'gpu', 'optimum_gap']]
    assert gpu.certified.sum() >= cpu.certified.sum() - 1  # the GPU's reductions may end one solve a step apart at most


@pytest.mark.parametrize('path', ['gram-then-hessian', 'hessian', 'cg'])
def test_mse_scopes_on_cuda(tmp_path, monkeypatch, path):
    "The matrix-free layer scopes on CUDA: the rows' Gram matrix, then the Hessian accumulated there (the default); the Hessian alone (CG where singular); K-FAC CG alone."
    record(autoencoder, 'mse', ['layer:0', 'layer:2', 'neuron:2:1', 'neuron:4:0'], tmp_path / 'rec', rounds=12)
    if path == 'hessian': monkeypatch.setattr(hs, '_DEVICE_DUAL_ROWS', 0)
    if path == 'cg': monkeypatch.setattr(hs, '_DEVICE_DENSE', ()); monkeypatch.setattr(hs, '_DUAL_ROWS', 0)
    pre = [1, 4, 12]
    cpu, gpu = (hindsight(tmp_path / 'rec', prefixes=pre, progress=False, solver='newton-cg', device=d) for d in ('cpu', 'cuda'))
    same(cpu, gpu, 1e-8)
    dense = hindsight(tmp_path / 'rec', prefixes=pre, progress=False, solver='newton')  # the direct solve, on the CPU
    same(dense, gpu, 1e-8)


def test_cross_entropy_conv_scopes_on_cuda(tmp_path):
    "Neuron scopes of both convolutions (the second one's compact records) and of the linear layer, and two layer scopes."
    scopes = ['neuron:0:1', 'neuron:3:0', 'neuron:3:2', 'neuron:6:1', 'layer:3', 'layer:8']
    record(convnet, 'cross_entropy', scopes, tmp_path / 'rec', rounds=10, conv_record='conv_compact')
    pre = [2, 5, 10]
    cpu, gpu = (hindsight(tmp_path / 'rec', prefixes=pre, progress=False, device=d) for d in ('cpu', 'cuda'))
    same(cpu, gpu, 1e-7)
    free = hindsight(tmp_path / 'rec', prefixes=pre, progress=False, solver='newton-cg', device='cuda')  # layer scopes matrix-free
    same(cpu, free, 1e-6)
