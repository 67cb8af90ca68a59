"""Rebuilding a runnable DenseNet from any checkpoint layout, checked on data."""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from click.testing import CliRunner
from layouts import AttrBlocksNet, layouts
from torch import nn

from reuse_analysis.cli import cli
from reuse_analysis.concat_order import detect_concat_order
from reuse_analysis.data import ImageData, load_dataset, normalize
from reuse_analysis.models import DenseNet
from reuse_analysis.probes import ProbeSettings, probe_table
from reuse_analysis.rebuild import (
    RebuildError,
    RebuiltDenseNet,
    rebuild,
    verify,
)
from reuse_analysis.structure import infer_structure

LAYOUTS = layouts()
MEAN, STD = (0.45, 0.5, 0.55), (0.2, 0.25, 0.3)


# ----------------------------------------------------------------------------- extra layouts
class FlatHeadNet(AttrBlocksNet):
    """kuangliu's head on 48-pixel images: avg_pool2d(4) leaves 3×3, flattened into fc."""

    def __init__(self):
        super().__init__(newest_first=True, layers=(3, 3, 3), classes=5)
        self.linear = nn.Linear(self.linear.in_features * 9, 5)

    def forward(self, x):
        x = self.conv1(x)
        for name in self.order:
            x = self.get_submodule(name)(x)
        x = F.avg_pool2d(F.relu(self.bn(x)), 4)
        return self.linear(x.flatten(1))


class MLPHeadNet(AttrBlocksNet):
    """A head of three Linears with a BatchNorm1d: C → 48 → 24 → 10."""

    def __init__(self):
        super().__init__(layers=(3, 3, 3))
        c = self.linear.in_features
        del self.linear
        self.head = nn.Sequential(
            nn.Linear(c, 48), nn.BatchNorm1d(48), nn.ReLU(), nn.Linear(48, 24), nn.ReLU(),
            nn.Linear(24, 10),
        )  # fmt: skip

    def forward(self, x):
        x = self.conv1(x)
        for name in self.order:
            x = self.get_submodule(name)(x)
        return self.head(F.adaptive_avg_pool2d(F.relu(self.bn(x)), 1).flatten(1))


class EmbeddingNet(AttrBlocksNet):
    """A 64-d embedding instead of class scores."""

    def __init__(self):
        super().__init__(layers=(3, 3, 3))
        c = self.linear.in_features
        del self.linear
        self.embedding = nn.Linear(c, 64)


def deep_stem_net():
    """timm's deep stem (three 3×3 convs with norms, the first of stride 2, then a
    max-pool) before torchvision's blocks."""
    tv = torchvision.models.DenseNet(8, (2, 3), 16, bn_size=2, num_classes=6)
    stem = [
        ("conv0", nn.Conv2d(3, 8, 3, 2, 1, bias=False)), ("norm0", nn.BatchNorm2d(8)),
        ("relu0", nn.ReLU()), ("conv1", nn.Conv2d(8, 8, 3, 1, 1, bias=False)),
        ("norm1", nn.BatchNorm2d(8)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(8, 16, 3, 1, 1, bias=False)), ("norm2", nn.BatchNorm2d(16)),
        ("relu2", nn.ReLU()), ("pool0", nn.MaxPool2d(3, 2, 1)),
    ]  # fmt: skip
    rest = [(n, m) for n, m in tv.features.named_children() if not n[-1].isdigit() or "block"
            in n or "transition" in n or n == "norm5"]  # fmt: skip
    tv.features = nn.Sequential(OrderedDict(stem + [(n, m) for n, m in rest if n != "pool0"]))
    return tv


EXTRA = {
    "flattened_head": (FlatHeadNet, (2, 3, 48, 48)),
    # 56 pixels leave a 14×14 map: avg_pool2d(4) drops the last two rows and columns
    "flattened_head_remainder": (FlatHeadNet, (2, 3, 56, 56)),
    "mlp_head": (MLPHeadNet, (2, 3, 32, 32)),
    "imagenet_stem": (
        lambda: torchvision.models.DenseNet(8, (2, 3), 16, bn_size=2, num_classes=6),
        (2, 3, 64, 64),
    ),
    "deep_stem": (deep_stem_net, (2, 3, 64, 64)),
}
ALL = {**{n: (b, s) for n, (b, s, _) in LAYOUTS.items()}, **EXTRA}


