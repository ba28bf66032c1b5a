"""Contrastive pre-training: towers, InfoNCE against numpy, gathered loss under gloo, resume."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from nmtune._validation import NMTuneError
from nmtune.backbones import create_backbone
from nmtune.contrastive import ByteTokenizer, CLIPModel, TextTransformer, clip_loss
from nmtune.pretrain import train_clip


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


TRAIN_ARGS = {"epochs": 2, "batch_size": 2 * B, "lr": 1e-2}


def _rank_main(rank: int, port: int, out: str) -> None:
    """One rank of both distributed checks: a DDP loss/gradient, then a ``train_clip`` run."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo")
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
        # train_clip uses the group already joined and leaves it open.
        train_clip(_tiny_model(), images.numpy(), captions, f"{out}/ddp", **TRAIN_ARGS)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Run :func:`_rank_main` on 2 gloo processes (127.0.0.1) once for the tests below."""
    out = tmp_path_factory.mktemp("ranks")
    torch.multiprocessing.spawn(_rank_main, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return out


@pytest.mark.slow
def test_two_process_gathered_loss_equals_one_process_loss(two_ranks):
    model = _tiny_model()
    images, captions = _batch()
    loss = clip_loss(*model(images, model.tokenize(captions)))
    loss.backward()
    for rank in range(WORLD):
        got = torch.load(two_ranks / f"rank{rank}.pt")
        assert got["loss"].item() == pytest.approx(loss.item(), rel=1e-6)
        for name, p in model.named_parameters():
            # Convention: each rank differentiates the global loss through its own features
            # (and 1/W of the shared temperature), so the ranks' gradients sum to the
            # one-process gradient and DDP's average is 1/W of it.
            torch.testing.assert_close(got["grads"][name] * WORLD, p.grad, rtol=1e-5, atol=1e-6)
    assert not math.isnan(loss.item())


def _query_value(width: int) -> torch.Tensor:
    return torch.cat([torch.arange(width), torch.arange(2 * width, 3 * width)])


@pytest.mark.slow
def test_torchrun_training_equals_one_process(two_ranks, tmp_path):
    images, captions = _batch()
    one = train_clip(_tiny_model(), images.numpy(), captions, tmp_path, **TRAIN_ARGS)
    ddp = json.loads((two_ranks / "ddp" / "history.json").read_text())
    assert [h["loss"] for h in ddp] == pytest.approx([h["loss"] for h in one], rel=1e-5)
    a = torch.load(two_ranks / "ddp" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "model.pt", weights_only=True)
    for name in a:
        if name.endswith("in_proj_bias"):
            # The attention key bias shifts all of a query's scores equally, so softmax makes
            # its gradient exactly 0; AdamW turns the rounding noise left there into full
            # steps whose sign depends on summation order. Compare the query and value parts.
            keep = _query_value(len(a[name]) // 3)
            a[name], b[name] = a[name][keep], b[name][keep]
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- training loop

TRAIN_SCRIPT = """
import sys, time, torch
from nmtune.backbones import create_backbone
from nmtune.contrastive import CLIPModel, TextTransformer
from nmtune.pretrain import train_clip

out, pause = sys.argv[1], sys.argv[2] == "pause"
images = torch.rand(96, 1, 8, 8, generator=torch.Generator().manual_seed(0)).numpy()
captions = [f"a {'thin bold'.split()[i % 2]} number {i % 10}" for i in range(96)]
torch.manual_seed(0)
text = TextTransformer(width=32, layers=1, heads=2, context_length=48)
model = CLIPModel(create_backbone("resnet8").module, text, embed_dim=16)

def on_epoch(record):
    print(f"epoch {record['epoch']} done", flush=True)
    if pause and record["epoch"] == 1:
        time.sleep(60)  # the test kills the process here, after epoch 1's checkpoint

train_clip(model, images, captions, out, epochs=3, batch_size=16, lr=1e-3, warmup_steps=3,
           on_epoch=on_epoch)
