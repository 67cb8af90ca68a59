"""Structure inference from weight shapes, on every layout that public repositories use."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
import torchvision
from layouts import layouts

from reuse_analysis.errors import StructureError
from reuse_analysis.metrics import reuse_table
from reuse_analysis.structure import Classifier, infer_structure

LAYOUTS = layouts()


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_layout_is_understood(name):
    build, shape, exp = LAYOUTS[name]
    torch.manual_seed(0)
    model = build()
    assert model(torch.randn(*shape)).shape == (shape[0], exp.classes)
    s = infer_structure(model.state_dict())
    assert tuple(b.num_layers for b in s.blocks) == exp.layers
    assert {b.growth_rate for b in s.blocks} == {exp.growth}
    assert s.blocks[0].in_channels == exp.c0
    assert {layer.bottleneck_width for b in s.blocks for layer in b.layers} == {exp.bottleneck}
    assert s.input_channels == exp.input_channels
    assert s.num_classes == exp.classes
    assert s.blocks[0].layers[0].first_conv.key == exp.first_conv
    assert tuple(b.extra.weight_key for b in s.blocks) == exp.extra
    assert s.notes == ()
    # channel arithmetic: layer t of every block reads c0 + k·(t-1)
    for b in s.blocks:
        assert [layer.in_channels for layer in b.layers] == [
            b.in_channels + b.growth_rate * i for i in range(b.num_layers)
        ]
    df = reuse_table(model.state_dict(), s)
    assert len(df) == sum((n + 1) * (n + 2) // 2 for n in exp.layers)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_targets_of_every_layout(name):
    """Each block's targets: its layers' first convs, then its transition or classifier,
    each with the norm in front and the channels of every source, in concat order."""
    build, _, exp = LAYOUTS[name]
    sd = build().state_dict()
    s = infer_structure(sd)
    order = "newest-first" if name == "kuangliu" else "oldest-first"
    for b, extra_key in zip(s.blocks, exp.extra, strict=True):
        targets = b.targets(order)
        kinds = [t.kind for t in targets]
        last = "classifier" if b.index == len(s.blocks) else "transition"
        assert kinds == ["layer"] * b.num_layers + [last]
        assert [t.index for t in targets] == list(range(1, b.num_layers + 2))
        assert [t.weight_key for t in targets] == [
            *(layer.first_conv.key for layer in b.layers),
            extra_key,
        ]
        for t in targets:
            assert (t.block, t.key) == (b.index, f"{b.index}/{t.index}")
            assert t.in_channels == sd[t.weight_key].shape[1]
            # the norm in front normalises exactly the channels the target reads
            assert t.norm is not None and sd[f"{t.norm}.weight"].numel() == t.in_channels
            # sources 0..t-1: the block input (c0 channels), then k per earlier layer
            assert [src for src, _, _ in t.slices] == list(range(t.index))
            widths = [stop - start for _, start, stop in t.slices]
            assert widths == [b.in_channels] + [b.growth_rate] * (t.index - 1)
            # in concat order the slices tile [0, in_channels) without gaps
            edges = [(start, stop) for _, start, stop in t.concat_slices]
            assert edges[0][0] == 0 and edges[-1][1] == t.in_channels
            assert all(a[1] == c[0] for a, c in itertools.pairwise(edges))
            newest = [src for src, _, _ in t.concat_slices]
            assert newest == (
                sorted(newest, reverse=True) if order == "newest-first" else sorted(newest)
            )
            assert s.target(b.index, t.index, order) == t
    with pytest.raises(ValueError, match="has no target"):
        s.blocks[0].target(s.blocks[0].num_layers + 2)
    with pytest.raises(ValueError, match="no block"):
        s.target(len(s.blocks) + 1, 1)
    assert len(s.targets()) == sum(n + 1 for n in exp.layers)
    assert s.compressions == {
        b.index: b.extra.compression for b in s.blocks if b.extra_kind == "transition"
    }


def test_key_order_does_not_matter():
    sd = torchvision.models.densenet121().state_dict()
    items = list(sd.items())
    random.Random(0).shuffle(items)
    a, b = infer_structure(sd), infer_structure(dict(items))
    assert a.to_dict() == b.to_dict()


def test_torchvision_densenet121():
    sd = torchvision.models.densenet121().state_dict()
    s = infer_structure(sd)
    assert [b.num_layers for b in s.blocks] == [6, 12, 24, 16]
    assert [b.in_channels for b in s.blocks] == [64, 128, 256, 512]
    assert s.depth == 121
    assert s.variant == "DenseNet-BC"
    assert s.compression == 0.5
    assert s.input_channels == 3 and s.num_classes == 1000
    assert isinstance(s.blocks[-1].extra, Classifier)
    assert s.classifier.norm == "features.norm5"
    assert s.blocks[0].layers[0].norm == "features.denseblock1.denselayer1.norm1"
    assert s.transitions[2].norm == "features.transition3.norm"
    assert s.blocks[1].layers[0].bottleneck_width == 128


def test_timm_style_deep_stem_is_not_mistaken_for_a_layer():
    """timm's deep stem adds features.conv1/conv2/norm1/norm2 outside the blocks."""
    sd = torchvision.models.densenet121().state_dict()
    stem = {
        "features.conv0.weight": torch.randn(24, 3, 3, 3),
        "features.norm0.weight": torch.ones(24),
        "features.conv1.weight": torch.randn(32, 24, 3, 3),
        "features.norm1.weight": torch.ones(32),
        "features.conv2.weight": torch.randn(64, 32, 3, 3),
        "features.norm2.weight": torch.ones(64),
    }
    sd = {**{k: v for k, v in sd.items() if not k.startswith("features.conv0")}, **stem}
    s = infer_structure(sd)
    assert [c.key for c in s.stem] == [
        "features.conv0.weight",
        "features.conv1.weight",
        "features.conv2.weight",
    ]
    assert s.input_channels == 3
    assert [b.num_layers for b in s.blocks] == [6, 12, 24, 16]


