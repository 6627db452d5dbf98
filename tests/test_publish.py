"""tools/publish_report.py: the published page says which commit made the runs (recorded by the Makefile's protocol) and which executed the report."""
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]


def publish(tmp_path, commit_txt):
    runs = tmp_path / 'runs'; runs.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell('# Report: x'), nbformat.v4.new_code_cell('1 + 1')])
    nbformat.write(nb, runs / 'report.ipynb')
    if commit_txt is not None: (runs / 'commit.txt').write_text(commit_txt)
    out = tmp_path / 'page.ipynb'
    r = subprocess.run([sys.executable, 'tools/publish_report.py', str(runs / 'report.ipynb'), str(out), 'the runs', 'reproduce'],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    page = nbformat.read(out, 4)
    assert page.cells[1].source == '## Report: x' and page.cells[2].source == '1 + 1'
    return page.cells[0].source


@pytest.mark.parametrize('txt,says', [('abc1234\nclean\n', 'the runs were made at commit abc1234:'),
                                      ('abc1234\ndirty\n', 'the runs were made at commit abc1234 (with uncommitted changes):'),
                                      (None, 'the commit that made the runs was not recorded'),
                                      ('not a hash\n', 'the commit that made the runs was not recorded')])
def test_the_page_names_the_commit_that_made_the_runs(tmp_path, txt, says):
    head = publish(tmp_path, txt)
    assert head.startswith('# The report on the runs') and 'executed by `make reproduce`' in head and says in head


@pytest.mark.parametrize('page', sorted((ROOT / 'nbs/results').glob('*.ipynb')), ids=lambda p: p.stem)
def test_published_pages_show_their_tables_whole(page):
    "No table cell of a published report is cut off by pandas' display width: an interval or a note cut short is lost on the site."
    assert '...</td>' not in page.read_text()
