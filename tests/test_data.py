"""Data roots shared by experiments started side by side (the batch runner's workers, the GPU script's tasks): one process
extracts MNIST or decodes CIFAR-10 while the others wait, and a decoded cache is never seen half-written."""
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ntaylor_nb.data as data
from ntaylor_nb.data import CIFAR10_CLASSES, _data_lock, load_dataset

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get('NTAYLOR_SHARED_DATA', ROOT.parent / 'shared' / 'data')).resolve()


def test_lock_makes_a_second_holder_wait(tmp_path):
    entered = threading.Event()
    def second():
        with _data_lock(tmp_path): entered.set()
    with _data_lock(tmp_path):
        t = threading.Thread(target=second); t.start()
        assert not entered.wait(0.5), 'a second holder entered while the lock was held'
    assert entered.wait(10); t.join()


def test_no_lock_where_the_folder_is_missing(tmp_path):
    with _data_lock(tmp_path / 'absent'): pass
    assert not (tmp_path / 'absent').exists(), 'nothing is created in a data root that lacks the dataset'


def tiny_cifar(root):
    "An ImageFolder copy of CIFAR-10's layout: two 32x32 images a class."
    rng = np.random.default_rng(0)
    for c in CIFAR10_CLASSES:
        (root / 'cifar10' / 'train' / c).mkdir(parents=True)
        for i in range(2): Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / 'cifar10' / 'train' / c / f'{i}.png')


def test_cifar_cache_is_never_half_written(tmp_path, monkeypatch):
    tiny_cifar(tmp_path)
    cache = tmp_path / 'cifar10' / 'train_uint8.npz'
    real = np.savez
    def broken(f, **kw):  # the disk fills up halfway through the write
        f.write(b'PK\x03\x04 half a zip'); raise OSError('No space left on device')
    monkeypatch.setattr(np, 'savez', broken)
    x, y = load_dataset('cifar10', root=tmp_path)
    assert x.shape == (20, 3, 32, 32) and sorted(y.tolist()) == sorted(list(range(10)) * 2)
    assert sorted(p.name for p in cache.parent.iterdir()) == ['.lock', 'train'], 'neither a cache nor a temporary file is left'
    monkeypatch.setattr(np, 'savez', real)
    x2, y2 = load_dataset('cifar10', root=tmp_path)  # decodes again and keeps the cache
    assert cache.is_file() and (x2 == x).all() and (y2 == y).all()
    import torchvision
    def no_decoding(*a, **k): raise AssertionError('decoded again: the cache was not read')
    monkeypatch.setattr(torchvision.datasets, 'ImageFolder', no_decoding)  # from now on only the cache can answer
    x3, y3 = load_dataset('cifar10', root=tmp_path)
    assert (x3 == x).all() and (y3 == y).all()
    monkeypatch.undo()
    cache.write_bytes(b'PK\x03\x04 a damaged cache')  # damaged by something else: decoded again and written whole, not a traceback
    x4, y4 = load_dataset('cifar10', root=tmp_path)
    assert (x4 == x).all() and (y4 == y).all() and load_dataset('cifar10', root=tmp_path)[0].equal(x)


LOAD = """import sys, torch
from ntaylor_nb.data import load_dataset
x, y = load_dataset('mnist', root=sys.argv[1])
print(x.shape[0], float(x.double().sum()), int(y.sum()))"""


