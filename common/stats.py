"""Statistics over seeds and paired comparisons, computed with scipy.stats (never by hand).

Every number over seeds is reported as `summarize(values)`:
    {"mean", "std" (sample, ddof=1), "ci95": [lo, hi] (Student t), "n", "values"}
and every comparison of two methods run on the *same* seeds as `paired(a, b)`:
    {"mean_diff" (a - b), "ci95" (t interval of the paired differences), "p_value" (paired t-test),
     "p_value_permutation" (exact/MC sign-flip test), "n", "diffs", "verdict"}.
Two classifiers scored on the same test images are compared by `mcnemar`; several secondary comparisons
get `holm`-adjusted p-values. The verdict word is computed here, so the report never types "higher".
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

ALPHA = 0.05
CONFIDENCE = 0.95  # of every interval: the results call them ci95


def _floats(values) -> np.ndarray:
    return np.asarray([float(v) for v in values], dtype=np.float64)


def summarize(values) -> dict:
    """Mean, sample std, t-based CI of the mean and the raw values (n = 1 gives a degenerate CI)."""
    x = _floats(values)
    n = len(x)
    if n == 0:
        raise ValueError("summarize() needs at least one value")
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if n > 1 else 0.0
    lo = hi = mean
    if std > 0:
        lo, hi = stats.t.interval(CONFIDENCE, n - 1, loc=mean, scale=std / math.sqrt(n))
    return {"mean": mean, "std": std, "ci95": [float(lo), float(hi)], "n": n, "values": x.tolist()}


def sign_flip_p_value(diffs, n_resamples: int = 20000, seed: int = 0) -> float:
    """Two-sided paired permutation test of mean(diffs) = 0: every sign pattern is equally likely under H0.
    scipy enumerates all 2^n sign patterns when n_resamples >= 2^n (exact test), else samples them."""
    d = _floats(diffs)
    if np.all(d == 0):
        return 1.0
    res = stats.permutation_test((d,), np.mean, permutation_type="samples", alternative="two-sided",
                                 n_resamples=n_resamples, rng=np.random.default_rng(seed))
    return float(res.pvalue)


def verdict(lo: float, hi: float, *, p: float | None = None) -> str:
    """The word for a difference a - b whose 95% CI is [lo, hi]: it must exclude 0 to be a direction, and a
    given p (e.g. Holm-adjusted, for a secondary endpoint) must be below ALPHA too."""
    if p is not None and p >= ALPHA:
        return "no significant difference"
    if lo > 0:
        return "higher"
    return "lower" if hi < 0 else "no significant difference"


def paired(a, b) -> dict:
    """Paired comparison of a and b measured on the same seeds: difference a - b."""
    a, b = _floats(a), _floats(b)
    if a.shape != b.shape or len(a) < 2:
        raise ValueError(f"paired() needs two equally long samples of n >= 2, got {len(a)} and {len(b)}")
    d = a - b
    s = summarize(d)
    if np.all(d == d[0]):  # constant differences: the t-test is undefined, the CI is the point
        p = 0.0 if d[0] != 0 else 1.0
    else:
        p = float(stats.ttest_rel(a, b).pvalue)
    return {"mean_diff": s["mean"], "ci95": s["ci95"], "p_value": p, "test": "paired t-test",
            "p_value_permutation": sign_flip_p_value(d), "n": len(d), "diffs": d.tolist(),
            "verdict": verdict(*s["ci95"])}


def bootstrap_ci(diffs, n_resamples: int = 10000, seed: int = 0) -> list[float]:
    """Percentile-BCa bootstrap CI of the mean of `diffs` (scipy.stats.bootstrap)."""
    d = _floats(diffs)
    if np.all(d == d[0]):
        return [float(d[0]), float(d[0])]
    res = stats.bootstrap((d,), np.mean, confidence_level=CONFIDENCE, n_resamples=n_resamples,
                          rng=np.random.default_rng(seed), method="BCa")
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


def wilson(k: int, n: int) -> dict:
    """A proportion k/n with its Wilson score interval (good for small n, e.g. 15 faces per group)."""
    if n <= 0:
        raise ValueError("wilson() needs n > 0")
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return {"rate": k / n, "k": int(k), "n": int(n), "ci95": [float(ci.low), float(ci.high)]}


def mcnemar(correct_a, correct_b) -> dict:
    """McNemar's exact test of two classifiers on the same images (one bool per image each): only the images
    exactly one gets right count; under H0 (equal accuracy) each is a fair coin, a_only ~ Binomial(a_only +
    b_only, 1/2) (scipy.stats.binomtest). acc_a - acc_b = (a_only - b_only) / n; its CI maps the coin's exact
    (Clopper-Pearson) interval [q_lo, q_hi] through (2q - 1)(a_only + b_only) / n."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    a_only, b_only, n = int((a & ~b).sum()), int((~a & b).sum()), len(a)
    p, ci = 1.0, [0.0, 0.0]
    if a_only + b_only:
        test = stats.binomtest(a_only, a_only + b_only)
        p, q = float(test.pvalue), test.proportion_ci(confidence_level=CONFIDENCE, method="exact")
        ci = [float((2 * x - 1) * (a_only + b_only) / n) for x in (q.low, q.high)]
    return {"acc_a": float(a.mean()), "acc_b": float(b.mean()), "diff": (a_only - b_only) / n, "ci95": ci,
            "a_only": a_only, "b_only": b_only, "n": n, "p_value": p, "verdict": verdict(*ci, p=p)}


def holm(p_values) -> list[float]:
    """Holm's (1979) step-down adjusted p-values, in the input order: the i-th smallest of m times (m - i + 1),
    made non-decreasing, capped at 1. Adjusted p < ALPHA keeps the family-wise error rate <= ALPHA."""
    p = _floats(p_values)
    order, adjusted = np.argsort(p, kind="stable"), np.empty_like(p)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(p[order] * (len(p) - np.arange(len(p)))))
    return adjusted.tolist()


STD_EPS = 1e-8  # floor of a standard deviation: a constant latent dimension must not divide by zero


def standardise(z, ref=None):
    """z (N, d) with zero mean and unit variance per dimension, using the statistics of `ref` (N', d)
    (default: z itself), so distances no longer depend on each latent space's scale."""
    ref = z if ref is None else ref
    return (z - ref.mean(0)) / ref.std(0).clamp_min(STD_EPS)
