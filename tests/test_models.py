"""DenseNet family: the paper's parameter counts, torchvision compatibility, config round trip."""

from __future__ import annotations

import json
from unittest import mock

import pytest
import torch
import torchvision
from torch import nn

from reuse_analysis.models import (
    MODELS,
    PAPER_PARAMS,
    DenseNet,
    DenseNetConfig,
    create_model,
    get_config,
    list_models,
    model_from_config,
)
from reuse_analysis.models import densenet as densenet_module

TORCHVISION_NAMES = ["densenet121", "densenet161", "densenet169", "densenet201"]


def tiny_config(**overrides) -> DenseNetConfig:
    """A DenseNet-BC small enough to run forward and backward in milliseconds."""
    fields = {
        "growth_rate": 4,
        "block_config": (2, 3, 2),
        "num_init_features": 8,
        "bn_size": 2,
        "compression": 0.5,
    }
    return DenseNetConfig(**{**fields, **overrides})


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- registry
def test_registry_lists_every_preset_with_a_paper_count():
    from reuse_analysis.models import ZOO

    assert list_models() == list(MODELS)
    assert set(MODELS) - set(ZOO) == set(PAPER_PARAMS)  # the zoo is not in the paper


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_param_count_matches_paper(name):
    with torch.device("meta"):
        model = create_model(name)
    assert round(count_params(model) / 1e6, 1) == PAPER_PARAMS[name]


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown model 'densenet7'.*densenet40.*densenet121"):
        create_model("densenet7")


def test_overrides_reach_the_config():
    cfg = get_config("densenet_bc_100", num_classes=100, in_channels=1, drop_rate=0.2)
    assert (cfg.num_classes, cfg.in_channels, cfg.drop_rate) == (100, 1, 0.2)
    assert cfg.growth_rate == 12 and cfg.block_config == (16, 16, 16)
    with pytest.raises(ValueError, match="unknown DenseNetConfig field"):
        create_model("densenet40", depth=40)


@pytest.mark.parametrize(
    ("name", "variant"),
    [("densenet40", "plain"), ("densenet_bc_100", "BC"), ("densenet121", "BC")],
)
def test_preset_variants(name, variant):
    assert get_config(name).variant == variant


def test_variant_names():
    assert tiny_config(bn_size=0, compression=1.0).variant == "plain"
    assert tiny_config(bn_size=4, compression=1.0).variant == "B"
    assert tiny_config(bn_size=0, compression=0.5).variant == "C"
    assert tiny_config().variant == "BC"


# ----------------------------------------------------------------------------- torchvision
@pytest.mark.parametrize("name", TORCHVISION_NAMES)
def test_torchvision_keys_and_shapes_match(name):
    with torch.device("meta"):
        ours = create_model(name).state_dict()
        theirs = getattr(torchvision.models, name)().state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in theirs)


def test_torchvision_densenet121_weights_give_identical_logits():
    torch.manual_seed(0)
    reference = torchvision.models.densenet121().eval()
    model = create_model("densenet121").eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-6)


# ----------------------------------------------------------------------------- shapes and keys
def test_grayscale_28x28_with_four_blocks():
    model = DenseNet(tiny_config(block_config=(2, 2, 2, 2), in_channels=1, num_classes=7))
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)


@pytest.mark.parametrize("variant", [{"bn_size": 0, "compression": 1.0}, {}])
def test_cifar_input(variant):
    model = DenseNet(tiny_config(**variant))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_imagenet_stem_accepts_overrides():
    cfg = tiny_config(stem="imagenet", in_channels=1, num_classes=5)
    model = DenseNet(cfg)
    assert model.features.conv0.weight.shape == (8, 1, 7, 7)
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 5)


def test_state_dict_keys_follow_torchvision_names():
    keys = create_model("densenet_bc_100").state_dict().keys()
    for key in (
        "features.conv0.weight",
        "features.denseblock2.denselayer3.conv1.weight",
        "features.denseblock2.denselayer3.conv2.weight",
        "features.transition1.conv.weight",
        "features.norm5.weight",
        "classifier.weight",
        "classifier.bias",
    ):
        assert key in keys
    assert not any(k.startswith("features.norm0") for k in keys)  # CIFAR stem: conv only


def test_plain_layers_have_one_3x3_conv_and_no_bottleneck():
    model = create_model("densenet40")
    keys = model.state_dict().keys()
    assert not any("conv2" in k or "norm2" in k for k in keys)
    layer = model.features.denseblock2.denselayer3
    assert layer.conv1.weight.shape == (12, 160 + 2 * 12, 3, 3)
    assert model.features.transition1.conv.weight.shape == (160, 160, 1, 1)


def test_compression_floors_odd_widths():
    # 8 + 3·4 = 20 channels leave block 1; θ = 0.3 keeps floor(6.0) = 6.
    model = DenseNet(tiny_config(block_config=(3, 2), growth_rate=4, compression=0.3))
    assert model.features.transition1.conv.weight.shape[0] == 6


