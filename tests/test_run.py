"""Run folders: one layout, one completion marker, analysis computed once and reused, finding runs, clear errors."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

import ntaylor_nb.run as run_module
from ntaylor_nb.exploration import exploration_measures, layer_summary
from ntaylor_nb.growth import log_prefixes
from ntaylor_nb.hindsight import hindsight
from ntaylor_nb.run import LAYOUT, Run, find_runs, runs_table
from ntaylor_nb.train import RunConfig, train_run

# a partial epoch (rounds < one epoch): the exploration recording still has two snapshots, the start and the end
CFG = dict(rounds=12, batch_size=32, lr=1e-2, scopes=['layer:3', 'neuron:3:0', 'neuron:3:1'], probe_size=20, seed=1)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "A complete, unanalysed run (copied by each test that changes it)."
    return train_run(RunConfig(**CFG), tmp_path_factory.mktemp('runs') / 'base', progress=False)


@pytest.fixture
def run(trained, tmp_path):
    shutil.copytree(trained, tmp_path / 'runs' / 'a' / 'run')
    return Run(tmp_path / 'runs' / 'a' / 'run')


def test_train_run_writes_the_layout(run):
    names = {p.name for p in run.path.iterdir()}
    assert names == {LAYOUT[k] for k in ('params', 'metrics', 'epochs', 'regret', 'exploration', 'model', 'done')}
    assert run.complete and not run.analyzed and not run.file('checkpoint').exists()
    assert run.config == RunConfig(**CFG)
    assert run.params['rounds'] == len(run.metrics) == 12 and run.params['batch_size'] == 32
    assert list(run.metrics.columns) == ['round', 'epoch', 'loss', 'accuracy'] and len(run.epochs) == 1
    assert run.result == json.loads((run.path / 'done.json').read_text())
    assert run.result['last_epoch_loss'] == pytest.approx(run.metrics.loss.mean(), rel=1e-12)  # the partial epoch's mean
    assert len(run.regret_recording) == 12 and len(run.exploration_recording) == 2


def test_analysis_matches_a_direct_computation(run):
    s = run.analyze(prefixes=5)
    rec, er = run.regret_recording, run.exploration_recording
    direct = hindsight(rec, log_prefixes(len(rec), 5), progress=False)
    num = direct.select_dtypes('number').columns  # (a CSV gives the layer names back as numbers)
    pd.testing.assert_frame_equal(run.regret_table()[num], direct[num], check_exact=False, rtol=1e-12, check_dtype=False)
    assert run.regret_table().scope.tolist() == direct.scope.tolist()
    ms = exploration_measures(er)
    for k, v in run.exploration_measures().items(): np.testing.assert_array_equal(v, ms[k], err_msg=k)
    ls = layer_summary(er)
    pd.testing.assert_frame_equal(run.exploration_layers().drop(columns='module'), ls.drop(columns='module'), check_exact=False, rtol=1e-12)
    assert run.exploration_layers().module.astype(str).tolist() == ls.module.tolist()
    assert s['novelty'] == pytest.approx(np.nanmean(ms['novelty'])) and s['rounds'] == 12 and s['prefixes'] == 5
    last = direct[(direct.N == 12) & (direct.kind == 'layer')].iloc[0]
    assert s[f'gap_layer_{last.layer_number}'] == pytest.approx(last.average_loss - last.taylor_optimum, rel=1e-12)  # keyed by the paper's number
    assert last.layer_number != int(last.layer) and f'gap_layer_{last.layer}' not in s  # (not the module's index)
    assert {k for k in s if k.startswith('exponent_')} == {f'exponent_{k}_{n}' for k, n in direct[direct.kind != 'network'][['kind', 'layer_number']].drop_duplicates().itertuples(index=False)}
    assert set(run.exponents().kind) == {'layer', 'neuron'}
    assert sorted(p.name for p in run.file('analysis').iterdir()) == sorted(
        LAYOUT[k].split('/')[1] for k in ('regret_table', 'exponents', 'exploration_measures', 'exploration_layers', 'summary'))


def test_analysis_is_computed_once_and_reused(run, monkeypatch):
    calls = []
    real = run_module.hindsight
    monkeypatch.setattr(run_module, 'hindsight', lambda *a, **k: calls.append(1) or real(*a, **k))
    first = run.analyze(prefixes=4)
    stamps = {p: p.stat().st_mtime_ns for p in run.file('analysis').iterdir()}
    again = Run(run.path)  # a new object: the saved files are what is reused
    assert again.analyze() == first and again.analyze(prefixes=4) == first
    again.regret_table(); again.exponents(); again.exploration_measures(); runs_table(run.path.parent)
    assert len(calls) == 1 and {p: p.stat().st_mtime_ns for p in run.file('analysis').iterdir()} == stamps
    assert again.analyze(refresh=True) == first and len(calls) == 2  # asked to: recomputed, at the saved prefixes
    again.analyze(prefixes=3)  # other prefixes asked for: recomputed
    assert len(calls) == 3 and again.regret_table().N.nunique() == 3


def test_default_prefixes(run):
    assert run.analyze()['prefixes'] == 64 and run.regret_table().N.nunique() == 12  # 64 log-spaced prefixes of 12 rounds: all 12


def test_one_completion_marker(run):
    run.file('done').unlink()  # what an interrupted run looks like to a reader
    assert not run.complete and find_runs(run.path.parent) == []
    with pytest.raises(FileNotFoundError, match='holds an unfinished run .no done.json.'): run.analyze()
    with pytest.raises(FileNotFoundError, match='unfinished run'): run.result


def test_nan_run_is_not_complete(tmp_path):
    with pytest.raises(FloatingPointError): train_run(RunConfig(**dict(CFG, lr=1e4, optimizer='sgd')), tmp_path / 'nan', progress=False)
    r = Run(tmp_path / 'nan')
    assert not r.complete and r.file('failed').exists() and r.read_json('failed')['round'] >= 1
    assert find_runs(tmp_path) == []


def test_not_a_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match='is not a run folder: it has no params.json'): Run(tmp_path)
    with pytest.raises(FileNotFoundError, match='is not a run folder'): Run(tmp_path / 'missing')
    with pytest.raises(KeyError, match="'weights' is not part of a run folder"): Run(tmp_path, create=True).file('weights')
    with pytest.raises(FileNotFoundError, match='is not a folder'): find_runs(tmp_path / 'missing')
    with pytest.raises(FileNotFoundError, match='no complete runs under'): runs_table(tmp_path)


def test_find_runs_at_any_depth_in_path_order(trained, tmp_path):
    for d in ('b/deep/er', 'a', 'c'): shutil.copytree(trained, tmp_path / d)
    Run(tmp_path / 'unfinished', create=True).write_json('params', Run(trained).params)
    assert [r.path for r in find_runs(tmp_path)] == [tmp_path / 'a', tmp_path / 'b/deep/er', tmp_path / 'c']
    t = runs_table(tmp_path)
    assert t.path.tolist() == [str(tmp_path / d) for d in ('a', 'b/deep/er', 'c')]
    assert (t.last_epoch_loss == Run(trained).result['last_epoch_loss']).all() and t.prefixes.eq(64).all()
    assert all(Run(p).analyzed for p in t.path)


def test_figure_paths(run):
    f = run.figure('figure3')
    assert f == run.path / 'figures' / 'figure3.png' and f.parent.is_dir()


def test_epochs_trained_also_for_a_summary_saved_before_it(run):
    "The summary's epochs_trained is rounds over rounds per epoch; a summary saved without it (an older version) gains it on reading."
    s = run.analyze(prefixes=3)
    assert s['epochs_trained'] == pytest.approx(12 / (1437 // 32)) and run.params['rounds_per_epoch'] == 1437 // 32
    assert s['batch_size'] == 32 == run.params['config']['batch_size'] and s['rounds'] == 12  # what check_runs compares across configurations
    old = {k: v for k, v in run.read_json('summary').items() if k != 'epochs_trained'}
    run.write_json('summary', old)
    assert Run(run.path).analyze() == s and runs_table(run.path.parent).epochs_trained.tolist() == [s['epochs_trained']]


def test_a_measured_accuracy_of_zero_is_kept(run):
    "done.json's last_epoch_accuracy: 0.0 is a measured accuracy (kept), None or NaN not measured (None)."
    done = run.result
    for acc, want in ((0.0, 0.0), (None, None), (float('nan'), None), (0.25, 0.25)):
        run.write_json('done', dict(done, last_epoch_accuracy=acc))
        assert Run(run.path).analyze(prefixes=3)['last_epoch_accuracy'] == want, acc
    s = Run(run.path).analyze()
    assert (s['probe_size'], s['exploration_units']) == (20, None)  # what check_runs compares across the runs that recorded exploration



def _holding(folder, what, secs, then=''):
    "Another process holding `folder`'s lock for `secs` seconds (then running `then` in it, still held), once it says so."
    import subprocess, sys
    p = subprocess.Popen([sys.executable, '-c', 'import sys, time; from ntaylor_nb.storage import folder_lock; from ntaylor_nb.run import Run\n'
                          f'with folder_lock(sys.argv[1], {what!r}): print("held", flush=True); time.sleep({secs}); {then}', str(folder)],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == 'held'
    return p


def test_one_process_at_a_time_trains_a_folder(tmp_path):
    "While another process trains into a folder, train_run refuses, naming it, and changes nothing there; once it has ended (here killed: its .lock stays behind, holding nothing) the run trains."
    folder = tmp_path / 'r'; folder.mkdir()
    p = _holding(folder, 'training', 60)
    with pytest.raises(RuntimeError, match=f'is training by process {p.pid} on .*one process \\(and one thread\\) at a time in a run folder'):
        train_run(RunConfig(**CFG), folder, progress=False)
    assert [f.name for f in folder.iterdir()] == [LAYOUT['lock']]
    p.kill(); p.wait()
    assert Run(train_run(RunConfig(**CFG), folder, progress=False)).complete and not (folder / LAYOUT['lock']).exists()
    p = _holding(folder, 'analysing', 60)  # a finished run is returned at once, while another process analyses it
    assert train_run(RunConfig(**CFG), folder, progress=False) == folder
    p.kill(); p.wait()


def test_analysis_waits_for_another_process_analysing_the_run(run, monkeypatch):
    "An analysis asked for while another process analyses the run waits for it, then reads what it saved: one computation, not two interleaved in one folder."
    import time
    p = _holding(run.path, 'analysing', 1, then='Run(sys.argv[1]).analyze(prefixes=4)')
    calls = []
    monkeypatch.setattr(run_module, 'hindsight', lambda *a, **k: calls.append(1))  # this process computes nothing
    t0 = time.time()
    s = run.analyze(prefixes=4)
    assert time.time() - t0 > 0.5 and calls == [] and p.wait() == 0
    assert s['prefixes'] == 4 and s == run.analyze() and not run.file('lock').exists()


def test_a_failed_analysis_leaves_the_saved_one(run, monkeypatch):
    "An analysis is built beside analysis/ and swapped in: one that fails (here its hindsight) leaves the saved one as it was, and no folder of its own."
    s = run.analyze(prefixes=4)
    before = {p.name: p.read_bytes() for p in run.file('analysis').iterdir()}
    def fail(*a, **k): raise MemoryError('no memory left')
    monkeypatch.setattr(run_module, 'hindsight', fail)
    with pytest.raises(MemoryError): run.analyze(prefixes=5)
    assert {p.name: p.read_bytes() for p in run.file('analysis').iterdir()} == before and run.analyze() == s
    assert sorted(p.name for p in run.path.iterdir()) == sorted(LAYOUT[k] for k in ('params', 'metrics', 'epochs', 'regret', 'exploration', 'model', 'done', 'analysis'))


def test_an_analysis_stopped_mid_swap_is_put_back(run, monkeypatch):
    "A swap whose second rename fails puts the saved analysis back; one stopped between its renames (analysis.old and a built analysis.new left) is put back by the next look, nothing computed."
    import pathlib
    s = run.analyze(prefixes=4)
    before = {p.name: p.read_bytes() for p in run.file('analysis').iterdir()}
    real = pathlib.Path.replace
    def fail_new(self, target):
        if self.name.endswith('.new'): raise OSError('disk gone')
        return real(self, target)
    monkeypatch.setattr(pathlib.Path, 'replace', fail_new)
    with pytest.raises(OSError, match='disk gone'): run.analyze(prefixes=5)
    monkeypatch.setattr(pathlib.Path, 'replace', real)
    assert {p.name: p.read_bytes() for p in run.file('analysis').iterdir()} == before
    a = run.file('analysis'); a.rename(a.with_name('analysis.old')); (run.path / 'analysis.new').mkdir()  # as a kill between the renames leaves it
    monkeypatch.setattr(run_module, 'hindsight', lambda *a, **k: 1 / 0)  # nothing is computed again
    assert run.analyze() == s and run.regret_table() is not None
    assert not (run.path / 'analysis.old').exists() and not (run.path / 'analysis.new').exists()