@pytest.mark.skipif(not (SHARED / 'mnist' / 'MNIST' / 'raw').is_dir(), reason='needs ../shared/data (the official MNIST files)')
def test_mnist_read_side_by_side_from_a_fresh_root(tmp_path):
    "Three processes read MNIST at once from a root holding only the official .gz files (torchvision extracts them on first use)."
    raw = tmp_path / 'MNIST' / 'raw'; raw.mkdir(parents=True)
    for f in (SHARED / 'mnist' / 'MNIST' / 'raw').glob('*.gz'): shutil.copy(f, raw)
    env = dict(os.environ, PYTHONPATH=f'{ROOT}:{os.environ.get("PYTHONPATH", "")}', OMP_NUM_THREADS='1')
    procs = [subprocess.Popen([sys.executable, '-c', LOAD, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    assert len({o for o, _ in outs}) == 1 and outs[0][0].split()[0] == '60000', outs


def test_cifar_cache_write_stopped_by_another_error_leaves_nothing(tmp_path, monkeypatch):
    tiny_cifar(tmp_path)
    def broken(f, **kw):
        f.write(b'PK\x03\x04 half'); raise MemoryError('out of memory while compressing')
    monkeypatch.setattr(np, 'savez', broken)
    with pytest.raises(MemoryError): load_dataset('cifar10', root=tmp_path)  # not swallowed
    assert sorted(p.name for p in (tmp_path / 'cifar10').iterdir()) == ['.lock', 'train'], 'no temporary file left behind'


@pytest.mark.skipif(not (SHARED / 'mnist' / 'MNIST' / 'raw').is_dir(), reason='needs ../shared/data (the official MNIST files)')
def test_mnist_is_extracted_here_never_fetched_and_a_damaged_file_is_named(tmp_path, monkeypatch):
    "download=False: the .gz files are checked and extracted without torchvision's downloader; a damaged one is an error that names it."
    from torchvision.datasets import MNIST
    def no_network(*a, **k): raise AssertionError('torchvision was asked to download')
    monkeypatch.setattr(MNIST, 'download', no_network)
    raw = tmp_path / 'MNIST' / 'raw'; raw.mkdir(parents=True)
    for f in (SHARED / 'mnist' / 'MNIST' / 'raw').glob('t10k-*.gz'): shutil.copy(f, raw)
    for f in (SHARED / 'mnist' / 'MNIST' / 'raw').glob('train-*.gz'): shutil.copy(f, raw)
    b = bytearray((raw / 'train-labels-idx1-ubyte.gz').read_bytes()); b[100] ^= 1; (raw / 'train-labels-idx1-ubyte.gz').write_bytes(bytes(b))
    with pytest.raises(ValueError, match=r'train-labels-idx1-ubyte.gz is damaged: its md5 sum is not the official'):
        load_dataset('mnist', root=tmp_path, train=False)
    assert not (raw / 'train-labels-idx1-ubyte').exists() and not list(raw.glob('*.tmp'))
    shutil.copy(SHARED / 'mnist' / 'MNIST' / 'raw' / 'train-labels-idx1-ubyte.gz', raw)
    x, y = load_dataset('mnist', root=tmp_path, train=False)
    assert x.shape == (10000, 1, 28, 28) and float(x.mean()) * 255 == pytest.approx(33.79, abs=0.01)
    assert sorted(p.name for p in raw.iterdir() if not p.name.endswith('.gz')) == sorted(n.removesuffix('.gz') for n, _ in MNIST.resources)


def test_cifar_cache_follows_its_files(tmp_path):
    "The decoded cache records the files it came from: an image changed or added since is decoded again, not served stale."
    tiny_cifar(tmp_path)
    x, y = load_dataset('cifar10', root=tmp_path)
    img = tmp_path / 'cifar10' / 'train' / 'cat' / '0.png'
    Image.fromarray(np.full((32, 32, 3), 255, np.uint8)).save(img)  # every pixel white
    x2, _ = load_dataset('cifar10', root=tmp_path)
    k = int(np.flatnonzero((x2 != x).flatten(1).any(1))[0])
    assert (x2 != x).flatten(1).any(1).sum() == 1 and bool((x2[k] == 1).all()), 'exactly the changed image, now white'
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / 'cifar10' / 'train' / 'dog' / '2.png')  # one more
    x3, y3 = load_dataset('cifar10', root=tmp_path)
    assert len(x3) == 21 and int((y3 == CIFAR10_CLASSES.index('dog')).sum()) == 3


def test_data_identity_tells_copies_of_cifar_apart(tmp_path, monkeypatch):
    "The learning-rate searches are saved under the data's identity: a lossy copy and another copy of CIFAR-10 are not one dataset."
    from ntaylor_nb.data import data_identity
    import ntaylor_nb.tune as tune
    from ntaylor_nb.train import RunConfig
    a, b = tmp_path / 'a', tmp_path / 'b'
    tiny_cifar(a); tiny_cifar(b)
    assert data_identity('cifar10', a) == data_identity('cifar10', b) != 'cifar10'  # the same files (names and sizes)
    p = b / 'cifar10' / 'train' / 'cat' / '0.png'; Image.open(p).save(p.with_suffix('.jpg'), quality=75); p.unlink()  # one image lossy
    assert data_identity('cifar10', a) != data_identity('cifar10', b)
    (tmp_path / 'c' / 'cifar-10-batches-py').mkdir(parents=True)
    assert data_identity('cifar10', tmp_path / 'c') == 'cifar10 (official)' and data_identity('mnist', tmp_path) == 'mnist'
    keys = []
    class Seen(Exception): pass
    def seen(cache, key): keys.append(key); raise Seen
    monkeypatch.setattr(tune, '_cached_search', seen)
    for root in (a, b):
        with pytest.raises(Seen): tune.tune_lr(RunConfig(task='convnet', dataset='cifar10', data_root=str(root)), cache=tmp_path / 'tuning')
    assert keys[0]['data'] != keys[1]['data'] and tune._search_file('t', keys[0]) != tune._search_file('t', keys[1])
