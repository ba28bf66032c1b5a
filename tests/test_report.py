"""Claim checks and the study report, on synthetic results whose truth is known by construction.

Numbers in the claims are checked against independent pandas/scipy computations written out
here; verdicts against effects built far outside (or exactly inside) the seed spread.
"""

import argparse
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.power import TTestPower

from nmtune._validation import NMTuneError
from nmtune.cli import COMMANDS
from nmtune.cli.report import register
from nmtune.report import Claim, build_report, check_claims, load_results, summary_table

RATIOS = (0.0, 0.05, 0.1, 0.2, 0.3)
SEEDS = (0, 1, 2)
METHODS = ("lp", "mlp", "nmtune")
ID_TASKS = {"fmnist": "fashion-mnist/train", "mnist": "mnist/train"}
OOD_TASKS = {"mnist->digits": "mnist/train"}


def make_results(id_effect=None, ood_effect=None, method_gain=None, jitter=0.002, seed=0):
    """One row per (ratio, seed, task, method); accuracy = base + effect(ratio, seed) + gain.

    ``id_effect(ratio, seed)`` / ``ood_effect(ratio, seed)`` give the noise effect (fraction),
    ``method_gain[method]`` a per-method offset; ``jitter`` adds small seeded noise.
    """
    id_effect = id_effect or (lambda r, s: 0.0)
    ood_effect = ood_effect or (lambda r, s: 0.0)
    method_gain = method_gain or {}
    rng = np.random.default_rng(seed)
    rows = []
    tasks = [(t, "id", s, 0.85, id_effect) for t, s in ID_TASKS.items()]
    tasks += [(t, "ood", s, 0.55, ood_effect) for t, s in OOD_TASKS.items()]
    for ratio in RATIOS:
        for s in SEEDS:
            for task, kind, train_set, base, effect in tasks:
                for method in METHODS:
                    acc = base + effect(ratio, s) + method_gain.get(method, 0.0)
                    rows.append({
                        "noise_type": "symmetric", "noise_ratio": ratio,
                        "realised_noise_rate": ratio, "seed": s, "task": task, "kind": kind,
                        "train_set": train_set, "test_set": task + "/test", "method": method,
                        "protocol": "last-epoch",
                        "accuracy": float(np.clip(acc + rng.normal(0, jitter), 0, 1)),
                        "chance": 0.1, "n_train": 1000, "n_test": 500,
                        "fit_seconds": 1.0 + rng.random(),
                        "loss_mse": 0.01 if method == "nmtune" else np.nan,
                        "loss_cov": 0.5 if method == "nmtune" else np.nan,
                        "loss_svd": 1e-4 if method == "nmtune" else np.nan,
                    })
    return pd.DataFrame(rows)


def make_spectrum(sve=lambda r, s: 3.0 + r, lsvr=lambda r, s: 0.2 - 0.1 * r, d=16):
    rows = []
    for ratio in RATIOS:
        for s in SEEDS:
            values = np.sort(np.random.default_rng(s).uniform(0.1, 1, d) * (1 + ratio))[::-1]
            rows.append({
                "noise_type": "symmetric", "noise_ratio": ratio, "seed": s,
                "features_of": "fashion-mnist/test", "sve": sve(ratio, s), "lsvr": lsvr(ratio, s),
                "effective_rank": np.exp(sve(ratio, s)), "n": 500, "d": d,
                "singular_values": json.dumps(values.tolist()),
            })
    return pd.DataFrame(rows)


def make_pretrain():
    return pd.DataFrame([
        {"noise_type": "symmetric", "noise_ratio": r, "seed": s, "realised_noise_rate": r,
         "train_acc_noisy": 0.9 - r, "train_acc_clean": 0.9, "eval_acc": 0.88, "seconds": 50.0}
        for r in RATIOS for s in SEEDS
    ])


def small_results():
    """Clean models only (no noise grid): the quickest report to draw."""
    results = make_results(method_gain={"nmtune": 0.03})
    return results[results["noise_ratio"] == 0]


