"""Put an executed report notebook on the docs site, saying what it was run on, when, and by which version.

Usage: python tools/publish_report.py EXECUTED.ipynb DEST.ipynb "WHAT IT RAN ON" [MAKE TARGET] (run by `make results`,
`make reproduce` and `make reproduce-convnet`).
The page names the commit that executed the report and the one that made the runs (commit.txt, which the Makefile's
protocol writes into the runs folder when it starts). The code cells are kept exactly as executed (tests/test_docs.py
checks they are the report notebook's)."""
import datetime
import subprocess
import sys
from pathlib import Path

import nbformat

import ntaylor_nb


def runs_commit(folder):
    "The commit the protocol recorded in `folder`/commit.txt when it started the runs (a short hash, then clean or dirty), or None."
    f = Path(folder) / 'commit.txt'
    lines = f.read_text().split() if f.is_file() else []
    if not lines or not all(c in '0123456789abcdef' for c in lines[0]): return None
    return lines[0] + (' (with uncommitted changes)' if lines[1:] == ['dirty'] else '')


def main(src, dest, what, target='results'):
    if not Path(src).is_file(): sys.exit(f'{src} does not exist: run the report first (make demo writes it)')
    nb = nbformat.read(src, 4)
    git = lambda *a: subprocess.run(['git', *a], capture_output=True, text=True).stdout.strip()
    commit, dirty = git('rev-parse', '--short', 'HEAD'), git('status', '--porcelain', '--untracked-files=no')
    title, *rest = nb.cells or [None]
    if title is None or title.cell_type != 'markdown' or not title.source.startswith('# '):
        sys.exit(f'{src} is not an executed report: its first cell should be the markdown title "# Report: ..."')
    made = runs_commit(Path(src).parent)
    head = nbformat.v4.new_markdown_cell(
        f'# The report on {what}\n\n'
        f'> `nbs/experiments/report.ipynb` executed by `make {target}` on {datetime.date.today().isoformat()} with ntaylor_nb '
        f'{ntaylor_nb.__version__} at commit {commit}{" (with uncommitted changes)" if dirty else ""}'
        f'{f"; the runs were made at commit {made}" if made else "; the commit that made the runs was not recorded"}: every output below is '
        'what the code printed and drew from the saved runs; nothing was edited by hand. The runs\' parameters are in the '
        'first table and in each run folder\'s `params.json`.')
    nb.cells = [head, nbformat.v4.new_markdown_cell(title.source.replace('# ', '## ', 1)), *rest]
    nbformat.write(nb, dest)


if __name__ == '__main__':
    if len(sys.argv) not in (4, 5): sys.exit(__doc__)
    main(*sys.argv[1:])
