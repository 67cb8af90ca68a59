"""A dense block that trains fast and lean: one shared feature buffer, no concatenations.

A naive dense block concatenates its features anew for every layer and normalises each
concatenation, so it stores ``O(L²)`` channels for backward and moves them through memory
several times. This implementation

* allocates the block's output once, channels-last (NHWC), seen as a ``[pixels, channels]``
  matrix; each layer writes its ``k`` new channels into its own column slice and layer ``t``
  reads the first ``c_t`` columns in place (a strided view: no copy, no ``torch.cat``);
* computes each channel's batch mean and variance once, when the channel is written, and
  reuses them in every BatchNorm that reads the channel later (a channel's statistics do not
  depend on the layer that normalises it; only the affine parameters do);
* runs BN→ReLU→1×1 conv over row chunks of the buffer (a few MiB each), so the widest
  tensor of every bottleneck layer, its normalised input, never exists in full;
* runs the whole block as one :class:`torch.autograd.Function` that saves only the buffer,
  per-channel statistics and (unless ``memory_efficient``) each layer's ``4k``-channel
  bottleneck output, and recomputes the rest in backward — the memory-efficient DenseNet of
  Pleiss et al. (2017) without re-running BatchNorm's running-statistics update (which
  torchvision's checkpointed layers do twice per step);
* accumulates all input gradients in one gradient buffer of the block's width. BatchNorm's
  backward, ``k·g + (x − μ)·a + b`` with per-channel ``a, b``, adds only ``k·g`` per layer:
  because every layer sees the same ``x`` and ``μ`` for a channel, the ``a, b`` terms are
  summed over layers and applied once per channel, when the channel's gradient is complete.

Under autocast (bfloat16 on the CPU, float16 on CUDA) the block computes as autocast would
layer by layer: the buffer, its gradient, the matrix products and convolutions in the low
dtype (AMX / tensor cores), BatchNorm's batch statistics, running statistics, per-channel
sums and parameter gradients in float32. Elementwise ops never mix dtypes over a whole
tensor (on the CPU such ops run several times slower than single-dtype ones): per-channel
vectors are cast instead. With :func:`use_compiled_kernels` the elementwise chains between
the matrix products run as torch.compile'd kernels, one loop each.

Outputs, parameter gradients and BN running statistics equal the plain implementation's up
to float rounding (bf16 rounding under autocast). Supported: bottleneck (-B/-BC) and plain
layers, any BN momentum (``None`` = cumulative average), float32/float64 and autocast, any
device. Not supported (:func:`supports` says so and the caller uses the plain path):
dropout while training, BatchNorm without affine parameters or running statistics, BN
layers in a different mode than their layer, differentiating in eval mode, and double
backward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

# Rows per chunk: about this many bytes of a layer's input. A chunk bounds the scratch
# memory of the normalised input and its gradient; fewer, larger chunks pay for fewer
# kernel launches. Measured on a 2-core Xeon (benchmarks/train_throughput.py, BC-100,
# bf16): 8 MiB beats 1 MiB by about 12 % on one thread and 18 % on two; 16 MiB gains nothing.
_CHUNK_BYTES = 8 << 20


def compute_dtype(x: Tensor) -> torch.dtype | None:
    """The dtype :func:`dense_block` computes in for input ``x``, or None if it cannot.

    Outside autocast: ``x``'s own dtype (float32 or float64). Under autocast on ``x``'s
    device: autocast's dtype (bfloat16 or float16) for a float32 or low-precision ``x``, as
    the layer-by-layer path would compute its convolutions."""
    if torch.is_autocast_enabled(x.device.type):
        low = torch.get_autocast_dtype(x.device.type)
        ok = low in (torch.bfloat16, torch.float16) and x.dtype in (torch.float32, low)
        return low if ok else None
    return x.dtype if x.dtype in (torch.float32, torch.float64) else None


def supports(layers: Sequence[nn.Module], x: Tensor) -> bool:
    """Whether :func:`dense_block` can run ``layers`` (``_DenseLayer``\\ s) on ``x``."""
    if not layers or x.dim() != 4 or compute_dtype(x) is None:
        return False
    training = layers[0].training
    if torch.is_grad_enabled() and not training:
        return False
    bottleneck = layers[0].bottleneck
    for layer in layers:
        if layer.training != training or layer.bottleneck != bottleneck:
            return False
        if training and any(
            not isinstance(getattr(layer, name, None), (nn.Identity, type(None)))
            for name in ("drop1", "drop2")
        ):
            return False
        for norm in (layer.norm1, layer.norm2) if bottleneck else (layer.norm1,):
            if not (norm.affine and norm.track_running_stats) or norm.training != training:
                return False
    return True


@dataclass
class _Plan:
    """What the autograd function needs besides the tensors it differentiates."""

    norms1: list[nn.BatchNorm2d]  # each layer's norm1 (eps, momentum, running statistics)
    norms2: list[nn.BatchNorm2d] | None  # each layer's norm2; None for plain layers
    growth_rate: int  # k: channels each layer writes
    training: bool  # normalise with batch statistics and update the running ones
    store_bottleneck: bool  # keep each 1×1-conv output for backward instead of recomputing it
    dtype: torch.dtype  # of the feature buffer, its gradient and every convolution / matmul
    stat_dtype: torch.dtype  # of batch statistics and per-channel sums (float32 or float64)

    @property
    def per_layer(self) -> int:
        """Parameters per layer: norm1.{weight,bias}, conv1.weight (+ the same for norm2/conv2)."""
        return 3 if self.norms2 is None else 6


def dense_block(x0: Tensor, layers: Sequence[nn.Module], memory_efficient: bool) -> Tensor:
    """``cat([x0, x1, …, xL], 1)`` of a dense block, computed in one channels-last buffer.

    ``layers`` are ``_DenseLayer`` modules for which :func:`supports` holds. With
    ``memory_efficient`` the bottleneck conv is recomputed in backward instead of stored (one
    more matrix product per layer; ``4k`` channels less memory per layer)."""
    bottleneck = layers[0].bottleneck
    dtype = compute_dtype(x0)
    if dtype is None:
        raise ValueError(f"dense_block cannot compute in {x0.dtype}; check supports() first")
    plan = _Plan(
        norms1=[layer.norm1 for layer in layers],
        norms2=[layer.norm2 for layer in layers] if bottleneck else None,
        growth_rate=(layers[0].conv2 if bottleneck else layers[0].conv1).out_channels,
        training=layers[0].training,
        store_bottleneck=bottleneck and not memory_efficient,
        dtype=dtype,
        stat_dtype=torch.promote_types(dtype, torch.float32),
    )
    params: list[Tensor] = []
    for layer in layers:
        params += [layer.norm1.weight, layer.norm1.bias, layer.conv1.weight]
        if bottleneck:
            params += [layer.norm2.weight, layer.norm2.bias, layer.conv2.weight]
    # Casts are explicit inside: autocast would otherwise cast again, and differently.
    with torch.autocast(x0.device.type, enabled=False):
        if torch.is_grad_enabled() and (x0.requires_grad or any(p.requires_grad for p in params)):
            return _DenseBlockFunction.apply(x0, plan, *params)
        with torch.no_grad():
            return _forward(x0, plan, params, save=False)[0]


# ----------------------------------------------------------------------------- helpers
def as_nchw(m: Tensor, n: int, h: int, w: int) -> Tensor:
    """A ``[n·h·w, c]`` matrix viewed as an ``[n, c, h, w]`` channels-last tensor."""
    return m.view(n, h, w, -1).permute(0, 3, 1, 2)


def as_matrix(t: Tensor) -> Tensor:
    """An ``[n, c, h, w]`` tensor as an ``[n·h·w, c]`` matrix (a view when channels-last)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _chunks(rows: int, width: int, itemsize: int) -> list[slice]:
    """Row ranges of about ``_CHUNK_BYTES`` of a ``[rows, width]`` matrix each."""
    step = max(64, _CHUNK_BYTES // (width * itemsize))
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]


