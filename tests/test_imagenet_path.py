"""The ImageNet-scale path: ImageNet ResNets, lazy image folders, streamed pre-training, and
the paper-imagenet config.

Lazy data is checked against the in-memory folder loader on the same files: the arrays, the
subsets, the extracted features and a whole pre-training run must be identical.
"""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import nmtune.data.lazy as lazy_mod
import nmtune.pretrain as pretrain_mod
import nmtune.pretrain.loop as loop_mod
from nmtune._validation import NMTuneError
from nmtune.augment import crop_and_flip
from nmtune.backbones import create_backbone
from nmtune.backbones.resnet import Bottleneck, ImageNetResNet
from nmtune.cli import build_parser
from nmtune.cli import main as cli_main
from nmtune.cli.pretrain import config_from_args
from nmtune.data import load_dataset
from nmtune.data.lazy import LazyImages, decode_cover_crop
from nmtune.features import extract
from nmtune.pretrain import PretrainConfig, pretrain
from nmtune.pretrain.inputs import Preprocessed, Streamed
from nmtune.study import PACKAGED_CONFIGS, NoiseGrid, StudyRunner, load_config, make_tuner

CLASSES = ("ant", "bee", "cat")


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------- ResNets


def _bn(c: int) -> int:
    return 2 * c


def _basic_count(cin: int, cout: int, projection: bool) -> int:
    return 9 * cin * cout + _bn(cout) + 9 * cout * cout + _bn(cout) + (
        cin * cout + _bn(cout) if projection else 0
    )


def _bottleneck_count(cin: int, mid: int, projection: bool) -> int:
    out = 4 * mid
    return (cin * mid + _bn(mid) + 9 * mid * mid + _bn(mid) + mid * out + _bn(out)
            + (cin * out + _bn(out) if projection else 0))


def _hand_count(blocks: tuple[int, ...], bottleneck: bool) -> int:
    """Parameters of He et al.'s Table 1 networks without the fc head, counted by hand."""
    total = 3 * 64 * 7 * 7 + _bn(64)  # stem
    cin = 64
    for stage, n in enumerate(blocks):
        width = 64 * 2**stage
        for i in range(n):
            if bottleneck:
                total += _bottleneck_count(cin, width, projection=i == 0)
                cin = 4 * width
            else:
                total += _basic_count(cin, width, projection=i == 0 and stage > 0)
                cin = width
    return total


def test_resnet50_has_torchvisions_parameters_without_the_head():
    model = ImageNetResNet(50)
    # torchvision.models.resnet50(): 25,557,032 parameters, of which fc holds 2048*1000+1000.
    assert _n_params(model) == _hand_count((3, 4, 6, 3), bottleneck=True) == 23_508_032
    assert 25_557_032 - (2048 * 1000 + 1000) == 23_508_032
    assert model.out_dim == 2048


def test_resnet18_has_torchvisions_parameters_without_the_head():
    # torchvision.models.resnet18(): 11,689,512 parameters, fc 512*1000+1000.
    assert _n_params(ImageNetResNet(18)) == _hand_count((2, 2, 2, 2), bottleneck=False)
    assert _n_params(ImageNetResNet(18)) == 11_689_512 - (512 * 1000 + 1000)


def test_resnet_strides_and_output_shapes():
    model = ImageNetResNet(18).eval()
    x = torch.randn(2, 3, 64, 64)
    assert model.trunk(x).shape == (2, 512, 2, 2)  # total stride 32
    assert model(x).shape == (2, 512)
    block = Bottleneck(256, 128, stride=2)  # v1.5: the stride sits on the 3×3 convolution
    assert block.body[0][0].stride == (1, 1) and block.body[2][0].stride == (2, 2)
    assert block(torch.randn(1, 256, 8, 8)).shape == (1, 512, 4, 4)
    with pytest.raises(NMTuneError, match="depth must be one of"):
        ImageNetResNet(20)


@pytest.mark.parametrize(("name", "dim"), [("resnet18", 512), ("resnet50", 2048)])
def test_registered_resnets_normalise_like_imagenet(name, dim):
    backbone = create_backbone(name, image_size=32, seed=1)
    grey = np.random.default_rng(0).uniform(size=(2, 1, 32, 32)).astype(np.float32)
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(backbone.preprocess(grey).numpy(), (grey - mean) / std, rtol=1e-6)
    assert backbone.embed(grey).shape == (2, dim)
    assert create_backbone(name, seed=1).preprocess.image_size == 224


