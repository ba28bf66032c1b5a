"""Pre-training on noisy labels: outputs, labels corrupted once, exact resume, DDP, CLI.

Every run trains ResNet-8 (width 8) on sklearn digits (898 train / 899 test rows, 8×8), which
takes a second or two per run.
"""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml

import nmtune.pretrain.loop as loop_mod
from nmtune._validation import NMTuneError
from nmtune.backbones import create_backbone
from nmtune.cli import main as cli_main
from nmtune.data import load_dataset
from nmtune.noise import NoiseSpec
from nmtune.pretrain import PretrainConfig, pretrain
from nmtune.pretrain.distributed import steps_per_epoch

BASE = dict(
    backbone="resnet8",
    backbone_kwargs={"width": 8},
    dataset="digits",
    noise={"kind": "symmetric", "rate": 0.2, "seed": 1},
    epochs=4,
    batch_size=64,
    lr=0.05,
    seed=3,
    device="cpu",
)
#: The same run as command-line arguments (for the subprocess tests).
BASE_ARGS = [
    "--backbone", "resnet8", "--width", "8", "--dataset", "digits", "--noise", "symmetric:0.2",
    "--noise-seed", "1", "--epochs", "4", "--batch-size", "64", "--lr", "0.05", "--seed", "3",
    "--device", "cpu", "--quiet",
]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The reference: BASE trained in one uninterrupted call."""
    return pretrain(PretrainConfig(**BASE), tmp_path_factory.mktemp("straight"), progress=False)


def _weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def _relative_l2(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """||a - b|| / ||b|| over all parameters (not BatchNorm running statistics)."""
    keys = [k for k in b if b[k].is_floating_point() and "running" not in k]
    diff = sum(float(((a[k] - b[k]) ** 2).sum()) for k in keys)
    return (diff / sum(float((b[k] ** 2).sum()) for k in keys)) ** 0.5


def _assert_same_run(a, b):
    """Bit-identical backbones and identical curves (timings aside)."""
    wa, wb = _weights(a.backbone_path), _weights(b.backbone_path)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ha, hb = (pd.read_csv(r.history_path).drop(columns="seconds") for r in (a, b))
    pd.testing.assert_frame_equal(ha, hb, check_exact=True)


# --------------------------------------------------------------------------- outputs


def test_learns_and_writes_outputs(straight):
    m = straight.metrics
    assert m["eval_acc"] > 0.8  # clean test accuracy after 4 short epochs on 20% noise
    # The model agrees with the clean labels more than with the noisy ones it was fed.
    assert m["train_acc_clean"] > m["train_acc_noisy"] > 0.6
    assert m["corrupted_fit_clean"] > m["corrupted_fit_noisy"]
    assert m["epochs"] == 4 and m["num_train"] == 898 and m["num_eval"] == 899
    assert json.loads(straight.metrics_path.read_text()) == m
    history = pd.read_csv(straight.history_path)
    assert list(history["epoch"]) == [1, 2, 3, 4]
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert history["lr"].iloc[0] == pytest.approx(0.05)
    assert history["eval_acc"].iloc[-1] == pytest.approx(m["eval_acc"])
    assert straight.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not straight.checkpoint_path.exists()  # dropped once the run completed
    assert json.loads(straight.config_path.read_text()) == PretrainConfig(**BASE).to_dict()


def test_backbone_file_loads_into_a_fresh_backbone(straight):
    backbone = create_backbone("resnet8", weights=straight.backbone_path, width=8)
    assert all(not k.startswith("head") for k in _weights(straight.backbone_path))
    test = load_dataset("digits", "test")
    feats = backbone.embed(test.inputs)
    assert feats.shape == (899, 32)
    # Those features carry the classes: a linear probe separates them well.
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=2000).fit(feats[::2], test.labels[::2])
    assert clf.score(feats[1::2], test.labels[1::2]) > 0.8


def test_noisy_labels_match_an_independent_corruption(straight):
    clean = load_dataset("digits", "train").labels
    noisy, changed = NoiseSpec("symmetric", 0.2, seed=1).apply(clean, 10)
    with np.load(straight.noise_path) as npz:
        np.testing.assert_array_equal(npz["clean"], clean)
        np.testing.assert_array_equal(npz["noisy"], noisy)
        np.testing.assert_array_equal(npz["changed"], changed)
        np.testing.assert_array_equal(npz["changed"], npz["noisy"] != npz["clean"])
    assert changed.sum() == round(0.2 * 898)
    assert straight.metrics["realised_noise_rate"] == pytest.approx(round(0.2 * 898) / 898)


def test_completed_run_returns_without_training(straight):
    mtime = straight.backbone_path.stat().st_mtime_ns

    def fail(epoch, row):
        raise AssertionError("a completed run must not train again")

    again = pretrain(PretrainConfig(**BASE), straight.out_dir, progress=False, on_epoch_end=fail)
    assert again.metrics == straight.metrics
    assert straight.backbone_path.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("change,field", [({"epochs": 5}, "epochs"), ({"lr": 0.1}, "lr"),
                                          ({"noise": {"kind": "none"}}, "noise")])
def test_other_config_in_the_same_dir_is_refused(straight, change, field):
    with pytest.raises(NMTuneError, match=f"another config.*{field}"):
        pretrain(PretrainConfig(**{**BASE, **change}), straight.out_dir, progress=False)


# --------------------------------------------------------------------------- resume


class _Stop(Exception):
    pass


def test_interrupted_run_resumes_bit_identical(straight, tmp_path, monkeypatch):
    calls = []
    apply = NoiseSpec.apply
    monkeypatch.setattr(NoiseSpec, "apply", lambda self, *a: calls.append(1) or apply(self, *a))

    def stop_after_two(epoch, row):
        if epoch == 2:
            raise _Stop

    with pytest.raises(_Stop):
        pretrain(PretrainConfig(**BASE), tmp_path, progress=False, on_epoch_end=stop_after_two)
    assert (tmp_path / "checkpoint.pt").is_file() and not (tmp_path / "backbone.pt").exists()
    noise_before = (tmp_path / "noise.npz").read_bytes()

    seen = []
    resumed = pretrain(PretrainConfig(**BASE), tmp_path, progress=False,
                       on_epoch_end=lambda epoch, row: seen.append(epoch))
    assert seen == [3, 4]  # only the epochs that were missing
    assert len(calls) == 1  # labels corrupted once, reused on resume
    assert (tmp_path / "noise.npz").read_bytes() == noise_before
    _assert_same_run(resumed, straight)
    assert resumed.metrics.keys() == straight.metrics.keys()
    for k, v in straight.metrics.items():
        if k != "seconds":
            assert resumed.metrics[k] == v, k


@pytest.mark.slow
def test_sigkilled_process_resumes_bit_identical(straight, tmp_path, child_env):
    proc = subprocess.Popen(
        [sys.executable, "-m", "nmtune.pretrain", *BASE_ARGS, "--out", str(tmp_path)],
        env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert not (tmp_path / "metrics.json").exists()
    resumed = pretrain(PretrainConfig(**BASE), tmp_path, progress=False)
    _assert_same_run(resumed, straight)


def test_resume_false_starts_over(tmp_path):
    cfg = PretrainConfig(**{**BASE, "epochs": 1, "limit": 128})
    first = pretrain(cfg, tmp_path, progress=False)
    seen = []
    again = pretrain(cfg, tmp_path, resume=False, progress=False,
                     on_epoch_end=lambda epoch, row: seen.append(epoch))
    assert seen == [1]
    _assert_same_run(first, again)  # and deterministic for a seed


# --------------------------------------------------------------------------- DDP


class _RankwiseBatchNorm(torch.nn.BatchNorm2d):
    """BatchNorm that normalises each half of a batch by its own statistics and updates the
    running statistics from the first half only: what two DDP ranks with per-rank BatchNorm
    compute (rank r holds half r; DDP broadcasts rank 0's buffers before every forward)."""

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        first, second = x.chunk(2)
        rest = F.batch_norm(second, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return torch.cat([super().forward(first), rest])


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(straight, tmp_path, monkeypatch, child_env):
    ddp_dir = tmp_path / "ddp"
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "nmtune.pretrain", *BASE_ARGS, "--out", str(ddp_dir), "--json"],
        env=child_env, check=True, capture_output=True, timeout=300,
    )
    ddp = json.loads((ddp_dir / "metrics.json").read_text())
    assert ddp["world_size"] == 2
    np.testing.assert_array_equal(np.load(ddp_dir / "noise.npz")["noisy"],
                                  np.load(straight.noise_path)["noisy"])

    # Same math: a single process whose BatchNorm sees each rank's half separately has the
    # same gradient (mean over the global batch), data order and buffers. Only the float order
    # of the gradient all-reduce differs: measured 7e-8 relative after one step, growing with
    # the chaotic training dynamics to ~6e-3 (global L2 of the weights) after these 56 steps.
    build = loop_mod.build_backbone

    def rankwise(config):
        backbone = build(config)
        for m in backbone.module.modules():
            if type(m) is torch.nn.BatchNorm2d:
                m.__class__ = _RankwiseBatchNorm
        return backbone

    monkeypatch.setattr(loop_mod, "build_backbone", rankwise)
    emulated = pretrain(PretrainConfig(**BASE), tmp_path / "emulated", progress=False)
    w_ddp = _weights(ddp_dir / "backbone.pt")
    assert _relative_l2(w_ddp, _weights(emulated.backbone_path)) < 2e-2
    assert abs(ddp["eval_acc"] - emulated.metrics["eval_acc"]) < 0.01
    # Plain single-process training is 10x further away (measured 7e-2).
    assert _relative_l2(w_ddp, _weights(straight.backbone_path)) > 2e-2

    # Against plain single-process training the per-rank BatchNorm statistics (32 rows, not
    # 64; SyncBatchNorm is CUDA-only) change the trajectory: same quality, not same weights.
    assert abs(ddp["eval_acc"] - straight.metrics["eval_acc"]) < 0.05
    assert abs(ddp["train_acc_noisy"] - straight.metrics["train_acc_noisy"]) < 0.05