def scratch_buffer(like: Tensor, widest: int) -> Tensor:
    """Room for one chunk of any layer (a chunk is at most 64 rows more than _CHUNK_BYTES)."""
    return like.new_empty(_CHUNK_BYTES // like.element_size() + 64 * widest)


def _var_mean(m: Tensor, stat_dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """Per-column biased variance and mean of a ``[pixels, c]`` matrix (two passes).

    A low-precision ``m`` is reduced in its own dtype (PyTorch accumulates bfloat16/float16
    reductions in float32; the results are rounded once) and returned in ``stat_dtype``:
    on the CPU, every elementwise op that mixes dtypes runs several times slower than one
    that does not."""
    if _COMPILED:
        return _compiled("var_mean", _var_mean_pointwise)(m, stat_dtype or m.dtype)
    if m.dtype in (torch.bfloat16, torch.float16):
        var, mean = torch.var_mean(m, 0, correction=0)
        return var.to(stat_dtype), mean.to(stat_dtype)
    mean = m.sum(0).div_(m.shape[0])
    var = (m - mean).square_().sum(0).div_(m.shape[0])
    return var, mean


def _momentum(norm: nn.BatchNorm2d) -> float:
    """nn.BatchNorm2d's running-average factor; counts the batch as its forward does."""
    if norm.num_batches_tracked is not None:
        norm.num_batches_tracked.add_(1)
    if norm.momentum is None:
        return 1.0 / float(norm.num_batches_tracked)
    return norm.momentum


def _update_running(norm: nn.BatchNorm2d, mean: Tensor, var: Tensor, count: int) -> None:
    """nn.BatchNorm2d's running-statistics update from a batch's mean and biased variance."""
    factor = _momentum(norm)
    norm.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
    norm.running_var.mul_(1 - factor).add_(var, alpha=factor * count / max(count - 1, 1))


def bn_scale_shift(
    mean: Tensor, var: Tensor, eps: float, weight: Tensor, bias: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """BatchNorm as ``x·scale + shift`` (the form PyTorch's CPU kernel uses) and 1/σ."""
    invstd = torch.rsqrt(var + eps)
    scale = weight * invstd
    return scale, bias - mean * scale, invstd


def bn_relu(x: Tensor, scale: Tensor, shift: Tensor, out: Tensor | None = None) -> Tensor:
    """``relu(x·scale + shift)`` in ``x``'s dtype (a low-precision ``x`` is computed in
    float32 per element and rounded once; only ``scale`` and ``shift`` are rounded first)."""
    if _COMPILED:
        return _compiled("bn_relu", _bn_relu_pointwise)(x, scale, shift)
    return torch.addcmul(shift.to(x.dtype), x, scale.to(x.dtype), out=out).relu_()


# ----------------------------------------------------------------------------- compiled kernels
# Between its matrix products the block runs chains of elementwise ops over the same rows
# (BN→ReLU; ReLU mask → two sums → scaled add): each op one pass over memory, and in
# eager mode each its own OpenMP region. torch.compile fuses each chain into one loop.
_COMPILED = False
_KERNELS: dict[str, Callable] = {}


def use_compiled_kernels(enabled: bool = True) -> None:
    """Run the block's elementwise chains as torch.compile'd kernels (process-wide).

    Faster where inductor generates code for the device (a C++ compiler on the CPU, Triton
    on CUDA); the first call of each chain compiles it (seconds; cached in
    ``TORCHINDUCTOR_CACHE_DIR``). The numbers stay within float rounding of the eager ops:
    the kernels compute in float32 (float64 for float64 input) and round once."""
    global _COMPILED
    _COMPILED = bool(enabled)


def compiled_kernels_enabled() -> bool:
    """Whether :func:`use_compiled_kernels` is on."""
    return _COMPILED


def _compiled(name: str, fn: Callable) -> Callable:
    if name not in _KERNELS:
        _KERNELS[name] = torch.compile(fn, dynamic=True)
    return _KERNELS[name]


def _bn_relu_pointwise(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    return (x.to(scale.dtype) * scale + shift).relu().to(x.dtype)


def _var_mean_pointwise(m: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    m = m.to(dtype)
    mean = m.mean(0)
    return (m - mean).square().mean(0), mean


def _finish_pointwise(g: Tensor, x: Tensor, mean: Tensor, coef_x: Tensor, coef_c: Tensor):
    return (g.to(mean.dtype) + (x.to(mean.dtype) - mean) * coef_x + coef_c).to(g.dtype)


def _input_grad_pointwise(
    gz: Tensor, z: Tensor, x: Tensor, mean: Tensor, scale: Tensor, gx: Tensor
) -> tuple[Tensor, Tensor]:
    """ReLU's mask on ``gz``, then ``gx += gz·scale``; returns Σ gz and Σ gz·(x − mean)."""
    g = torch.where(z > 0, gz.to(scale.dtype), 0.0)
    gx.add_((g * scale).to(gx.dtype))
    return g.sum(0), (g * (x.to(scale.dtype) - mean)).sum(0)


def _input_grad(
    gz: Tensor, z: Tensor, x: Tensor, mean: Tensor, scale: Tensor, gx: Tensor, sums, scratch
) -> None:
    """ReLU and BatchNorm backward's per-element part for rows of one layer's input: adds
    ``mask·gz·scale`` to ``gx`` and Σ, Σ·(x − mean) of ``mask·gz`` to ``sums`` (overwrites
    ``gz`` and ``scratch``)."""
    if _COMPILED:
        s_g, s_gx = _compiled("input_grad", _input_grad_pointwise)(gz, z, x, mean, scale, gx)
        sums[0].add_(s_g)
        sums[1].add_(s_gx)
        return
    torch.ops.aten.threshold_backward(gz, z, 0, grad_input=gz)
    _bn_sums(gz, x, mean, sums[0], sums[1], scratch=scratch)
    gx.addcmul_(gz, scale.to(gz.dtype))


def _bottleneck_norm(
    y: Tensor, weight: Tensor, bias: Tensor, norm: nn.BatchNorm2d, plan: _Plan
) -> tuple[Tensor, Tensor, Tensor]:
    """BatchNorm→ReLU of a bottleneck output ``y`` (``[pixels, 4k]``): the result and the
    mean and 1/σ it normalised with (the batch's in training, which also updates ``norm``'s
    running statistics; the running ones in eval mode)."""
    if not _COMPILED:
        momentum = _momentum(norm) if plan.training else 0.0
        a, mean, invstd = torch.native_batch_norm(
            y, weight, bias, norm.running_mean, norm.running_var, plan.training, momentum, norm.eps
        )
        return a.relu_(), mean, invstd
    if plan.training:
        var, mean = _var_mean(y, plan.stat_dtype)
        _update_running(norm, mean, var, y.shape[0])
    else:
        mean, var = norm.running_mean, norm.running_var
    scale, shift, invstd = bn_scale_shift(mean, var, norm.eps, weight, bias)
    return bn_relu(y, scale, shift), mean, invstd


def _bottleneck_norm_backward(
    ga: Tensor, a: Tensor, y: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Backward of :func:`_bottleneck_norm` in training from the gradient ``ga`` of its
    output ``a``: the gradients of ``y``, of BatchNorm's weight and of its bias."""
    if not _COMPILED:
        ga = torch.ops.aten.threshold_backward(ga, a, 0)
        return torch.ops.aten.native_batch_norm_backward(
            ga, y, weight, None, None, mean, invstd, True, 0.0, [True, True, True]
        )
    return _compiled("norm_backward", _norm_backward_pointwise)(ga, a, y, mean, invstd, weight)


def _norm_backward_pointwise(ga, a, y, mean, invstd, weight):
    g = torch.where(a > 0, ga.to(mean.dtype), 0.0)
    xhat = (y.to(mean.dtype) - mean) * invstd
    sum_g, sum_gxhat = g.sum(0), (g * xhat).sum(0)
    count = g.shape[0]
    gy = (weight * invstd) * (g - sum_g / count - xhat * (sum_gxhat / count))
    return gy.to(y.dtype), sum_gxhat, sum_g


def _store(new: Tensor, dst: Tensor, stat_dtype: torch.dtype | None):
    """Copy a layer's new channels into their columns of the buffer; with ``stat_dtype``
    also return their batch variance and mean (:func:`_var_mean`), read in the same pass."""
    if stat_dtype is not None and _COMPILED:
        return _compiled("store", _store_pointwise)(new, dst, stat_dtype)
    dst.copy_(new)
    return None if stat_dtype is None else _var_mean(new, stat_dtype)


def _store_pointwise(new: Tensor, dst: Tensor, dtype: torch.dtype):
    dst.copy_(new)
    return _var_mean_pointwise(new, dtype)


def _finish(g: Tensor, x: Tensor, mean: Tensor, coef_x: Tensor, coef_c: Tensor) -> Tensor:
    """``g + (x − mean)·coef_x + coef_c`` per column, as a new contiguous matrix: the
    columns' gradient once BatchNorm's per-channel terms are added (see the module doc)."""
    if _COMPILED:
        return _compiled("finish", _finish_pointwise)(g, x, mean, coef_x, coef_c)
    low = g.dtype
    return torch.addcmul(g, x - mean.to(low), coef_x.to(low)).add_(coef_c.to(low))


def _low_weights(params: Sequence[Tensor], plan: _Plan) -> list[Tensor]:
    """``params`` with every convolution weight cast to the compute dtype, as autocast casts
    them for each convolution; BatchNorm's affine parameters stay as they are."""
    convs = (2,) if plan.norms2 is None else (2, 5)
    return [p.to(plan.dtype) if i % plan.per_layer in convs else p for i, p in enumerate(params)]


def _conv_backward(g: Tensor, x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """Input and weight gradients of a stride-1 'same' convolution without bias."""
    pad = weight.shape[-1] // 2
    gx, gw, _ = torch.ops.aten.convolution_backward(
        g, x, weight, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1, [True, True, False]
    )
    return gx, gw


def fused_bottleneck(x: Tensor, scale1: Tensor, shift1: Tensor, w1: Tensor, ws: Tensor) -> Tensor:
    """``relu(x·scale1 + shift1) @ w1ᵀ``, a chunk of rows at a time (``ws``: scratch)."""
    c = x.shape[1]
    y = x.new_empty(x.shape[0], w1.shape[0])
    for r in _chunks(x.shape[0], c, x.element_size()):
        z = bn_relu(x[r], scale1, shift1, out=ws[: (r.stop - r.start) * c].view(-1, c))
        torch.mm(z, w1.t(), out=y[r])
    return y


# ----------------------------------------------------------------------------- BN→ReLU
def norm_relu(x: Tensor, norm: nn.BatchNorm2d) -> Tensor:
    """``relu(norm(x))``: the BatchNorm→ReLU in front of a transition's conv and the head.

    In training with :func:`use_compiled_kernels` on and a channels-last ``x`` it runs as
    one autograd function of two compiled passes each way (batch statistics, then the
    normalisation; in backward ReLU's mask and BatchNorm's sums, then the input gradient)
    instead of four eager ops and their backward; the numbers are the same up to float
    rounding, in ``x``'s dtype as the eager ops give under autocast. Otherwise the eager
    ops run."""
    if not _fusable_norm(norm, x):
        return F.relu(norm(x), inplace=True)
    with torch.autocast(x.device.type, enabled=False):
        return _NormReluFunction.apply(x, norm.weight, norm.bias, norm)


def _fusable_norm(norm: nn.BatchNorm2d, x: Tensor) -> bool:
    return (
        _COMPILED
        and isinstance(norm, nn.BatchNorm2d)
        and isinstance(x, Tensor)
        and norm.training
        and torch.is_grad_enabled()
        and norm.affine
        and norm.track_running_stats
        and x.dim() == 4
        and x.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16)
        and x.is_contiguous(memory_format=torch.channels_last)
        and not torch.compiler.is_compiling()
    )


class _NormReluFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, norm: nn.BatchNorm2d) -> Tensor:
        n, _, h, w = x.shape
        m = as_matrix(x)
        var, mean = _var_mean(m, torch.promote_types(x.dtype, torch.float32))
        _update_running(norm, mean, var, m.shape[0])
        scale, shift, invstd = bn_scale_shift(mean, var, norm.eps, weight, bias)
        a = bn_relu(m, scale, shift)
        ctx.save_for_backward(x, a, mean, invstd, weight)
        return as_nchw(a, n, h, w)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, a, mean, invstd, weight = ctx.saved_tensors
        n, _, h, w = x.shape
        ga = as_matrix(grad_out.contiguous(memory_format=torch.channels_last)).to(a.dtype)
        with torch.autocast(grad_out.device.type, enabled=False):
            args = (ga, a, as_matrix(x), mean, invstd, weight)
            gx, gw, gb = _compiled("norm_backward", _norm_backward_pointwise)(*args)
        return as_nchw(gx, n, h, w), gw.to(weight.dtype), gb.to(weight.dtype), None


# ----------------------------------------------------------------------------- forward
def _forward(x0: Tensor, plan: _Plan, params: Sequence[Tensor], save: bool):
    n, c0, h, w = x0.shape
    k, per = plan.growth_rate, plan.per_layer
    num_layers = len(plan.norms1)
    width = c0 + k * num_layers
    pixels = n * h * w
    params = _low_weights(params, plan)
    buf = x0.new_empty(n, h, w, width, dtype=plan.dtype)
    mat = buf.view(pixels, width)
    buf[..., :c0].copy_(x0.permute(0, 2, 3, 1))

    means = vars_ = None
    if plan.training:
        means = x0.new_empty(width, dtype=plan.stat_dtype)
        vars_ = torch.empty_like(means)
        vars_[:c0], means[:c0] = _var_mean(mat[:, :c0], plan.stat_dtype)
    widest = width - k
    # Scratch for the normalised input: a chunk of rows for a bottleneck layer, all of it
    # for a plain layer's 3×3 conv.
    ws = scratch_buffer(buf, widest) if plan.norms2 is not None else buf.new_empty(pixels * widest)
    saved = []
    for t in range(num_layers):
        p = params[per * t : per * (t + 1)]
        c = c0 + k * t
        x = mat[:, :c]
        norm1 = plan.norms1[t]
        if plan.training:
            mean1, var1 = means[:c], vars_[:c]
            _update_running(norm1, mean1, var1, pixels)
        else:
            mean1, var1 = norm1.running_mean, norm1.running_var
        scale1, shift1, _ = bn_scale_shift(mean1, var1, norm1.eps, p[0], p[1])
        if plan.norms2 is not None:
            y = fused_bottleneck(x, scale1, shift1, p[2].reshape(p[2].shape[0], c), ws)
            a, mean2, invstd2 = _bottleneck_norm(y, p[3], p[4], plan.norms2[t], plan)
            out = F.conv2d(as_nchw(a, n, h, w), p[5], padding=1)
            del a
            if save:
                saved.append((mean2, invstd2, y if plan.store_bottleneck else None))
            del y
        else:
            z = bn_relu(x, scale1, shift1, out=ws[: pixels * c].view(pixels, c))
            out = F.conv2d(as_nchw(z, n, h, w), p[2], padding=1)
        stat_dtype = plan.stat_dtype if plan.training else None
        stats = _store(as_matrix(out), mat[:, c : c + k], stat_dtype)
        if stats is not None:
            vars_[c : c + k], means[c : c + k] = stats
        del out
    return buf.permute(0, 3, 1, 2), means, vars_, saved


# ----------------------------------------------------------------------------- autograd
class _DenseBlockFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x0: Tensor, plan: _Plan, *params: Tensor) -> Tensor:
        out, means, vars_, saved = _forward(x0, plan, params, save=True)
        ctx.plan = plan
        ctx.c0 = x0.shape[1]
        ctx.x0_channels_last = x0.is_contiguous(memory_format=torch.channels_last)
        ctx.x0_dtype = x0.dtype
        flat = [s for layer in saved for s in layer if s is not None]
        ctx.save_for_backward(out, means, vars_, *params, *flat)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        with torch.autocast(grad_out.device.type, enabled=False):
            return _backward(ctx, grad_out)


def _backward(ctx, grad_out: Tensor):
    plan: _Plan = ctx.plan
    out, means, vars_, *rest = ctx.saved_tensors
    k, per, c0 = plan.growth_rate, plan.per_layer, ctx.c0
    num_layers = len(plan.norms1)
    params = rest[: per * num_layers]
    weights = _low_weights(params, plan)
    extra = iter(rest[per * num_layers :])
    saved = []
    if plan.norms2 is not None:
        for _ in range(num_layers):
            mean2, invstd2 = next(extra), next(extra)
            saved.append((mean2, invstd2, next(extra) if plan.store_bottleneck else None))

    n, width, h, w = out.shape
    pixels = n * h * w
    mat = as_matrix(out)
    # One gradient buffer for the whole block; every layer adds its input gradient to it.
    # In the compute dtype, as autograd accumulates the layer-by-layer path's gradients.
    gbuf = grad_out.new_empty(n, h, w, width, dtype=plan.dtype)
    gbuf.copy_(grad_out.permute(0, 2, 3, 1))
    gmat = gbuf.view(pixels, width)
    # BatchNorm backward's per-channel terms, applied once per channel (see module doc):
    # gradient[:, j] += (x[:, j] − μ_j)·coef_x[j] + coef_c[j].
    coef_x = torch.zeros_like(means)
    coef_c = torch.zeros_like(means)

    def finish(cols: slice) -> Tensor:
        """The complete gradient of columns ``cols`` (a new contiguous matrix)."""
        return _finish(gmat[:, cols], mat[:, cols], means[cols], coef_x[cols], coef_c[cols])

    widest = width - k
    ws_z, ws_g = scratch_buffer(out, widest), scratch_buffer(out, widest)
    grads: list[Tensor | None] = [None] * len(params)
    for t in range(num_layers - 1, -1, -1):
        p = params[per * t : per * (t + 1)]
        pw = weights[per * t : per * (t + 1)]  # conv weights in the compute dtype
        g: list[Tensor | None] = [None] * per
        c = c0 + k * t
        # Layers after t, the only readers of x_t, are done: its gradient is complete.
        gnew = as_nchw(finish(slice(c, c + k)), n, h, w)
        x = mat[:, :c]
        norm1 = plan.norms1[t]
        mean1 = means[:c]
        scale1, shift1, invstd1 = bn_scale_shift(mean1, vars_[:c], norm1.eps, p[0], p[1])
        sum_g = means.new_zeros(c)
        sum_gx = means.new_zeros(c)  # Σ g·(x − μ)
        rows = _chunks(pixels, c, x.element_size())
        if plan.norms2 is not None:
            mean2, invstd2, y = saved[t]
            w1 = pw[2].reshape(pw[2].shape[0], c)
            if y is None:
                y = fused_bottleneck(x, scale1, shift1, w1, ws_z)
            scale2 = p[3] * invstd2
            a = bn_relu(y, scale2, p[4] - mean2 * scale2)
            ga, g[5] = _conv_backward(gnew, as_nchw(a, n, h, w), pw[5])
            gy, g[3], g[4] = _bottleneck_norm_backward(as_matrix(ga), a, y, mean2, invstd2, p[3])
            del a, ga, y
            gw1 = p[2].new_zeros(w1.shape)  # summed over chunks in the parameters' dtype
            for r in rows:
                size = (r.stop - r.start) * c
                z = bn_relu(x[r], scale1, shift1, out=ws_z[:size].view(-1, c))
                gw1 += torch.mm(gy[r].t(), z)
                gz = torch.mm(gy[r], w1, out=ws_g[:size].view(-1, c))
                _input_grad(gz, z, x[r], mean1, scale1, gmat[r, :c], (sum_g, sum_gx), z)
            del gy
            g[2] = gw1.view_as(p[2])
        else:
            z = bn_relu(x, scale1, shift1)
            gz, g[2] = _conv_backward(gnew, as_nchw(z, n, h, w), pw[2])
            gz = as_matrix(gz)
            for r in rows:
                scratch = ws_z[: (r.stop - r.start) * c].view(-1, c)
                _input_grad(gz[r], z[r], x[r], mean1, scale1, gmat[r, :c], (sum_g, sum_gx), scratch)
            del z, gz
        # BatchNorm backward: dx = scale·(g − Σg/P − x̂·Σg·x̂/P), x̂ = (x − μ)/σ.
        sum_gxhat = sum_gx * invstd1
        g[0], g[1] = sum_gxhat, sum_g
        coef_x[:c] -= scale1 * invstd1 * sum_gxhat / pixels
        coef_c[:c] -= scale1 * sum_g / pixels
        grads[per * t : per * (t + 1)] = g
    gx0 = as_nchw(finish(slice(0, c0)), n, h, w).to(ctx.x0_dtype)
    if not ctx.x0_channels_last:
        gx0 = gx0.contiguous()
    grads = [None if gr is None else gr.to(pr.dtype) for gr, pr in zip(grads, params, strict=True)]
    return gx0, None, *grads


def _bn_sums(
    g: Tensor, x: Tensor, mean: Tensor, sum_g: Tensor, sum_gx: Tensor, scratch: Tensor
) -> None:
    """Add Σ g and Σ g·(x − mean) over the rows of ``g`` and ``x`` (overwrites ``scratch``).

    The sums over a chunk's rows are taken in ``g``'s dtype (float32 accumulation inside for
    bfloat16/float16) and added up over chunks in ``sum_g``'s."""
    sum_g += g.sum(0)
    torch.sub(x, mean.to(x.dtype), out=scratch).mul_(g)
    sum_gx += scratch.sum(0)
