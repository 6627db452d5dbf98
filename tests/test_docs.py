"""The docs pipeline up to Quarto: nbdev processes every notebook, and every exported symbol is documented."""
import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from fastcore.docments import docments

ROOT = Path(__file__).resolve().parents[1]


def exported():
    "(module name, symbol name, object) for every name in every module's __all__."
    modidx = importlib.import_module('ntaylor_nb._modidx').d['syms']
    for mod_name in modidx:
        mod = importlib.import_module(mod_name)
        for name in getattr(mod, '__all__', []): yield mod_name, name, getattr(mod, name)


def test_every_exported_symbol_is_documented():
    missing = []
    for mod, name, obj in exported():
        if not (inspect.isfunction(obj) or inspect.isclass(obj)): continue
        if not inspect.getdoc(obj): missing.append(f'{mod}.{name}: no docstring')
        fns = [(name, obj)] if inspect.isfunction(obj) else [
            (f'{name}.{k}', v) for k, v in vars(obj).items()
            if not k.startswith('_') and (inspect.isfunction(v) or isinstance(v, (classmethod, staticmethod, property)))]
        for qual, f in fns:
            f = f.__func__ if isinstance(f, (classmethod, staticmethod)) else (f.fget if isinstance(f, property) else f)
            if not inspect.getdoc(f): missing.append(f'{mod}.{qual}: no docstring')
            docs = docments(f, full=True)
            # an override may rely on the documented signature of the method it overrides
            base = [docments(getattr(b, f.__name__), full=True) for b in getattr(obj, '__mro__', ())[1:]
                    if inspect.isfunction(getattr(b, f.__name__, None))]
            kinds = {p.name: p.kind for p in inspect.signature(f).parameters.values()}
            for arg, info in docs.items():
                if arg in ('self', 'cls', 'return') or kinds.get(arg) in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL): continue
                if not info['docment'] and not any(b.get(arg, {}).get('docment') for b in base):
                    missing.append(f'{mod}.{qual}: argument {arg!r} has no inline comment')
    assert not missing, 'undocumented:\n' + '\n'.join(missing)


def test_nbdev_processes_every_notebook_with_show_doc_for_every_symbol():
    r = subprocess.run([str(Path(sys.executable).parent / 'nbdev_proc_nbs'), '--force'], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    proc = ROOT / '_proc'
    for nb in (ROOT / 'nbs').rglob('*.ipynb'):
        if '.ipynb_checkpoints' in nb.parts: continue
        assert (proc / nb.relative_to(ROOT / 'nbs')).exists(), f'{nb} was not processed'
    shown = ''.join(c.source for p in proc.rglob('*.ipynb') for c in nbformat.read(p, 4).cells if c.cell_type == 'code')
    absent = [f'{m}.{n}' for m, n, o in exported() if (inspect.isfunction(o) or inspect.isclass(o)) and f'show_doc({n})' not in shown]
    assert not absent, f'no show_doc in the processed docs for: {absent}'


def test_readme_is_index_notebook():
    "README.md is generated from nbs/index.ipynb (nbdev_readme, needs Quarto): every prose cell must be in it."
    readme = (ROOT / 'README.md').read_text()
    for cell in nbformat.read(ROOT / 'nbs' / 'index.ipynb', 4).cells:
        if cell.cell_type == 'markdown': assert cell.source in readme, f'README.md is out of date with nbs/index.ipynb at:\n{cell.source[:200]}'
    assert 'make demo' in readme and 'make test' in readme


def test_quarto_config_is_linked():
    link = ROOT / 'nbs' / '_quarto.yml'
    assert link.is_symlink() and link.resolve() == (ROOT / '_quarto.yml').resolve()


def test_parameters_tags_survive_cleaning():
    "nbdev_clean must keep papermill's `parameters` tag (allowed_cell_metadata_keys = tags)."
    for nb in (ROOT / 'nbs' / 'experiments').glob('*.ipynb'):
        cells = [c for c in nbformat.read(nb, 4).cells if c.cell_type == 'code']
        assert 'parameters' in cells[0].metadata.get('tags', []), f'{nb.name}: first code cell lacks the parameters tag'


def test_docs_show_the_report_executed_on_real_runs():
    "nbs/results/demo_report.ipynb is the current report notebook executed on the demo runs (make results), outputs and all."
    ex = nbformat.read(ROOT / 'nbs/results/demo_report.ipynb', 4)
    src = nbformat.read(ROOT / 'nbs/experiments/report.ipynb', 4)
    code = lambda nb: [c.source for c in nb.cells if c.cell_type == 'code' and 'injected-parameters' not in c.metadata.get('tags', [])]
    assert code(ex) == code(src), 'the report notebook changed since the results page was made: run `make results` and commit it'
    injected = [c.source for c in ex.cells if 'injected-parameters' in c.metadata.get('tags', [])]
    assert injected and 'runs_dir' in injected[0] and 'interactive = False' in injected[0]
    outs = [o for c in ex.cells if c.cell_type == 'code' for o in c.get('outputs', [])]
    assert not [o for o in outs if o.output_type == 'error']
    assert sum('image/png' in o.get('data', {}) for o in outs) >= 5, 'figures 3-6 and the explorer view'
    html = ''.join(o.get('data', {}).get('text/html', '') for o in outs)
    assert 'optimizer' in html and 'last_epoch_loss' in html and 'verdict' in html  # the runs' parameters, the claims
    assert 'executed by `make results`' in ex.cells[0].source
    assert (ROOT / 'nbs/results/.notest').exists(), 'nbdev_test must not re-run it (the runs are not in the repository)'
    assert 'results/demo_report.ipynb' in (ROOT / 'nbs/sidebar.yml').read_text()
    assert 'results/demo_report.ipynb' in ''.join(c.source for c in nbformat.read(ROOT / 'nbs/16_results.ipynb', 4).cells)
