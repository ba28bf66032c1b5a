"""Contrastive pre-training: towers, InfoNCE against numpy, gathered loss under gloo, resume."""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import torch
from torch import nn

from nmtune._validation import NMTuneError
from nmtune.backbones import create_backbone
from nmtune.contrastive import ByteTokenizer, CLIPModel, TextTransformer, clip_loss


def _numpy_infonce(img: np.ndarray, txt: np.ndarray, scale: float) -> float:
    """CLIP's loss written out: mean of row-wise and column-wise softmax cross-entropies."""
    img = img / np.linalg.norm(img, axis=1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    s = scale * img.astype(np.float64) @ txt.astype(np.float64).T
    n = len(s)
    rows = np.mean([np.log(np.exp(s[i]).sum()) - s[i, i] for i in range(n)])
    cols = np.mean([np.log(np.exp(s[:, j]).sum()) - s[j, j] for j in range(n)])
    return (rows + cols) / 2


def test_clip_loss_matches_numpy():
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(2, 7, 5)).astype(np.float32)
    norm = lambda a: torch.nn.functional.normalize(torch.from_numpy(a), dim=1)  # noqa: E731
    loss = clip_loss(norm(img), norm(txt), torch.tensor(1 / 0.07))
    assert loss.item() == pytest.approx(_numpy_infonce(img, txt, 1 / 0.07), rel=1e-5)


def test_byte_tokenizer_layout():
    tokens = ByteTokenizer(context_length=6)(["ab", "héllo"])
    assert tokens[0].tolist() == [1, ord("a") + 3, ord("b") + 3, 2, 0, 0]
    # truncated to context_length - 2 bytes, then closed by EOT
    assert tokens[1].tolist() == [1, *[b + 3 for b in "héllo".encode()[:4]], 2]


def test_clip_model_on_a_registry_backbone():
    image = create_backbone("resnet8").module
    model = CLIPModel(image, TextTransformer(width=32, layers=1, heads=2), embed_dim=16)
    assert model.logit_scale.exp().item() == pytest.approx(1 / 0.07)
    img, txt, scale = model(torch.rand(3, 1, 28, 28), model.tokenize(["a", "b c", "d"]))
    assert img.shape == txt.shape == (3, 16)
    assert torch.allclose(img.norm(dim=1), torch.ones(3)) and torch.allclose(
        txt.norm(dim=1), torch.ones(3)
    )
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    model.clamp_logit_scale_()
    assert model.logit_scale.exp().item() == pytest.approx(100.0)
    with pytest.raises(NMTuneError, match="out_dim"):
        CLIPModel(nn.Flatten(), TextTransformer(width=32, layers=1, heads=2))


# ---------------------------------------------------------------- torch.distributed (gloo)

B, WORLD = 4, 2
CAPTIONS = [
    f"a {w} digit number {i}"
    for i, w in enumerate("small big thin bold tall wide odd even".split())
]


def _tiny_model() -> CLIPModel:
    torch.manual_seed(0)
    # No BatchNorm: its per-rank statistics would differ from the 2B-batch ones by design.
    image = nn.Sequential(nn.Flatten(), nn.Linear(1 * 6 * 6, 12), nn.Tanh())
    return CLIPModel(
        image,
        TextTransformer(width=16, layers=1, heads=2, context_length=24),
        embed_dim=8,
        image_dim=12,
    )


def _batch():
    return torch.rand(B * WORLD, 1, 6, 6, generator=torch.Generator().manual_seed(1)), CAPTIONS


def _rank_main(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        model = _tiny_model()
        ddp = DistributedDataParallel(model)
        images, captions = _batch()
        rows = slice(rank * B, (rank + 1) * B)
        img, txt, scale = ddp(images[rows], model.tokenize(captions[rows]))
        loss = clip_loss(img, txt, scale)
        loss.backward()  # DDP averages the gradients over the ranks
        grads = {k: p.grad.clone() for k, p in model.named_parameters()}
        torch.save({"loss": loss.detach(), "grads": grads}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gathered_loss_equals_one_process_loss(tmp_path):
    torch.multiprocessing.spawn(
        _rank_main, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True
    )
    model = _tiny_model()
    images, captions = _batch()
    loss = clip_loss(*model(images, model.tokenize(captions)))
    loss.backward()
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["loss"].item() == pytest.approx(loss.item(), rel=1e-6)
        for name, p in model.named_parameters():
            # Convention: each rank differentiates the global loss through its own features
            # (and 1/W of the shared temperature)
            # DDP averages, so the DDP gradient is 1/W of the one-process gradient.
            torch.testing.assert_close(got["grads"][name] * WORLD, p.grad, rtol=1e-5, atol=1e-6)
    assert not math.isnan(loss.item())
