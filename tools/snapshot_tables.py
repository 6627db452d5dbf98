"""Record one small run of each kind (MSE chain, general path, cross-entropy convnet, exploration) with the code in
this checkout, and save their hindsight tables and exploration measures, for checking that a refactoring changes no
number: run it before and after the change into two folders and compare them with `--compare`.

    python tools/snapshot_tables.py OUT            # record and save
    python tools/snapshot_tables.py --compare A B  # bit-identical? (exit 1 if not)
"""
import sys, tempfile
from pathlib import Path
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
from sklearn.datasets import load_digits
import ntaylor_nb
try:  # the module layout before and after the regret chapter was split
    from ntaylor_nb.regret import RegretRecorder, RegretRecording, hindsight, hindsight_generic
except ImportError:
    from ntaylor_nb.regret import RegretRecorder, RegretRecording
    from ntaylor_nb.hindsight import hindsight
from ntaylor_nb.hindsight_generic import hindsight_generic
from ntaylor_nb.exploration import ExplorationRecorder, ExplorationRecording, exploration_measures, layer_summary
import inspect
if sys.argv[1:2] == ['--compare']:
    import pandas as pd
    a, b = Path(sys.argv[2]), Path(sys.argv[3])
    for f in ['chain', 'general', 'general_generic', 'ce', 'exp_layers']:
        pd.testing.assert_frame_equal(pd.read_pickle(a / f'{f}.pkl'), pd.read_pickle(b / f'{f}.pkl'), check_exact=True)
    x, y = np.load(a / 'exp.npz'), np.load(b / 'exp.npz')
    bad = [k for k in x.files if not np.array_equal(x[k], y[k], equal_nan=True)]
    if bad: sys.exit(f'exploration arrays differ: {bad}')
    sys.exit(print('bit-identical: the hindsight tables of the four kinds and the exploration measures'))
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
digits = torch.tensor(load_digits().data / 16.0); labels = torch.tensor(load_digits().target)
chunk_kw = 'chunk_rounds' if 'chunk_rounds' in inspect.signature(RegretRecorder).parameters else 'chunk_size'
tmp = Path(tempfile.mkdtemp())

def ae_run(path, scopes, rounds=60, store=False, double=True):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 64))
    if double: net = net.double()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2); g = torch.Generator().manual_seed(0)
    X = digits if double else digits.float()
    with RegretRecorder(net, 'mse', scopes, path, X[:32], rounds, neurons_per_layer=4, store_weights=store, **{chunk_kw: 16}) as rec:
        for step in range(rounds):
            x = X[torch.randint(0, len(X), (32,), generator=g)]
            loss = F.mse_loss(net(x), x); opt.zero_grad(); loss.backward(); rec.record(step, x, x); opt.step()
    return net

# 1. MSE chain (fast Gauss-Newton path), float32 training
ae_run(tmp / 'chain', 'paper', double=False)
hindsight(tmp / 'chain', prefixes=[1, 5, 17, 40, 60], progress=False).to_pickle(out / 'chain.pkl')
# 2. general path: MSE on a model that is not a Linear/ReLU chain (a convolution first)
torch.manual_seed(1)
net = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(192, 16), nn.ReLU(), nn.Linear(16, 64)).double()
opt = torch.optim.SGD(net.parameters(), lr=0.1); g = torch.Generator().manual_seed(1)
with RegretRecorder(net, 'mse', ['neuron:1:0', 'neuron:1:2', 'layer:4', 'neuron:4:3', 'layer:6'], tmp / 'general', digits[:16], 30, store_weights=True, **{chunk_kw: 8}) as rec:
    for step in range(30):
        x = digits[torch.randint(0, len(digits), (16,), generator=g)]
        loss = F.mse_loss(net(x), x); opt.zero_grad(); loss.backward(); rec.record(step, x, x); opt.step()
hindsight(tmp / 'general', prefixes=[3, 10, 30], progress=False).to_pickle(out / 'general.pkl')
hindsight_generic(net, tmp / 'general', prefixes=[3, 10, 30], progress=False).to_pickle(out / 'general_generic.pkl')
# 3. cross-entropy convnet
torch.manual_seed(0)
net = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 10)).double()
opt, g = torch.optim.Adam(net.parameters(), lr=1e-2), torch.Generator().manual_seed(0)
with RegretRecorder(net, 'cross_entropy', ['neuron:1:0', 'neuron:1:2', 'layer:1', 'layer:5', 'neuron:5:3'], tmp / 'ce', digits[:64], 30, **{chunk_kw: 8}) as rec:
    for step in range(30):
        i = torch.randint(0, len(digits), (64,), generator=g)
        loss = F.cross_entropy(net(digits[i]), labels[i]); opt.zero_grad(); loss.backward(); rec.record(step, digits[i], labels[i]); opt.step()
hindsight(tmp / 'ce', prefixes=[5, 15, 30], progress=False).to_pickle(out / 'ce.pkl')
# 4. exploration
torch.manual_seed(0)
net = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 64))
opt = torch.optim.SGD(net.parameters(), lr=0.3); g = torch.Generator().manual_seed(0)
X = digits.float()
with ExplorationRecorder(net, X[:100], tmp / 'exp', chunk_size=4) as er:
    for step in range(40):
        if step % 3 == 0: er.record(step)
        x = X[torch.randint(0, len(X), (32,), generator=g)]
        loss = F.mse_loss(net(x), x); opt.zero_grad(); loss.backward(); opt.step()
R = ExplorationRecording(tmp / 'exp')
np.savez(out / 'exp.npz', dense=R.dense(), **exploration_measures(R, k=5))
layer_summary(R, k=5).to_pickle(out / 'exp_layers.pkl')
print('ok', out)