# --------------------------------------------------------------------------- lazy folders


def _write_tree(root, side: int, per_class: dict[str, int], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for cls in CLASSES:
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i:02d}.png")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """3 classes of 20×20 RGB PNGs: 5 per class in train, 2 in test."""
    root = tmp_path_factory.mktemp("tree")
    _write_tree(root, 20, {"train": 5, "test": 2})
    return root


def _both(root, split="train", image_size=16):
    name = f"folder:{root}"
    return (load_dataset(name, split, image_size=image_size, lazy=True),
            load_dataset(name, split, image_size=image_size, lazy=False))


def test_lazy_folder_equals_the_in_memory_loader(tree):
    lazy, memory = _both(tree)
    assert isinstance(lazy.inputs, LazyImages) and isinstance(memory.inputs, np.ndarray)
    assert lazy.inputs.shape == memory.inputs.shape == (15, 3, 16, 16)
    np.testing.assert_array_equal(lazy.inputs[:], memory.inputs)  # resized, bit for bit
    np.testing.assert_array_equal(np.asarray(lazy.inputs), memory.inputs)
    np.testing.assert_array_equal(lazy.labels, memory.labels)
    assert lazy.classes == memory.classes == CLASSES and lazy.name == memory.name


def test_lazy_indexing_matches_numpy(tree):
    lazy, memory = _both(tree)
    x, ref = lazy.inputs, memory.inputs
    mask = np.arange(15) % 4 == 1
    for key in (slice(2, 11, 3), slice(None, None, -5), np.array([14, 0, -1, 3]), mask, [], 7, -2):
        np.testing.assert_array_equal(x[key], ref[key])
    with pytest.raises(IndexError):
        x[np.array([15])]
    with pytest.raises(NMTuneError, match="index LazyImages"):
        x[np.array([0.5])]
    one_thread = x.take(np.arange(15))
    one_thread.threads = 1
    np.testing.assert_array_equal(one_thread[:], ref)


def test_subset_and_take_stay_lazy(tree):
    lazy, memory = _both(tree)
    sub, ref = lazy.subset(6, seed=2), memory.subset(6, seed=2)
    assert isinstance(sub.inputs, LazyImages) and len(sub) == 6
    np.testing.assert_array_equal(sub.inputs[:], ref.inputs)
    np.testing.assert_array_equal(sub.labels, ref.labels)
    assert sub.fingerprint != lazy.fingerprint
    assert sub.fingerprint == load_dataset(f"folder:{tree}", lazy=True, image_size=16,
                                           limit=6, seed=2).fingerprint
    picked = lazy.take(np.array([4, 4, 0]), "picked")
    np.testing.assert_array_equal(picked.inputs[:], memory.inputs[[4, 4, 0]])


def test_fingerprint_follows_file_stats_and_size(tmp_path):
    _write_tree(tmp_path, 20, {"train": 2})
    name = f"folder:{tmp_path}"
    first = load_dataset(name, lazy=True).fingerprint
    assert load_dataset(name, lazy=True).fingerprint == first
    assert load_dataset(name, lazy=True, image_size=16).fingerprint != first
    path = tmp_path / "train" / "bee" / "01.png"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert load_dataset(name, lazy=True).fingerprint != first


def test_cover_crop_keeps_aspect_and_converts_to_rgb(tmp_path):
    wide = np.random.default_rng(1).integers(0, 256, (20, 40), dtype=np.uint8)
    Image.fromarray(wide).save(tmp_path / "wide.png")  # grey, 40 wide, 20 high
    out = decode_cover_crop(tmp_path / "wide.png", (10, 10))
    # Scaled by 1/2 to 20×10 (bicubic, as the in-memory loader resizes), then columns 5..14.
    half = np.asarray(Image.fromarray(wide).resize((20, 10), resample=Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(out, np.repeat(half[:, 5:15, None], 3, axis=2))


def test_auto_mode_and_unreadable_files(tree, tmp_path, monkeypatch):
    assert isinstance(load_dataset(f"folder:{tree}").inputs, np.ndarray)  # 15 small images
    monkeypatch.setattr(lazy_mod, "AUTO_LAZY_BYTES", 15 * 3 * 20 * 20 * 4 - 1)
    auto = load_dataset(f"folder:{tree}")
    assert isinstance(auto.inputs, LazyImages) and auto.inputs.shape == (15, 3, 224, 224)
    _write_tree(tmp_path, 8, {"train": 1})
    (tmp_path / "train" / "cat" / "00.png").write_bytes(b"not a png")
    broken = load_dataset(f"folder:{tmp_path}", lazy=True)
    with pytest.raises(NMTuneError, match=r"cannot decode image .*cat.00\.png"):
        broken.inputs[:]


def test_extract_over_lazy_equals_in_memory(tree):
    lazy, memory = _both(tree)
    backbone = create_backbone("resnet8", width=16, in_channels=3)
    for views in (1, 2):
        got = extract(backbone, lazy, views=views, batch_size=4, cache_dir=False, progress=False)
        want = extract(backbone, memory, views=views, batch_size=4, cache_dir=False,
                       progress=False)
        np.testing.assert_array_equal(got.features, want.features)


# --------------------------------------------------------------------------- pre-training


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory):
    """224×224 images (the lazy default size), so lazy and in-memory loads hold equal data."""
    root = tmp_path_factory.mktemp("big")
    _write_tree(root, 224, {"train": 4, "test": 1}, seed=1)
    return root


def _pretrain(root, out, monkeypatch, lazy: bool, **overrides):
    # The folder is tiny, so only a zero threshold makes the default (auto) load lazy.
    monkeypatch.setattr(lazy_mod, "AUTO_LAZY_BYTES", 0 if lazy else lazy_mod.AUTO_LAZY_BYTES)
    config = PretrainConfig(
        backbone="resnet8", backbone_kwargs={"width": 16, "in_channels": 3},
        dataset=f"folder:{root}", noise={"kind": "symmetric", "rate": 0.25, "seed": 0},
        epochs=1, batch_size=4, seed=0, device="cpu", **overrides,
    )
    return pretrain(config, out, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("augment", [False, True])
def test_streamed_pretraining_equals_in_memory(big_tree, tmp_path, monkeypatch, augment):
    crops = []
    real_crop = loop_mod.crop_and_flip
    monkeypatch.setattr(loop_mod, "crop_and_flip",
                        lambda x, u: crops.append(len(x)) or real_crop(x, u))
    lazy = _pretrain(big_tree, tmp_path / "lazy", monkeypatch, lazy=True, augment=augment)
    memory = _pretrain(big_tree, tmp_path / "memory", monkeypatch, lazy=False, augment=augment)
    assert crops == ([4] * 6 if augment else [])  # 3 steps per run, every batch augmented
    a, b = (torch.load(r.backbone_path, weights_only=True) for r in (lazy, memory))
    assert all(torch.equal(a[k], b[k]) for k in b)
    drop = ("seconds",)
    assert {k: v for k, v in lazy.metrics.items() if k not in drop} == {
        k: v for k, v in memory.metrics.items() if k not in drop}
    assert lazy.metrics["num_train"] == 12 and lazy.metrics["num_eval"] == 3


def test_worker_processes_stream_the_same_batches(tree):
    lazy, memory = _both(tree)
    preprocess = create_backbone("resnet8", in_channels=3).preprocess
    rows = [torch.tensor([3, 0, 14]), torch.tensor([7]), torch.arange(15)]
    cpu = torch.device("cpu")
    streamed = Streamed(lazy.inputs, preprocess, cpu, num_workers=2)
    in_memory = Preprocessed(memory.inputs, preprocess, cpu)
    assert len(streamed) == len(in_memory) == 15
    for got, want in zip(streamed.batches(rows), in_memory.batches(rows), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert lazy.inputs.threads >= 1 and streamed.decoder.inputs.threads == 1


def test_crop_and_flip_geometry():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    whole = torch.tensor([[1.0, 0.5, 0.5, 0.5, 0.9]] * 2)  # full area, square, centred
    torch.testing.assert_close(crop_and_flip(x, whole), x)
    flipped = whole.clone()
    flipped[:, 4] = 0.1
    torch.testing.assert_close(crop_and_flip(x, flipped), x.flip(-1))
    # A quarter of the area, square, in the top-left corner: pixel (1, 1) of the output samples
    # input (0.25, 0.25) in pixel units, i.e. 9/16 of x[0,0] + 3/16 of each neighbour + 1/16.
    corner = torch.tensor([[0.25 / 0.92 - 0.08 / 0.92, 0.5, 0.0, 0.0, 0.9]] * 2)
    out = crop_and_flip(x, corner)
    p = x[..., :2, :2]
    want = (9 * p[..., 0, 0] + 3 * p[..., 0, 1] + 3 * p[..., 1, 0] + p[..., 1, 1]) / 16
    torch.testing.assert_close(out[..., 1, 1], want)


def test_new_settings_are_checked_and_old_runs_still_resume(tmp_path):
    with pytest.raises(NMTuneError, match="num_workers"):
        PretrainConfig(num_workers=-1)
    with pytest.raises(NMTuneError, match="augment"):
        PretrainConfig(augment="yes")
    config = PretrainConfig(backbone="resnet8", backbone_kwargs={"width": 8}, dataset="digits",
                            epochs=1, batch_size=128, limit=300, device="cpu")
    first = pretrain(config, tmp_path, progress=False)
    # A run made before augment/num_workers existed has neither key in its config.json.
    stored = json.loads(first.config_path.read_text())
    del stored["augment"], stored["num_workers"]
    first.config_path.write_text(json.dumps(stored))
    again = pretrain(PretrainConfig(**{**config.to_dict(), "num_workers": 2}), tmp_path,
                     progress=False)
    assert again.metrics == first.metrics


# --------------------------------------------------------------------------- the config


def test_paper_imagenet_config_is_valid():
    study = load_config("paper-imagenet")
    assert study.backbone["name"] == "resnet50" and study.seeds == (0, 1, 2)
    assert study.noise == NoiseGrid("symmetric", (0.0, 0.05, 0.10, 0.20, 0.30))
    settings = study.pretrain
    assert (settings.epochs, settings.batch_size, settings.lr, settings.weight_decay) == (
        90, 256, 0.1, 1e-4)
    assert settings.dataset == "folder:/data/imagenet" and settings.eval_split == "val"
    for params in study.methods.values():
        make_tuner(params, seed=0, device="cpu")
    assert any(task.ood for task in study.tasks)


@pytest.mark.parametrize(("ratio", "seed", "noise"), [(0.0, 0, "none"), (0.1, 2, "symmetric:0.1")])
def test_documented_torchrun_command_makes_the_studys_runs(
    ratio, seed, noise, monkeypatch, tmp_path
):
    """The header's per-grid-point command builds exactly the config the study pre-trains
    with, in the folder it looks in, so the study reuses those runs."""
    study = load_config("paper-imagenet")
    seen = {}

    def capture(config, out_dir, **kwargs):
        seen.update(config=config, out=out_dir)
        raise _Stop

    monkeypatch.setattr(pretrain_mod, "pretrain", capture)
    with pytest.raises(_Stop):
        StudyRunner(study, tmp_path, progress=False).pretrain_cell(ratio, seed)
    args = build_parser().parse_args([
        "pretrain", "--config", str(PACKAGED_CONFIGS / "paper-imagenet.yaml"),
        "--noise", noise, "--seed", str(seed), "--out", str(tmp_path / "x"),
    ])
    from_cli = config_from_args(args)
    assert from_cli.to_dict() | {"device": None} == seen["config"].to_dict() | {"device": None}
    assert seen["out"] == tmp_path / "pretrain" / f"symmetric-{ratio:g}-seed{seed}"


class _Stop(Exception):
    pass


def test_study_stops_in_preflight_naming_the_missing_folder(tmp_path, capsys):
    if os.path.exists("/data/imagenet"):
        pytest.skip("ImageNet is present here")
    assert cli_main(["study", "paper-imagenet", "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "/data/imagenet does not exist" in err and "edit the path in the config" in err
    assert not (tmp_path / "pretrain").exists() and not (tmp_path / "features").exists()
