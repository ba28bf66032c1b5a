"""Paired effects (nmtune.stats) against hand computations with scipy's distributions."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.power import TTestPower

from nmtune._validation import NMTuneError
from nmtune.stats import (
    CLAIMS,
    claim_differences,
    claim_effects,
    paired_effect,
    seed_effects,
    t_test_power,
)

# Two tasks x five seeds of paired differences (points), plus a method column averaged over.
SEEDS = [0, 1, 2, 3, 4]
TABLE = pd.DataFrame({
    "seed": SEEDS * 4,
    "task": ["mnist"] * 10 + ["digits"] * 10,
    "method": (["lp"] * 5 + ["mlp"] * 5) * 2,
    "diff": [1.2, 0.4, 2.0, -0.3, 1.1, 0.8, 0.2, 1.6, 0.1, 0.9,
             2.5, -1.0, 0.7, 1.9, 0.3, 1.5, 0.0, 1.1, 2.1, -0.2],
})


def _per_seed():
    by_task_seed = TABLE.groupby(["task", "seed"])["diff"].mean().unstack("seed")
    return by_task_seed.mean(axis=0).to_numpy(), by_task_seed.to_numpy()


def _power_by_hand(d, n, alpha=0.05):
    """Two-sided one-sample t-test power from the noncentral t distribution."""
    crit = stats.t.ppf(1 - alpha / 2, n - 1)
    nc = d * math.sqrt(n)
    # The opposite tail is NaN in scipy once it underflows; it is then negligible.
    return stats.nct.sf(crit, n - 1, nc) + np.nan_to_num(stats.nct.cdf(-crit, n - 1, nc))


def test_seed_effects_average_over_other_columns():
    out = seed_effects(TABLE)
    assert len(out) == 10
    row = out[(out.task == "mnist") & (out.seed == 0)]["diff"].item()
    assert row == pytest.approx((1.2 + 0.8) / 2)


def test_t_interval_and_mean_by_hand():
    per_seed, per_task = _per_seed()
    e = paired_effect(TABLE)
    assert e.mean == pytest.approx(per_task.mean())
    n = per_seed.size
    half = stats.t.ppf(0.975, n - 1) * per_seed.std(ddof=1) / math.sqrt(n)
    assert (e.t_low, e.t_high) == pytest.approx((per_seed.mean() - half, per_seed.mean() + half))
    assert (e.low, e.high) == (e.t_low, e.t_high)
    assert e.sd == pytest.approx(per_seed.std(ddof=1))
    assert (e.n_seeds, e.n_tasks, e.n_pairs) == (5, 2, 20)


def test_stratified_bootstrap_matches_a_hand_resampled_one():
    _, per_task = _per_seed()
    rng = np.random.default_rng(123)
    b = 40_000
    # Resample each task's seeds on their own, then average the task means.
    means = np.mean([row[rng.integers(0, row.size, size=(b, row.size))].mean(axis=1)
                     for row in per_task], axis=0)
    low, high = np.percentile(means, [2.5, 97.5])
    e = paired_effect(TABLE, interval="bootstrap", n_resamples=20_000)
    assert (e.low, e.high) == (e.boot_low, e.boot_high)
    # Monte Carlo error of a 2.5% quantile with these resample counts is a few hundredths.
    assert e.boot_low == pytest.approx(low, abs=0.06)
    assert e.boot_high == pytest.approx(high, abs=0.06)
    # Stratification: pooling the tasks' seeds would resample tasks unevenly and be wider.
    assert e.boot_high - e.boot_low < (e.t_high - e.t_low)


def test_tost_by_hand():
    per_seed, _ = _per_seed()
    n, m = per_seed.size, 2.0
    se = per_seed.std(ddof=1) / math.sqrt(n)
    p_low = stats.t.sf((per_seed.mean() + m) / se, n - 1)
    p_high = stats.t.cdf((per_seed.mean() - m) / se, n - 1)
    e = paired_effect(TABLE, margin=m)
    assert e.tost_p == pytest.approx(max(p_low, p_high))


@pytest.mark.parametrize("margin", [0.5, 1.0, 2.0])
def test_power_seeds_needed_and_mde_by_hand(margin):
    per_seed, _ = _per_seed()
    sd = per_seed.std(ddof=1)
    e = paired_effect(TABLE, margin=margin)
    d = margin / sd
    assert _power_by_hand(d, e.seeds_needed) >= 0.8 > _power_by_hand(d, e.seeds_needed - 1)
    solved = TTestPower().solve_power(effect_size=d, nobs=None, alpha=0.05, power=0.8)
    assert e.seeds_needed == math.ceil(solved)
    # The study as run (5 seeds) detects its MDE with exactly 80% power.
    assert _power_by_hand(e.mde / sd, 5) == pytest.approx(0.8, abs=1e-6)


@pytest.mark.parametrize(
    "diffs,sign,verdict",
    [
        ([2.1, 2.5, 1.8, 2.9, 2.2], 1, "reproduced"),
        ([2.1, 2.5, 1.8, 2.9, 2.2], -1, "contradicted"),
        ([-2.1, -2.5, -1.8, -2.9, -2.2], -1, "reproduced"),
        ([0.1, -0.1, 0.05, 0.0, -0.05, 0.02], 1, "no effect"),
        ([0.5, -0.3], 1, "underpowered"),
        ([3.0, -2.0, 1.0, -1.5], 1, "underpowered"),
        ([1.0], 1, "underpowered"),
    ],
)
def test_verdicts(diffs, sign, verdict):
    e = paired_effect(diffs, sign=sign)
    assert e.verdict == verdict
    assert verdict.split()[0] in e.describe()


def test_underpowered_names_the_seeds_that_would_resolve():
    e = paired_effect([3.0, -2.0, 1.0, -1.5], margin=1.0)
    assert e.seeds_needed > 4 and f"{e.seeds_needed} seeds" in e.describe()
    assert e.mde > 1.0  # the study as run cannot detect 1 point
    assert paired_effect([0.1, -0.1, 0.05, 0.0]).seeds_needed == 2  # 1 pt is 15 SDs
    one = paired_effect([1.0])
    assert one.seeds_needed is None and math.isnan(one.mde) and "needs at least 2" in one.describe()


def test_no_spread_gives_a_point_interval():
    e = paired_effect([1.5, 1.5, 1.5])
    assert (e.t_low, e.t_high) == (1.5, 1.5) and e.verdict == "reproduced"


@pytest.mark.parametrize(
    "kwargs,match",
    [({"sign": 0}, "sign"), ({"margin": 0}, "margin"), ({"alpha": 1.5}, "alpha"),
     ({"interval": "bca"}, "interval")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(NMTuneError, match=match):
        paired_effect([1.0, 2.0], **kwargs)


def test_bad_tables():
    with pytest.raises(NMTuneError, match="seed"):
        paired_effect(pd.DataFrame({"diff": [1.0]}))
    with pytest.raises(NMTuneError, match="finite"):
        paired_effect(pd.DataFrame({"seed": [0, 1], "diff": [1.0, np.nan]}))
    with pytest.raises(NMTuneError, match="no paired"):
        paired_effect([])


def test_claim_differences_pair_rows_as_the_report_does(make_results):
    results = make_results(spread=0.0)  # no noise: every difference is the planted effect
    diffs = claim_differences(results)
    assert set(diffs) == set(CLAIMS)
    slight = diffs["slight noise helps ID"]
    # 5% and 10% averaged per pair: 5 seeds x 2 ID tasks x 3 methods, +1 point each.
    assert len(slight) == 30 and np.allclose(slight["diff"], 1.0)
    assert np.allclose(diffs["noise hurts OOD"]["diff"], -3.0)
    assert np.allclose(diffs["NMTune beats LP (ID)"]["diff"], 2.0)
    assert np.allclose(diffs["NMTune beats MLP (OOD)"]["diff"], 1.0)
    assert len(diffs["NMTune beats LP (OOD)"]) == 5 * 4  # seeds x noise ratios


def test_claim_effects_find_the_planted_effects(make_results):
    effects = claim_effects(make_results(spread=0.005))
    assert effects["slight noise helps ID"].verdict == "reproduced"
    assert effects["noise hurts OOD"].verdict == "reproduced"
    assert effects["noise hurts OOD"].mean == pytest.approx(-3.0, abs=0.3)
    assert all(e.verdict == "reproduced" for e in effects.values())


def test_claims_left_out_when_untestable(make_results):
    results = make_results()
    only_id = results[(results["kind"] == "id") & (results["method"] != "mlp")]
    assert set(claim_differences(only_id)) == {"slight noise helps ID", "NMTune beats LP (ID)"}


def test_seeds_needed_for_a_small_effect_follows_the_normal_approximation():
    x = np.array([10.0, -10.0, 5.0, -5.0, 0.0])  # sd 7.9: 1 pt is d = 0.13
    e = paired_effect(x)
    d = 1.0 / x.std(ddof=1)
    normal = ((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) / d) ** 2
    assert normal < e.seeds_needed <= normal + 3  # the t-test needs a couple more


@pytest.mark.parametrize("d,n", [(0.3, 10), (0.8, 5), (1.5, 3), (0.1, 500)])
def test_t_test_power_equals_statsmodels(d, n):
    expected = TTestPower().power(effect_size=d, nobs=n, alpha=0.05, alternative="two-sided")
    assert t_test_power(d, n, 0.05) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("diffs", [[0.5, 0.8], [0.9, 1.3, 1.0], [2.0, -1.0, 0.5, 1.5]])
def test_seeds_needed_agrees_with_the_mde(diffs):
    # statsmodels' power is NaN at 2 seeds and d = 5 (it once read as "2 seeds suffice" while
    # the MDE of those 2 seeds was 2 points): the two answers must tell one story.
    e = paired_effect(diffs, margin=1.0)
    assert (e.seeds_needed <= e.n_seeds) == (e.mde <= 1.0)
    d = 1.0 / e.sd
    assert _power_by_hand(d, e.seeds_needed) >= 0.8
    assert e.seeds_needed == 2 or _power_by_hand(d, e.seeds_needed - 1) < 0.8
