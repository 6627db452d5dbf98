"""The package's CUDA code paths on the CPU, through the virtual CUDA device of tests/vcuda.py: the code believes a GPU is
present, every tensor "on" it is tracked, and a device mix that real CUDA refuses raises here too. First the harness
itself (mixes raise, what CUDA allows passes, correct code gives the CPU's numbers), then the package's device paths at
tiny size: hindsight on MSE and cross-entropy records (every path tests/test_gpu.py covers, plus the free-memory and
out-of-memory fallbacks), recording on a CUDA model, a training run with its recorders and a resume, and the rest that
takes a device. What the harness cannot emulate (numerics, memory, streams) is listed in vcuda.py's docstring.
On a machine with a GPU the harness's device rules (which mixes raise, which pass) are also run on the real one
(the `gpu` fixture's "real" cases, skipped here): where CUDA disagrees with the harness, the harness is wrong."""
import inspect
import json
import textwrap
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import ntaylor_nb.hindsight as hs
from ntaylor_nb.hindsight import hindsight
from ntaylor_nb.regret import RegretRecorder, RegretRecording
from vcuda import VirtualCuda, VirtualCudaError, on_virtual_cuda

from test_gpu import convnet as convnet2  # two convolutions, as the GPU tests record them
from test_large_scopes import autoencoder, convnet


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    "Tiny tensors: OpenMP's threads only cost time (tens of ms a LAPACK call on a small shared machine)."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def vcuda():
    with VirtualCuda() as vc: yield vc


