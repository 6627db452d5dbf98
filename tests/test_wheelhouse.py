"""The GPU path through papermill (benchmarks/RESULTS.md, "How to run P4 on a GPU"), checked on this CPU.

(a) the Python 3.12 wheelhouse resolves completely offline, and a wheelhouse missing a wheel does not;
(b) the same recipe built for this Python installs offline into an empty target, from which papermill runs an
    experiment notebook in a kernel of a fresh Python that sees only that target, the repo and a stand-in for the GPU
    machine's site-packages;
(c) tools/gpu_reproduction.sh end to end at tiny size through that stand-in (what the GPU run does).
The wheels are downloaded once from the package registry into the ignored .whl/ and resolved from there afterwards.
(b) and (c) take minutes on 2 cores: they run under `make gpu-check` (NTAYLOR_GPU_CHECK=1), (a) everywhere.
"""
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / 'tools' / 'wheelhouse.py'
GPU = ROOT / '.whl' / 'gpu-py312'
LOCAL = ROOT / '.whl' / f'local-py{sys.version_info.major}{sys.version_info.minor}'
SHARED = Path(os.environ.get('NTAYLOR_SHARED_DATA', ROOT.parent / 'shared' / 'data')).resolve()
gpu_check = pytest.mark.skipif(not os.environ.get('NTAYLOR_GPU_CHECK'), reason='minutes on 2 cores: run with `make gpu-check`')
STACK = {'papermill', 'ipykernel', 'nbformat', 'nbclient', 'fastcore', 'pyzmq', 'tornado', 'jupyter-client', 'ipython'}


def tool(*args, env=None):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True, cwd=ROOT, env=env)


def test_gpu_wheelhouse_resolves_offline(tmp_path):
    r = tool('build', GPU, '--python-version', '3.12')
    assert r.returncode == 0, r.stderr[-3000:]
    resolved = set(r.stdout.split('packages resolve: ')[1].split())
    assert 'offline dry run for Python 3.12' in r.stdout and STACK <= resolved
    names = {w.name.split('-')[0].lower().replace('_', '-') for w in GPU.glob('*.whl')}
    assert not names & {'numpy', 'pandas', 'matplotlib', 'torch', 'scipy', 'tqdm'}, 'what the GPU machine holds stays out'
    assert all(w.name.split('-')[2] in ('py3', 'py2.py3', 'cp312') or 'abi3' in w.name for w in GPU.glob('*.whl'))
    assert all('x86_64' in w.name or w.name.endswith('-any.whl') for w in GPU.glob('*.whl'))
    assert sum(w.stat().st_size for w in GPU.glob('*.whl')) < 20 * 2**20
    # the same dry run fails on a wheelhouse missing one wheel (pyzmq: ipykernel and jupyter_client need it)
    broken = tmp_path / 'broken'; broken.mkdir()
    for w in GPU.glob('*.whl'):
        if not w.name.startswith('pyzmq-'): shutil.copy(w, broken)
    shutil.copytree(f'{GPU}.present', f'{broken}.present')
    r = tool('check', broken, '--python-version', '3.12')
    assert r.returncode != 0 and 'does NOT resolve offline' in r.stderr and 'pyzmq' in r.stderr
    # and without the stand-ins for what the GPU machine holds (tqdm, pyyaml, ...), too
    shutil.rmtree(f'{broken}.present'); shutil.copy(next(GPU.glob('pyzmq-*.whl')), broken)
    assert tool('check', broken, '--python-version', '3.12').returncode != 0


@pytest.fixture(scope='module')
def gpu_like(tmp_path_factory):
    "A fresh Python whose only packages are links to this venv's copies of what the GPU machine holds, and the local wheelhouse."
    tmp = tmp_path_factory.mktemp('gpu_like')
    r = tool('base', tmp / 'base'); assert r.returncode == 0, r.stderr
    r = tool('build', LOCAL, '--present', tmp / 'base' / 'present.txt'); assert r.returncode == 0, r.stderr[-3000:]
    subprocess.run([sys._base_executable, '-m', 'venv', str(tmp / 'venv')], check=True)  # with pip, as the GPU's python3
    py = tmp / 'venv' / 'bin' / 'python'
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'JUPYTER_PATH', 'VIRTUAL_ENV')}
    env['PYTHONPATH'] = f'{ROOT}:{tmp / "base"}'
    probe = 'import torch, pandas, seaborn, sklearn, scipy, tqdm\nfor m in ("papermill", "ipykernel", "nbclient", "fastcore"):\n    try: __import__(m); print(m)\n    except ImportError: pass'
    probe = subprocess.run([py, '-c', probe], capture_output=True, text=True, env=env)
    assert probe.returncode == 0 and probe.stdout == '', f'the stand-in must hold the science stack and no Jupyter stack: {probe}'
    return dict(tmp=tmp, py=py, env=env)


