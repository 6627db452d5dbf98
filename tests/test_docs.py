"""The docs pipeline up to Quarto: nbdev processes every notebook, every exported symbol is documented, the sidebar
follows the reader's order (tools/sidebar.py), the site is HTML only, and the home page and README keep the introduction."""
import importlib
import importlib.util
import inspect
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml
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


@pytest.fixture(scope='module')
def proc():
    """`_proc/`, as nbdev processes the notebooks for Quarto (made afresh once per test run).
    Not `nbdev_proc_nbs --force`: its `force` also reaches nbdev_sidebar, which then overwrites nbs/sidebar.yml."""
    shutil.rmtree(ROOT / '_proc', ignore_errors=True)
    r = subprocess.run([str(Path(sys.executable).parent / 'nbdev_proc_nbs')], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return ROOT / '_proc'


def test_nbdev_processes_every_notebook_with_show_doc_for_every_symbol(proc):
    for nb in (ROOT / 'nbs').rglob('*.ipynb'):
        if '.ipynb_checkpoints' in nb.parts: continue
        assert (proc / nb.relative_to(ROOT / 'nbs')).exists(), f'{nb} was not processed'
    shown = ''.join(c.source for p in proc.rglob('*.ipynb') for c in nbformat.read(p, 4).cells if c.cell_type == 'code')
    absent = [f'{m}.{n}' for m, n, o in exported() if (inspect.isfunction(o) or inspect.isclass(o)) and f'show_doc({n})' not in shown]
    assert not absent, f'no show_doc in the processed docs for: {absent}'


def _sidebar_tool():
    spec = importlib.util.spec_from_file_location('sidebar_tool', ROOT / 'tools' / 'sidebar.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


# The reader's order (the paper, the machinery that runs experiments, the experiments, results, plumbing last),
# written out here independently of the rule in tools/sidebar.py; notebooks not yet written are simply absent.
READERS_ORDER = ['index.ipynb', '01_taylor.ipynb', '02_learners.ipynb', '02_oco.ipynb', '03_growth.ipynb', '03_regret.ipynb',
                 '04_solvers.ipynb', '04_solvers_conv.ipynb', '04_solvers_conv_newton.ipynb', '04_solvers_free.ipynb', '04_solvers_quad.ipynb', '05_gauss_newton.ipynb', '06_regret.ipynb', '07_hindsight.ipynb', '07_hindsight_generic.ipynb', '07_hindsight_lsq.ipynb', '08_regret_figures.ipynb',
                 '09_exploration.ipynb', '10_data.ipynb', '11_models.ipynb', '12_train.ipynb', '12_tune.ipynb', '13_run.ipynb', '14_batch.ipynb',
                 '15_claims.ipynb', '15_intervals.ipynb', '15_report.ipynb', 'experiments/taylor_tour.ipynb', 'experiments/autoencoder.ipynb', 'experiments/convnet.ipynb',
                 'experiments/report.ipynb', '16_results.ipynb', 'results/cifar10_report.ipynb', 'results/demo_report.ipynb', 'results/mnist_report.ipynb', '90_schedules.ipynb',
                 '91_storage.ipynb', '92_devices.ipynb']
SECTIONS = ["The paper", "Running experiments", "Experiments", "Results", "Plumbing"]


def _flat(contents, sections):
    "The pages of a sidebar's `contents`, in order, collecting section titles into `sections`."
    for item in contents:
        if isinstance(item, str): yield item
        elif 'section' in item:
            sections.append(item['section']); yield from _flat(item.get('contents', []), sections)
        else: yield item.get('href') or item['file']


def test_sidebar_yml_is_the_scripts_output():
    "nbs/sidebar.yml is committed (custom_sidebar = True) and must be what tools/sidebar.py writes for the notebooks present."
    assert (ROOT / 'nbs' / 'sidebar.yml').read_text() == _sidebar_tool().sidebar(), \
        'nbs/sidebar.yml is out of date with the notebooks in nbs/: run `python tools/sidebar.py` and commit it'


def test_sidebar_lists_every_notebook_once_in_the_readers_order(proc):
    "The sidebar Quarto gets (in _proc/) lists each notebook exactly once, in the reader's order, in sentence-case sections."
    sections = []
    pages = list(_flat(yaml.safe_load((proc / 'sidebar.yml').read_text())['website']['sidebar']['contents'], sections))
    present = sorted(p.relative_to(ROOT / 'nbs').as_posix() for p in (ROOT / 'nbs').rglob('*.ipynb')
                     if not any(part.startswith(('.', '_')) for part in p.relative_to(ROOT / 'nbs').parts))
    twice = sorted({p for p in pages if pages.count(p) > 1})
    assert not twice, f'in the sidebar more than once: {twice}'
    assert not set(present) - set(pages), f'missing from the sidebar: {sorted(set(present) - set(pages))}'
    assert not set(pages) - set(present), f'in the sidebar but not in nbs/: {sorted(set(pages) - set(present))}'
    assert pages[0] == 'index.ipynb'
    known = [p for p in pages if p in READERS_ORDER]
    assert known == sorted(known, key=READERS_ORDER.index), f'not in the reader\'s order: {known}'
    assert sections == [s for s in SECTIONS if s in sections] and {'The paper', 'Experiments', 'Plumbing'} <= set(sections), sections
    assert all(s[0].isupper() and s[1:] == s[1:].lower() for s in sections), f'section titles in sentence case: {sections}'
    plumbing = [p for p in pages if p[:1] == '9']
    assert plumbing and pages[len(pages) - len(plumbing):] == plumbing, 'plumbing comes last'


def test_sidebar_rule_places_the_notebooks_to_come(tmp_path):
    "The rule, not a list of names: the full notebook list after the restructuring comes out in the reader's order."
    tool = _sidebar_tool()
    for p in READERS_ORDER + ['images/x.ipynb.png', '.ipynb_checkpoints/01_taylor-checkpoint.ipynb', '_hidden/a.ipynb']:
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True); (tmp_path / p).write_text('{}')
    sections = []
    pages = list(_flat(yaml.safe_load(tool.sidebar(tmp_path))['website']['sidebar']['contents'], sections))
    assert pages == READERS_ORDER and sections == SECTIONS
    (tmp_path / 'notes.ipynb').write_text('{}')
    with pytest.raises(ValueError, match='notes.ipynb'): tool.sidebar(tmp_path)


def test_site_is_html_only():
    "No `commonmark` output (it added a CommonMark link to every page and 'Could not convert TeX math' warnings)."
    assert list(yaml.safe_load((ROOT / '_quarto.yml').read_text())['format']) == ['html']


def test_home_page_keeps_the_introduction(proc):
    """nbdev turns index.ipynb's title cell into front matter and drops the rest of that cell: the title cell must hold
    only the title and the `>` description, and every paragraph of the other cells must reach the processed page."""
    cells = nbformat.read(ROOT / 'nbs' / 'index.ipynb', 4).cells
    title = [l for l in cells[0].source.splitlines() if l.strip()]
    assert len(title) == 2 and title[0].startswith('# ') and title[1].startswith('> '), f'title cell: {title}'
    processed = '\n'.join(c.source for c in nbformat.read(proc / 'index.ipynb', 4).cells)
    assert f'title: {title[0][2:]}' in processed and 'description:' in processed
    for cell in cells[1:]:
        if cell.cell_type != 'markdown': continue
        for para in cell.source.split('\n\n'):
            assert para in processed, f'lost from the home page:\n{para[:200]}'
    assert 'implements the ICML 2017 paper' in processed and 'make demo' in processed


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


# the CIFAR-10 runs record no layer scope (see 16_results), so their page has no figure 4: one image fewer
@pytest.mark.parametrize('page,target,images', [('demo_report', 'results', 6), ('mnist_report', 'reproduce', 6),
                                               ('cifar10_report', 'reproduce-convnet', 5)])
def test_docs_show_the_report_executed_on_real_runs(page, target, images):
    "nbs/results/PAGE.ipynb is the current report notebook executed on real runs (make results / make reproduce / make reproduce-convnet, or make report over their runs), outputs and all."
    ex = nbformat.read(ROOT / f'nbs/results/{page}.ipynb', 4)
    src = nbformat.read(ROOT / 'nbs/experiments/report.ipynb', 4)
    code = lambda nb: [c.source for c in nb.cells if c.cell_type == 'code' and 'injected-parameters' not in c.metadata.get('tags', [])]
    assert code(ex) == code(src), (f'the report notebook changed since the results page was made: run `make {target}` (or, over the runs '
                                   f'already made, `make report RUNS=... PAGE=nbs/results/{page}.ipynb`) and commit it')
    injected = [c.source for c in ex.cells if 'injected-parameters' in c.metadata.get('tags', [])]
    assert injected and 'runs_dir' in injected[0] and 'interactive = False' in injected[0]
    outs = [o for c in ex.cells if c.cell_type == 'code' for o in c.get('outputs', [])]
    assert not [o for o in outs if o.output_type == 'error']
    assert sum('image/png' in o.get('data', {}) for o in outs) >= images, 'the learning-rate searches, figures 3-6 (4: with a layer scope) and the explorer view'
    html = ''.join(o.get('data', {}).get('text/html', '') for o in outs)
    assert 'optimizer' in html and 'last_epoch_loss' in html and 'verdict' in html and 'at_edge' in html  # runs, searches, claims
    assert f'executed by `make {target}`' in ex.cells[0].source or 'executed by `make report RUNS=' in ex.cells[0].source  # the runs' own target, or the report again over them
    assert (ROOT / 'nbs/results/.notest').exists(), 'nbdev_test must not re-run it (the runs are not in the repository)'
    assert f'results/{page}.ipynb' in (ROOT / 'nbs/sidebar.yml').read_text()
    assert f'results/{page}.ipynb' in ''.join(c.source for c in nbformat.read(ROOT / 'nbs/16_results.ipynb', 4).cells)


def test_docs_index_lists_every_public_method():
    "nbdev's index (the docs site's symbol table) has an entry for every public method and property of every exported class (in the chapter that patched it in, if another)."
    names = {k.split('.', 2)[2] for m in importlib.import_module('ntaylor_nb._modidx').d['syms'].values() for k in m}  # 'Class.method', any module
    missing = [f'{mod}.{name}.{k}' for mod, name, obj in exported() if inspect.isclass(obj) and obj.__module__ == mod
               for k, v in vars(obj).items()
               if not k.startswith('_') and (inspect.isfunction(v) or isinstance(v, (property, classmethod, staticmethod)))
               and f'{name}.{k}' not in names]
    assert not missing, f'not in the docs index: {missing}'
