"""Built-in CIFAR-style backbones: shapes, parameter counts against a hand count, init, errors."""

import math

import pytest
import torch

from nmtune._validation import NMTuneError
from nmtune.backbones.cifar import BasicBlock, ResNet, SmallCNN


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _conv(k: int, cin: int, cout: int) -> int:  # bias-free convolution
    return k * k * cin * cout


def _bn(c: int) -> int:  # BatchNorm weight + bias
    return 2 * c


def _resnet_hand_count(depth: int, width: int, cin: int) -> int:
    """Parameters of a CIFAR ResNet counted layer by layer, independently of the module."""
    n = (depth - 2) // 6
    total = _conv(3, cin, width) + _bn(width)  # stem
    prev = width
    for w in (width, 2 * width, 4 * width):
        for _ in range(n):
            total += _conv(3, prev, w) + _bn(w) + _conv(3, w, w) + _bn(w)
            if prev != w:  # projection shortcut where the width changes
                total += _conv(1, prev, w) + _bn(w)
            prev = w
    return total


@pytest.mark.parametrize("depth,width,cin", [(8, 16, 1), (14, 8, 3), (20, 16, 1), (8, 4, 3)])
def test_resnet_param_count_matches_hand_count(depth, width, cin):
    assert _n_params(ResNet(depth, width, cin)) == _resnet_hand_count(depth, width, cin)


def test_resnet8_width16_is_the_78k_pilot_model():
    backbone = _n_params(ResNet(8, 16, 1))
    head = 64 * 10 + 10
    # 144+32 stem; 4608+64 stage 1; 13824+128+512+64 stage 2; 55296+256+2048+128 stage 3
    assert backbone == 77_104
    assert round((backbone + head) / 1000) == 78


def test_small_cnn_param_count():
    w, cin = 32, 1
    widths = (w, 2 * w, 4 * w, 8 * w)
    chans = (cin, *widths[:-1])
    want = sum(_conv(3, a, b) + _bn(b) for a, b in zip(chans, widths, strict=True))
    assert _n_params(SmallCNN(w, cin)) == want


@pytest.mark.parametrize(
    "model,out_dim",
    [(ResNet(8, 16, 1), 64), (ResNet(14, 8, 3), 32), (SmallCNN(8, 1), 64), (SmallCNN(4, 3), 32)],
)
@pytest.mark.parametrize("hw", [(8, 8), (28, 28), (32, 32), (9, 17)])
def test_output_shape(model, out_dim, hw):
    assert model.out_dim == out_dim
    x = torch.rand(3, model.in_channels, *hw)
    assert model(x).shape == (3, out_dim)


def test_resnet_stages_and_strides():
    model = ResNet(20, 8, 1)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 9  # 3 stages × n = 3
    assert model.trunk(torch.rand(1, 1, 32, 32)).shape == (1, 32, 8, 8)  # two stride-2 stages
    assert SmallCNN(8, 1).trunk(torch.rand(1, 1, 32, 32)).shape == (1, 64, 4, 4)  # three pools


def test_residual_identity_when_body_is_zero():
    block = BasicBlock(4, 4).eval()
    for p in block.body.parameters():
        torch.nn.init.zeros_(p)
    x = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(block(x), torch.relu(x))


def test_kaiming_init():
    torch.manual_seed(0)
    model = ResNet(8, 64, 3)
    conv = model.trunk[-1].body[1]  # 3×3, 256 -> 256
    fan_out = conv.out_channels * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.02)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.all(bn.weight == 1) and torch.all(bn.bias == 0) for bn in bns)


def test_trains_one_step():
    torch.manual_seed(0)
    model = torch.nn.Sequential(SmallCNN(4, 1), torch.nn.Linear(32, 3))
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 3, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = torch.nn.functional.cross_entropy(model(x), y)
    for _ in range(10):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert torch.nn.functional.cross_entropy(model(x), y) < before


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: ResNet(9), "6n\\+2"),
        (lambda: ResNet(2), "6n\\+2"),
        (lambda: ResNet(8, width=0), "width"),
        (lambda: SmallCNN(in_channels=0), "in_channels"),
        (lambda: SmallCNN(width=2.5), "width"),
    ],
)
def test_bad_arguments(build, match):
    with pytest.raises(NMTuneError, match=match):
        build()


@pytest.mark.parametrize("shape", [(2, 1, 7, 28), (1, 28, 28)])
def test_bad_input_shape(shape):
    with pytest.raises(NMTuneError, match="H, W >= 8"):
        SmallCNN(4, 1)(torch.rand(*shape))
