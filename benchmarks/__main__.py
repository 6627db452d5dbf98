"""`make bench`: run every benchmark, write benchmarks/results.json, end with one line per measure."""
import json
import sys
from pathlib import Path

from . import p12_regret, p2b_large_scope, p3_exploration, p4_ce_hindsight, p5_conv_records
from .common import machine

MEASURES = {'P12': p12_regret, 'P2b': p2b_large_scope, 'P3': p3_exploration, 'P4-CE': p4_ce_hindsight, 'P5': p5_conv_records}
# run only when named (`python -m benchmarks P2b`): at the size (P2B_ROUNDS=10000) its kept factors take ~4.5 GB and its CG hours on 2 cores
ON_REQUEST = {'P2b'}


def main(argv):
    chosen = argv or [m for m in MEASURES if m not in ON_REQUEST]
    unknown = [m for m in chosen if m not in MEASURES]
    if unknown: sys.exit(f'unknown measure(s) {unknown}; available: {list(MEASURES)}')
    print('machine:', machine())
    results, lines = {}, []
    for m in chosen:
        out = MEASURES[m].main()
        for r, l in (out if isinstance(out[0], tuple) else [out]):
            results[l.split()[0]] = r; lines.append(l)
    out = Path(__file__).parent / 'results.json'
    old = json.loads(out.read_text()) if out.exists() else {}
    old.update({m: dict(r, machine=machine()) for m, r in results.items()})
    out.write_text(json.dumps(old, indent=1))
    print('\n'.join(lines))


if __name__ == '__main__': main(sys.argv[1:])
