"""A wheelhouse of the Jupyter stack (papermill, ipykernel, nbformat, nbclient, fastcore) for a machine that has Python
and the science stack but no papermill and no internet: the GPU machine (Python 3.12). See benchmarks/RESULTS.md,
"How to run P4 on a GPU".

    python tools/wheelhouse.py build .whl/gpu-py312 --python-version 3.12   # download, leave out what is there, prove offline
    python tools/wheelhouse.py verify .whl/gpu-py312                        # on the target, after `pip install --target`
    python tools/wheelhouse.py base DIR                                     # (CPU test) a GPU-like base from this venv

`build` resolves the requirements (tools/gpu-requirements.txt) with every dependency into DEST.all/ (a cache: a warm
one resolves offline), copies into DEST/ the wheels of packages the target does NOT already hold (the names in
tools/gpu-preinstalled.txt, or --present FILE), and writes for each package left out a metadata-only stand-in wheel into
DEST.present/ (never installed: it stands for the target's own copy). It then proves offline that DEST/ plus those
stand-ins resolve the requirements completely (`pip install --dry-run --no-index --target`, for the target's Python
and platform), and prints the size of DEST/.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / 'tools' / 'gpu-requirements.txt'
PRESENT = ROOT / 'tools' / 'gpu-preinstalled.txt'
PLATFORMS = ['manylinux2014_x86_64', 'manylinux_2_17_x86_64', 'manylinux_2_28_x86_64']
# the heavy packages the target holds: a wheelhouse that picked one of these up would not travel (64 MiB a call)
HEAVY = {'numpy', 'pandas', 'matplotlib', 'torch', 'torchvision', 'scipy', 'scikit-learn', 'seaborn', 'pillow', 'triton'}
PIP = [sys.executable, '-m', 'pip', '--disable-pip-version-check']


def canon(name): return re.sub(r'[-_.]+', '-', name).lower()
def wheel_name(path): return canon(Path(path).name.split('-')[0])
def wheel_version(path): return Path(path).name.split('-')[1]
def names_in(path): return {canon(n) for l in Path(path).read_text().splitlines() if not l.startswith('#') for n in l.split()}
def requirements(): return [l.strip() for l in REQUIREMENTS.read_text().splitlines() if l.strip() and not l.startswith('#')]


def target_args(python_version):
    "pip's options that pick wheels for another Python and platform (none: this one)."
    if not python_version: return ['--only-binary=:all:']
    return ['--only-binary=:all:', '--python-version', python_version, '--implementation', 'cp'] + \
           [a for p in PLATFORMS for a in ('--platform', p)]


def _pip(args, quiet=True):
    r = subprocess.run(PIP + args, capture_output=True, text=True)
    noise = 'is ignored: it is neither a file nor a directory'  # this machine's pip.conf names local mirrors that may be absent
    err = '\n'.join(l for l in r.stderr.splitlines() if noise not in l)
    if r.returncode or not quiet: print(r.stdout[-4000:], err[-4000:], sep='\n', file=sys.stderr)
    return r.returncode


def download(cache, python_version):
    "Resolve the requirements with every dependency into `cache`: offline from the cache when it is whole, else online."
    cache.mkdir(parents=True, exist_ok=True)
    args = ['download', '-q', *target_args(python_version), '-d', str(cache), *requirements()]
    if any(cache.glob('*.whl')) and _pip(args[:2] + ['--no-index', '--find-links', str(cache)] + args[2:]) == 0: return 'cache'
    if _pip(args, quiet=False): raise SystemExit(f'pip download failed for {python_version or "this Python"}')
    return 'registry'


def stub_wheel(folder, name, version):
    "A wheel holding only metadata: it stands for a package the target already holds, in the offline resolution."
    base = f'{name.replace("-", "_")}-{version}'
    with zipfile.ZipFile(folder / f'{base}-py3-none-any.whl', 'w') as z:
        z.writestr(f'{base}.dist-info/METADATA', f'Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n')
        z.writestr(f'{base}.dist-info/WHEEL', 'Wheel-Version: 1.0\nGenerator: ntaylor-stub\nRoot-Is-Purelib: true\nTag: py3-none-any\n')
        z.writestr(f'{base}.dist-info/RECORD', '')


def check(dest, python_version):
    "Resolve the requirements offline from `dest` (and its stand-ins) into an empty target; the resolved names, or exit."
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / 'report.json'
        links = [a for d in (dest, Path(f'{dest}.present')) if d.is_dir() for a in ('--find-links', str(d))]
        rc = _pip(['install', '--dry-run', '--no-index', *links, *target_args(python_version), '--target', str(Path(tmp) / 't'),
                   '--report', str(report), '--ignore-installed', *requirements()])
        if rc: raise SystemExit(f'{dest} does NOT resolve offline for Python {python_version or sys.version.split()[0]}')
        return sorted(canon(i['metadata']['name']) for i in json.loads(report.read_text())['install'])


def build(dest, python_version=None, present=PRESENT):
    "Download, leave out what the target holds, write stand-ins, prove the set offline; print its size."
    dest = Path(dest); cache, stubs = Path(f'{dest}.all'), Path(f'{dest}.present')
    source = download(cache, python_version)
    there = names_in(present)
    for d in (dest, stubs): shutil.rmtree(d, ignore_errors=True); d.mkdir(parents=True)
    kept, left = [], []
    for w in sorted(cache.glob('*.whl')):
        if wheel_name(w) in there: stub_wheel(stubs, wheel_name(w), wheel_version(w)); left.append(wheel_name(w))
        else: shutil.copy2(w, dest / w.name); kept.append(wheel_name(w))
    if HEAVY & set(kept): raise SystemExit(f'the wheelhouse picked up heavy packages the target should hold: {sorted(HEAVY & set(kept))}')
    if len(set(kept)) != len(kept): raise SystemExit(f'two versions of one package in {cache}: remove it and build again')
    resolved = check(dest, python_version)
    unused = sorted(w for w in dest.glob('*.whl') if wheel_name(w) not in resolved)  # needed only by a package left out
    for w in unused: w.unlink()
    size = sum(w.stat().st_size for w in dest.glob('*.whl'))
    print(f'{dest}: {len(kept) - len(unused)} wheels, {size / 2**20:.1f} MiB (resolved from the {source}); '
          f'left out as present on the target: {", ".join(left) or "none"}'
          + (f'; dropped as needed only by those: {", ".join(wheel_name(w) for w in unused)}' if unused else ''))
    print(f'offline dry run for Python {python_version or sys.version.split()[0]}: {len(resolved)} packages resolve: {" ".join(resolved)}')
    return resolved


def verify(dest):
    "On the target: every requirement of every installed wheel is met by what this Python sees; the stack imports."
    from importlib import import_module, metadata
    from packaging.requirements import Requirement
    missing = []
    for name in sorted({wheel_name(w) for w in Path(dest).glob('*.whl')}):
        for r in map(Requirement, metadata.requires(name) or []):
            if r.marker and not r.marker.evaluate({'extra': ''}): continue
            try: v = metadata.version(r.name)
            except metadata.PackageNotFoundError: missing.append(f'{name} needs {r} (absent)'); continue
            if v not in r.specifier and not r.specifier.contains(v, prereleases=True): missing.append(f'{name} needs {r} (found {v})')
    if missing: raise SystemExit('unmet requirements:\n  ' + '\n  '.join(missing))
    for mod in ('papermill', 'ipykernel', 'nbclient', 'nbformat', 'fastcore', 'ntaylor_nb'):
        m = import_module(mod); print(f'{mod} {getattr(m, "__version__", "?")} from {Path(m.__file__).parent}')
    import pkgutil, ntaylor_nb  # every module of the package imports here (what they import at module level is present)
    mods = [f'ntaylor_nb.{m.name}' for m in pkgutil.iter_modules(ntaylor_nb.__path__) if not m.name.startswith('_')]
    for m in mods: import_module(m)
    print(f'ntaylor_nb: {len(mods)} modules import')


def base(folder):
    "A GPU-like base for tests on this machine: links to this Python's copies of the target's packages and what they need."
    from importlib import metadata
    from packaging.requirements import Requirement
    folder = Path(folder); folder.mkdir(parents=True, exist_ok=True)
    dists = {canon(d.metadata['Name']): d for d in metadata.distributions()}
    todo, seen = [n for n in names_in(PRESENT) if n in dists], set()
    while todo:
        n = todo.pop()
        if n in seen: continue
        seen.add(n)
        for r in map(Requirement, dists[n].requires or []):
            if (not r.marker or r.marker.evaluate({'extra': ''})) and canon(r.name) in dists: todo.append(canon(r.name))
    for n in sorted(seen):
        d = dists[n]; site = Path(d.locate_file(''))
        for top in {Path(f).parts[0] for f in d.files or [] if not str(f).startswith('..')} - {'__pycache__'}:
            if not (folder / top).exists() and (site / top).exists(): os.symlink(site / top, folder / top)
    (folder / 'present.txt').write_text('\n'.join(sorted(seen)) + '\n')
    print(f'{folder}: {len(seen)} packages linked (their names in {folder / "present.txt"})')


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    sub = ap.add_subparsers(dest='cmd', required=True)
    b = sub.add_parser('build', help='download, leave out what the target holds, prove offline, print the size')
    b.add_argument('dest'); b.add_argument('--python-version', default=None, help='e.g. 3.12 (default: this Python)')
    b.add_argument('--present', default=str(PRESENT), help='file of package names the target already holds')
    c = sub.add_parser('check', help='the offline dry run alone'); c.add_argument('dest'); c.add_argument('--python-version', default=None)
    v = sub.add_parser('verify', help='on the target, after installing'); v.add_argument('dest')
    s = sub.add_parser('base', help='a GPU-like base of links (tests on this machine)'); s.add_argument('folder')
    a = ap.parse_args()
    if a.cmd == 'build': build(a.dest, a.python_version, a.present)
    elif a.cmd == 'check': print(' '.join(check(Path(a.dest), a.python_version)))
    elif a.cmd == 'verify': verify(a.dest)
    else: base(a.folder)
