"""How likely a perfectly calibrated 90 % interval is to show 88-92 % coverage in groups of the
given sizes: the chance, per group, that a binomial(n, 0.9) share lands in [0.88, 0.92], and
for all groups at once. Why: a group of a few dozen faces cannot show its coverage to within
two points, so a miss there is no evidence against the interval, nor a hit for it.

    .venv/bin/python scripts/coverage_odds.py 180 71 45 32 266 940
"""

from __future__ import annotations

import sys

import numpy as np
from scipy.stats import binom

TARGET, LOW, HIGH = 0.9, 0.88, 0.92


def chance_in_band(n: int) -> float:
    hits_low, hits_high = int(np.ceil(LOW * n - 1e-9)), int(np.floor(HIGH * n + 1e-9))
    return float(binom.cdf(hits_high, n, TARGET) - binom.cdf(hits_low - 1, n, TARGET))


if __name__ == "__main__":
    sizes = [int(a) for a in sys.argv[1:]] or [180, 71, 45, 32, 266, 940]
    print("| faces in the group | chance a true 90 % shows 88-92 % |\n|---|---|")
    for n in sizes:
        print(f"| {n} | {chance_in_band(n):.1%} |")
    print(f"\nall {len(sizes)} groups at once: {np.prod([chance_in_band(n) for n in sizes]):.2%}; "
          f"faces a group needs to show its share to within +-2 points (95 %): {1.96**2 * TARGET * (1 - TARGET) / 0.02**2:.0f}")