@gpu_check
def test_local_recipe_installs_offline_and_runs_papermill(gpu_like, tmp_path):
    py, env = gpu_like['py'], dict(gpu_like['env'])
    site = tmp_path / 'site'
    subprocess.run([py, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps', '--target', site, *LOCAL.glob('*.whl')], check=True, env=env)
    env.update(PYTHONPATH=f'{site}:{env["PYTHONPATH"]}', JUPYTER_PATH=str(site / 'jupyter' / 'share' / 'jupyter'))
    r = subprocess.run([py, str(TOOL), 'verify', LOCAL], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0 and f'papermill' in r.stdout and str(site) in r.stdout, r.stdout + r.stderr
    assert 'ntaylor_nb: ' in r.stdout, 'every module of the package imports with only the target, the repo and the stand-in'
    subprocess.run([py, '-m', 'ipykernel', 'install', '--prefix', site / 'jupyter', '--name', 'gpu-like'], check=True, env=env, capture_output=True)
    out = tmp_path / 'out'
    params = dict(dataset='digits', epochs=2, rounds=30, lr=0.01, neurons_per_layer=2, probe_size=30, prefixes=4, seed=5, out_dir=str(out))
    r = subprocess.run([py, '-m', 'papermill', '--log-level', 'WARNING', '-k', 'gpu-like', 'nbs/experiments/autoencoder.ipynb', tmp_path / 'ae.ipynb',
                        '-y', json.dumps(params)], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    # the kernel papermill found by that name (no other exists) is the registered one, of the fresh Python
    assert json.loads((site / 'jupyter/share/jupyter/kernels/gpu-like/kernel.json').read_text())['argv'][0] == str(py)
    cfg = json.loads((out / 'params.json').read_text())['config']
    assert (cfg['seed'], cfg['rounds'], cfg['lr']) == (5, 30, 0.01)
    for f in ('done.json', 'figures/figure3.png', 'figures/figure5.png', 'analysis/regret.csv'): assert (out / f).stat().st_size > 0, f


@gpu_check
@pytest.mark.skipif(not (SHARED / 'mnist').exists(), reason='needs ../shared/data (real MNIST and CIFAR-10 files)')
def test_gpu_script_end_to_end_at_tiny_size(gpu_like, tmp_path):
    devdata = tmp_path / 'devdata'; (devdata / 'MNIST' / 'raw').mkdir(parents=True)
    for f in (SHARED / 'mnist' / 'MNIST' / 'raw').glob('*.gz'): (devdata / 'MNIST' / 'raw' / f.name).symlink_to(f)
    (devdata / 'cifar10-jpeg75.tar.gz').symlink_to(SHARED / 'cifar10' / 'cifar10-jpeg75.tar.gz')
    out = tmp_path / 'p4'
    env = dict(gpu_like['env'], PYTHON=str(gpu_like['py']), BASE_PATH=str(gpu_like['tmp'] / 'base'), WHEELS=str(LOCAL), DEVDATA=str(devdata),
               SITE=str(tmp_path / 'site'), DATA_ROOT=str(tmp_path / 'data'), OUT_DIR=str(out), SIZE='tiny', PACK=str(tmp_path / 'pack'),
               TASK_SECONDS='900', REPORT_SECONDS='900', GPUTESTS_SECONDS='900', WORKERS='2')  # the tasks within limits, as in the full run (timeout, bash -c, the exported functions)
    env['PYTHONPATH'] = ''
    r = subprocess.run(['bash', 'tools/gpu_reproduction.sh'], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    timing = json.loads((out / 'timing.json').read_text())
    steps = list(timing['steps'])  # gputests first and alone, then the tasks side by side: listed as they ended
    assert steps[:4] == ['install', 'kernel', 'data', 'gputests'] and steps[-1] == 'report'
    assert sorted(steps[4:-1]) == ['autoencoder', 'convnet', 'figure3']
    assert all(s['status'] == 'ok' for s in timing['steps'].values()) and timing['size'] == 'tiny'
    for folder, dataset, runs in (('runs/autoencoder', 'mnist', 3), ('runs/convnet', 'cifar10', 3), ('figure3', 'cifar10', 1)):
        rows = (out / folder / 'results.csv').read_text().splitlines()
        assert len(rows) == runs + 1 and all(',complete,' in l for l in rows[1:]), rows
        opt = 'rmsprop' if folder == 'figure3' else 'adam'
        cfg = json.loads((out / folder / f'optimizer={opt}' / 'params.json').read_text())['config']
        assert cfg['dataset'] == dataset and cfg['data_root'] == str(tmp_path / 'data')
        assert (out / folder / f'optimizer={opt}' / 'notebook.ipynb').stat().st_size > 0
    assert 'figure 3, certified solves per layer at each prefix N' in r.stdout and 'neuron scopes of layer 2: N=1: ' in r.stdout, r.stdout[-3000:]
    fig3 = json.loads((out / 'figure3' / 'optimizer=rmsprop' / 'params.json').read_text())['config']
    assert fig3['neuron_layers'] == [1, 2, 3] and fig3['layers'] == []
    assert json.loads((tmp_path / 'site/jupyter/share/jupyter/kernels/ntaylor-p4/kernel.json').read_text())['argv'][0] == str(gpu_like['py'])
    assert (tmp_path / 'data' / 'cifar10' / 'train' / 'airplane').is_dir()
    for f in ('claims.md', 'claims.csv', 'figure6.png', 'figure3_autoencoder_mnist.png', 'figure5_convnet_cifar10.png'):
        assert (out / 'report' / f).stat().st_size > 0, f
    with tarfile.open(tmp_path / 'pack' / 'p4_results.tar.gz') as t: names = t.getnames()
    assert './timing.json' in names and './report/figure6.png' in names and './figure3.log' in names
    assert not any('recordings' in n for n in names)
    assert len((out / 'report' / 'runs.csv').read_text().splitlines()) == 1 + 6, 'the report reads the six protocol runs, not figure 3\'s'


@pytest.mark.parametrize('setting, message', [
    ({'TASKS': 'autoencoder,nonsense'}, 'TASKS: unknown task nonsense'),
    ({'TASKS': 'convnet,convnet'}, 'TASKS: convnet is named twice'),
    ({'SIZE': 'huge'}, 'SIZE must be full or tiny'),
    ({'TASK_SECONDS': '5m'}, 'TASK_SECONDS=5m: a whole number'),
    ({'GPUTESTS_SECONDS': '-1'}, 'GPUTESTS_SECONDS=-1: a whole number'),
    ({'WORKERS': '0'}, 'WORKERS=0: a whole number, at least 1'),
    ({'WORKERS': '08'}, 'WORKERS=08: a whole number, at least 1 (no leading zeros)'),  # bash arithmetic would read it as octal and abort
])
def test_gpu_script_refuses_bad_settings(tmp_path, setting, message):
    "tools/gpu_reproduction.sh checks its settings before any work: a clear message, exit status 2, nothing written."
    env = dict(os.environ, OUT_DIR=str(tmp_path / 'out'), SITE=str(tmp_path / 'site'), DATA_ROOT=str(tmp_path / 'data'), **setting)
    r = subprocess.run(['bash', 'tools/gpu_reproduction.sh'], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and message in r.stderr, (r.returncode, r.stdout, r.stderr)
    assert not any(tmp_path.iterdir())


def test_notebook_bars_reads_a_stopped_runs_text_bar(tmp_path):
    "tools/notebook_bars.py finds a text bar's updates (tqdm's own output, carriage returns and all) in a notebook's stream outputs."
    import io
    from tqdm import tqdm
    err = io.StringIO()
    bar = tqdm(total=8, desc='hindsight', file=err, mininterval=0)
    for N, unc in ((1, 0), (2, 3), (3, 5)): bar.set_postfix_str(f'N={N}: {unc} of 150 uncertified', refresh=False); bar.update()
    nb = dict(cells=[dict(cell_type='code', outputs=[dict(output_type='stream', name='stdout', text=['training done\n']),
                                                     dict(output_type='stream', name='stderr', text=err.getvalue())])])
    (tmp_path / 'n.ipynb').write_text(json.dumps(nb))
    r = subprocess.run([sys.executable, ROOT / 'tools' / 'notebook_bars.py', tmp_path / 'n.ipynb', 'hindsight', '2'], capture_output=True, text=True)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == 2, r
    assert '2/8' in lines[0] and 'N=2: 3 of 150 uncertified' in lines[0] and '3/8' in lines[1] and 'N=3: 5 of 150 uncertified' in lines[1], lines
    nb['cells'][0]['outputs'].pop()  # no bar: said, not an error
    (tmp_path / 'n.ipynb').write_text(json.dumps(nb))
    r = subprocess.run([sys.executable, ROOT / 'tools' / 'notebook_bars.py', tmp_path / 'n.ipynb'], capture_output=True, text=True)
    assert r.returncode == 0 and 'no text progress bar' in r.stdout
    r = subprocess.run([sys.executable, ROOT / 'tools' / 'notebook_bars.py', tmp_path / 'n.ipynb', 'hindsight', 'three'], capture_output=True, text=True)
    assert r.returncode != 0 and 'K: a whole number' in r.stderr
