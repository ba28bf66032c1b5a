"""``nmtune study --plan``: the cell graph, FLOPs against a hand count and a published figure,
GPU-hours from the stated assumption, nothing written; and the ``resources:`` section."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from nmtune import plan as plan_mod
from nmtune._validation import NMTuneError
from nmtune.backbones import create_backbone
from nmtune.data import dataset_card
from nmtune.study import config_from_dict, load_config, study_cells

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TINY_STUDY as TINY  # noqa: E402


def _hand_flops(module: nn.Module, shape) -> float:
    """2·MACs of every convolution and linear layer of one forward pass, by hand."""
    total = []

    def conv(m, _i, out):
        k = m.kernel_size[0] * m.kernel_size[1]
        total.append(2 * out.numel() * m.in_channels // m.groups * k)

    def linear(m, _i, out):
        total.append(2 * out.numel() * m.in_features)

    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(conv)
        elif isinstance(m, nn.Linear):
            m.register_forward_hook(linear)
    with torch.no_grad():
        module.eval()(torch.zeros(1, *shape))
    return float(sum(total))


@pytest.fixture(scope="module")
def tiny_plan():
    return plan_mod.plan_study(config_from_dict(TINY))


def test_cells_and_dependencies(tiny_plan):
    # 2 grid points × (pretrain + 3 extracted sets + 1 spectrum + 3 methods).
    assert len(tiny_plan.cells) == 16
    names = [name for name, _ in tiny_plan.cells]
    tune = names.index("noise 0.3 seed 0: tune digits nmtune")
    needs = {names[i] for i in tiny_plan.cells[tune][1]}
    assert needs == {"noise 0.3 seed 0: pretrain",
                     "noise 0.3 seed 0: extract digits/train[300]",
                     "noise 0.3 seed 0: extract digits/test[200]",
                     "noise 0.3 seed 0: extract digits~rotate30/test[200]"}
    assert all(i < j for j, (_, deps) in enumerate(tiny_plan.cells) for i in deps)


def test_pretrain_flops_match_a_hand_count(tiny_plan):
    backbone = create_backbone("resnet8", width=4)
    card = dataset_card("digits")
    f = _hand_flops(backbone.module, (1, *card.input_shape[1:]))
    n, n_eval, epochs = card.splits["train"], card.splits["test"], TINY["pretrain"]["epochs"]
    expected = 2 * (epochs * (3 * n + n_eval) + n) * f  # 2 grid points
    # BatchNorm, ReLU and pooling add a few percent to the convolutions' FLOPs.
    assert tiny_plan.stages["pretrain"].flops == pytest.approx(expected, rel=0.05)
    assert tiny_plan.stages["pretrain"].cpu_seconds > 0
    spectrum = tiny_plan.stages["spectrum"]
    assert spectrum.flops == 2 * (2 * 200 * backbone.feature_dim ** 2)


def test_paper_imagenet_gpu_hours(monkeypatch):
    # Tuning calibration at 2048-d is the slow part and does not touch pre-training's cost.
    monkeypatch.setattr(plan_mod, "_calibrate_tune", lambda *a: (0.0, 0.0))
    p = plan_mod.plan_study(load_config("paper-imagenet"), gpu="A100")
    pre = p.stages["pretrain"]
    per_image = pre.flops / (15 * (90 * (3 * 1_281_167 + 50_000) + 1_281_167))
    assert per_image == pytest.approx(2 * 4.09e9, rel=0.02)  # ResNet-50: 4.09 GMACs at 224²
    assert pre.gpu_seconds == pytest.approx(pre.flops / (312e12 * plan_mod.GPU_EFFICIENCY))
    assert "GPU-hours on A100: " in plan_mod.format_plan(p)


def test_cli_plan_writes_nothing(tmp_path):
    config = tmp_path / "tiny.yaml"
    import yaml

    config.write_text(yaml.safe_dump(TINY))
    done = subprocess.run([sys.executable, "-m", "nmtune", "study", str(config), "--plan",
                           "--gpu", "V100"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "GPU-hours on V100" in done.stdout and "16 cells" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]
    bad = subprocess.run([sys.executable, "-m", "nmtune", "study", str(config), "--plan",
                          "--gpu", "Z80"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown GPU 'Z80'" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize("resources, match", [
    ({"tune": {"gpus": 2}}, "only pretrain may use more than one GPU"),
    ({"pretrain": {"gpus": 1.5}}, "only pretrain may use more than one GPU"),
    ({"extract": {"cpus": 0}}, r"extract.cpus must be a number > 0"),
    ({"tune": {"memory": 4}}, "memory"),
    ({"train": {}}, "train"),
])
def test_resources_are_checked_at_load(resources, match):
    with pytest.raises(NMTuneError, match=match):
        config_from_dict({**TINY, "resources": resources})


def test_resources_reach_the_config():
    config = config_from_dict({**TINY, "resources": {"pretrain": {"cpus": 8, "gpus": 4},
                                                     "tune": {"gpus": 0.5}}})
    assert (config.resources.pretrain.gpus, config.resources.pretrain.cpus) == (4, 8)
    assert config.resources.tune.gpus == 0.5 and config.resources.extract.cpus == 1
    assert len(study_cells(config)) == 16


@pytest.mark.parametrize(("ratio", "seed"), [(0.0, 1), (0.3, 0)])
def test_ddp_pretraining_launches_the_grid_points_settings(ratio, seed, tmp_path, monkeypatch):
    """With gpus > 1 the pretrain cell runs torchrun of `nmtune pretrain --config STUDY`;
    that command builds exactly the settings the study trains at the grid point, into the
    folder the study reads back."""
    import yaml

    from nmtune.cli import build_parser
    from nmtune.cli.pretrain import config_from_args
    from nmtune.study import pretrain_config, run_name, torchrun_pretrain

    raw = {**TINY, "resources": {"pretrain": {"gpus": 2}}}
    config = config_from_dict(raw)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    seen = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: seen.append(cmd) or
                        subprocess.CompletedProcess(cmd, 0, "", ""))
    run_dir = tmp_path / "pretrain" / run_name(config, ratio, seed)
    torchrun_pretrain(config, tmp_path, ratio, seed, run_dir)
    cmd = seen[0]
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m"]
    args = build_parser().parse_args(["pretrain", *cmd[7:]])
    assert args.out == run_dir
    assert config_from_args(args).to_dict() == pretrain_config(config, ratio, seed).to_dict()


def test_blackbox_width_unknown_until_asked(monkeypatch):
    # An API backbone knows its width only after a request; --plan sends none, so its
    # spectrum and tuning costs are of unknown size rather than a crash.
    monkeypatch.setattr(plan_mod, "_calibrate_tune", lambda *a: pytest.fail("calibrated"))
    p = plan_mod.plan_study(load_config("real-blackbox"))
    for stage in ("extract", "spectrum", "tune"):
        cost = p.stages[stage]
        assert cost.cells > 0 and cost.unknown == cost.cells and cost.flops == 0
    assert "of unknown size, not counted" in plan_mod.format_plan(p)


def test_gpu_without_plan_is_refused_before_any_work(tmp_path, run_cli):
    # --gpu only chooses the plan's GPU: without --plan it was silently ignored and the whole
    # study ran.
    code, out, err = run_cli("study", "no-such-config.yaml", "--gpu", "A100", "--out", tmp_path)
    assert code == 2 and err.strip() == "nmtune study: error: --gpu needs --plan"
    assert list(tmp_path.iterdir()) == []
