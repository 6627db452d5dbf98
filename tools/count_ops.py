"""Count the device operations and host synchronisations of `hindsight` on a recording, by solver phase: a proxy for its
time on a GPU where the solves are small and each operation's launch costs more than its arithmetic (figure 3's neuron
scopes: benchmarks/RESULTS.md, P4 section, "Thirteenth session"). Runs on the CPU; counts what would be a kernel launch
(every ATen operation except views and allocations) and what would wait for the device (`.item()`, `.tolist()`, `.numpy()`,
`bool()` of a tensor, `nonzero`, `unique`, `repeat_interleave`; a `.cpu()` is none on the CPU, so copies to the host are not seen).

    python tools/count_ops.py RECORDING [PREFIXES] [--gpu-path]   # PREFIXES: recorded rounds, comma-separated (default: 1)

--gpu-path takes the solvers' GPU paths on the CPU (the compact neurons' closed-form Hessian rows, `conv_solvers._CLOSED_FORM`).

To count an earlier revision, run it from a worktree of that revision: `PYTHONPATH=/tmp/base python tools/count_ops.py ...`
after `git worktree add /tmp/base REV` (run from outside the checkout, so that its ntaylor_nb is the one imported).
"""
import collections
import contextlib
import functools
import sys
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

VIEWS = {'view', '_unsafe_view', 'slice', 'select', 'unsqueeze', 'squeeze', 'expand', 'transpose', 't', 'permute', 'as_strided',
         'alias', 'detach', '_reshape_alias', 'split', 'unbind', 'chunk', 'narrow', 'diagonal', 'lift_fresh', 'empty',
         'empty_strided', 'resize_', 'split_with_sizes', '_local_scalar_dense', 'unfold', 'set_'}  # no kernel of their own
SYNCS = {'_local_scalar_dense', 'nonzero', '_unique2', 'unique_dim', 'masked_select', 'repeat_interleave'}  # (a copy to the host is no operation on the CPU)
PHASES = {'CompactConv': ('evaluate', 'hvp', 'hessian', 'along'), 'module': ('batched_pcg', 'grid_search', 'line_search', '_ridged', '_step', '_factor')}  # (the module's that it has)


class Counter(TorchDispatchMode):
    "Operations (no views) and synchronisations, each put to the innermost phase running."
    def __init__(self):
        super().__init__()
        self.phase, self.ops, self.syncs, self.seconds = ['other'], collections.Counter(), collections.Counter(), collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket).split('.')[-1]
        if name not in VIEWS: self.ops[self.phase[-1]] += 1
        if name in SYNCS: self.syncs[self.phase[-1]] += 1
        return func(*args, **(kwargs or {}))

    @contextlib.contextmanager
    def phases(self, where):
        """Put each of `where`'s (object, name) functions in a phase of its name while in the block, and count `.tolist()` and
        `.numpy()` as synchronisations (on the CPU they reach no ATen operation); all are restored after."""
        saved = [(obj, name, getattr(obj, name)) for obj, name in where]
        host = [(torch.Tensor, name, getattr(torch.Tensor, name)) for name in ('tolist', 'numpy')]
        for obj, name, f in host:
            def h(*a, _f=f, **k):
                self.syncs[self.phase[-1]] += 1
                return _f(*a, **k)
            setattr(obj, name, h)
        saved += host
        for obj, name, f in saved[:len(where)]:
            def g(*a, _f=f, _name=name, **k):
                self.phase.append(_name); t = time.perf_counter()
                try: return _f(*a, **k)
                finally: self.phase.pop(); self.seconds[_name] += time.perf_counter() - t
            setattr(obj, name, functools.wraps(f)(g))
        try: yield self
        finally:
            for obj, name, f in saved: setattr(obj, name, f)


def main(argv):
    gpu_path = '--gpu-path' in argv
    argv = [a for a in argv if a != '--gpu-path']
    if not 1 <= len(argv) <= 2: raise SystemExit(__doc__)
    import importlib
    import ntaylor_nb.conv_solvers as cs
    cn = cs if hasattr(cs, 'batched_pcg') else importlib.import_module('ntaylor_nb.conv_newton')  # (one module before the thirteenth session)
    from ntaylor_nb.hindsight import hindsight
    from ntaylor_nb.regret import RegretRecording
    try: prefixes = [int(p) for p in (argv[1] if len(argv) > 1 else '1').split(',')]
    except ValueError: raise SystemExit(f'PREFIXES={argv[1]!r}: recorded rounds, whole numbers separated by commas (e.g. 1,2,4)')
    try: rec = RegretRecording(argv[0])
    except (FileNotFoundError, ValueError) as e: raise SystemExit(f'RECORDING={argv[0]!r}: {e}')
    c = Counter()
    where = [(cs.CompactConv, n) for n in PHASES['CompactConv']] + [(cn, n) for n in PHASES['module'] if hasattr(cn, n)]
    t = time.perf_counter()
    closed = getattr(cs, '_CLOSED_FORM', None)  # (a revision before the thirteenth session has no such switch: one path)
    if gpu_path and closed is not None: cs._CLOSED_FORM = (*closed, 'cpu')
    try:
        with c.phases(where), c: df = hindsight(rec, prefixes, progress=False)
    finally:
        if closed is not None: cs._CLOSED_FORM = closed
    s = time.perf_counter() - t
    print(f'ops={sum(c.ops.values())} syncs={sum(c.syncs.values())} seconds={s:.1f} (counting slows it; the seconds of a phase include those inside it) '
          f'rows={len(df)} certified={int(df.certified.sum())} max_optimum_gap={df.optimum_gap.max():.3g}')
    for ph in sorted(c.ops, key=c.ops.get, reverse=True):
        print(f'  {ph:12s} ops={c.ops[ph]:8d} syncs={c.syncs[ph]:6d} seconds={c.seconds.get(ph, float("nan")):.1f}')
    return df


if __name__ == '__main__': main(sys.argv[1:])