def test_model_keeps_its_config_and_rebuilds_from_it():
    model = create_model("densenet_bc_100", num_classes=100)
    assert model.config == get_config("densenet_bc_100", num_classes=100)
    rebuilt = model_from_config(json.loads(json.dumps(model.config.to_dict())))
    assert rebuilt.config == model.config
    assert rebuilt.state_dict().keys() == model.state_dict().keys()


# ----------------------------------------------------------------------------- config
def test_config_round_trips_through_json():
    cfg = tiny_config(drop_rate=0.2, stem="imagenet", memory_efficient=True)
    d = cfg.to_dict()
    assert d["block_config"] == [2, 3, 2]
    assert DenseNetConfig.from_dict(json.loads(json.dumps(d))) == cfg
    assert hash(DenseNetConfig.from_dict(d)) == hash(cfg)


def test_ints_for_floats_are_accepted():
    cfg = tiny_config(compression=1, drop_rate=0)
    assert isinstance(cfg.compression, float) and isinstance(cfg.drop_rate, float)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"growth_rate": 0}, "growth_rate must be a positive integer"),
        ({"growth_rate": 12.0}, "growth_rate must be a positive integer"),
        ({"num_classes": True}, "num_classes must be a positive integer"),
        ({"bn_size": -1}, "bn_size must be an integer ≥ 0"),
        ({"block_config": ()}, "block_config must be a non-empty"),
        ({"block_config": (6, 0)}, "each entry of block_config"),
        ({"compression": 0.0}, r"compression \(θ\) must be a number in \(0, 1\]"),
        ({"compression": 1.5}, r"compression \(θ\)"),
        ({"drop_rate": 1.0}, r"drop_rate must be a number in \[0, 1\)"),
        ({"stem": "svhn"}, "stem must be one of cifar, imagenet"),
        ({"memory_efficient": "yes"}, "memory_efficient must be True or False"),
        ({"compression": 0.01}, "leaves transition1 with no channels"),
    ],
)
def test_bad_config_values_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_from_dict_rejects_unknown_and_missing_keys():
    d = tiny_config().to_dict()
    with pytest.raises(ValueError, match=r"unknown DenseNetConfig field.*depth"):
        DenseNetConfig.from_dict({**d, "depth": 40})
    del d["growth_rate"]
    with pytest.raises(ValueError, match=r"missing required field.*growth_rate"):
        DenseNetConfig.from_dict(d)


# ----------------------------------------------------------------------------- training paths
def _output_and_grads(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list]:
    model.train()
    out = model(x)
    out.sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


def _set_fused(model: nn.Module, fused: bool) -> nn.Module:
    for m in model.modules():
        if isinstance(m, densenet_module._DenseBlock):
            m.fused = fused
    return model


def _twins(cfg: DenseNetConfig, channels_last: bool = False) -> tuple[nn.Module, nn.Module]:
    """The same weights twice: fused dense blocks (the default) and layer by layer."""
    torch.manual_seed(0)
    fused = DenseNet(cfg)
    for m in fused.modules():  # BN away from identity, so that mistakes show
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    plain = _set_fused(DenseNet(cfg), False)
    plain.load_state_dict(fused.state_dict())
    if channels_last:
        fused.to(memory_format=torch.channels_last)
        plain.to(memory_format=torch.channels_last)
    return fused, plain


def _train_step(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list, torch.Tensor]:
    """One SGD step; returns the outputs, the parameter gradients and the input gradient."""
    model.train()
    x = x.clone().requires_grad_()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    out = model(x)
    (out * torch.linspace(-1, 1, out.shape[1])).sum().backward()  # unequal output gradients
    grads = [p.grad.clone() for p in model.parameters()]
    optimizer.step()
    return out.detach(), grads, x.grad


def _assert_close(a, b, what, atol=1e-5, rtol=1e-4):
    assert torch.allclose(a, b, atol=atol, rtol=rtol), f"{what}: max |Δ| {(a - b).abs().max()}"


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # DenseNet-BC: bottleneck layers
        {"memory_efficient": True},  # bottleneck recomputed in backward
        {"bn_size": 0, "compression": 1.0},  # plain layers: one 3×3 conv each
    ],
    ids=["BC", "BC-memory-efficient", "plain"],
)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
def test_fused_blocks_match_layer_by_layer(overrides, channels_last, monkeypatch):
    # Chunks of a few rows, so that the chunked loops run more than once on a small input.
    monkeypatch.setattr(densenet_module._efficient, "_CHUNK_BYTES", 512)
    fused, plain = _twins(tiny_config(**overrides), channels_last)
    x = torch.randn(3, 3, 12, 12) * 2 + 1
    with mock.patch.object(
        densenet_module._efficient, "dense_block", wraps=densenet_module._efficient.dense_block
    ) as spy:
        out_f, grads_f, gx_f = _train_step(fused, x)
    assert spy.call_count == len(fused.config.block_config)
    out_p, grads_p, gx_p = _train_step(plain, x)
    _assert_close(out_f, out_p, "outputs")
    _assert_close(gx_f, gx_p, "input gradient")
    names = [name for name, _ in fused.named_parameters()]
    for name, a, b in zip(names, grads_f, grads_p, strict=True):
        _assert_close(a, b, f"gradient of {name}")
    # Running statistics are updated once per step, as nn.BatchNorm2d does.
    buffers_p = dict(plain.named_buffers())
    for name, buffer in fused.named_buffers():
        _assert_close(buffer.float(), buffers_p[name].float(), name, atol=1e-6)
    # After the step both see the same weights; eval mode uses the running statistics.
    fused.eval(), plain.eval()
    with torch.no_grad():
        _assert_close(fused(x), plain(x), "eval outputs")