@pytest.fixture(params=['virtual', pytest.param('real', marks=pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device'))])
def gpu(request):
    "The virtual GPU, and on a machine with one the real GPU: the harness's device rules checked against CUDA's own."
    if request.param == 'real': yield None
    else:
        with VirtualCuda() as vc: yield vc


def cuda(t): return on_virtual_cuda(t)


# ------------------------------------------------------------------------------------------------- the harness itself

def test_tensors_on_the_virtual_gpu(vcuda):
    a, b = torch.zeros(2, 3, device='cuda'), torch.ones(2, 3)
    assert a.device == torch.device('cuda', 0) and a.is_cuda and not a.is_cpu and a.get_device() == 0
    assert b.device.type == 'cpu' and not b.is_cuda
    for spec in ('cuda:0', torch.device('cuda'), 0):
        assert cuda(torch.empty(1, device=spec))
    c = b.to('cuda')
    assert cuda(c) and not cuda(b) and c is not b and torch.equal(c.cpu(), b)
    assert c.to('cuda') is c and c.cuda() is c and cuda(b.cuda()) and cuda(b.to(a)) and not cuda(c.to(b))
    assert not cuda(c.cpu()) and cuda(c.double()) and cuda(torch.zeros_like(c)) and cuda(c.new_zeros(3)) and not cuda(c.new_zeros(3, device='cpu'))
    assert cuda(torch.as_tensor(np.arange(3), device=a.device)) and cuda(c[0]) and cuda(c.T) and cuda(c.data) and cuda(c.detach())
    assert cuda(torch.nn.Parameter(c)) and not cuda(torch.nn.Parameter(b))
    with pytest.raises(VirtualCudaError, match='invalid device ordinal'): torch.zeros(1, device='cuda:1')
    assert torch.cuda.is_available() and torch.cuda.device_count() == 1 and torch.cuda.mem_get_info()[0] == vcuda.free


def test_patches_are_restored():
    before = (torch.cuda.is_available(), torch.cuda.mem_get_info, torch.load, torch.Tensor._make_subclass)
    flags = (torch.backends.cudnn.deterministic, torch.backends.cuda.matmul.allow_tf32)
    with VirtualCuda():
        torch.backends.cudnn.deterministic = not flags[0]; torch.backends.cuda.matmul.allow_tf32 = not flags[1]
    assert (torch.backends.cudnn.deterministic, torch.backends.cuda.matmul.allow_tf32) == flags
    with pytest.raises(ZeroDivisionError):
        with VirtualCuda(): 1 / 0
    assert (torch.cuda.is_available(), torch.cuda.mem_get_info, torch.load, torch.Tensor._make_subclass) == before
    assert '_make_subclass' not in torch.Tensor.__dict__
    t = torch.zeros(2); assert t.device.type == 'cpu' and t.numpy() is not None


MIXES = {
    'cat of 2-D tensors': lambda g, c: torch.cat([g, c]),
    'matmul': lambda g, c: g @ c.T,
    'matmul, CPU first': lambda g, c: c @ g.T,
    'F.linear with a CPU bias': lambda g, c: F.linear(g, g, c[:, 0]),
    'elementwise, both 2-D': lambda g, c: g + c,
    'in-place into the CPU tensor': lambda g, c: c.mul_(g),
    'in-place into a CPU 0-dim tensor': lambda g, c: torch.tensor(1.).add_(g.sum()),
    'stack': lambda g, c: torch.stack([g, c]),
    'index_select with a CPU index': lambda g, c: g.index_select(0, torch.tensor([0])),
    'CUDA index on a CPU tensor': lambda g, c: c[torch.tensor([1, 0]).cuda()],
    'a CPU 1-D value put into a CUDA tensor': lambda g, c: g.index_put_((torch.tensor([0, 1]),), c[0]),
    'where with a CPU 2-D branch': lambda g, c: torch.where(g > 0, g, c),
    'einsum': lambda g, c: torch.einsum('ij,kj->ik', g, c),
    'addmm with a CPU 0-dim tensor (no scalar exception)': lambda g, c: torch.addmm(torch.tensor(1.), g, g.T),
    'numpy()': lambda g, c: g.numpy(),
    'np.asarray': lambda g, c: np.asarray(g),
    'np.concatenate': lambda g, c: np.concatenate([g, c]),
    'a CPU generator for a CUDA draw': lambda g, c: torch.randn(3, generator=torch.Generator(), device='cuda'),
    'a CPU grad for a CUDA tensor': lambda g, c: setattr(g.requires_grad_(), 'grad', c),
}


@pytest.mark.parametrize('mix', MIXES)
def test_device_mixes_raise(gpu, mix):
    g, c = torch.randn(2, 3, device='cuda'), torch.randn(2, 3)
    with pytest.raises((RuntimeError, TypeError), match='virtual CUDA' if gpu else ''): MIXES[mix](g, c)


def test_what_cuda_allows(gpu):
    cuda = lambda t: t.is_cuda  # noqa: E731 (the virtual GPU answers is_cuda as the real one)
    g, c = torch.randn(4, 3, device='cuda'), torch.randn(4, 3)
    assert cuda(g * torch.tensor(2.)) and cuda(torch.tensor(2.) - g) and cuda(torch.where(g > 0, g, torch.tensor(0.)))  # CPU scalars
    assert cuda(g[torch.tensor([0, 2])]) and cuda(g[np.array([True, False, True, False])])  # CPU indices
    g2 = g.clone(); g2[torch.tensor([1])] = torch.tensor(5.); g2[0] = c[0]; g2[g2 > 1] = 0.0  # index_put_ / copy_ from the CPU
    c2 = c.clone(); c2[torch.tensor([0])] = g[0, 0]; c2[1] = g[1]  # a 0-dim CUDA value is moved; copy_ from CUDA
    c.copy_(g); g.copy_(c)  # copies cross devices
    assert isinstance(g.sum().item(), float) and isinstance(g.tolist(), list) and float(g[0, 0]) == float(c[0, 0])
    assert isinstance(g.cpu().numpy(), np.ndarray) and isinstance(g.numpy(force=True), np.ndarray)
    assert cuda(g.view_as(c)) and not cuda(c.expand_as(g))  # shape-only partners
    a, b = torch.broadcast_tensors(g[:1], c)
    assert cuda(a) and not cuda(b)


def fit(dev, steps=5):
    "A small MLP trained by Adam on `dev`: its losses, weights, gradients and optimizer state."
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2)).double().to(dev)
    g = torch.Generator().manual_seed(1)
    X, Y = torch.randn(32, 5, generator=g, dtype=torch.float64), torch.randint(0, 2, (32,), generator=g)
    X, Y = X.to(dev), Y.to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    losses = []
    for _ in range(steps):
        i = torch.randperm(32, generator=g)[:8].to(dev)
        loss = F.cross_entropy(net(X[i]), Y[i])
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(loss.item())
    return net, opt, losses


def test_correct_code_gives_the_cpu_numbers(vcuda, monkeypatch):
    "Code that moves everything with .to(device) runs on the virtual GPU (Adam's foreach path, as on CUDA) and gives the CPU's numbers exactly."
    import torch.optim.adam as adam
    paths, multi = [], adam._multi_tensor_adam
    monkeypatch.setattr(adam, '_multi_tensor_adam', lambda *a, **k: paths.append('foreach') or multi(*a, **k))
    net, opt, losses = fit('cuda')
    assert paths == ['foreach'] * 5  # torch picks it for CUDA parameters (the CPU's is one tensor at a time)
    ref, ref_opt, ref_losses = fit('cpu')
    assert losses == ref_losses and len(paths) == 5
    for p, q in zip(net.parameters(), ref.parameters()):
        assert cuda(p) and cuda(p.grad) and not cuda(q) and torch.equal(p.detach().cpu(), q.detach())
        st = opt.state[p]
        assert cuda(st['exp_avg']) and cuda(st['exp_avg_sq']) and not cuda(st['step'])  # the step count stays on the CPU, as on CUDA


def test_autograd_and_torch_func_stay_on_the_device(vcuda):
    from torch.func import jacrev, jvp, vjp, vmap
    W = torch.randn(3, 4, dtype=torch.float64, device='cuda')
    x = torch.randn(5, 4, dtype=torch.float64, device='cuda', requires_grad=True)
    f = lambda z: torch.tanh(z @ W.T)
    (gx,) = torch.autograd.grad(f(x).sum(), x)
    out, back = vjp(f, x)
    J = vmap(back)(torch.eye(3, dtype=torch.float64, device='cuda')[:, None].expand(3, 5, 3))[0]
    Jf = vmap(lambda t: jvp(f, (x,), (t,))[1])(torch.randn(2, 5, 4, dtype=torch.float64, device='cuda'))
    Jr = vmap(jacrev(lambda w, xb: torch.tanh(w @ xb)), in_dims=(None, 0))(W, x.detach())
    assert all(cuda(t) for t in (gx, out, J, Jf, Jr))
    with pytest.raises(VirtualCudaError):  # and a CPU tensor inside a transform still mixes
        vmap(lambda t: t @ torch.ones(4, 4))(x.detach())


def test_rng(vcuda):
    "torch.manual_seed seeds the virtual GPU's generator; its draws leave the CPU stream alone; fork_rng(devices=[0]) restores it."
    torch.manual_seed(3); a = torch.randn(4, device='cuda'); cpu_after = torch.randn(2)
    torch.manual_seed(3); cpu_first = torch.randn(2)
    assert torch.equal(cpu_after, cpu_first)  # the GPU's draw took nothing from the CPU generator
    torch.manual_seed(3)
    with torch.random.fork_rng(devices=[0]): torch.randn(9, device='cuda')
    assert torch.equal(torch.randn(4, device='cuda').cpu(), a.cpu())


def test_save_and_load_as_a_gpu_does(tmp_path):
    "A file saved from the virtual GPU is a GPU's file: it loads back onto the GPU, and on a CPU-only machine needs map_location."
    with VirtualCuda():
        torch.save(dict(w=torch.ones(2, device='cuda'), s=[torch.zeros(1)]), tmp_path / 'x.pt')
        d = torch.load(tmp_path / 'x.pt')
        assert cuda(d['w']) and not cuda(d['s'][0])
        d = torch.load(tmp_path / 'x.pt', map_location=torch.device('cuda'))
        assert cuda(d['w']) and cuda(d['s'][0])
        assert not cuda(torch.load(tmp_path / 'x.pt', map_location='cpu')['w'])
    with pytest.raises(RuntimeError, match='CUDA'): torch.load(tmp_path / 'x.pt')  # this machine has no GPU
    assert torch.equal(torch.load(tmp_path / 'x.pt', map_location='cpu')['w'], torch.ones(2))


def test_out_of_memory_cap():
    with VirtualCuda(max_tensor_bytes=1000):
        torch.zeros(125, dtype=torch.float64, device='cuda')
        with pytest.raises(torch.OutOfMemoryError): torch.zeros(126, dtype=torch.float64, device='cuda')
        g = torch.zeros(100, device='cuda')
        with pytest.raises(torch.OutOfMemoryError): g[:, None] * g[None, :]
        torch.zeros(1000)  # the CPU is not capped


# ------------------------------------------------------------------------------------------------- recordings to solve

def record(make, loss, scopes, path, dev='cpu', rounds=12, B=10, K=6, seed=0, **kw):
    "test_large_scopes.record with the model and data on `dev`: Adam on Gaussian inputs (cross-entropy: random labels; MSE: the inputs halved, or Gaussian targets for a convnet)."
    torch.manual_seed(seed); model = make().double().to(dev)
    g = torch.Generator().manual_seed(seed + 1)
    conv = isinstance(model[0], nn.Conv2d)
    X = torch.randn(200, 1, 4, 4, generator=g, dtype=torch.float64) if conv else torch.randn(200, K, generator=g, dtype=torch.float64)
    Y = (torch.randint(0, 3, (200,), generator=g) if loss == 'cross_entropy' else
         torch.randn(200, 3, generator=g, dtype=torch.float64) if conv else X * 0.5)  # MSE: a convnet's 3 outputs, or the autoencoder's input
    X, Y = X.to(dev), Y.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    with RegretRecorder(model, loss, scopes, path, X[:B], rounds, chunk_size=5, neurons_per_layer=2, **kw) as rec:
        for step in range(rounds):
            i = torch.randint(0, 200, (B,), generator=g).to(dev)
            out = model(X[i])
            l = F.mse_loss(out, Y[i]) if loss == 'mse' else F.cross_entropy(out, Y[i])
            opt.zero_grad(); l.backward(); rec.maybe(step, X[i], Y[i]); opt.step()
    return model


def same(cpu, gpu, rtol):
    "test_gpu.same: the same scopes and prefixes, Taylor optima within rtol."
    assert (cpu.scope.values == gpu.scope.values).all() and (cpu.N.values == gpu.N.values).all()
    a, b = cpu.taylor_optimum.values, gpu.taylor_optimum.values
    assert np.all(np.abs(a - b) <= rtol * np.abs(a) + 1e-12), np.c_[a, b]


@pytest.fixture(scope='module')
def mse_rec(tmp_path_factory):
    p = tmp_path_factory.mktemp('vmse') / 'rec'
    record(autoencoder, 'mse', ['layer:0', 'layer:2', 'neuron:2:1', 'neuron:4:0'], p, rounds=12)
    return p


@pytest.fixture(scope='module')
def ce_rec(tmp_path_factory):
    p = tmp_path_factory.mktemp('vce') / 'rec'
    record(convnet2, 'cross_entropy', ['neuron:0:1', 'neuron:3:0', 'neuron:3:2', 'neuron:6:1', 'layer:3', 'layer:8'], p, rounds=6,
           conv_record='conv_compact')
    return p


# ------------------------------------------------------------------------------------------------- hindsight on the device

def _oom(*a, **k): raise torch.OutOfMemoryError('CUDA out of memory. (raised by the test)')


MSE_PATHS = {  # (hindsight's settings, VirtualCuda's, solves that run out of memory, the layer scopes' solves that must run):
    # tests/test_gpu.py's three paths, then the ones only a GPU reaches (its free memory, an out-of-memory error)
    'gram-then-hessian': ({}, {}, (), {'_dual_min', '_dense_min'}),
    'hessian': (dict(_DEVICE_DUAL_ROWS=0), {}, (), {'_dense_min'}),
    'cg': (dict(_DEVICE_DENSE=(), _DUAL_ROWS=0), {}, (), {'quad_cg'}),
    'free memory: no Gram matrix': ({}, dict(free_bytes=40 * 30 ** 2), (), {'_dense_min'}),  # the Gram matrix for 26 rows at most; the Hessian fits
    'free memory: no Hessian': (dict(_DUAL_ROWS=0), dict(free_bytes=2000), (), {'quad_cg'}),  # not accumulated: CG on the device
    'out of memory: Gram': ({}, {}, ('_dual_min',), {'_dense_min'}),  # the Hessian takes over
    'out of memory: Gram and Hessian': ({}, {}, ('_dual_min', '_dense_min'), {'quad_cg'}),  # CG takes over
}
SOLVES = {'_dual_min': lambda blocks, *a, **k: blocks[0][0], '_dense_min': lambda Qp, *a, **k: Qp, 'quad_cg': lambda hvp, q, *a, **k: q}


@pytest.mark.parametrize('path', MSE_PATHS)
def test_mse_scopes_on_the_device(mse_rec, monkeypatch, path):
    "Layer scopes solved matrix-free on the device by each path (checked: which solves ran, on what), equal to the CPU's."
    settings, vc, oom, expect = MSE_PATHS[path]
    for k, v in settings.items(): monkeypatch.setattr(hs, k, v)
    pre = [1, 4, 12]
    cpu = hindsight(mse_rec, prefixes=pre, progress=False, solver='newton-cg', device='cpu')
    for k in oom: monkeypatch.setattr(hs, k, _oom)
    ran = {}

    def spy(name, f):
        def g(*a, **k):
            ran.setdefault(name, []).append(cuda(SOLVES[name](*a, **k)))
            return f(*a, **k)
        return g
    for k in SOLVES: monkeypatch.setattr(hs, k, spy(k, getattr(hs, k)))
    with VirtualCuda(**vc):
        gpu = hindsight(mse_rec, prefixes=pre, progress=False, solver='newton-cg', device='cuda')
    assert expect <= set(ran) and all(all(v) for v in ran.values()), ran  # they ran, on the device
    if path.startswith('free memory: no Hessian'): assert '_dense_min' not in ran
    same(cpu, gpu, 1e-8)
    same(hindsight(mse_rec, prefixes=pre, progress=False, solver='newton'), gpu, 1e-8)


def test_mse_device_paths_are_taken(mse_rec, monkeypatch):
    "The layer scopes' device paths are the ones meant: the Hessian accumulated on the virtual GPU, the kept factors there."
    made = []
    real = hs._GNAcc._solve_free
    monkeypatch.setattr(hs._GNAcc, '_solve_free', lambda self, tol: made.append((self.dense, self.kept)) or real(self, tol))
    with VirtualCuda():
        hindsight(mse_rec, prefixes=[12], progress=False, solver='newton-cg', device='cuda')
    assert made and all(cuda(d) and all(cuda(t) for b in k for t in b) for d, k in made)


CE_PATHS = {  # (hindsight's settings, VirtualCuda's)
    'default': ({}, {}),
    'no free memory for caches': ({}, dict(free_bytes=2 ** 20)),  # CompactConv makes its rows again each product (only a GPU reports free memory)
    'compact neurons by formed M': (dict(_COMPACT_NEWTON=False), {}),  # the baseline path
}


@pytest.mark.parametrize('path', CE_PATHS)
def test_cross_entropy_conv_scopes_on_the_device(ce_rec, monkeypatch, path):
    "test_gpu's convnet: neuron scopes of both convolutions (the second's compact records) and of the linear layer, two layer scopes."
    settings, vc = CE_PATHS[path]
    for k, v in settings.items(): monkeypatch.setattr(hs, k, v)
    pre = [2, 6]
    cpu = hindsight(ce_rec, prefixes=pre, progress=False, device='cpu')
    made = []

    class Spy(hs.CompactConv):
        def __init__(self, *a, **k): super().__init__(*a, **k); made.append(self)
    monkeypatch.setattr(hs, 'CompactConv', Spy)
    with VirtualCuda(**vc):
        gpu = hindsight(ce_rec, prefixes=pre, progress=False, device='cuda')
    assert all(c.device.type == 'cuda' for c in made) and bool(made) == hs._COMPACT_NEWTON
    cached = [getattr(c, 'cached', None) for c in made]  # bytes of rows kept between products
    if path == 'no free memory for caches': assert all(b == 0 for b in cached)
    if path == 'default':
        assert all(b is None or b > 0 for b in cached)
        with VirtualCuda():  # device='auto' takes the GPU
            auto = hindsight(ce_rec, prefixes=pre, scopes=['neuron:0:1'], progress=False, device='auto')
        same(cpu[cpu.scope == 'neuron:0:1'], auto, 1e-7)
    same(cpu, gpu, 1e-7)


def tiny_convnet(): return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3))