def write_study(tmp_path, results, spectrum=None, pretrain=None, meta=True):
    results.to_csv(tmp_path / "results.csv", index=False)
    if spectrum is not None:
        spectrum.to_csv(tmp_path / "spectrum.csv", index=False)
    if pretrain is not None:
        pretrain.to_csv(tmp_path / "pretrain.csv", index=False)
    if meta:
        (tmp_path / "study.json").write_text(json.dumps({
            "name": "synthetic", "config": {"seeds": list(SEEDS), "noise": {"ratios": RATIOS}},
            "total_seconds": 123.4, "machine": "test box", "nmtune_version": "0.1.0",
        }))
    return tmp_path


def claims_by_topic(results, spectrum=None):
    claims = check_claims(results, spectrum)
    topics = ("slight_id", "ood", "sve", "lsvr", "nmtune_id", "nmtune_ood")
    return dict(zip(topics, claims, strict=True))


# --- independent references -----------------------------------------------------------------


def reference_noise_diffs(results, kind, ratios):
    """Per (seed, task, method): mean accuracy at ``ratios`` minus accuracy at 0, in points."""
    rows = results[results["kind"] == kind]
    keys = ["seed", "task", "method"]
    clean = rows[rows["noise_ratio"] == 0].set_index(keys)["accuracy"]
    noisy = rows[rows["noise_ratio"].isin(ratios)].groupby(keys)["accuracy"].mean()
    return 100 * (noisy - clean)


def per_seed_effect(diffs):
    """Per-seed effect: differences averaged over methods per (task, seed), then over tasks."""
    return diffs.groupby(["task", "seed"]).mean().groupby("seed").mean()


def t_interval(x):
    """95% t-interval of the mean, written out with scipy's t quantile."""
    x = np.asarray(x)
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return x.mean() - half, x.mean() + half


# --- claim 1: slight noise helps ID ---------------------------------------------------------


def test_slight_noise_helping_id_is_reproduced_with_matching_numbers():
    bump = lambda r, s: 0.04 if r in (0.05, 0.1) else -0.02 * r  # noqa: E731
    results = make_results(id_effect=bump)
    claim = claims_by_topic(results)["slight_id"]
    assert claim.verdict == claim.verdict_text == "reproduced"
    diffs = reference_noise_diffs(results, "id", (0.05, 0.1))
    per_seed = per_seed_effect(diffs)
    low, high = t_interval(per_seed)
    assert claim.statistics["effect.n_pairs"] == len(diffs) == (
        len(SEEDS) * len(ID_TASKS) * len(METHODS))
    assert claim.statistics["effect.n_seeds"] == len(SEEDS)
    assert claim.statistics["effect.mean"] == pytest.approx(diffs.mean())
    assert claim.statistics["effect.low"] == pytest.approx(low)
    assert claim.statistics["effect.high"] == pytest.approx(high)
    assert claim.effect == f"{diffs.mean():+.2f} pts [{low:+.2f}, {high:+.2f}]"
    assert f"[{low:+.2f}, {high:+.2f}]" in claim.evidence
    lp = diffs.xs("lp", level="method")
    assert claim.statistics["lp.mean_diff_pts"] == pytest.approx(lp.mean())
    assert f"lp {lp.mean():+.2f} pts" in claim.evidence


def test_flat_id_accuracy_is_underpowered_with_the_seeds_needed():
    # Even seeds gain one point, odd seeds lose one: the mean (≈0) sits inside the spread.
    swing = lambda r, s: 0.0 if r == 0 else (0.01 if s % 2 == 0 else -0.01)  # noqa: E731
    results = make_results(id_effect=swing, jitter=0.0)
    results = results[results["seed"] < 2]
    claim = claims_by_topic(results)["slight_id"]
    assert claim.verdict == "underpowered"
    # Per-seed effects +1 and -1 points: SD sqrt(2); seeds for 1 point at 80% power from the
    # noncentral t, as statsmodels plans a one-sample t-test.
    needed = math.ceil(TTestPower().solve_power(effect_size=1 / math.sqrt(2), alpha=0.05,
                                                power=0.8))
    assert claim.statistics["effect.seeds_needed"] == needed
    assert claim.verdict_text == f"underpowered: {needed} seeds would detect 1 pts with 80% power"
    wider = check_claims(results, effect_size=2.0)[0]
    assert wider.statistics["effect.seeds_needed"] < needed
    assert "detect 2 pts" in wider.verdict_text