def test_fused_blocks_follow_cumulative_bn_momentum():
    fused, plain = _twins(tiny_config())
    for m in [*fused.modules(), *plain.modules()]:
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # running stats: the mean over all batches so far
    x = torch.randn(2, 3, 8, 8)
    for _ in range(2):
        _train_step(fused, x), _train_step(plain, x)
    buffers_p = dict(plain.named_buffers())
    for name, buffer in fused.named_buffers():
        _assert_close(buffer.float(), buffers_p[name].float(), name, atol=1e-6)


def test_fused_blocks_fall_back_where_they_do_not_apply():
    block = densenet_module._efficient
    x = torch.randn(2, 3, 8, 8)
    with mock.patch.object(block, "dense_block", wraps=block.dense_block) as spy:
        DenseNet(tiny_config(drop_rate=0.2)).train()(x)  # dropout while training
        assert spy.call_count == 0
        with torch.no_grad():
            DenseNet(tiny_config(drop_rate=0.2)).eval()(x)  # dropout is off in eval mode
        assert spy.call_count == 3
        DenseNet(tiny_config()).eval()(x.clone().requires_grad_())  # gradients in eval mode
        assert spy.call_count == 3
        with torch.autocast("cpu", dtype=torch.bfloat16):  # fused in bfloat16 (test_efficient_bf16)
            DenseNet(tiny_config()).train()(x)
        assert spy.call_count == 6


def test_fused_blocks_make_way_for_layer_hooks():
    model = DenseNet(tiny_config())
    seen = []
    layer = model.features.denseblock2.denselayer2
    handle = layer.register_forward_hook(lambda m, inputs, out: seen.append(out.shape))
    model(torch.randn(2, 3, 8, 8))
    assert seen == [(2, 4, 4, 4)]
    handle.remove()
    model(torch.randn(2, 3, 8, 8))
    assert len(seen) == 1


def test_eval_mode_gradients_match_layer_by_layer():
    fused, plain = _twins(tiny_config())
    fused.eval(), plain.eval()
    x = torch.randn(2, 3, 8, 8)
    grads = []
    for model in (fused, plain):
        xi = x.clone().requires_grad_()
        model(xi).sum().backward()
        grads.append(xi.grad)
    _assert_close(*grads, "input gradient")


@pytest.mark.parametrize("variant", [{"bn_size": 0, "compression": 1.0}, {}])
def test_memory_efficient_checkpointing_matches_the_normal_path(variant):
    # Layer by layer (the path dropout needs), memory_efficient checkpoints each first conv.
    torch.manual_seed(0)
    plain = _set_fused(DenseNet(tiny_config(**variant)), False)
    efficient = _set_fused(DenseNet(tiny_config(**variant, memory_efficient=True)), False)
    efficient.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 16, 16)
    with mock.patch.object(
        densenet_module.cp, "checkpoint", wraps=densenet_module.cp.checkpoint
    ) as spy:
        out_e, grads_e = _output_and_grads(efficient, x)
    assert spy.call_count == sum(plain.config.block_config)
    out_p, grads_p = _output_and_grads(plain, x)
    assert torch.allclose(out_e, out_p, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads_e, grads_p, strict=True))
    # The recomputation in backward must not update the BN running stats a second time.
    buffers_p = dict(plain.named_buffers())
    for key, buffer in efficient.named_buffers():
        assert torch.allclose(buffer, buffers_p[key], atol=1e-6), key


def test_dropout_follows_every_conv_but_the_stem_and_adds_no_keys():
    cfg = tiny_config()  # bottleneck layers: two convs each
    model = DenseNet(tiny_config(drop_rate=0.2))
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    transitions = len(cfg.block_config) - 1
    assert len(drops) == 2 * sum(cfg.block_config) + transitions
    assert not any(isinstance(m, nn.Dropout) for m in DenseNet(cfg).modules())
    assert model.state_dict().keys() == DenseNet(cfg).state_dict().keys()
    names = list(dict(model.features.transition1.named_children()))
    assert names == ["norm", "relu", "conv", "drop", "pool"]  # dropout before pooling


def test_dropout_is_inactive_in_eval_mode():
    torch.manual_seed(0)
    reference = DenseNet(tiny_config()).eval()
    model = DenseNet(tiny_config(drop_rate=0.5)).eval()
    model.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
        model.train(), reference.train()
        assert not torch.equal(model(x), reference(x))