def test_cross_entropy_matrix_free_on_the_device(tmp_path):
    """Newton-CG of a conv layer scope from compact records (its samples kept factored where the package does so) and of a
    linear layer scope, on the device (a tiny convnet: test_gpu's takes minutes through the harness)."""
    sc, pre = ['layer:0', 'neuron:0:1', 'layer:4'], [2, 4]
    record(tiny_convnet, 'cross_entropy', sc, tmp_path / 'rec', rounds=4, B=20, seed=1, conv_record='conv_compact')
    cpu = hindsight(tmp_path / 'rec', prefixes=pre, progress=False, solver='newton-cg', device='cpu')
    with VirtualCuda():
        free = hindsight(tmp_path / 'rec', prefixes=pre, progress=False, solver='newton-cg', device='cuda')
    same(cpu, free, 1e-6)
    same(hindsight(tmp_path / 'rec', prefixes=pre, progress=False, solver='newton'), free, 1e-6)


def test_harness_catches_the_h200_bug(ce_rec, monkeypatch):
    """The device mix a review found on an H200 (6f4026d): _DenseAcc.solve (now _solve_kept) joined the last solve's samples
    (on the device) with new ones (on the CPU) by torch.cat before moving them. Put back, it raises here; the fixed line does not."""
    src = textwrap.dedent(inspect.getsource(hs._DenseAcc._solve_kept))
    fixed = 'torch.cat([t.to(self.device) for t in z])'
    assert fixed in src, '_DenseAcc._solve_kept no longer has the line this test puts the bug back into: update the test'
    ns = dict(vars(hs))
    exec(compile('\n'.join(l for l in src.replace(fixed, 'torch.cat(z).to(self.device)').splitlines() if not l.startswith('@')), hs.__file__, 'exec'), ns)
    monkeypatch.setattr(hs._DenseAcc, '_solve_kept', ns['_solve_kept'])
    with VirtualCuda():
        with pytest.raises(VirtualCudaError, match='cat'):
            hindsight(ce_rec, prefixes=[2, 6], scopes=['layer:8'], progress=False, device='cuda')
    hindsight(ce_rec, prefixes=[2, 6], scopes=['layer:8'], progress=False, device='cpu')  # the CPU never sees it