def test_slight_noise_clearly_hurting_id_is_contradicted():
    results = make_results(id_effect=lambda r, s: -0.05 * (r > 0))
    claim = claims_by_topic(results)["slight_id"]
    assert claim.verdict == "contradicted"
    assert claim.statistics["effect.mean"] == pytest.approx(-5, abs=0.2)
    assert claim.statistics["effect.high"] < 0


def test_clean_baseline_filed_under_another_noise_type_still_pairs():
    results = make_results(id_effect=lambda r, s: 0.04 * (r > 0))
    results.loc[results["noise_ratio"] == 0, "noise_type"] = "none"
    claim = claims_by_topic(results)["slight_id"]
    assert claim.verdict == "reproduced"
    diffs = reference_noise_diffs(results, "id", (0.05, 0.1))
    assert claim.statistics["effect.mean"] == pytest.approx(diffs.mean())


def test_no_effect_inside_the_stated_margin_only():
    # Every seed moves by +0.3 points (jitter 0.01 points): within ±1 point, not within ±0.2.
    results = make_results(id_effect=lambda r, s: 0.003 * (r > 0), jitter=0.0001)
    claim = check_claims(results, effect_size=1.0)[0]
    assert claim.verdict == "reproduced"  # a tiny but certain effect: the interval excludes 0
    flat = make_results(id_effect=lambda r, s: 0.003 * (r > 0) * (1 if s % 2 else -1),
                        jitter=0.0001)
    assert check_claims(flat, effect_size=1.0)[0].verdict_text == "no effect as large as 1 pts"
    assert check_claims(flat, effect_size=0.2)[0].verdict == "underpowered"


def test_effect_size_must_be_positive():
    # Accuracies differ by at most 100 points: a larger margin makes "no effect" vacuous.
    for bad in (0, -1.0, float("nan"), True, 100.5, 1e308):
        with pytest.raises(NMTuneError, match="effect size must be a number of points in"):
            check_claims(make_results(), effect_size=bad)


# --- claim 2: noise hurts OOD ---------------------------------------------------------------


def test_noise_hurting_ood_is_reproduced_with_spearman_beside_it():
    results = make_results(ood_effect=lambda r, s: -0.5 * r)
    claim = claims_by_topic(results)["ood"]
    assert claim.verdict == "reproduced"
    diffs = reference_noise_diffs(results, "ood", (0.3,))
    low, high = t_interval(per_seed_effect(diffs))
    assert claim.statistics["effect.mean"] == pytest.approx(diffs.mean())
    assert (claim.statistics["effect.low"], claim.statistics["effect.high"]) == (
        pytest.approx(low), pytest.approx(high))
    assert claim.statistics["effect.sign"] == -1
    ood = results[results["kind"] == "ood"]
    centred = ood["accuracy"] - ood.groupby(["task", "method"])["accuracy"].transform("mean")
    rho, p = stats.spearmanr(ood["noise_ratio"], centred)
    assert claim.statistics["spearman_rho"] == pytest.approx(rho)
    assert claim.statistics["spearman_p"] == pytest.approx(p)
    assert rho < -0.9
    assert f"ρ={rho:+.3f}" in claim.evidence and "symmetric 30%" in claim.evidence


def test_noise_helping_ood_is_contradicted_and_a_swing_underpowered():
    helped = make_results(ood_effect=lambda r, s: 0.5 * r)
    assert claims_by_topic(helped)["ood"].verdict == "contradicted"
    swing = lambda r, s: 0.0 if r == 0 else (0.02 if s % 2 == 0 else -0.02)  # noqa: E731
    flat = make_results(ood_effect=swing, jitter=0.0)
    assert claims_by_topic(flat[flat["seed"] < 2])["ood"].verdict == "underpowered"


# --- claim 3: spectrum ----------------------------------------------------------------------


def test_spectrum_moving_as_claimed_is_reproduced_with_rho_one():
    claims = claims_by_topic(make_results(), make_spectrum())
    assert claims["sve"].verdict == "reproduced"
    assert claims["lsvr"].verdict == "reproduced"
    assert claims["sve"].statistics["spearman_rho"] == pytest.approx(1.0)
    assert claims["lsvr"].statistics["spearman_rho"] == pytest.approx(-1.0)
    assert "ρ=+1.000" in claims["sve"].evidence


