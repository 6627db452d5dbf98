"""Write nbs/sidebar.yml, the docs site's sidebar, from the notebooks present in nbs/, in the reader's order.

Usage: python tools/sidebar.py          (rewrites nbs/sidebar.yml; `make docs` runs it before rendering)
       python tools/sidebar.py --check  (exit 1 if nbs/sidebar.yml is not what it would write)

settings.ini sets `custom_sidebar = True`, so nbdev (`nbdev_proc_nbs`, `nbdev_docs`, `nbdev_preview`) uses the
committed nbs/sidebar.yml instead of its own, which lists files alphabetically with one section per folder.
The order is a rule, not a list of names, so a new notebook finds its place without editing this file:
index.ipynb first (the home page), then one section per group below; top-level notebooks go to the group whose
number range holds their number prefix, in numeric (then name) order; notebooks in a group's folder follow in
the group's `first` order, then by name. A notebook no rule places is an error, not a silent omission.
tests/test_docs.py checks the committed file is this script's output and lists every notebook once."""
import re
import sys
from pathlib import Path

import yaml

NBS = Path(__file__).resolve().parents[1] / 'nbs'
HOME = 'index.ipynb'

# (section title, number prefixes of top-level notebooks, folder, notebooks of the folder that come first, in order)
GROUPS = [
    ("The paper", range(1, 10), None, ()),
    ("Running experiments", range(10, 16), None, ()),
    ("Experiments", range(0), 'experiments', ('taylor_tour', 'autoencoder', 'convnet', 'report')),
    ("Results", range(16, 90), 'results', ()),
    ("Plumbing", range(90, 100), None, ()),
]


def pages(nbs=NBS):
    "Every page of the site under `nbs`, relative to it: notebooks and .qmd files, skipping `_`/`.` folders as nbdev does."
    return sorted(p.relative_to(nbs).as_posix() for ext in ('*.ipynb', '*.qmd') for p in nbs.rglob(ext)
                  if not any(part.startswith(('_', '.')) for part in p.relative_to(nbs).parts[:-1]))


def _place(page):
    "(group index, key within the group) for `page`, or None when no rule places it."
    parts = page.split('/')
    if len(parts) == 1:
        m = re.match(r'(\d+)_', page)
        if not m: return None
        n = int(m.group(1))
        return next(((i, (0, n, page)) for i, g in enumerate(GROUPS) if n in g[1]), None)
    if len(parts) == 2:
        stem = parts[1].rsplit('.', 1)[0]
        for i, (_, _, folder, first) in enumerate(GROUPS):
            if folder == parts[0]: return i, (1, first.index(stem) if stem in first else len(first), parts[1])
    return None


def sidebar(nbs=NBS):
    "The sidebar's YAML text for the pages under `nbs`; ValueError names any page no rule places."
    found = pages(nbs)
    placed = {p: _place(p) for p in found if p != HOME}
    lost = [p for p, v in placed.items() if v is None]
    if lost: raise ValueError(f'no sidebar rule places {lost}: give them a number prefix or a folder of GROUPS in tools/sidebar.py')
    contents = [HOME] if HOME in found else []
    for i, (title, *_) in enumerate(GROUPS):
        items = sorted((v[1], p) for p, v in placed.items() if v[0] == i)
        if items: contents.append({'section': title, 'contents': [p for _, p in items]})
    head = '# Written by tools/sidebar.py from the notebooks in nbs/: do not edit, run `python tools/sidebar.py`.\n'
    return head + yaml.dump({'website': {'sidebar': {'contents': contents}}}, sort_keys=False, indent=2,
                            default_flow_style=False, width=1000)


def main(argv):
    text, path = sidebar(), NBS / 'sidebar.yml'
    if '--check' in argv:
        if not path.exists() or path.read_text() != text: sys.exit(f'{path} is out of date: run `python tools/sidebar.py`')
        return
    if not path.exists() or path.read_text() != text: path.write_text(text)
    print(f'wrote {path}')


if __name__ == '__main__': main(sys.argv[1:])
