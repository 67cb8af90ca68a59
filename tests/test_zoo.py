"""The textbook's modern CNNs: shapes on small images, training through `train`, rebuilding
from the checkpoint alone, and DenseNet checkpoints loading as before."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from reuse_analysis.checkpoint import load_checkpoint
from reuse_analysis.cli import cli
from reuse_analysis.evaluation import rebuild_model
from reuse_analysis.models import (
    MODELS,
    ZOO,
    DenseNet,
    build_model_spec,
    config_class,
    create_model,
    model_from_config,
)
from reuse_analysis.models.zoo import D2LDenseNetConfig, ResNetConfig, VGGConfig
from reuse_analysis.train import TrainConfig, TrainingError, train

ZOO_NAMES = ["alexnet", "vgg11", "nin", "googlenet", "resnet18", "d2l_densenet"]
# Only the two 4096-wide hidden layers are narrowed for training in tests: they hold most
# of AlexNet's and VGG's weights but none of their structure.
NARROW = {"alexnet": {"hidden": 64}, "vgg11": {"hidden": 64}}


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_holds_the_zoo():
    assert list(ZOO) == ZOO_NAMES
    assert set(ZOO_NAMES) <= set(MODELS)


@pytest.mark.parametrize("name", ZOO_NAMES)
@pytest.mark.parametrize(("channels", "side", "classes"), [(1, 28, 10), (3, 32, 7)])
def test_output_shape_on_small_images(name, channels, side, classes):
    torch.manual_seed(0)
    model = create_model(name, in_channels=channels, num_classes=classes).eval()
    with torch.no_grad():
        out = model(torch.randn(1, channels, side, side))
    assert out.shape == (1, classes)
    assert torch.isfinite(out).all()


# Parameters at 3 input channels and 10 classes, counted by hand from the layer sizes.
EXPECTED_PARAMS = {
    # convs 3·96·9+96, 96·256·25+256, 256·384·9+384, 384·384·9+384, 384·256·9+256;
    # fc 2304·4096+4096, 4096·4096+4096, 4096·10+10
    "alexnet": 2688 + 614656 + 885120 + 1327488 + 884992 + 9441280 + 16781312 + 40970,
    # d2l DenseNet: stem conv+BN, 16 conv blocks (BN + 3×3 conv, k=32), 3 transitions
    # (BN + 1×1 conv), final BN, classifier 248→10.
    "d2l_densenet": (3 * 64 * 9 + 64 + 2 * 64)
    + sum(
        2 * c + c * 32 * 9 + 32
        for c0 in (64, 96, 112, 120)
        for c in (c0, c0 + 32, c0 + 64, c0 + 96)
    )
    + sum(2 * c + c * (c // 2) + c // 2 for c in (192, 224, 240))
    + 2 * 248
    + 248 * 10
    + 10,
}


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_parameter_counts_by_hand(name):
    with torch.device("meta"):
        assert params(create_model(name)) == EXPECTED_PARAMS[name]


def test_resnet18_has_the_book_layout():
    model = create_model("resnet18")
    stages = [model.features.get_submodule(f"stage{s}") for s in range(1, 5)]
    assert [len(s) for s in stages] == [2, 2, 2, 2]
    assert [s[0].conv1.out_channels for s in stages] == [64, 128, 256, 512]
    assert stages[0][0].shortcut is None  # the first stage keeps width and resolution
    assert all(s[0].shortcut.stride == (2, 2) for s in stages[1:])
    assert round(params(model) / 1e6, 1) == 11.2  # d2l: 11.2M at 10 classes


def test_googlenet_inception_widths_follow_the_book():
    model = create_model("googlenet")
    widths = {n: m.out_channels for n, m in model.features.named_children() if "incep" in n}
    assert widths["inception3a"] == 256 and widths["inception3b"] == 480
    assert widths["inception4e"] == 832 and widths["inception5b"] == 1024
    assert model.classifier.in_features == 1024


def test_vgg_pools_round_up_so_28_pixels_survive_five_halvings():
    model = create_model("vgg11", in_channels=1).eval()
    seen = []
    for m in model.features:
        if isinstance(m, torch.nn.MaxPool2d):
            m.register_forward_hook(lambda mod, inp, out: seen.append(out.shape[-1]))
    with torch.no_grad():
        model(torch.randn(1, 1, 28, 28))
    assert seen == [14, 7, 4, 2, 1]


@pytest.mark.parametrize(
    ("cls", "changes", "message"),
    [
        (D2LDenseNetConfig, {"growth_rate": 0}, "growth_rate must be a positive integer"),
        (D2LDenseNetConfig, {"depth": 4}, "unknown D2LDenseNetConfig field"),
        (VGGConfig, {"conv_arch": ((1, 64, 3),)}, r"\(convolutions, channels\)"),
        (VGGConfig, {"drop_rate": 1.0}, r"drop_rate must be a number in \[0, 1\)"),
        (ResNetConfig, {"arch": ()}, "at least one"),
    ],
)
def test_bad_zoo_configs_are_rejected(cls, changes, message):
    with pytest.raises(ValueError, match=message):
        cls.from_dict(changes)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_config_round_trips_through_json(name):
    model = create_model(name, num_classes=3, in_channels=1, **NARROW.get(name, {}))
    saved = json.loads(json.dumps(model.config.to_dict()))
    rebuilt = model_from_config(saved, arch=name)
    assert type(rebuilt) is type(model) and rebuilt.config == model.config
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    assert config_class(name) is type(model.config)


def test_densenet_configs_still_rebuild_without_an_arch():
    model = create_model("densenet40")
    assert isinstance(model_from_config(model.config.to_dict()), DenseNet)
    assert isinstance(model_from_config(model.config.to_dict(), arch="densenet40"), DenseNet)


# Image side for the training test: as small as each network takes (NiN's third max-pool
# needs 16 pixels), since the shape test above already covers 28×28 and 32×32.
TRAIN_SIDE = {"nin": 16}


def _gray_npz(path, side):
    """4 training and 2 test images, grayscale, 2 classes (brightness bands)."""
    rng = np.random.default_rng(0)

    def split(n):
        y = np.arange(n) % 2
        x = rng.integers(0, 40, (n, side, side), dtype=np.uint8)
        x += (120 * y).astype(np.uint8)[:, None, None]
        return x, y

    (xt, yt), (xs, ys) = split(4), split(2)
    np.savez(path, x_train=xt, y_train=yt, x_test=xs, y_test=ys)
    return path


@pytest.fixture(scope="module")
def gray_npz(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gray")
    return {side: _gray_npz(folder / f"gray{side}.npz", side) for side in (8, 16)}


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_trains_a_few_steps_and_rebuilds_from_the_file(tmp_path, gray_npz, name):
    out = tmp_path / f"{name}.pt"
    cfg = TrainConfig(
        arch=name,
        dataset=f"npz:{gray_npz[TRAIN_SIDE.get(name, 8)]}",
        data_dir=str(tmp_path / "cache"),
        epochs=1,
        batch_size=2,  # two optimizer steps
        lr=0.01,
        out=str(out),
        device="cpu",
        model_overrides=NARROW.get(name, {}),
        checkpoint_minutes=1e9,
    )
    torch.manual_seed(0)
    initial = create_model(name, num_classes=2, in_channels=1, **NARROW.get(name, {}))
    summary = train(cfg)
    ckpt = load_checkpoint(out)
    assert ckpt.arch == name and ckpt.config["in_channels"] == 1
    assert ckpt.config["num_classes"] == 2
    changed = [k for k, v in initial.state_dict().items() if not torch.equal(v, ckpt.state_dict[k])]
    assert changed, "training left every weight as it was"
    model = rebuild_model(ckpt).eval()
    assert type(model) is ZOO[name][2]
    # `evaluate` rebuilds the network from the file alone and gets the recorded accuracy.
    result = CliRunner().invoke(
        cli, ["evaluate", str(out), "--json", "--data-dir", str(tmp_path / "cache")]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["accuracy"] == pytest.approx(summary["test_acc"])


def test_zoo_rejects_densenet_only_options(tmp_path, gray_npz):
    base = {
        "dataset": f"npz:{gray_npz[8]}",
        "data_dir": str(tmp_path),
        "out": str(tmp_path / "m.pt"),
    }
    with pytest.raises(TrainingError, match="DenseNets only"):
        train(TrainConfig(arch="resnet18", memory_efficient=True, **base))
    with pytest.raises(TrainingError, match="resnet18 has no dropout"):
        train(TrainConfig(arch="resnet18", drop_rate=0.2, **base))
    with pytest.raises(TrainingError, match="unknown model 'resnet19'"):
        train(TrainConfig(arch="resnet19", **base))


def test_zoo_dropout_keeps_the_book_default_unless_asked(tmp_path):
    from reuse_analysis.data import load_dataset
    from reuse_analysis.train import build_model

    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    x = rng.integers(0, 255, (4, 28, 28), dtype=np.uint8)
    np.savez(path, x_train=x, y_train=np.arange(4) % 2, x_test=x, y_test=np.arange(4) % 2)
    ds = load_dataset(f"npz:{path}", tmp_path)
    base = {"arch": "nin", "dataset": f"npz:{path}"}
    assert build_model(TrainConfig(**base), ds)[1]["drop_rate"] == 0.5
    assert build_model(TrainConfig(**base, drop_rate=0.1), ds)[1]["drop_rate"] == 0.1
    dense = build_model(TrainConfig(arch="densenet40", dataset=base["dataset"]), ds)[1]
    assert dense["drop_rate"] == 0.0  # the paper's rule: no dropout with augmentation


def test_user_builder_by_module_and_function(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(
        "import torch\n"
        "def small():\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU())\n"
        "def broken():\n"
        "    raise RuntimeError('no weights here')\n"
        "def not_a_model():\n"
        "    return 3\n"
    )
    monkeypatch.chdir(tmp_path)
    model = build_model_spec("my_nets:small")
    assert isinstance(model[0], torch.nn.Conv2d)
    with pytest.raises(ValueError, match=r"my_nets:broken\(\) raised RuntimeError: no weights"):
        build_model_spec("my_nets:broken")
    with pytest.raises(ValueError, match=r"did not return a torch\.nn\.Module but int"):
        build_model_spec("my_nets:not_a_model")
    with pytest.raises(ValueError, match="has no 'missing'"):
        build_model_spec("my_nets:missing")
    with pytest.raises(ValueError, match="cannot import 'no_such_module'"):
        build_model_spec("no_such_module:f")