# --------------------------------------------------------------------------- config


def test_config_round_trips_and_converts_a_noise_mapping():
    cfg = PretrainConfig(**{**BASE, "noise": {"kind": "pair", "rate": 0.1, "seed": 2}})
    assert cfg.noise == NoiseSpec("pair", 0.1, seed=2)
    assert PretrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    "change,match",
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"limit": -3}, "limit"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"lr": 0.0}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"weight_decay": float("nan")}, "weight_decay"),
        ({"noise": {"kind": "symmetric", "rate": 1.5}}, "rate"),
        ({"noise": "symmetric"}, "noise"),
        ({"backbone_kwargs": [8]}, "backbone_kwargs"),
        ({"lr": "fast"}, "lr must be a number"),
        ({"momentum": None}, "momentum must be a number"),
        ({"dataset": 5}, "dataset must be a non-empty string"),
    ],
)
def test_bad_config_values(change, match):
    with pytest.raises(NMTuneError, match=match):
        PretrainConfig(**{**BASE, **change})


def test_unknown_config_key():
    with pytest.raises(NMTuneError, match="unknown key 'epoch' \\(did you mean 'epochs'\\?\\)"):
        PretrainConfig.from_dict({"epoch": 3})


@pytest.mark.parametrize("change,match", [({"batch_size": 1000}, "fewer than batch_size"),
                                          ({"dataset": "no-such-set"}, "no-such-set")])