def test_compact_neurons_need_no_eigensolver(ce_rec, monkeypatch):
    """CUDA's batched eigensolver stopped without converging on conv layer 2's per-sample blocks on an H200 (twelfth
    session, in CompactConv.hessian), which ended the figure-3 analysis. The Hessians of compact neurons now come from a
    closed-form factor of the loss's Hessian: with the device's eigensolver failing on every input, no solve asks for it
    and the hindsight values are the CPU's."""
    real, asked = torch.linalg.eigh, []

    def eigh(A, *a, **k):
        asked.append(tuple(A.shape))
        if A.is_cuda: raise torch.linalg.LinAlgError('linalg.eigh: (Batch element 0): The algorithm failed to converge (raised by the test)')
        return real(A, *a, **k)
    pre = [2, 6]
    cpu = hindsight(ce_rec, prefixes=pre, progress=False, device='cpu')
    monkeypatch.setattr(torch.linalg, 'eigh', eigh)
    with VirtualCuda():
        gpu = hindsight(ce_rec, prefixes=pre, progress=False, device='cuda')
    assert not asked
    same(cpu, gpu, 1e-7)


def _oom_where(when, arg=0):
    "A stand-in that raises CUDA's out-of-memory error where its positional argument `arg` is on the device and when(it) holds, else calls through."
    def wrap(real, ran):
        def f(*a, **k):
            t = a[arg]; ran.append((t.shape[-1], t.is_cuda))
            if t.is_cuda and when(t): raise torch.OutOfMemoryError('CUDA out of memory. (raised by the test)')
            return real(*a, **k)
        return f
    return wrap


