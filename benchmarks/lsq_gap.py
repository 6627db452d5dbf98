"""Not a measure of `make bench`: how `ntaylor_nb.quadratic.lsq_min`'s gap compares with its actual distance from the minimum,
on random least-squares problems whose columns are nearly collinear (benchmarks/RESULTS.md, twenty-second session).

    python -m benchmarks.lsq_gap [--draws 3]

For rows of 40 x 6, 64 x 17 and 150 x 51 (standard normal, rounded to float32 as recorded inputs are), two pairs of columns
made collinear to delta (1e-5 .. 1e-8) and two right-hand sides, `lsq_min` (QR, then an SVD of the triangle) against the same
minimum in 50-digit arithmetic (mpmath's QR of the rows: full column rank at these deltas). Prints each problem's distance,
gap and their ratio, and the smallest and largest ratio; about two minutes.
"""
import argparse
import time

import mpmath
import numpy as np

from ntaylor_nb.quadratic import lsq_min


def exact_min(A, Y, c=None, dps=50):
    "c - |Q'Y|^2 for the rows' QR factor Q, in `dps` digits (rows of full column rank; c: |Y|^2 in the same digits where None, the residual)."
    with mpmath.workdps(dps):
        Qm, _ = mpmath.qr(mpmath.matrix(A.tolist()))
        z = Qm[:, :A.shape[1]].T * mpmath.matrix(np.reshape(Y, (len(A), -1)).tolist())
        c = mpmath.fsum(mpmath.mpf(float(t)) ** 2 for t in np.ravel(Y)) if c is None else mpmath.mpf(c)
        return c - mpmath.fsum(t ** 2 for t in z)


def problems(draws, seed=0):
    "(m, P, delta, A, Y): rows with columns 0, 1 and 2, 3 collinear to delta, and two right-hand sides."
    rng = np.random.default_rng(seed)
    for m, P in ((40, 6), (64, 17), (150, 51)):
        for delta in (1e-5, 1e-6, 1e-7, 1e-8):
            for _ in range(draws):
                A = rng.normal(size=(m, P)); A[:, 1] = A[:, 0] + delta * rng.normal(size=m); A[:, 3] = A[:, 2] * (1 + 3 * delta) + delta * rng.normal(size=m)
                yield m, P, delta, A.astype(np.float32).astype(np.float64), rng.normal(size=(m, 2))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0]); ap.add_argument('--draws', type=int, default=3)
    a = ap.parse_args(argv)
    t, ratios = time.time(), []
    print('rows  vars  delta  distance  gap  gap/distance')
    for m, P, delta, A, Y in problems(a.draws):
        c = float((Y * Y).sum())
        v, g = lsq_min(A, Y, c, gap=True)
        d = abs(v - float(exact_min(A, Y, c)))
        ratios.append(g / max(d, 1e-300))
        print(f'{m:4d} {P:5d} {delta:6.0e}  {d:.2e}  {g:.2e}  {ratios[-1]:.3g}')
    print(f'{len(ratios)} problems, {time.time() - t:.0f} s; gap / distance from {min(ratios):.3g} to {max(ratios):.3g}'
          f' (below 1: {sum(r < 1 for r in ratios)})')


if __name__ == '__main__': main()