def _images(n: int, shape: tuple[int, ...], seed: int = 0) -> ImageData:
    """uint8 images whose channels differ in brightness and contrast, with labels."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape[1:]
    base = torch.rand(n, c, h, w, generator=g)
    scale = torch.linspace(0.4, 1.0, c).view(1, c, 1, 1)
    x = (255 * (0.1 + 0.8 * base * scale)).to(torch.uint8)
    return ImageData(x, torch.randint(0, 5, (n,), generator=g))


def _calibrated(build, shape, mean=MEAN, std=STD, seed=0):
    """The model with running statistics gathered on its data (as training leaves them)."""
    torch.manual_seed(seed)
    model = build()
    data = _images(64, shape, seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative: exactly the statistics of the batches seen
    model.train()
    with torch.no_grad():
        model(normalize(data.images, mean[: shape[1]], std[: shape[1]]))
    return model.eval(), data


# ----------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("name", sorted(ALL))
def test_rebuild_computes_what_the_original_computes(name):
    build, shape = ALL[name]
    model, data = _calibrated(build, shape)
    sd = model.state_dict()
    rebuilt = rebuild(sd, infer_structure(sd))
    assert not rebuilt.training
    x = torch.randn(4, *shape[1:])
    with torch.no_grad():
        expected, got = model(x), rebuilt(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    m, s = MEAN[: shape[1]], STD[: shape[1]]
    assert "batch norms see the statistics they were trained on" in verify(rebuilt, data, m, s)


def test_toolkit_densenet_where_it_fits_and_the_rebuild_elsewhere():
    kinds = {}
    for name in ("kuangliu", "bearpaw", "flattened_head", "mlp_head", "deep_stem"):
        build, shape = ALL[name]
        model, _ = _calibrated(build, shape)
        kinds[name] = type(rebuild(model.state_dict(), infer_structure(model.state_dict())))
    assert kinds["kuangliu"] is DenseNet and kinds["bearpaw"] is DenseNet
    assert kinds["flattened_head"] is RebuiltDenseNet
    assert kinds["mlp_head"] is RebuiltDenseNet and kinds["deep_stem"] is RebuiltDenseNet


def test_concat_order_is_read_off_the_batch_norm_statistics():
    for name, order in (("kuangliu", "newest-first"), ("bearpaw", "oldest-first")):
        model, _ = _calibrated(ALL[name][0], ALL[name][1])
        sd = model.state_dict()
        assert detect_concat_order(sd, infer_structure(sd)).detected == order
        assert rebuild(sd, infer_structure(sd)).concat_order == order
    untrained = AttrBlocksNet(newest_first=True).state_dict()
    assert detect_concat_order(untrained, infer_structure(untrained)).detected is None
    assert rebuild(untrained, infer_structure(untrained)).concat_order == "oldest-first"


# ----------------------------------------------------------------------------- the check
def test_batch_norm_check_refuses_the_wrong_concat_order():
    model, data = _calibrated(*ALL["kuangliu"])
    sd = model.state_dict()
    wrong = rebuild(sd, infer_structure(sd), order="oldest-first")
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(wrong(x), model(x), atol=1e-3)  # it really computes otherwise
    with pytest.raises(RebuildError) as err:
        verify(wrong, data, MEAN, STD)
    message = str(err.value)
    assert "does not compute what the original did" in message
    # layer 1 of a block reads x_0 alone, in either order: the first misfit is a layer 2
    assert "`dense1.1.bn1`" in message and "concat order oldest-first" in message


def test_batch_norm_check_refuses_the_wrong_normalisation_and_names_the_right_one():
    model, data = _calibrated(*ALL["bearpaw"])
    rebuilt = rebuild(model.state_dict(), infer_structure(model.state_dict()))
    candidates = {"the right ones": (MEAN, STD), "none": ((0.0,) * 3, (1.0,) * 3)}
    with pytest.raises(RebuildError) as err:
        verify(rebuilt, data, (0.0,) * 3, (1.0,) * 3, alternatives=candidates, label="none")
    message = str(err.value)
    assert "input normalisation does not match" in message
    assert "`dense1.0.bn1`" in message  # the first norm after the stem
    assert "with the right ones" in message and "it fits" in message
    assert "the right ones" in verify(rebuilt, data, MEAN, STD, label="the right ones")


def test_untrained_statistics_are_not_checked():
    torch.manual_seed(0)
    sd = AttrBlocksNet().state_dict()
    rebuilt = rebuild(sd, infer_structure(sd))
    assert "untrained" in verify(rebuilt, _images(8, (1, 3, 32, 32)), MEAN, STD)


# ----------------------------------------------------------------------------- heads
def test_heads_report_their_real_outputs_and_the_classifier_column():
    mlp = infer_structure(MLPHeadNet().state_dict()).classifier
    assert mlp.key == "head.0.weight" and mlp.num_classes == 10 and mlp.embedding is None
    assert [(h.kind, h.in_features, h.out_features) for h in mlp.layers] == [
        ("linear", 69, 48),
        ("norm", 48, 48),
        ("linear", 48, 24),
        ("linear", 24, 10),
    ]
    flat = infer_structure(FlatHeadNet().state_dict())
    c = flat.blocks[-1].out_channels
    assert flat.classifier.positions == 9 and flat.classifier.in_features == 9 * c
    assert flat.num_classes == 5
    emb = infer_structure(EmbeddingNet().state_dict()).classifier
    assert emb.num_classes == 64 and "embedding" in emb.embedding


def test_theta_is_printed_as_built():
    # θ = 0.6 on 72 channels keeps floor(43.2) = 43: the file says 43/72 = 0.597…
    net = AttrBlocksNet(k=12, layers=(4, 4, 4), c0=24, theta=0.6)
    s = infer_structure(net.state_dict())
    assert s.transitions[0].conv.in_channels == 72 and s.transitions[0].conv.out_channels == 43
    assert s.compression == 0.6 and "θ=0.6," in s.summary() + ","


def test_info_shows_the_head(tmp_path):
    path = tmp_path / "mlp.pt"
    torch.save({"net": MLPHeadNet().state_dict()}, path)
    out = CliRunner().invoke(cli, ["info", str(path)])
    assert out.exit_code == 0, out.output
    assert "classifier head.0: reads" in out.output and "(the classifier column)" in out.output
    assert "Linear 69→48 → BatchNorm1d 48 → Linear 48→24 → Linear 24→10: 10 classes" in (out.output)
    path = tmp_path / "flat.pt"
    torch.save({"net": FlatHeadNet().state_dict()}, path)
    out = CliRunner().invoke(cli, ["info", str(path)])
    assert "classifier linear: reads 621 features = 69 channels × 9 positions" in out.output
    assert "Linear 621→5: 5 classes" in out.output
    path = tmp_path / "emb.pt"
    torch.save(EmbeddingNet().state_dict(), path)
    out = CliRunner().invoke(cli, ["info", str(path)])
    assert "64 outputs, an embedding" in out.output and "outputs         64" in out.output


# ----------------------------------------------------------------------------- commands
def _npz(path, shape, n_train=48, n_test=24):
    train, test = _images(n_train, shape, 1), _images(n_test, shape, 2)
    np.savez(
        path,
        x_train=train.images.permute(0, 2, 3, 1).numpy(),
        y_train=train.labels.numpy(),
        x_test=test.images.permute(0, 2, 3, 1).numpy(),
        y_test=test.labels.numpy(),
        classes=np.array([str(i) for i in range(5)]),
    )
    return path


def _with_statistics_of(model: nn.Module, ds) -> nn.Module:
    """``model`` in eval mode, every batch norm holding the exact (cumulative) statistics
    of the training images, as a model trained on them would (approximately)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(ds.train.batch(torch.arange(len(ds.train)), ds.mean, ds.std))
    return model.eval()


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """A kuangliu-style flattened-head checkpoint (newest first), trained statistics on an
    npz data set, and the original module."""
    tmp = tmp_path_factory.mktemp("rebuild")
    shape = (1, 3, 48, 48)
    npz = _npz(tmp / "tiny.npz", shape)
    ds = load_dataset(f"npz:{npz}", tmp)
    torch.manual_seed(0)
    model = _with_statistics_of(FlatHeadNet(), ds)
    path = tmp / "kuangliu_flat.pth"
    torch.save({"net": model.state_dict(), "acc": 12.5, "epoch": 3}, path)
    return path, npz, ds, model


