"""The contrastive (CLIP) study: zero-shot from a trained run against a numpy hand computation,
config errors at load with nothing written, a tiny study end to end with zero-shot as a method,
and resumption after SIGKILL ending in the same table."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import kill_then_resume, results_table  # noqa: E402
from nmtune._validation import NMTuneError
from nmtune.study import config_from_dict, load_config, run_name, run_study

TEMPLATES = ["a photo of a {}.", "{}, drawn by hand", "{}"]
TINY = {
    "name": "tiny-clip",
    "seeds": [0],
    "backbone": {"name": "resnet8", "kwargs": {"width": 4}},
    "pretrain": {"objective": "clip", "dataset": "digits", "limit": 200, "text_width": 16,
                 "text_layers": 1, "text_heads": 2, "embed_dim": 16, "epochs": 2,
                 "batch_size": 50, "lr": 0.002},
    "noise": {"kind": "caption_swap", "ratios": [0.0, 0.3]},
    "zeroshot": {"templates": TEMPLATES},
    "tasks": [{
        "name": "digits",
        "train": {"dataset": "digits", "split": "train", "limit": 300},
        "test": {"dataset": "digits", "split": "test", "limit": 200},
        "ood": {"rotated": {"dataset": "digits~rotate30", "split": "test", "limit": 200}},
    }],
    "methods": {"lp": {"Cs": 3}, "mlp": {"epochs": 2}, "nmtune": {"epochs": 2}},
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip-study")
    tables = run_study(config_from_dict(copy.deepcopy(TINY)), out, progress=False)
    return out, tables


def _unit(a, axis=-1):
    return a / np.linalg.norm(a, axis=axis, keepdims=True)


def test_packaged_clip_config_has_the_promised_grid():
    cfg = load_config("clip")
    assert cfg.noise.kind == "caption_swap"
    assert cfg.noise.ratios == (0.0, 0.05, 0.10, 0.20, 0.30)
    assert cfg.pretrain.objective == "clip" and len(cfg.seeds) >= 2
    assert cfg.zeroshot is not None and set(cfg.methods) >= {"lp", "mlp", "nmtune"}
    assert sum(len(t.ood) for t in cfg.tasks) >= 2


def test_zeroshot_rows_equal_a_hand_computation(tiny_run):
    """Each zero-shot accuracy in results.csv, recomputed from the run folder by hand: the
    towers' raw outputs from torch, then normalisation, prompt averaging, image projection,
    logits and argmax in numpy."""
    from nmtune.backbones import create_backbone
    from nmtune.data import load_dataset
    from nmtune.data.pairs import noun_phrase
    from nmtune.pretrain import load_clip_run

    out, tables = tiny_run
    config = config_from_dict(copy.deepcopy(TINY))
    rows = tables["results"].query("method == 'zeroshot'")
    assert set(rows["protocol"]) == {"zero-shot"} and set(rows["kind"]) == {"id", "ood"}
    assert len(rows) == 2 * 2  # 2 noise ratios x (ID + 1 OOD)
    for ratio in config.noise.ratios:
        run_dir = out / "pretrain" / run_name(config, ratio, 0)
        state = torch.load(run_dir / "model.pt", weights_only=True)
        model = load_clip_run(run_dir)
        tower = create_backbone("resnet8", width=4, weights=run_dir / "backbone.pt")
        with torch.no_grad():
            raw_text = [model.encode_text(model.tokenize([t.format(noun_phrase(c))
                                                          for t in TEMPLATES]), normalize=False)
                        .double().numpy() for c in "0123456789"]
        weights = np.stack([_unit(_unit(e).mean(axis=0)) for e in raw_text], axis=1)
        projection = state["image_projection.weight"].double().numpy()
        for test_set, spec in (("digits/test[200]", ("digits", 200)),
                               ("digits~rotate30/test[200]", ("digits~rotate30", 200))):
            data = load_dataset(spec[0], "test", limit=spec[1])
            x = tower.preprocess(np.asarray(data.inputs[:], dtype=np.float32))
            with torch.no_grad():
                feats = tower.module.eval()(x).flatten(1).double().numpy()
            logits = 100.0 * _unit(feats @ projection.T) @ weights
            expected = np.mean(logits.argmax(axis=1) == data.labels)
            got = rows[(rows["noise_ratio"] == ratio) & (rows["test_set"] == test_set)]["accuracy"]
            assert got.tolist() == [pytest.approx(expected, abs=1e-12)]


def test_tables_cover_the_grid_with_zero_shot_as_a_method(tiny_run):
    out, tables = tiny_run
    results, spectrum, pretrain = tables["results"], tables["spectrum"], tables["pretrain"]
    assert set(results["method"]) == {"lp", "mlp", "nmtune", "zeroshot"}
    assert set(results["noise_type"]) == {"caption_swap"}
    # 2 ratios x 4 methods x (ID + OOD)
    assert len(results) == 16 and results["accuracy"].between(0, 1).all()
    assert len(spectrum) == 2 and spectrum[["sve", "lsvr"]].notna().all().all()
    # exactly round(0.3 * 200) = 60 captions changed
    assert pretrain.set_index("noise_ratio")["realised_noise_rate"].to_dict() == {0.0: 0.0,
                                                                                 0.3: 0.3}
    assert (out / "pretrain" / "caption_swap-0.3-seed0" / "model.pt").is_file()

    from nmtune.report import build_report

    paths = build_report(out)
    markdown = paths["markdown"].read_text()
    assert "zeroshot" in markdown  # zero-shot is a method of the accuracy table


@pytest.mark.parametrize(
    "change, match",
    [
        ({"noise": {"kind": "symmetric", "ratios": [0.0, 0.2]}}, "takes noise kind 'caption_swap'"),
        ({"noise": {"kind": "caption_swap", "ratios": [0.0, 1.0]}}, r"ratio 1\.0"),
        ({"pretrain": {**TINY["pretrain"], "caption_swap": 0.2}}, "set by the study"),
        ({"pretrain": {**TINY["pretrain"], "text_widht": 8}}, "text_width"),
        ({"pretrain": {**TINY["pretrain"], "objective": "simclr"}}, "objective"),
        ({"pretrain": {**TINY["pretrain"], "eval_split": "test"}}, "unknown key"),
        ({"zeroshot": {"templates": ["no slot"]}}, "exactly one"),
        ({"zeroshot": {"prompts": ["{}"]}}, "unknown key"),
        ({"methods": {"zeroshot": {"method": "lp"}}}, "name is taken"),
        ({"pretrain": {"dataset": "digits", "epochs": 1}}, "needs a contrastive pretrain"),
        ({"pretrain": {**TINY["pretrain"], "pairs": "/no/such/shards-{0..3}.tar"}},
         "does not exist"),
    ],
)
def test_bad_clip_config_fails_at_load_with_nothing_written(tmp_path, change, match):
    raw = {**copy.deepcopy(TINY), **change}
    with pytest.raises(NMTuneError, match=match):
        # The missing pairs pass the load (files are not read then) and fail at preflight.
        run_study(config_from_dict(raw), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_zeroshot_needs_a_clip_study():
    raw = {**copy.deepcopy(TINY), "pretrain": {"dataset": "digits", "epochs": 1},
           "noise": {"kind": "symmetric", "ratios": [0.0]}}
    with pytest.raises(NMTuneError, match="zero-shot needs a text tower"):
        config_from_dict(raw)


def test_cli_rejects_a_bad_clip_config_with_exit_2(tmp_path, run_cli):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({**TINY, "noise": {"kind": "pair", "ratios": [0.1]}}))
    code, _, err = run_cli("study", config, "--out", tmp_path / "out")
    assert code == 2 and "caption_swap" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_table(tmp_path, tiny_run, child_env):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    killed_dir = tmp_path / "killed"
    kill_then_resume(config, killed_dir, child_env)
    straight, _ = tiny_run  # the same config run uninterrupted, in this process
    pd.testing.assert_frame_equal(results_table(killed_dir), results_table(straight))
    assert not list(killed_dir.rglob("*.tmp"))
    np.testing.assert_array_equal(pd.read_csv(killed_dir / "spectrum.csv")["sve"],
                                  pd.read_csv(straight / "spectrum.csv")["sve"])


def test_paper_yfcc15m_fails_early_without_the_shards(tmp_path):
    config = load_config("paper-yfcc15m")
    assert config.pretrain.backbone == "resnet50" and config.pretrain.batch_size == 1024
    assert config.noise.ratios == (0.0, 0.05, 0.10, 0.20, 0.30) and len(config.seeds) == 3
    with pytest.raises(NMTuneError, match=r"/data/yfcc15m/shards/00000\.tar does not exist"):
        run_study(config, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_pretrain_cli_takes_a_clip_study_grid_point(tmp_path):
    """`nmtune pretrain --config STUDY --noise caption_swap:R --seed S` trains exactly what the
    study trains at (R, S): the torchrun commands of paper-yfcc15m rely on it."""
    import argparse

    from nmtune.pretrain.args import add_arguments, config_from_args
    from nmtune.study import pretrain_config

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(TINY))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--config", str(path), "--noise", "caption_swap:0.3", "--seed", "2"])
    assert config_from_args(args) == pretrain_config(config_from_dict(copy.deepcopy(TINY)), 0.3, 2)
    bad = parser.parse_args(["--config", str(path), "--noise", "symmetric:0.3"])
    with pytest.raises(NMTuneError, match="not this study's noise kind"):
        config_from_args(bad)