def test_spectrum_moving_the_other_way_or_not_at_all():
    spectrum = make_spectrum(sve=lambda r, s: 3.0 - r, lsvr=lambda r, s: 0.2)
    claims = claims_by_topic(make_results(), spectrum)
    assert claims["sve"].verdict == "contradicted"
    assert claims["lsvr"].verdict == "underpowered"  # constant: no correlation defined
    assert claims["sve"].mde != claims["sve"].mde and claims["sve"].effect == ""  # no points


def test_spectrum_claims_match_scipy_on_noisy_values():
    rng = np.random.default_rng(3)
    spectrum = make_spectrum(sve=lambda r, s: 3.0 + 0.3 * r + rng.normal(0, 0.05))
    claim = claims_by_topic(make_results(), spectrum)["sve"]
    rho, p = stats.spearmanr(spectrum["noise_ratio"], spectrum["sve"])
    assert claim.statistics["spearman_rho"] == pytest.approx(rho)
    assert claim.statistics["spearman_p"] == pytest.approx(p)
    assert claim.verdict == ("reproduced" if p < 0.05 and rho > 0 else "underpowered")


def test_spectrum_claims_not_testable_without_spectrum():
    claims = claims_by_topic(make_results())
    assert claims["sve"].verdict == claims["lsvr"].verdict == "not testable"


# --- claim 4: NMTune beats LP and MLP -------------------------------------------------------


def test_nmtune_winning_is_reproduced_with_paired_numbers():
    results = make_results(method_gain={"nmtune": 0.03})
    claims = claims_by_topic(results)
    assert claims["nmtune_id"].verdict == claims["nmtune_ood"].verdict == "reproduced"
    ids = results[results["kind"] == "id"]
    table = ids.pivot_table(index=["noise_ratio", "seed", "task"], columns="method",
                            values="accuracy")
    mdes = []
    for baseline in ("lp", "mlp"):
        diffs = 100 * (table["nmtune"] - table[baseline])
        per_seed = diffs.groupby(["task", "seed"]).mean().groupby("seed").mean()
        low, high = t_interval(per_seed)
        stats_ = claims["nmtune_id"].statistics
        assert stats_[f"vs_{baseline}.mean"] == pytest.approx(diffs.mean())
        assert stats_[f"vs_{baseline}.low"] == pytest.approx(low)
        assert stats_[f"vs_{baseline}.high"] == pytest.approx(high)
        assert stats_[f"vs_{baseline}.n_pairs"] == len(table)
        assert f"vs {baseline.upper()} {diffs.mean():+.2f} pts" in claims["nmtune_id"].effect
        # MDE: the effect size a one-sample t-test detects with 80% power (statsmodels).
        d = TTestPower().solve_power(nobs=len(SEEDS), alpha=0.05, power=0.8)
        mdes.append(d * per_seed.std(ddof=1))
        assert stats_[f"vs_{baseline}.mde"] == pytest.approx(mdes[-1], rel=1e-4)
    assert claims["nmtune_id"].mde == pytest.approx(max(mdes), rel=1e-4)


def test_nmtune_losing_to_one_baseline_is_contradicted():
    results = make_results(method_gain={"nmtune": 0.03, "lp": 0.06})
    assert claims_by_topic(results)["nmtune_id"].verdict == "contradicted"


def test_nmtune_tied_with_baselines_is_no_effect():
    results = make_results(jitter=0.0)
    claim = claims_by_topic(results)["nmtune_id"]
    assert claim.verdict == "no effect"
    assert claim.verdict_text == "no effect as large as 1 pts"


def test_missing_method_is_not_testable_and_missing_baseline_is_said():
    results = make_results(method_gain={"nmtune": 0.03})
    assert claims_by_topic(results[results["method"] != "nmtune"])["nmtune_id"].verdict == (
        "not testable"
    )
    claim = claims_by_topic(results[results["method"] != "mlp"])["nmtune_id"]
    assert claim.verdict == "reproduced"
    assert "no MLP rows" in claim.evidence


# --- studies without a noise grid -----------------------------------------------------------


def test_no_noise_grid_makes_noise_claims_not_testable():
    results = make_results(method_gain={"nmtune": 0.03})
    results = results[results["noise_ratio"] == 0].drop(columns=["noise_ratio", "noise_type"])
    spectrum = make_spectrum()
    spectrum = spectrum[spectrum["noise_ratio"] == 0]
    claims = claims_by_topic(results, spectrum)
    for topic in ("slight_id", "ood", "sve", "lsvr"):
        assert claims[topic].verdict == "not testable", topic
    assert claims["nmtune_id"].verdict == "reproduced"