def test_bad_run_inputs(tmp_path, change, match):
    with pytest.raises(NMTuneError, match=match):
        pretrain(PretrainConfig(**{**BASE, **change}), tmp_path, progress=False)


def test_batch_must_split_evenly_over_ranks():
    with pytest.raises(NMTuneError, match="divisible by the number of processes"):
        steps_per_epoch(1000, 64, 3)


# --------------------------------------------------------------------------- CLI


def test_cli_with_config_file_and_overrides(tmp_path, capsys):
    config = tmp_path / "pre.yaml"
    config.write_text(yaml.safe_dump({**BASE, "epochs": 3, "limit": 256}))
    out = tmp_path / "run"
    assert cli_main(["pretrain", "--config", str(config), "--epochs", "1", "--noise",
                     "pair:0.1", "--out", str(out), "--quiet", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["epochs"] == 1 and metrics["num_train"] == 256
    stored = PretrainConfig.from_dict(json.loads((out / "config.json").read_text()))
    # --noise replaces the file's noise; its seed falls back to the run's seed.
    assert stored.noise == NoiseSpec("pair", 0.1, seed=3)
    assert stored.backbone_kwargs == {"width": 8} and stored.limit == 256

    assert cli_main(["pretrain", "--config", str(config), "--epochs", "1", "--noise",
                     "pair:0.1", "--out", str(out), "--quiet"]) == 0  # completed: no training
    text = capsys.readouterr().out
    assert "eval accuracy (clean)" in text and str(out / "backbone.pt") in text


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--dataset", "digits"], "--backbone is required"),
        (["--backbone", "resnet8", "--dataset", "digits", "--noise", "symmetric"], "KIND:RATE"),
        (["--backbone", "resnet8", "--dataset", "digits", "--noise", "flip:0.1"], "flip"),
        (["--backbone", "nope", "--dataset", "digits", "--limit", "64", "--batch-size", "64",
          "--epochs", "1"], "unknown backbone"),
    ],
)
def test_cli_errors(tmp_path, capsys, argv, match):
    assert cli_main(["pretrain", *argv, "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert match in capsys.readouterr().err


# --------------------------------------------------------------------------- broken run files

SMALL_ARGS = ["--backbone", "resnet8", "--width", "4", "--dataset", "digits", "--limit", "128",
              "--batch-size", "64", "--epochs", "1", "--device", "cpu", "--quiet"]


def _torch_bytes(obj) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _npz_bytes(**arrays) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "name,content",
    [
        ("checkpoint.pt", np.random.default_rng(0).bytes(4096)),
        ("checkpoint.pt", _torch_bytes({"model": {"conv.weight": torch.zeros(3)}})),
        ("checkpoint.pt", _torch_bytes([1, 2, 3])),
        ("config.json", b"\x00\xffnot json{"),
        ("config.json", b"[1, 2]"),
        ("noise.npz", np.random.default_rng(1).bytes(512)),
        ("noise.npz", _npz_bytes(labels=np.arange(3))),
        ("noise.npz", np.save.__doc__.encode()),
    ],
    ids=["random-checkpoint", "foreign-checkpoint", "list-checkpoint", "garbage-config",
         "list-config", "random-noise", "foreign-noise", "text-noise"],
)
def test_corrupt_run_file_is_a_one_line_error(tmp_path, capsys, name, content):
    from nmtune.cli import build_parser
    from nmtune.cli.pretrain import config_from_args

    out = tmp_path / "run"
    out.mkdir()
    config = config_from_args(build_parser().parse_args(["pretrain", *SMALL_ARGS, "--out",
                                                         str(out)]))
    (out / "config.json").write_text(json.dumps(config.to_dict()))
    (out / name).write_bytes(content)
    assert cli_main(["pretrain", *SMALL_ARGS, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert name in err and len(err.strip().splitlines()) == 1, err


def test_out_that_is_a_file_is_a_one_line_error(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("a file")
    assert cli_main(["pretrain", *SMALL_ARGS, "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert "taken" in err and "not a folder" in err and len(err.strip().splitlines()) == 1
    assert target.read_text() == "a file"


# --------------------------------------------------------------------------- --noise forms


def _args(*argv):
    from nmtune.cli import build_parser

    return build_parser().parse_args(["pretrain", *argv, "--out", "unused"])


@pytest.mark.parametrize("suffix", [".npy", ".csv", ".json"])
def test_noise_transition_matrix_from_a_file(tmp_path, suffix):
    from nmtune.cli.pretrain import config_from_args

    T = np.full((10, 10), 0.02) + np.eye(10) * 0.8
    path = tmp_path / f"T{suffix}"
    {".npy": lambda: np.save(path, T), ".csv": lambda: np.savetxt(path, T, delimiter=","),
     ".json": lambda: path.write_text(json.dumps(T.tolist()))}[suffix]()
    config = config_from_args(_args(*SMALL_ARGS, "--noise", f"transition:{path}", "--seed", "2"))
    assert config.noise == NoiseSpec("transition", matrix=T.tolist(), seed=2)


def test_noise_cifar_n_is_its_estimated_transition():
    from nmtune.cli.pretrain import config_from_args

    config = config_from_args(_args(*SMALL_ARGS, "--noise", "cifar-n:worst"))
    assert config.noise == NoiseSpec("transition", cifar_n="worst", seed=0)


@pytest.mark.parametrize("noise,match", [("transition:/no/such.npy", "cannot read"),
                                         ("cifar-n:best", "unknown CIFAR-N"),
                                         ("transition:", "transition:FILE")])
def test_bad_noise_forms(noise, match, capsys, tmp_path):
    assert cli_main(["pretrain", *SMALL_ARGS, "--noise", noise, "--out", str(tmp_path)]) == 2
    assert match in capsys.readouterr().err


STUDY = {
    "name": "tiny", "seeds": [0, 1],
    "backbone": {"name": "resnet8", "kwargs": {"width": 4}},
    "pretrain": {"dataset": "digits", "epochs": 2, "batch_size": 64, "eval_split": "test"},
    "noise": {"kind": "pair", "ratios": [0.0, 0.3]},
    "tasks": [{"name": "d", "train": "digits", "test": {"dataset": "digits", "split": "test"}}],
    "methods": {"lp": {}},
}


@pytest.mark.parametrize("argv,ratio,seed", [([], 0.0, 0), (["--noise", "none"], 0.0, 0),
                                             (["--noise", "pair:0.3", "--seed", "1"], 0.3, 1)])
def test_study_config_gives_its_grid_points_settings(tmp_path, argv, ratio, seed):
    from nmtune.cli.pretrain import config_from_args
    from nmtune.study import config_from_dict, pretrain_config

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    got = config_from_args(_args("--config", str(path), *argv))
    assert got == pretrain_config(config_from_dict(STUDY), ratio, seed)


@pytest.mark.parametrize("change,argv,match", [
    ({}, ["--noise", "symmetric:0.3"], "not this study's noise kind"),
    ({"pretrain": {"dataset": "digits", "epoch": 2}}, [], "did you mean 'epochs'"),
])
def test_study_config_errors(tmp_path, capsys, change, argv, match):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**STUDY, **change}))
    assert cli_main(["pretrain", "--config", str(path), *argv, "--out", str(tmp_path / "r"),
                     "--quiet"]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("field", ["seed", "subset_seed"])
@pytest.mark.parametrize("value", [2**32, 10**20])
def test_seed_past_numpys_range_is_refused_at_once(field, value):
    # torch.manual_seed overflowed mid-run on 10**20 (a ValueError traceback from the CLI).
    from nmtune.pretrain import ClipConfig

    with pytest.raises(NMTuneError, match=rf"{field} must be an integer in \[0, 2\*\*32\)"):
        PretrainConfig(**{**BASE, field: value})
    if field == "seed":
        with pytest.raises(NMTuneError, match=r"seed must be an integer in \[0, 2\*\*32\)"):
            ClipConfig(seed=value)