@pytest.fixture(scope='module')
def ce_rec_both(tmp_path_factory):
    "Layers with neuron and layer scopes solved from kept samples (the linear one), and a conv layer with compact neurons and its layer scope."
    p = tmp_path_factory.mktemp('vboth') / 'rec'
    record(convnet2, 'cross_entropy', ['neuron:6:1', 'neuron:6:2', 'layer:6', 'neuron:3:0', 'layer:3'], p, rounds=6, conv_record='conv_compact')
    return p


def test_out_of_memory_in_a_layer_solve_goes_on_on_the_cpu(ce_rec, monkeypatch):
    """On an H200 shared by seven notebooks and P2b, one convnet run's layer solve ran out of device memory and its whole
    analysis was lost (twelfth session). Now that layer's kept samples go on on the CPU, with a warning: here every
    device Newton solve from the third on runs out of memory (the first prefix's last); the values are the CPU's, the
    compact neurons' solves stay on the device, and the failed layers' later solves run on the CPU."""
    ran, devices, pre = [], [], [2, 4, 6]
    cpu = hindsight(ce_rec, prefixes=pre, progress=False, device='cpu')
    real_conv_newton = hs.conv_newton
    monkeypatch.setattr(hs, 'conv_newton', lambda cc, *a, **k: (isinstance(cc, hs.CompactConv) and devices.append(cc.device.type)) or real_conv_newton(cc, *a, **k))
    monkeypatch.setattr(hs, '_dense_newton', _oom_where(lambda V0: len(ran) > 2, arg=2)(hs._dense_newton, ran))
    with VirtualCuda(), pytest.warns(UserWarning, match='out of device memory'):
        gpu = hindsight(ce_rec, prefixes=pre, progress=False, device='cuda')
    on = [c for _, c in ran]
    assert on[:2] == [True, True] and True in on[3:] and on[-1] is False  # some on the device, the failed ones again on the CPU
    assert len(devices) == 2 * len(pre) and set(devices) == {'cuda'}  # the compact neurons of both convolutions, every prefix
    same(cpu, gpu, 1e-7)
    monkeypatch.setattr(hs, '_dense_newton', _oom_where(lambda V0: True, arg=2)(lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError('CUDA out of memory. (raised by the test on the CPU)')), []))
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no fallback on the CPU: no warning, and the error stands
        with pytest.raises(torch.OutOfMemoryError, match='on the CPU'):
            hindsight(ce_rec, prefixes=pre, progress=False, device='cpu')