def test_claim_rejects_unknown_verdict():
    with pytest.raises(NMTuneError, match="verdict"):
        Claim("x", "maybe", "")


# --- loading --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda df: df.assign(accuracy=df["accuracy"] * 100), "fractions in \\[0, 1\\]"),
        (lambda df: df.assign(kind="test"), "'id' or 'ood'"),
        (lambda df: df.drop(columns=["method"]), "required column"),
        (lambda df: df.assign(accuracy="high"), "numeric"),
    ],
)
def test_bad_results_raise_clear_errors(tmp_path, change, match):
    write_study(tmp_path, change(make_results()))
    with pytest.raises(NMTuneError, match=match):
        load_results(tmp_path)


def test_missing_directory_or_results_file(tmp_path):
    with pytest.raises(NMTuneError, match="not found"):
        load_results(tmp_path / "nope")
    with pytest.raises(NMTuneError, match="no results.csv"):
        load_results(tmp_path)


def test_corrupt_singular_values_raise(tmp_path):
    spectrum = make_spectrum().assign(singular_values="[1, 2,")
    write_study(tmp_path, make_results(), spectrum)
    with pytest.raises(NMTuneError, match="singular_values"):
        load_results(tmp_path)


def test_missing_optional_columns_degrade_with_notes(tmp_path):
    write_study(tmp_path, make_results().drop(columns=["chance", "train_set", "seed"]))
    study = load_results(tmp_path)
    text = " ".join(study.notes)
    for column in ("chance", "train_set", "seed", "spectrum.csv"):
        assert column in text


# --- the report -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    results = make_results(id_effect=lambda r, s: 0.04 * (r > 0), ood_effect=lambda r, s: -0.5 * r,
                           method_gain={"nmtune": 0.03})
    write_study(root, results, make_spectrum(), make_pretrain())
    return root, build_report(root)


def test_report_writes_all_files_atomically(full_report):
    root, paths = full_report
    for key in ("html", "markdown", "claims"):
        assert paths[key].is_file() and paths[key].parent == root
    figures = sorted(p.name for p in paths["figures"].iterdir())
    assert figures == ["id_accuracy.png", "ood_accuracy.png", "singular_values.png",
                       "spectrum_metrics.png"]
    assert not list(root.rglob("*.tmp"))


def test_html_is_self_contained(full_report):
    html = full_report[1]["html"].read_text()
    assert html.count("data:image/png;base64,") == 4
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", html)
    assert "<link" not in html and "<script" not in html


def test_markdown_has_tables_verdicts_and_linked_figures(full_report):
    root, paths = full_report
    md = paths["markdown"].read_text()
    assert "| claim | verdict | effect, 95% interval | MDE (pts) | evidence |" in md
    for verdict in ("reproduced",):
        assert f"| {verdict} |" in md
    for link in re.findall(r"\]\((figures/[^)]+\.png)\)", md):
        assert (root / link).is_file()
    assert "requested noise" in md and "realised noise %" in md  # pre-training table
    assert "SVE" in md and "loss_cov" in md and "mean seconds per fit" in md
    assert "How the verdicts are decided" in md
    assert "What this study can and cannot resolve" in md
    assert "total seconds: 123 s (2 min 3 s)" in md
    claims = json.loads(paths["claims"].read_text())
    assert [c["verdict"] for c in claims] == ["reproduced"] * 6


def test_accuracy_table_cells_match_pandas(full_report):
    root, paths = full_report
    results = pd.read_csv(root / "results.csv")
    cell = results[(results["task"] == "fmnist") & (results["method"] == "lp")
                   & (results["noise_ratio"] == 0.2)]["accuracy"] * 100
    expected = f"{cell.mean():.1f} ± {cell.std():.1f} ({len(cell)})"
    row = next(line for line in paths["markdown"].read_text().splitlines()
               if line.startswith("| ID | fmnist | symmetric | 20% |"))
    assert expected in row


def test_report_without_optional_files(tmp_path):
    results = make_results(method_gain={"nmtune": 0.03})
    paths = build_report(write_study(tmp_path, results, meta=False), tmp_path / "out")
    md = paths["markdown"].read_text()
    assert "no spectrum.csv" in md and "no study.json" in md
    assert "### Pre-training" not in md
    assert "recorded fit and pretraining seconds" in md
    assert sorted(p.name for p in paths["figures"].iterdir()) == ["id_accuracy.png",
                                                                   "ood_accuracy.png"]
    assert not (tmp_path / "report.html").exists()  # --out honoured