"""


def _train(tmp_path, out, pause=False) -> subprocess.Popen:
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    cmd = [sys.executable, str(script), str(out), "pause" if pause else "run"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_killed_run_resumes_bit_identical(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    uninterrupted = _train(tmp_path, whole)
    victim = _train(tmp_path, killed, pause=True)
    try:
        assert victim.stdout.readline() == "epoch 1 done\n"
        os.kill(victim.pid, signal.SIGKILL)
    finally:
        victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    assert not (killed / "model.pt").exists()
    assert len(torch.load(killed / "checkpoint.pt", weights_only=True)["history"]) == 1
    resumed = _train(tmp_path, killed)
    out, _ = resumed.communicate(timeout=120)
    assert out == "epoch 2 done\nepoch 3 done\n"  # it went on from epoch 1's checkpoint
    assert uninterrupted.wait(timeout=120) == 0 and resumed.returncode == 0

    a = torch.load(whole / "model.pt", weights_only=True)
    b = torch.load(killed / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    hist = [json.loads((d / "history.json").read_text()) for d in (whole, killed)]
    assert hist[0] == hist[1] and len(hist[0]) == 3


def test_resume_refuses_other_settings(tmp_path):
    model = _tiny_model()
    images, captions = _batch()
    train_clip(model, images.numpy(), captions, tmp_path, epochs=1, batch_size=4)
    with pytest.raises(NMTuneError, match=r"other settings \(lr\)"):
        train_clip(model, images.numpy(), captions, tmp_path, epochs=1, batch_size=4, lr=1.0)


# ---------------------------------------------------------------- nmtune pretrain --objective clip

CLIP_ARGS = [
    "pretrain", "--objective", "clip", "--dataset", "digits", "--limit", "120",
    "--backbone", "resnet8", "--width", "4", "--noise", "caption_swap:0.2", "--epochs", "3",
    "--batch-size", "24", "--seed", "1", "--device", "cpu",
]


def _clip_yaml(tmp_path) -> str:
    """The text-tower and embedding sizes (no flags for them) as a ClipConfig file."""
    path = tmp_path / "clip.yaml"
    path.write_text("objective: clip\ntext_width: 16\ntext_layers: 1\ntext_heads: 2\n"
                    "context_length: 48\nembed_dim: 8\n")
    return str(path)


def _clip_cli(tmp_path, out, *extra) -> list[str]:
    return [*CLIP_ARGS, "--config", _clip_yaml(tmp_path), "--out", str(out), *extra]


def test_clip_pretraining_through_the_cli(tmp_path, capsys):
    from nmtune.cli import main as cli_main
    from nmtune.data.pairs import synthetic_pairs

    out = tmp_path / "run"
    assert cli_main(_clip_cli(tmp_path, out, "--json", "--quiet")) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert {p.name for p in out.iterdir()} >= {
        "config.json", "noise.npz", "history.csv", "history.png", "backbone.pt", "model.pt",
        "metrics.json"}
    assert not (out / "checkpoint.pt").exists()  # removed once the run completed
    assert json.loads((out / "config.json").read_text())["objective"] == "clip"

    # Caption swap: exactly round(0.2 * 120) = 24 captions moved, none lost or duplicated.
    clean = synthetic_pairs("digits", "train", 120, seed=1).captions
    noise = np.load(out / "noise.npz")
    assert noise["clean"].tolist() == clean
    assert noise["changed"].sum() == 24
    assert np.array_equal(noise["changed"], noise["noisy"] != noise["clean"])
    assert sorted(noise["noisy"].tolist()) == sorted(clean)
    assert metrics["realised_noise_rate"] == 24 / 120 and metrics["caption_swap"] == 0.2
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3]
    assert metrics["train_loss"] == pytest.approx(history["train_loss"].iloc[-1])

    # backbone.pt is the image tower: the registry backbone loads it and extracts its features.
    clip_state = torch.load(out / "model.pt", weights_only=True)
    backbone = create_backbone("resnet8", weights=str(out / "backbone.pt"), width=4)
    tower = {k.removeprefix("image_tower."): v for k, v in clip_state.items()
             if k.startswith("image_tower.")}
    loaded = backbone.module.state_dict()
    assert loaded.keys() == tower.keys()
    assert all(torch.equal(loaded[k], tower[k]) for k in tower)

    # A rerun returns the finished run; another config in the same folder is refused.
    assert cli_main(_clip_cli(tmp_path, out, "--json", "--quiet")) == 0
    assert json.loads(capsys.readouterr().out) == metrics
    assert cli_main(_clip_cli(tmp_path, out, "--quiet", "--lr", "0.5")) == 2
    assert "another config (lr:" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "match"), [
    (["--noise", "symmetric:0.2"], "caption_swap:RATE"),
    (["--optimizer", "sgd"], "--optimizer does not apply to --objective clip"),
    (["--noise", "caption_swap:1.5"], "caption_swap"),
])
def test_clip_cli_errors_are_one_line(tmp_path, capsys, argv, match):
    from nmtune.cli import main as cli_main

    assert cli_main([*_clip_cli(tmp_path, tmp_path / "r", "--quiet"), *argv]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1


def test_pairs_flag_needs_the_clip_objective(tmp_path, capsys):
    from nmtune.cli import main as cli_main

    argv = ["pretrain", "--backbone", "resnet8", "--dataset", "digits", "--pairs", "x.csv",
            "--out", str(tmp_path)]
    assert cli_main(argv) == 2
    assert "--pairs needs --objective clip" in capsys.readouterr().err


def _clip_process(tmp_path, out) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "nmtune", *_clip_cli(tmp_path, out)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_clip_cli_killed_mid_run_resumes_bit_identical(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    victim = _clip_process(tmp_path, killed)
    try:
        # The epoch line is printed after that epoch's checkpoint is written.
        assert victim.stdout.readline().startswith("clip epoch 1/3")
        os.kill(victim.pid, signal.SIGKILL)
    finally:
        victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    assert not (killed / "metrics.json").exists()
    done = len(torch.load(killed / "checkpoint.pt", weights_only=True)["history"])
    assert 1 <= done < 3
    uninterrupted = _clip_process(tmp_path, whole)
    resumed = _clip_process(tmp_path, killed)
    out, _ = resumed.communicate(timeout=120)
    assert out.startswith(f"clip epoch {done + 1}/3")  # it went on from the checkpoint
    assert uninterrupted.wait(timeout=120) == 0 and resumed.returncode == 0
    for name in ("backbone.pt", "model.pt"):
        a = torch.load(whole / name, weights_only=True)
        b = torch.load(killed / name, weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    m = [json.loads((d / "metrics.json").read_text()) for d in (whole, killed)]
    assert {k: v for k, v in m[0].items() if k != "seconds"} == {
        k: v for k, v in m[1].items() if k != "seconds"}


def test_export_pairs_writes_what_the_run_trains_on(tmp_path, capsys):
    from nmtune.cli import main as cli_main
    from nmtune.data.pairs import read_csv, read_shards, synthetic_pairs

    assert cli_main(_clip_cli(tmp_path, tmp_path / "run", "--quiet", "--epochs", "1")) == 0
    capsys.readouterr()
    assert cli_main([*_clip_cli(tmp_path, tmp_path / "unused", "--json"), "--export-pairs",
                     str(tmp_path / "export")]) == 0
    written = json.loads(capsys.readouterr().out)
    assert written["num_pairs"] == 120 and written["realised_noise_rate"] == 0.2
    assert not (tmp_path / "unused").exists()  # exporting trains nothing
    trained = np.load(tmp_path / "run" / "noise.npz")["noisy"].tolist()
    shards = list(read_shards(str(tmp_path / "export" / "shards" / "shard-000000.tar")))
    table = list(read_csv(tmp_path / "export" / "pairs.csv"))
    assert [p.caption for p in shards] == [p.caption for p in table] == trained
    images = synthetic_pairs("digits", "train", 120, seed=1).images
    decoded = np.stack([p.decode() for p in shards])
    np.testing.assert_allclose(decoded, images, atol=0.5 / 255 + 1e-6)  # PNG holds 8 bits

    # Pairs read back from the exported CSV train as --pairs, with the same swap recorded.
    out = tmp_path / "from-csv"
    assert cli_main([*_clip_cli(tmp_path, out, "--json", "--quiet", "--noise", "none"),
                     "--pairs", str(tmp_path / "export" / "pairs.csv"), "--epochs", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["realised_noise_rate"] == 0
    assert np.load(out / "noise.npz")["clean"].tolist() == trained


def _pair_table(tmp_path, rows) -> str:
    """An open_clip CSV of ``rows`` (image bytes or None for a missing file, caption)."""
    lines = ["filepath,title"]
    for i, (data, caption) in enumerate(rows):
        if data is not None:
            (tmp_path / f"im{i}.png").write_bytes(data)
        lines.append(f"im{i}.png,{caption}")
    (tmp_path / "pairs.csv").write_text("\n".join(lines) + "\n")
    return str(tmp_path / "pairs.csv")


def _png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, format="png")
    return buffer.getvalue()


@pytest.mark.parametrize(("row", "match"), [
    ((b"not an image at all", "a cat"), r"pairs.csv: im1.png is not a readable image"),
    ((None, "a cat"), r"pairs.csv:3: cannot read image"),
    ((_png(), ""), r"pairs.csv: im1.png has an empty caption"),
])
def test_bad_pair_files_fail_in_one_line_and_the_fixed_run_may_reuse_the_folder(
        tmp_path, capsys, row, match):
    from nmtune.cli import main as cli_main

    out = tmp_path / "run"
    bad = _pair_table(tmp_path, [(_png(), "a dog"), row])
    argv = ["pretrain", "--objective", "clip", "--backbone", "resnet8", "--width", "4",
            "--epochs", "1", "--batch-size", "2", "--quiet", "--out", str(out)]
    assert cli_main([*argv, "--pairs", bad]) == 2
    err = capsys.readouterr().err
    assert re.search(match, err) and err.count("\n") == 1, err
    # Nothing was trained there: a run with other settings may claim the folder.
    (tmp_path / "good").mkdir()
    good = _pair_table(tmp_path / "good", [(_png(), "a dog"), (_png(), "a cat")])
    assert cli_main([*argv, "--pairs", good]) == 0, capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["pairs"] == good


def test_export_pairs_of_a_limited_table(tmp_path, capsys):
    from nmtune.cli import main as cli_main
    from nmtune.data.pairs import read_csv

    table = _pair_table(tmp_path, [(_png(), f"caption {i}") for i in range(5)])
    out = tmp_path / "export"
    argv = ["pretrain", "--objective", "clip", "--pairs", table, "--limit", "3", "--quiet"]
    assert cli_main([*argv, "--export-pairs", str(out)]) == 0, capsys.readouterr().err
    assert [p.caption for p in read_csv(out / "pairs.csv")] == [f"caption {i}" for i in range(3)]


@pytest.mark.parametrize("target", ["a-file", "a-file/below"])
def test_export_pairs_into_a_file_is_a_one_line_error(tmp_path, capsys, target):
    from nmtune.cli import main as cli_main

    (tmp_path / "a-file").write_text("taken")
    table = _pair_table(tmp_path, [(_png(), "a dog"), (_png(), "a cat")])
    argv = ["pretrain", "--objective", "clip", "--pairs", table, "--quiet",
            "--export-pairs", str(tmp_path / target)]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "a-file" in err and "folder" in err and err.count("\n") == 1, err
    assert (tmp_path / "a-file").read_text() == "taken"