@pytest.mark.parametrize(
    "model", [torchvision.models.resnet18, torchvision.models.vgg11, torchvision.models.alexnet]
)
def test_other_networks_are_refused(model):
    with pytest.raises(StructureError, match="does not look like a DenseNet"):
        infer_structure(model().state_dict())


def test_no_convolutions_is_refused():
    with pytest.raises(StructureError, match="no convolution"):
        infer_structure({"fc.weight": torch.randn(3, 4)})


@pytest.mark.parametrize(
    ("key", "shape", "message"),
    [
        # a middle layer's first conv reads 2 channels too few
        ("features.denseblock1.denselayer3.conv1.weight", (128, 126, 1, 1), "corrupted"),
        # the first layer of a block
        ("features.denseblock2.denselayer1.conv1.weight", (128, 127, 1, 1), "corrupted"),
        # the last layer of a block
        ("features.denseblock1.denselayer6.conv1.weight", (128, 225, 1, 1), "corrupted"),
        # the 3x3 conv no longer reads what the bottleneck writes
        ("features.denseblock1.denselayer2.conv2.weight", (32, 127, 3, 3), "do not chain"),
        # a layer adds 31 channels instead of 32
        ("features.denseblock3.denselayer5.conv2.weight", (31, 128, 3, 3), "corrupted"),
        # a transition reads the wrong width
        ("features.transition2.conv.weight", (256, 500, 1, 1), "transition"),
        # the classifier reads the wrong width
        ("classifier.weight", (1000, 1000), "linear layer"),
    ],
)
def test_corrupted_shapes_are_reported(key, shape, message):
    sd = torchvision.models.densenet121().state_dict()
    sd[key] = torch.randn(*shape)
    with pytest.raises(StructureError, match=message):
        infer_structure(sd)


def test_missing_classifier_is_a_note_not_silence():
    sd = {
        k: v
        for k, v in torchvision.models.densenet121().state_dict().items()
        if "classifier" not in k
    }
    s = infer_structure(sd)
    assert s.classifier is None
    assert any("no classifier" in n for n in s.notes)
    df = reuse_table(sd, s)
    assert set(df[df.block == 4].target_kind) == {"layer"}


@pytest.mark.parametrize(("name", "size"), [("densenet_bc_100", 32), ("densenet40", 32)])
def test_mac_estimate_matches_torch_flop_counter(name, size):
    from torch.utils.flop_counter import FlopCounterMode

    from reuse_analysis.models import create_model
    from reuse_analysis.structure import default_input_size, estimate_macs

    model = create_model(name).eval()
    s = infer_structure(model.state_dict())
    assert default_input_size(s) == size
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, size, size))
    assert estimate_macs(s) == counter.get_total_flops() // 2


def test_mac_estimate_imagenet_stem():
    from reuse_analysis.structure import estimate_macs

    s = infer_structure(torchvision.models.densenet121().state_dict())
    assert estimate_macs(s) == 2_834_161_664  # torch's FlopCounterMode at 224×224, ÷ 2