def test_report_for_real_backbone_study_without_noise_grid(tmp_path):
    results = small_results().drop(columns=["noise_ratio", "noise_type"])
    spectrum = make_spectrum()
    spectrum = spectrum[spectrum["noise_ratio"] == 0].drop(columns=["noise_ratio"])
    paths = build_report(write_study(tmp_path, results, spectrum))
    names = sorted(p.name for p in paths["figures"].iterdir())
    assert names == ["method_comparison.png", "singular_values.png"]
    md = paths["markdown"].read_text()
    assert "| kind | task | lp | mlp | nmtune |" in md
    assert "| noise ratio |" not in md
    assert md.count("not testable") >= 4


def test_failed_build_leaves_previous_report(tmp_path, monkeypatch):
    paths = build_report(write_study(tmp_path, small_results()))
    before = paths["html"].read_bytes()
    monkeypatch.setattr("nmtune.report.build.render_html", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        build_report(tmp_path)
    assert paths["html"].read_bytes() == before
    assert not list(tmp_path.rglob("*.tmp"))


def run_cli(argv):
    # Only the report verb: the CLI's other verbs belong to other modules.
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_prints_paths_and_verdicts(tmp_path, capsys):
    write_study(tmp_path, small_results())
    assert run_cli(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "r" / "report.html") in out
    assert "NMTune beats LP and MLP in-domain (ID): reproduced" in out
    with pytest.raises(NMTuneError, match="not found"):
        run_cli(["report", str(tmp_path / "missing")])


def test_report_verb_is_registered():
    assert "report" in COMMANDS


def test_protocols_and_clean_noise_type_get_their_own_columns(tmp_path):
    results = make_results(method_gain={"nmtune": 0.03})
    results = pd.concat([results, results.assign(protocol="val-selected")], ignore_index=True)
    results.loc[results["noise_ratio"] == 0, "noise_type"] = "none"
    md = build_report(write_study(tmp_path, results))["markdown"].read_text()
    assert "| kind | task | noise type | noise ratio | lp (last-epoch) | lp (val-selected) |" in md
    # The clean model, filed under "none", is the 0% point of the symmetric curves.
    assert "| ID | fmnist | symmetric | 0% |" in md


def test_summary_table_for_the_terminal():
    results = make_results()
    text = summary_table(results)
    cell = results[(results["task"] == "mnist") & (results["method"] == "nmtune")
                   & (results["noise_ratio"] == 0.05)]["accuracy"] * 100
    pattern = r"\s*ID\s+mnist\s+symmetric\s+5%"
    line = next(row for row in text.splitlines() if re.match(pattern, row))
    assert f"{cell.mean():.1f} ± {cell.std():.1f} (3)" in line


def test_claims_not_testable_without_slight_ratios_or_ood_rows():
    results = make_results()
    coarse = results[~results["noise_ratio"].isin([0.05, 0.1])]
    claim = claims_by_topic(coarse)["slight_id"]
    assert claim.verdict == "not testable" and "5-10%" in claim.evidence
    id_only = claims_by_topic(results[results["kind"] == "id"])
    assert id_only["ood"].verdict == id_only["nmtune_ood"].verdict == "not testable"


def test_timing_counts_each_fit_once_across_its_id_and_ood_rows():
    from nmtune.report.tables import timing_table

    rows = []
    for seed in (0, 1):
        for kind, test_set in (("id", "mnist/test"), ("ood", "digits/test"), ("ood", "rot/test")):
            rows.append({"noise_type": "none", "noise_ratio": 0.0, "seed": seed, "kind": kind,
                         "train_set": "mnist/train", "test_set": test_set, "task": test_set,
                         "method": "lp", "protocol": "last-epoch", "accuracy": 0.5,
                         "fit_seconds": 2.0 + seed})
    table = timing_table(pd.DataFrame(rows))
    assert table["fits"].tolist() == [2]
    assert table["total seconds"].tolist() == [5.0]


def test_protocol_is_named_only_for_methods_run_under_several():
    from nmtune.report.tables import with_series

    base = {"noise_type": "none", "noise_ratio": 0.0, "seed": 0, "kind": "id", "task": "t",
            "train_set": "a", "test_set": "b", "accuracy": 0.5}
    df = pd.DataFrame([{**base, "method": "lp", "protocol": "last-epoch"},
                       {**base, "method": "nmtune-val", "protocol": "val-selected"},
                       {**base, "method": "mlp", "protocol": "last-epoch"},
                       {**base, "method": "mlp", "protocol": "val-selected"}])
    assert with_series(df)["series"].tolist() == [
        "lp", "nmtune-val", "mlp (last-epoch)", "mlp (val-selected)"]


# --- effects, MDE and resolution in the rendered report -------------------------------------


def test_report_states_each_claims_effect_interval_and_mde(full_report):
    root, paths = full_report
    md = paths["markdown"].read_text()
    html = paths["html"].read_text()
    claims = json.loads(paths["claims"].read_text())
    results = pd.read_csv(root / "results.csv")
    expected = check_claims(results, pd.read_csv(root / "spectrum.csv"))
    for record, claim in zip(claims, expected, strict=True):
        assert record["verdict_text"] == claim.verdict_text
        if claim.effect:  # the accuracy claims: effect, interval and MDE in both renderings
            mde = f"{claim.mde:.2f}"
            row = next(line for line in md.splitlines() if line.startswith(f"| {claim.claim} |"))
            assert f"| {claim.effect} | {mde} |" in row
            assert claim.effect in html and record["mde"] == pytest.approx(claim.mde)
        else:
            assert record["mde"] is None  # NaN is no JSON
    assert 'class="verdict-reproduced"' in html


def test_resolution_says_what_two_seeds_cannot_resolve(tmp_path):
    # Two seeds whose effects differ by 2 points: nothing resolves 1 point.
    swing = lambda r, s: 0.0 if r == 0 else (0.01 if s % 2 == 0 else -0.01)  # noqa: E731
    results = make_results(id_effect=swing, ood_effect=swing, method_gain={"nmtune": 0.03})
    results = results[results["seed"] < 2]
    paths = build_report(write_study(tmp_path, results))
    md = paths["markdown"].read_text()
    text = md.split("### What this study can and cannot resolve", 1)[1].split("\n\n")[1]
    slight = json.loads(paths["claims"].read_text())[0]
    assert slight["verdict"] == "underpowered"
    assert text.startswith("With 2 seeds, the minimum detectable effect")
    assert f"{slight['mde']:.2f} pts for '{slight['claim']}'" in text
    assert "It cannot resolve an effect of 1 pts" in text
    assert f"would need {slight['statistics']['effect.seeds_needed']} seeds" in text
    assert f"critical value {stats.t.ppf(0.975, 1):.1f}" in text  # 12.7: one degree of freedom
    assert "nmtune study resolve" in text
    # NMTune's 3 points are the same on both seeds: resolved at any size.
    assert "It can resolve an effect of 1 pts on: NMTune beats LP and MLP in-domain" in text


def test_cli_effect_size_reaches_the_verdicts_and_bad_values_exit_2(tmp_path, capsys):
    from nmtune.cli import main

    results = make_results(jitter=0.0)
    write_study(tmp_path, results)
    assert main(["report", str(tmp_path), "--effect-size", "2.5"]) == 0
    out = capsys.readouterr().out
    assert "NMTune beats LP and MLP in-domain (ID): no effect as large as 2.5 pts" in out
    md = (tmp_path / "report.md").read_text()
    assert "within ±2.5 points" in md
    before = (tmp_path / "report.md").read_bytes()
    assert main(["report", str(tmp_path), "--effect-size", "0"]) == 2
    err = capsys.readouterr().err
    assert "effect size must be a number of points in (0, 100]" in err and "Traceback" not in err
    assert (tmp_path / "report.md").read_bytes() == before


@pytest.mark.parametrize("target", ["taken", "taken/below"])
def test_report_out_on_a_file_is_named(tmp_path, target):
    write_study(tmp_path, small_results())
    (tmp_path / "taken").write_text("mine")
    with pytest.raises(NMTuneError, match="cannot write the report into .*taken"):
        run_cli(["report", str(tmp_path), "--out", str(tmp_path / target)])
    assert (tmp_path / "taken").read_text() == "mine"