def test_evaluate_runs_a_foreign_checkpoint(foreign):
    path, npz, ds, model = foreign
    out = CliRunner().invoke(cli, ["evaluate", str(path), "--dataset", f"npz:{npz}", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    with torch.no_grad():
        logits = model(ds.test.batch(torch.arange(len(ds.test)), ds.mean, ds.std))
    assert result["images"] == len(ds.test)
    assert result["accuracy"] == pytest.approx((logits.argmax(1) == ds.test.labels).float().mean())
    assert result["loss"] == pytest.approx(float(F.cross_entropy(logits, ds.test.labels)), 1e-5)
    assert "batch-norm check: all" in result["bn_check"]


def test_evaluate_takes_a_plain_class_folder_whole_for_a_foreign_checkpoint(tmp_path):
    """The batch-norm check reads the folder's training part (what the statistics came
    from); the accuracy is over every image of the folder, as for any model not trained
    on it."""
    from PIL import Image

    data = _images(60, (1, 3, 48, 48), seed=3)
    root = tmp_path / "shapes"
    for i, (image, label) in enumerate(zip(data.images, data.labels, strict=True)):
        folder = root / f"class{int(label)}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    name = f"imagefolder:{root}"
    torch.manual_seed(0)
    model = _with_statistics_of(FlatHeadNet(), load_dataset(name, tmp_path / "a"))
    path = tmp_path / "kuangliu_flat.pth"
    torch.save({"net": model.state_dict()}, path)
    args = ["evaluate", str(path), "--dataset", name, "--data-dir", str(tmp_path / "b"), "--json"]
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert "batch-norm check: all" in result["bn_check"]
    whole = load_dataset(name, tmp_path / "c", splits=("test",), whole_folder=True).test
    assert result["images"] == len(whole) == 60
    with torch.no_grad():
        logits = model(whole.batch(torch.arange(60), result["mean"], result["std"]))
    assert result["accuracy"] == pytest.approx((logits.argmax(1) == whole.labels).float().mean())


def test_evaluate_refuses_a_normalisation_that_does_not_fit(foreign):
    path, npz, _, _ = foreign
    args = ["evaluate", str(path), "--dataset", f"npz:{npz}", "--mean", "0,0,0", "--std", "1,1,1"]
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 2
    assert out.stderr.startswith("Error: ") and len(out.stderr.strip().splitlines()) == 1
    assert "input normalisation does not match" in out.stderr
    assert "the data set's own statistics" in out.stderr  # the one that fits


def _naive_ablation(model, x, y, weight, start, stop):
    """Loss increase when ``weight[:, start:stop]`` of the original module is zeroed."""
    with torch.no_grad():
        base = F.cross_entropy(model(x), y)
        saved = weight.detach().clone()
        weight[:, start:stop] = 0
        cut = F.cross_entropy(model(x), y)
        weight.copy_(saved)
    return float(cut - base)


def test_ablation_on_a_foreign_checkpoint_matches_cutting_the_original(foreign, tmp_path):
    path, npz, ds, model = foreign
    args = ["table", str(path), "--metric", "ablation", "--dataset", f"npz:{npz}"]
    args += ["--images", "48", "--data-dir", str(tmp_path), "--format", "json"]
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 0, out.output
    rows = {
        (r["block"], r["source"], r["target"]): r["loss_increase"]
        for r in json.loads(out.stdout)["rows"]
    }
    x = ds.train.batch(torch.arange(len(ds.train)), ds.mean, ds.std)
    y = ds.train.labels
    s = infer_structure(model.state_dict())
    # newest first: layer 3 of block 2 reads [x2, x1, x0]; source 0 is the last c0 channels
    b2 = s.blocks[1]
    (_, a, b) = b2.source_slices(3, "newest-first")[0]
    expected = _naive_ablation(model, x, y, model.dense2[2].conv1.weight, a, b)
    assert rows[(2, 0, 3)] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    # the classifier on the flattened map: source 1's channels, 9 features each
    last = s.blocks[-1]
    (_, a, b) = last.source_slices(last.num_layers + 1, "newest-first")[1]
    expected = _naive_ablation(model, x, y, model.linear.weight, 9 * a, 9 * b)
    assert rows[(3, 1, last.num_layers + 1)] == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_data_driven_metrics_on_an_mlp_head(tmp_path):
    shape = (1, 3, 32, 32)
    npz = _npz(tmp_path / "tiny.npz", shape)
    ds = load_dataset(f"npz:{npz}", tmp_path)
    torch.manual_seed(0)
    model = _with_statistics_of(MLPHeadNet(), ds)
    x = ds.train.batch(torch.arange(len(ds.train)), ds.mean, ds.std)
    sd = model.state_dict()
    s = infer_structure(sd)
    settings = ProbeSettings(dataset=f"npz:{npz}", data_dir=str(tmp_path), images=48)
    table = probe_table("ablation", sd, s, None, settings, progress=False)
    last = s.blocks[-1]
    (_, a, b) = last.source_slices(last.num_layers + 1)[2]
    expected = _naive_ablation(model, x, ds.train.labels, model.head[0].weight, a, b)
    row = table[(table.block == 3) & (table.source == 2) & (table.target == last.num_layers + 1)]
    assert float(row.loss_increase.iloc[0]) == pytest.approx(expected, rel=1e-4, abs=1e-6)
    taylor = probe_table("taylor", sd, s, None, settings, progress=False)
    assert len(taylor) == len(table) and taylor.taylor_loss_increase.abs().sum() > 0


def test_prune_on_a_foreign_checkpoint_saves_a_model_that_evaluates_the_same(foreign, tmp_path):
    path, npz, ds, model = foreign
    out_path = tmp_path / "pruned.pt"
    args = ["prune", str(path), "--metric", "weight", "--fraction", "0.5", "-o", str(out_path)]
    args += ["--dataset", f"npz:{npz}", "--data-dir", str(tmp_path), "--json"]
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 0, out.output
    record = json.loads(out.stdout)
    with torch.no_grad():
        logits = model(ds.test.batch(torch.arange(len(ds.test)), ds.mean, ds.std))
    original = float((logits.argmax(1) == ds.test.labels).float().mean())
    assert record["accuracy_before"] == pytest.approx(original)
    assert record["connections_cut"] > 0
    # the file's order (newest first, detected) and the rebuild's, which the cuts follow
    assert record["reordered"] is True and record["concat_order"] == "oldest-first"
    file_order = record["checkpoint_concat_order"]
    assert (file_order["order"], file_order["provenance"]) == ("newest-first", "detected")
    said = (
        f"checkpoint {file_order['description']}, run and cut in the rebuild's oldest-first order"
    )
    assert record["concat_order_text"] == said and f"(concat order {said})" in out.stderr
    again = CliRunner().invoke(
        cli, ["evaluate", str(out_path), "--dataset", f"npz:{npz}", "--json"]
    )
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["accuracy"] == pytest.approx(record["accuracy_after"])
    # the saved weights (the rebuild's, oldest first) hold every cut as zeros
    from reuse_analysis.prune import connection_slice

    saved = torch.load(out_path, weights_only=True)["state_dict"]
    structure = infer_structure(saved)
    cut = record["cut"]
    for b, src, t in zip(cut["block"], cut["source"], cut["target"], strict=True):
        key, start, stop = connection_slice(structure, b, src, t)
        assert saved[key][:, start:stop].abs().sum() == 0
    assert len(cut["block"]) == record["connections_cut"] > 0
    # half of the classifier column's 4 sources were cut, each 9 features per channel wide
    last = structure.blocks[-1]
    head_cuts = [
        connection_slice(structure, b, src, t)
        for b, src, t in zip(cut["block"], cut["source"], cut["target"], strict=True)
        if (b, t) == (last.index, last.num_layers + 1)
    ]
    assert len(head_cuts) == 2
    widths = {stop - start for _, start, stop in head_cuts}
    assert widths <= {9 * 12, 9 * last.in_channels}


def test_agreement_on_a_newest_first_checkpoint_reads_its_weights_in_that_order(foreign, tmp_path):
    from reuse_analysis.analysis import metric_tables
    from reuse_analysis.metrics import reuse_table

    path, npz, _, model = foreign
    settings = ProbeSettings(dataset=f"npz:{npz}", data_dir=str(tmp_path), images=48)
    tables = metric_tables(path, ["weight", "activation"], probe=settings)
    sd = model.state_dict()
    expected = reuse_table(sd, infer_structure(sd), "newest-first")
    assert tables["weight"].mean_abs_weight.tolist() == expected.mean_abs_weight.tolist()
    assert len(tables["activation"]) == len(expected)
    args = ["agreement", str(path), "--dataset", f"npz:{npz}", "--images", "48"]
    args += ["--data-dir", str(tmp_path), "--json", "-o", str(tmp_path / "agreement.png")]
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["concat_order"] == "newest-first"


def test_a_data_driven_metric_refuses_an_order_the_statistics_contradict(foreign, tmp_path):
    path, npz, _, _ = foreign
    args = ["table", str(path), "--metric", "ablation", "--dataset", f"npz:{npz}"]
    args += ["--data-dir", str(tmp_path), "--concat-order", "oldest-first"]
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 2
    assert out.stderr.startswith("Error: ") and len(out.stderr.strip().splitlines()) == 1
    assert "order its batch-norm statistics show (newest-first)" in out.stderr


def test_a_recorded_normalisation_that_does_not_fit_gives_way_to_the_usual_one(foreign, tmp_path):
    path, npz, ds, model = foreign
    wrong = tmp_path / "recorded_wrong.pth"
    sd = torch.load(path, weights_only=True)["net"]
    torch.save({"net": sd, "dataset": {"mean": [0.0] * 3, "std": [1.0] * 3}}, wrong)
    out = CliRunner().invoke(cli, ["evaluate", str(wrong), "--dataset", f"npz:{npz}", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert result["mean"] == pytest.approx(list(ds.mean))
    assert "with the recorded statistics" in result["bn_check"]
    assert "so the data set's own statistics are used" in result["bn_check"]
    with torch.no_grad():
        logits = model(ds.test.batch(torch.arange(len(ds.test)), ds.mean, ds.std))
    assert result["accuracy"] == pytest.approx((logits.argmax(1) == ds.test.labels).float().mean())


def test_statistics_gathered_on_padded_random_crops_fit_on_such_crops():
    """The "+" augmentation pads with black: the running statistics of a model trained so
    are those of padded crops, which a plain batch does not match."""
    from reuse_analysis.data import random_crop_flip

    torch.manual_seed(0)
    model = ALL["bearpaw"][0]()
    data = _images(64, (1, 3, 32, 32))
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None
    model.train()
    with torch.no_grad():
        for seed in range(4):
            crops = random_crop_flip(data.images, torch.Generator().manual_seed(seed))
            model(normalize(crops, MEAN, STD))
    model.eval()
    rebuilt = rebuild(model.state_dict(), infer_structure(model.state_dict()))
    note = verify(rebuilt, data, MEAN, STD)
    assert "on randomly cropped and flipped images" in note


def test_a_newest_first_file_with_toolkit_names_is_cut_in_the_models_channels():
    """The toolkit's DenseNet fits a newest-first file that uses its key names; the running
    model holds the channels permuted into oldest-first order, so the weights that prune
    cuts and saves are the model's, not the file's (same names, other channel order)."""
    from test_concat_order import _mirrored

    from reuse_analysis.models import create_model
    from reuse_analysis.rebuild import model_weights

    torch.manual_seed(0)
    net = create_model("densenet40", block_config=(3, 3, 3)).train()
    with torch.no_grad():
        net(torch.randn(8, 3, 32, 32))
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    structure = infer_structure(sd)
    newest = _mirrored(sd, structure, "oldest-first")
    model = rebuild(newest, structure)
    assert isinstance(model, DenseNet) and model.concat_order == "newest-first"
    weights, _ = model_weights(model, newest, structure)
    assert weights.keys() == newest.keys()
    assert all(torch.equal(weights[k], sd[k]) for k in sd)  # the oldest-first original
