"""common.stats against hand computations (formulas written out here, not scipy's calls)."""
from __future__ import annotations

import itertools
import math

import pytest
from scipy import stats as st

from common import stats


def test_summarize_matches_the_t_interval_formula():
    x = [0.61, 0.66, 0.64, 0.70, 0.59]
    n, mean = len(x), sum(x) / len(x)
    sd = math.sqrt(sum((v - mean) ** 2 for v in x) / (n - 1))
    half = st.t.ppf(0.975, n - 1) * sd / math.sqrt(n)  # only the t quantile comes from scipy
    s = stats.summarize(x)
    assert s["mean"] == pytest.approx(mean) and s["std"] == pytest.approx(sd)
    assert s["ci95"] == pytest.approx([mean - half, mean + half])
    assert s["values"] == x and s["n"] == 5
    assert st.t.ppf(0.975, 4) == pytest.approx(2.776, abs=1e-3)  # the textbook table value


def test_paired_t_test_matches_the_formula_on_the_differences():
    a, b = [0.80, 0.78, 0.83, 0.79, 0.81], [0.66, 0.70, 0.65, 0.69, 0.67]
    d = [u - v for u, v in zip(a, b)]
    n, m = len(d), sum(d) / len(d)
    sd = math.sqrt(sum((v - m) ** 2 for v in d) / (n - 1))
    t = m / (sd / math.sqrt(n))
    p = 2 * st.t.sf(abs(t), n - 1)
    r = stats.paired(a, b)
    assert r["mean_diff"] == pytest.approx(m) and r["p_value"] == pytest.approx(p)
    assert r["verdict"] == "higher" and r["ci95"][0] > 0
    assert stats.paired(b, a)["verdict"] == "lower"


def test_exact_sign_flip_p_value_by_enumeration():
    d = [0.5, 1.0, -0.25, 2.0]
    obs = abs(sum(d) / len(d))
    flips = [abs(sum(s * v for s, v in zip(signs, d)) / len(d)) for signs in itertools.product([1, -1], repeat=4)]
    p = sum(f >= obs - 1e-12 for f in flips) / len(flips)  # 2^4 = 16 equally likely sign patterns
    assert stats.sign_flip_p_value(d) == pytest.approx(p)
    assert stats.sign_flip_p_value([1.0, 2.0, 3.0]) == pytest.approx(2 / 8)  # only all-+ and all-- as extreme


def test_verdict_needs_the_interval_to_exclude_zero():
    assert stats.verdict(0.01, 0.2) == "higher"
    assert stats.verdict(-0.2, -0.01) == "lower"
    assert stats.verdict(-0.01, 0.2) == "no significant difference"
    r = stats.paired([1.0, 2.0, 3.0, 4.0], [1.5, 1.0, 3.5, 3.0])  # diffs -0.5, 1, -0.5, 1: straddles 0
    assert r["verdict"] == "no significant difference" and r["ci95"][0] < 0 < r["ci95"][1]


def test_wilson_interval_matches_its_formula():
    k, n, z = 3, 15, st.norm.ppf(0.975)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    w = stats.wilson(k, n)
    assert w["ci95"] == pytest.approx([centre - half, centre + half], abs=1e-9)
    assert w["rate"] == pytest.approx(0.2)


def test_bootstrap_ci_contains_the_mean_and_narrows_with_n():
    small = stats.bootstrap_ci([0.1, 0.3, 0.2, 0.4, 0.25])
    large = stats.bootstrap_ci([0.1, 0.3, 0.2, 0.4, 0.25] * 8)
    assert small[0] < 0.25 < small[1]
    assert large[1] - large[0] < small[1] - small[0]


def test_mcnemar_matches_the_exact_binomial_sum_on_the_discordant_images():
    # 10 images only a gets right, 2 only b, 88 both or neither: p = 2 P(X <= 2), X ~ Binomial(12, 1/2)
    a = [True] * 10 + [False] * 2 + [True] * 80 + [False] * 8
    b = [False] * 10 + [True] * 2 + [True] * 80 + [False] * 8
    p = 2 * sum(math.comb(12, k) for k in range(3)) / 2 ** 12   # 158 / 4096
    r = stats.mcnemar(a, b)
    assert (r["a_only"], r["b_only"], r["n"]) == (10, 2, 100) and r["diff"] == pytest.approx(0.08)
    assert r["p_value"] == pytest.approx(p) and p == pytest.approx(0.0386, abs=1e-4)
    assert r["ci95"][0] > 0 and r["verdict"] == "higher" and stats.mcnemar(b, a)["verdict"] == "lower"
    # 7 against 5 discordant: p = 2 P(X >= 7) = 2 * 1586 / 4096 > 0.05, whatever the concordant count
    c = stats.mcnemar([True] * 7 + [False] * 5 + [True] * 50, [False] * 7 + [True] * 5 + [True] * 50)
    assert c["p_value"] == pytest.approx(2 * 1586 / 4096) and c["verdict"] == "no significant difference"
    assert stats.mcnemar([True, False], [True, False])["p_value"] == 1.0  # no discordant image


def test_holm_adjusts_step_down_and_keeps_the_order():
    # sorted 0.01, 0.03, 0.04 times 3, 2, 1 = 0.03, 0.06, 0.04 -> non-decreasing: 0.03, 0.06, 0.06
    assert stats.holm([0.04, 0.01, 0.03]) == pytest.approx([0.06, 0.03, 0.06])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # 0.5 * 2 capped at 1
    assert stats.holm([0.02]) == pytest.approx([0.02])          # one test: nothing to adjust
    assert stats.verdict(0.01, 0.2, p=0.06) == "no significant difference"
