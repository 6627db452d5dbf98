"""The reproduction targets refuse bad input before anything runs: a clear message, exit status 2, no runs folder."""
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# a make running this test (make test) passes its flags and variables down: the inner make must not see them
CLEAN = {k: v for k, v in os.environ.items() if k not in ('MAKEFLAGS', 'MFLAGS', 'MAKELEVEL', 'MAKEOVERRIDES', 'CONV_ROUNDS', 'VENV', 'DATA_ROOT')}


def make(tmp_path, *args):
    # VENV and -o: the virtual environment counts as installed (never rebuilt by this test)
    return subprocess.run(['make', '-s', 'VENV=.venv', '-o', '.venv/.installed', 'reproduce-convnet', f'CONV_DIR={tmp_path}/runs', *args],
                          cwd=ROOT, capture_output=True, text=True, env=CLEAN, timeout=120)


@pytest.mark.parametrize('rounds', ['abc', '0', '-5', '1.5', '07', ''])
def test_conv_rounds_must_be_a_positive_whole_number(tmp_path, rounds):
    (tmp_path / 'data' / 'cifar10' / 'train').mkdir(parents=True)
    r = make(tmp_path, f'CONV_ROUNDS={rounds}', f'DATA_ROOT={tmp_path}/data')
    assert r.returncode == 2, r.stdout + r.stderr
    assert f'CONV_ROUNDS={rounds}: give the number of minibatches as a positive whole number' in r.stdout
    assert 'expr:' not in r.stderr and not (tmp_path / 'runs').exists()


@pytest.mark.parametrize('rounds', ['60', '390'])
def test_data_root_without_cifar10(tmp_path, rounds):
    "A valid CONV_ROUNDS passes its check and reaches the data root's."
    r = make(tmp_path, f'CONV_ROUNDS={rounds}', f'DATA_ROOT={tmp_path}/nothing')
    assert r.returncode == 2 and 'holds no CIFAR-10' in r.stdout and 'CONV_ROUNDS=' not in r.stdout, r.stdout + r.stderr
    assert not (tmp_path / 'runs').exists()
