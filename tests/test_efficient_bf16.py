"""The fused dense block under autocast: bfloat16 matmuls and convolutions, float32 statistics.

Under ``torch.autocast`` the fused block computes in autocast's dtype, as the layer-by-layer
path does; both are compared with the same network in float32 (the reference). The fused
path's rounding error must be of the same size as the layer-by-layer path's: it computes
the same numbers, only in another order.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reuse_analysis.models import DenseNet
from reuse_analysis.models import densenet as densenet_module
from tests.test_models import _assert_close, _set_fused, _train_step, _twins, tiny_config

LOW = torch.bfloat16
# bfloat16 keeps 8 significant bits (relative rounding 2⁻⁹ ≈ 0.002); errors compound over
# a few layers, so a relative error up to ~1 % of a tensor's norm is rounding, not a bug
# (a wrong formula gives O(1)).
ROUNDING = 0.02


def _relative(a: torch.Tensor, ref: torch.Tensor) -> float:
    """‖a − ref‖ / ‖ref‖ in float64."""
    a, ref = a.double(), ref.double()
    return float((a - ref).norm() / ref.norm().clamp_min(1e-12))


def _step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: bool):
    """Outputs, buffers and gradients (parameters and input) of one training step."""
    model.train()
    x = x.clone().requires_grad_()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with torch.autocast("cpu", dtype=LOW, enabled=amp):
        out = model(x)
        loss = F.cross_entropy(out.float(), y)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    optimizer.step()
    buffers = {name: b.clone() for name, b in model.named_buffers() if b.is_floating_point()}
    return {"outputs": out.detach(), **buffers}, {"input": x.grad, **grads}


@pytest.mark.parametrize(
    "overrides",
    [{}, {"memory_efficient": True}, {"bn_size": 0, "compression": 1.0}],
    ids=["BC", "BC-memory-efficient", "plain"],
)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
def test_fused_bf16_matches_layer_by_layer_bf16(overrides, channels_last, monkeypatch):
    _check_fused_bf16(overrides, channels_last, monkeypatch)


@pytest.mark.parametrize("overrides", [{}, {"bn_size": 0, "compression": 1.0}], ids=["BC", "plain"])
def test_compiled_kernels_in_bf16_match_layer_by_layer_bf16(
    overrides, compiled_kernels, monkeypatch
):
    _check_fused_bf16(overrides, True, monkeypatch)
    assert densenet_module._efficient._KERNELS  # the compiled kernels ran


def _check_fused_bf16(overrides: dict, channels_last: bool, monkeypatch) -> None:
    """The fused block's bf16 training step is as close to fp32 as the layer-by-layer one."""
    # Chunks of a few rows, so that the chunked loops run more than once on a small input.
    monkeypatch.setattr(densenet_module._efficient, "_CHUNK_BYTES", 512)
    fused, plain = _twins(tiny_config(**overrides), channels_last)
    reference, _ = _twins(tiny_config(**overrides), channels_last)
    x = torch.randn(16, 3, 16, 16) * 2 + 1
    y = torch.randint(0, 10, (16,))
    efficient = densenet_module._efficient
    with mock.patch.object(efficient, "dense_block", wraps=efficient.dense_block) as spy:
        got, got_grads = _step(fused, x, y, amp=True)
    assert spy.call_count == len(fused.config.block_config)  # the fused path ran
    assert got["outputs"].dtype == LOW  # as the layer-by-layer path under autocast gives
    layered, layered_grads = _step(plain, x, y, amp=True)
    want, want_grads = _step(_set_fused(reference, False), x, y, amp=False)
    # Outputs and running statistics are well conditioned: each within bf16 rounding.
    for name, ref in want.items():
        assert got[name].dtype == layered[name].dtype, name
        err_fused, err_layered = _relative(got[name], ref), _relative(layered[name], ref)
        assert err_fused <= max(2 * err_layered, ROUNDING), (name, err_fused, err_layered)
    # Gradients of a freshly initialised network at batch 16 are not (BatchNorm's backward
    # subtracts nearly equal terms): both bf16 paths miss single tensors by 10-50 %. Over
    # all tensors the fused path's error is that of the layer-by-layer path.
    err_fused = [_relative(got_grads[n], ref) for n, ref in want_grads.items()]
    err_layered = [_relative(layered_grads[n], ref) for n, ref in want_grads.items()]
    assert all(got_grads[n].dtype == ref.dtype for n, ref in want_grads.items())
    mean_fused, mean_layered = sum(err_fused) / len(err_fused), sum(err_layered) / len(err_fused)
    assert mean_fused <= 1.5 * mean_layered, (mean_fused, mean_layered)
    assert max(err_fused) <= 2 * max(err_layered), (max(err_fused), max(err_layered))