@pytest.mark.parametrize('where', ['layer scope after its neurons', 'joining the samples'])
def test_out_of_memory_part_way_through_a_layer(ce_rec_both, monkeypatch, where):
    """The fallback where the error comes part way: in the linear layer's layer-scope solve after its neurons' solves
    updated their points at the same prefix, or while a prefix's new samples are joined (still plain tuples then)."""
    pre, ran = [2, 4, 6], []
    cpu = hindsight(ce_rec_both, prefixes=pre, progress=False, device='cpu')
    if where.startswith('layer'):
        monkeypatch.setattr(hs, '_dense_newton', _oom_where(lambda V0: V0.shape[-1] == 4 * 13, arg=2)(hs._dense_newton, ran))  # layer 6: 4 x (12 + 1) variables
    else:
        monkeypatch.setattr(hs, 'LinearSamples', _oom_where(lambda x: len(ran) > 1)(hs.LinearSamples, ran))
    with VirtualCuda(), pytest.warns(UserWarning, match='layer 6: out of device memory'):
        gpu = hindsight(ce_rec_both, prefixes=pre, progress=False, device='cuda')
    if where.startswith('layer'):  # layer 6's layer scope: on the device once (the error), then on the CPU; layer 3's stays on the device
        six = [c for P, c in ran if P == 4 * 13]
        assert six[0] is True and not any(six[1:]) and len(six) == 1 + len(pre) and any(c for P, c in ran if P != 4 * 13)
    else:  # the join of layer 6's samples at the second prefix: every later one on the CPU
        assert [c for _, c in ran] == [True, True] + [False] * (len(pre) - 1)
    same(cpu, gpu, 1e-7)


