"""`make bench`: run every benchmark, write benchmarks/results.json, end with one line per measure."""
import json
import sys
from pathlib import Path

from . import p3_exploration
from .common import machine

MEASURES = {'P3': p3_exploration}


def main(argv):
    chosen = argv or list(MEASURES)
    unknown = [m for m in chosen if m not in MEASURES]
    if unknown: sys.exit(f'unknown measure(s) {unknown}; available: {list(MEASURES)}')
    print('machine:', machine())
    results, lines = {}, []
    for m in chosen:
        r, l = MEASURES[m].main(); results[m] = r; lines.append(l)
    out = Path(__file__).parent / 'results.json'
    old = json.loads(out.read_text()) if out.exists() else {}
    old.update({m: dict(r, machine=machine()) for m, r in results.items()})
    out.write_text(json.dumps(old, indent=1))
    print('\n'.join(lines))


if __name__ == '__main__': main(sys.argv[1:])