def test_fused_bf16_eval_matches_layer_by_layer():
    fused, plain = _twins(tiny_config())
    x = torch.randn(3, 3, 10, 10)
    fused.eval(), plain.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=LOW):
        out_f, out_p = fused(x), plain(x)
    assert out_f.dtype == out_p.dtype == LOW
    assert _relative(out_f, out_p) < ROUNDING


def test_float16_autocast_is_fused_too():
    # On CUDA autocast's default is float16; the CPU runs the same code path.
    model = DenseNet(tiny_config()).train()
    efficient = densenet_module._efficient
    x = torch.randn(2, 3, 8, 8)
    with mock.patch.object(efficient, "dense_block", wraps=efficient.dense_block) as spy:
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        out.float().sum().backward()
    assert spy.call_count == 3
    assert out.dtype == torch.float16
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


def _loss_curve(amp: bool, steps: int = 40) -> list[float]:
    """Training losses of a tiny DenseNet on a fixed, learnable synthetic task."""
    torch.manual_seed(0)
    model = DenseNet(tiny_config(num_classes=4)).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    gen = torch.Generator().manual_seed(1)
    # The class is which quadrant of the image is brightest: learnable in a few steps.
    images = torch.randn(64, 3, 8, 8, generator=gen)
    labels = torch.randint(0, 4, (64,), generator=gen)
    for i, label in enumerate(labels):
        r, c = divmod(int(label), 2)
        images[i, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += 1.5
    losses = []
    for step in range(steps):
        batch = slice(16 * (step % 4), 16 * (step % 4) + 16)
        with torch.autocast("cpu", dtype=LOW, enabled=amp):
            loss = F.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_bf16_training_follows_the_fp32_loss_curve():
    fp32, bf16 = _loss_curve(amp=False), _loss_curve(amp=True)
    # Both learn: the last four steps (one pass over the data) are well below the start.
    first, last_fp32, last_bf16 = fp32[0], sum(fp32[-4:]) / 4, sum(bf16[-4:]) / 4
    assert last_fp32 < 0.5 * first and last_bf16 < 0.5 * first
    # And bf16 stays on fp32's curve: within the spread of fp32's own step-to-step losses.
    noise = max(abs(a - b) for a, b in zip(fp32[-8:-4], fp32[-4:], strict=True))
    assert abs(last_bf16 - last_fp32) <= max(noise, 0.05 * first)
    assert max(abs(a - b) for a, b in zip(fp32[:10], bf16[:10], strict=True)) < 0.05 * first


@pytest.fixture
def compiled_kernels():
    efficient = densenet_module._efficient
    efficient.use_compiled_kernels(True)
    yield
    efficient.use_compiled_kernels(False)


@pytest.mark.parametrize("overrides", [{}, {"bn_size": 0, "compression": 1.0}], ids=["BC", "plain"])
def test_compiled_kernels_give_the_eager_numbers(overrides, compiled_kernels, monkeypatch):
    monkeypatch.setattr(densenet_module._efficient, "_CHUNK_BYTES", 512)
    fused, plain = _twins(tiny_config(**overrides), channels_last=True)
    x = torch.randn(3, 3, 12, 12) * 2 + 1
    out_f, grads_f, gx_f = _train_step(fused, x)
    out_p, grads_p, gx_p = _train_step(plain, x)
    assert densenet_module._efficient._KERNELS  # the compiled kernels ran
    _assert_close(out_f, out_p, "outputs")
    _assert_close(gx_f, gx_p, "input gradient")
    for (name, _), a, b in zip(fused.named_parameters(), grads_f, grads_p, strict=True):
        _assert_close(a, b, f"gradient of {name}")
    buffers_p = dict(plain.named_buffers())
    for name, buffer in fused.named_buffers():  # running statistics and batch counts
        _assert_close(buffer.double(), buffers_p[name].double(), name)


def test_prepare_for_training_compiles_the_fused_kernels_not_the_model():
    from reuse_analysis.models.fast import prepare_for_training

    efficient = densenet_module._efficient
    model = DenseNet(tiny_config())
    try:
        prepared = prepare_for_training(model, "cpu", channels_last=True, compile=True)
        assert prepared is model and efficient.compiled_kernels_enabled()
        assert model.features.conv0.weight.is_contiguous(memory_format=torch.channels_last)
    finally:
        efficient.use_compiled_kernels(False)
    other = prepare_for_training(nn.Linear(2, 2), "cpu", channels_last=False, compile=True)
    assert isinstance(other, torch._dynamo.eval_frame.OptimizedModule)
    assert not efficient.compiled_kernels_enabled()
    plain = prepare_for_training(DenseNet(tiny_config()), "cpu", channels_last=False, compile=False)
    assert not efficient.compiled_kernels_enabled() and isinstance(plain, DenseNet)


def test_compiled_kernels_in_eval_mode_give_the_eager_numbers(compiled_kernels):
    fused, plain = _twins(tiny_config(), channels_last=True)
    batch = torch.randn(4, 3, 12, 12) * 2 + 1
    for model in (fused, plain):  # running statistics other than the initial 0 and 1
        _train_step(model, batch)
        model.eval()
    x = torch.randn(3, 3, 12, 12)
    with torch.no_grad():
        out_f, out_p = fused(x), plain(x)
    assert densenet_module._efficient._KERNELS
    _assert_close(out_f, out_p, "outputs")


@pytest.mark.parametrize("dtype", [torch.float32, LOW], ids=["fp32", "bf16"])
def test_compiled_norm_relu_gives_batchnorm_then_relu(dtype, compiled_kernels):
    """The transitions' and the head's BN→ReLU: outputs, gradients and running statistics."""
    efficient = densenet_module._efficient
    fused, plain = nn.BatchNorm2d(6, momentum=None), nn.BatchNorm2d(6, momentum=None)
    for norm in (fused, plain):
        norm.weight.data = torch.linspace(-1.5, 2, 6)  # one negative scale
        norm.bias.data = torch.linspace(-0.5, 0.5, 6)
    x = (torch.randn(4, 6, 5, 5) * 3 + 2).to(dtype).to(memory_format=torch.channels_last)
    grad = torch.randn(4, 6, 5, 5).to(dtype)
    outs, grads = [], []
    for norm, run in ((fused, efficient.norm_relu), (plain, lambda t, m: F.relu(m(t)))):
        for _ in range(2):  # the second step averages with the first (momentum None)
            leaf = x.clone().requires_grad_()
            out = run(leaf, norm)
            out.backward(grad)
        outs.append(out.detach())
        grads.append([leaf.grad, norm.weight.grad / 2, norm.bias.grad / 2])
    assert efficient._KERNELS and outs[0].dtype == outs[1].dtype == dtype
    tolerance = (
        {"atol": 1e-5, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 0.05, "rtol": 0.02}
    )
    _assert_close(outs[0].float(), outs[1].float(), "output", **tolerance)
    for what, a, b in zip(["input", "weight", "bias"], grads[0], grads[1], strict=True):
        _assert_close(a.float(), b.float(), f"gradient of the {what}", **tolerance)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        _assert_close(getattr(fused, name).double(), getattr(plain, name).double(), name)


@pytest.mark.parametrize("module", ["transition1.norm", "transition1.relu", "norm5"])
def test_a_hook_on_a_transition_or_head_norm_sees_its_call(module, compiled_kernels):
    """With the compiled kernels on, the transitions' and the head's BN→ReLU run fused in
    training, unless a hook expects the modules to be called (probes hook them)."""
    model = DenseNet(tiny_config()).to(memory_format=torch.channels_last).train()
    seen = []
    model.features.get_submodule(module).register_forward_hook(lambda *_: seen.append(1))
    x = torch.randn(2, 3, 12, 12).to(memory_format=torch.channels_last)
    model(x).sum().backward()
    assert seen == [1]


def test_the_transitions_and_head_run_their_norm_fused_with_the_kernels_on(compiled_kernels):
    efficient = densenet_module._efficient
    model = DenseNet(tiny_config()).to(memory_format=torch.channels_last).train()
    x = torch.randn(2, 3, 12, 12).to(memory_format=torch.channels_last)
    fn = efficient._NormReluFunction
    with mock.patch.object(fn, "apply", wraps=fn.apply) as spy:
        model(x).sum().backward()
    assert spy.call_count == len(model.config.block_config)  # transitions + norm5