# ------------------------------------------------------------------------------------------------- recording on the device

RECORDS = {  # (model, loss, scopes, recorder options): every record kind the recorder writes
    'mse linear_gn': (autoencoder, 'mse', ['layer:0', 'layer:2', 'neuron:2:1'], dict(store_weights=True)),
    'ce linear_jacobian': (autoencoder, 'cross_entropy', ['layer:6', 'neuron:2:1'], {}),
    'ce conv': (convnet, 'cross_entropy', ['layer:0', 'neuron:0:1', 'layer:4'], dict(store_weights=True, conv_record='conv')),
    'ce conv_compact': (convnet, 'cross_entropy', ['layer:0', 'neuron:0:1'], dict(conv_record='conv_compact')),
    'mse conv_compact': (lambda: tiny_convnet(), 'mse', ['layer:0', 'neuron:0:1', 'layer:4'], dict(conv_record='conv_compact')),
}


@pytest.mark.parametrize('kind', RECORDS)
def test_recording_a_cuda_model(kind, tmp_path):
    "RegretRecorder on a model and batches on the device writes the CPU's records, and hindsight on the device solves them."
    make, loss, scopes, kw = RECORDS[kind]
    record(make, loss, scopes, tmp_path / 'cpu', 'cpu', rounds=6, **kw)
    with VirtualCuda():
        model = record(make, loss, scopes, tmp_path / 'gpu', 'cuda', rounds=6, **kw)
        assert all(cuda(p) for p in model.parameters())
        gpu = hindsight(tmp_path / 'gpu', prefixes=[3, 6], progress=False, device='cuda')
    a, b = list(RegretRecording(tmp_path / 'cpu').chunks()), list(RegretRecording(tmp_path / 'gpu').chunks())
    assert len(a) == len(b) and all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)
    same(hindsight(tmp_path / 'cpu', prefixes=[3, 6], progress=False), gpu, 1e-7)
    if kind.startswith('mse conv'):  # a convolution's MSE scopes are solved from stored samples: matrix-free too
        with VirtualCuda(): free = hindsight(tmp_path / 'gpu', prefixes=[3, 6], progress=False, device='cuda', solver='newton-cg')
        same(gpu, free, 1e-7)


def test_generic_hindsight_with_a_cuda_model(tmp_path):
    from ntaylor_nb.hindsight_generic import hindsight_generic
    model = record(autoencoder, 'mse', ['layer:0', 'neuron:2:1'], tmp_path / 'r', rounds=4, store_weights=True)
    ref = hindsight_generic(model, tmp_path / 'r', prefixes=[2, 4], progress=False)
    with VirtualCuda():
        out = hindsight_generic(model.to('cuda'), tmp_path / 'r', prefixes=[2, 4], progress=False)
    same(ref, out, 1e-12)


def test_taylor_on_the_device():
    """tests/test_taylor.py's CUDA test (taylor_output, layer_jacobian: jvp, vjp, vmap), and the rest of the module the
    experiments call on the device (taylor_loss, activation_configuration, clamped_output, substitute)."""
    from problems import PROBLEMS
    from torch.func import functional_call
    from ntaylor_nb.taylor import activation_configuration, clamped_output, layer_jacobian, scope_weights, substitute, taylor_loss, taylor_output
    model, x, y = PROBLEMS[3].build(seed=7)
    V = {k: v + 0.1 for k, v in scope_weights(model, 'layer:3').items()}

    def all_of(m, x, y, V):
        ac = activation_configuration(m, x)
        return dict(T=taylor_output(m, x, V, 'layer:3'), L=taylor_loss(m, x, y, V, 'layer:3', 'cross_entropy'),
                    lj=layer_jacobian(m, x, '3').taylor({'weight': V['3.weight'], 'bias': V['3.bias']}),
                    A=ac.A, A0=ac.module(ac.modules[0]), c=clamped_output(m, x, V, 'layer:3'),
                    f=functional_call(m, substitute(m, 'layer:3', V), (x,)))
    ref = all_of(model, x, y, V)
    with VirtualCuda():
        out = all_of(model.cuda(), x.cuda(), y.cuda(), {k: v.cuda() for k, v in V.items()})
        assert all(cuda(t) for t in out.values())
        out = {k: t.cpu() for k, t in out.items()}
    for k in ref: torch.testing.assert_close(out[k], ref[k], rtol=1e-10, atol=1e-12, msg=k)


def test_exploration_on_the_device(tmp_path):
    "tests/test_exploration.py's CUDA test, also with a unit subset."
    from ntaylor_nb.exploration import ExplorationRecorder, ExplorationRecording
    from ntaylor_nb.taylor import activation_configuration
    torch.manual_seed(0)
    net, probe = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 2)).eval(), torch.randn(30, 6)
    ref = activation_configuration(net, probe).A.numpy()
    with VirtualCuda():
        netc = net.cuda().train()
        with ExplorationRecorder(netc, probe.cuda(), tmp_path / 'g') as rec: rec.record(0); rec.record(1)
        with ExplorationRecorder(netc, probe.cuda(), tmp_path / 's', units_per_layer=3, seed=1) as rec: rec.record(0)
    np.testing.assert_array_equal(ExplorationRecording(tmp_path / 'g')[1], ref)
    assert netc.training and ExplorationRecording(tmp_path / 's')[0].shape == (30, 6)


# ------------------------------------------------------------------------------------------------- training on the device

AE = dict(rounds=8, batch_size=16, lr=1e-2, layers=[3], neuron_layers=[2], neurons_per_layer=2, probe_size=20, checkpoint_every=3, snapshots=3,
          seed=3, regret_chunk=2)


def same_run(a, b):
    from ntaylor_nb.exploration import ExplorationRecording
    for f in ('metrics.csv', 'epochs.csv'): assert (a / f).read_text() == (b / f).read_text(), f
    ma, mb = (torch.load(p / 'model.pt', map_location='cpu') for p in (a, b))  # a GPU's file: no CPU-only load without map_location
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    ra, rb = list(RegretRecording(a / 'regret').chunks()), list(RegretRecording(b / 'regret').chunks())
    for k in ra[0]: np.testing.assert_array_equal(np.concatenate([c[k] for c in ra]), np.concatenate([c[k] for c in rb]), err_msg=k)
    np.testing.assert_array_equal(ExplorationRecording(a / 'exploration').dense(), ExplorationRecording(b / 'exploration').dense())


def test_training_run_on_the_device(tmp_path, monkeypatch):
    """train_run with device='cuda' (regret recorder, exploration snapshots, checkpoints) writes the CPU run's files; a run
    stopped after a checkpoint resumes on the device (torch.load to the GPU, the optimizer's state moved) to the same files;
    Run.analyze solves on the device."""
    import ntaylor_nb.train as tr
    from ntaylor_nb.run import Run
    tr.train_run(tr.RunConfig(device='cpu', **AE), tmp_path / 'cpu', progress=False)
    real = tr._round

    class Stop(Exception): pass

    def stop_at_5(t, r, *a):
        if r == 5: raise Stop
        return real(t, r, *a)
    with VirtualCuda():
        tr.train_run(tr.RunConfig(device='cuda', **AE), tmp_path / 'gpu', progress=False)
        monkeypatch.setattr(tr, '_round', stop_at_5)
        with pytest.raises(Stop): tr.train_run(tr.RunConfig(device='cuda', **AE), tmp_path / 'cut', progress=False)
        assert (tmp_path / 'cut' / 'checkpoint.pt').exists()
        monkeypatch.setattr(tr, '_round', real)
        tr.train_run(tr.RunConfig(device='cuda', **AE), tmp_path / 'cut', progress=False)
        s = Run(tmp_path / 'gpu').analyze(prefixes=4, device='cuda')
    assert json.loads((tmp_path / 'gpu' / 'params.json').read_text())['device'] == 'cuda'
    same_run(tmp_path / 'cpu', tmp_path / 'gpu')
    same_run(tmp_path / 'cpu', tmp_path / 'cut')
    assert s == Run(tmp_path / 'cpu').analyze(prefixes=4, device='cpu') | dict(device='cuda')


def test_convnet_run_on_the_device(tmp_path):
    "The convnet (cross-entropy, a conv neuron scope and the output layer's scope, exploration of a unit subset) on digits32."
    from ntaylor_nb.train import RunConfig, train_run
    cfg = dict(task='convnet', dataset='digits32', rounds=3, batch_size=8, lr=1e-3, scopes=['neuron:0:1', 'layer:12'], probe_size=10,
               exploration_units=20, snapshots=2)
    train_run(RunConfig(device='cpu', **cfg), tmp_path / 'cpu', progress=False)
    with VirtualCuda():
        train_run(RunConfig(device='auto', **cfg), tmp_path / 'gpu', progress=False)  # 'auto' takes the GPU
        gpu = hindsight(tmp_path / 'gpu' / 'regret', progress=False, device='cuda')
    assert json.loads((tmp_path / 'gpu' / 'params.json').read_text())['device'] == 'cuda'
    same_run(tmp_path / 'cpu', tmp_path / 'gpu')
    same(hindsight(tmp_path / 'cpu' / 'regret', progress=False), gpu, 1e-7)
