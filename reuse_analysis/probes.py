"""Data-driven reuse: run the model on real images and measure what each connection does.

A *connection* s → t is the slice ``W_t[:, S_s]`` of target t's first convolution (the
transition conv, the classifier) that reads source s's channels. Three metrics, all on a
fixed set of images, in eval mode (running batch-norm statistics):

``activation``
    mean |P_s| over images, output channels and pixels, where ``P_s = W_t[:, S_s] ∗ a[S_s]``
    is the part of target t's first-conv output (the logits, for the classifier) that comes
    from source s, and ``a = relu(bn(x))`` is what the conv reads.
``ablation``
    the exact increase of the mean loss (``loss_increase``) and drop of top-1 accuracy
    (``accuracy_drop``) when the connection alone is cut (``W_t[:, S_s] = 0``).
``taylor``
    the first-order estimate of that increase, ``−Σ_{w ∈ slice} (∂L/∂w)·w`` with ``L`` the
    mean loss, from one forward and backward pass.

Efficient ablation. Cutting s → t changes nothing before target t, and the target's
first-conv output is linear in the slice: ``conv(a, W with S_s zeroed) = conv(a, W) − P_s``.
So for every image chunk the network runs once, keeping each block's features; then for
each target t the variants "s cut" (one per source) are formed from the kept features by
subtracting the partial convolutions, stacked along the batch, and only the rest of the
network — layers after t, the transition, later blocks, the classifier — is recomputed, in
inference mode, a bounded number of images per pass. Within t's block the variants also
share the features before t: batch norm acts per channel and a convolution sums over input
channels, so each later layer's first conv (and the transition, or the logits) takes the
part that those shared channels contribute from one computation per target column, and
each variant pays only for its own channels x_t … The classifier column costs one
matrix product per source. Results are kept per image chunk and target column in a JSON
file keyed by the weights' hash and the settings, so an interrupted run continues where it
stopped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reuse_analysis.cache import Cache, Record
from reuse_analysis.cache import weights_hash as state_hash
from reuse_analysis.errors import ReuseAnalysisError
from reuse_analysis.models._efficient import (
    as_matrix,
    as_nchw,
    bn_relu,
    bn_scale_shift,
    fused_bottleneck,
    scratch_buffer,
)
from reuse_analysis.structure import DenseNetStructure, Target, infer_structure
from reuse_analysis.tables import DATA_METRICS, build_table

#: ``(logits, labels) → per-image loss``; the default is cross-entropy.
LossFn = Callable[[Tensor, Tensor], Tensor]
SPLITS = ("train", "test")
_CACHE_VERSION = 1
_SAVE_EVERY_S = 30.0


class ProbeError(ReuseAnalysisError):
    """A model, data set or setting the data-driven metrics cannot work with."""


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-image cross-entropy (the training loss), computed in at least float32."""
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    return F.cross_entropy(logits, labels, reduction="none")


@dataclass(frozen=True)
class ProbeSettings:
    """Which images the data-driven metrics see, and how they run."""

    dataset: str | None = None  # None: the data set recorded in the checkpoint
    data_dir: str = "data"  # where data sets are downloaded and cached
    split: str = "train"  # train: pruning decisions never see the test images
    images: int = 1000  # a fixed random subset of this many images of the split
    batch_size: int = 256  # images × variants per forward pass (bounds memory)
    chunk_size: int = 100  # images per chunk: the unit of progress saved for resuming
    device: str = "auto"  # auto | cpu | cuda | mps
    cache_dir: str | None = None  # None: DATA_DIR/probe-cache; "" turns the cache off
    mean: tuple[float, ...] | None = None  # input normalisation (None: recorded, else usual)
    std: tuple[float, ...] | None = None

    def cache_path(self) -> Path | None:
        if self.cache_dir == "":
            return None
        return Path(self.cache_dir) if self.cache_dir else Path(self.data_dir) / "probe-cache"


# ----------------------------------------------------------------------------- the model
def runnable_model(
    state_dict: Mapping[str, Tensor],
    structure: DenseNetStructure,
    checkpoint: Any = None,
) -> nn.Module:
    """The toolkit's DenseNet holding these weights, in eval mode.

    A checkpoint written by ``train`` rebuilds from its recorded config; a state_dict with
    torchvision's key layout loads strictly into the DenseNet its inferred structure
    describes (when it concatenates oldest first); any other layout is rebuilt from its own
    tensors (:func:`reuse_analysis.rebuild.rebuild`, checked on data by :func:`load_data`).
    Raises ProbeError for what cannot be run.
    """
    from reuse_analysis.models import DenseNet

    where = str(checkpoint.path) if checkpoint is not None else "the weights"
    if checkpoint is not None and checkpoint.config is not None:
        from reuse_analysis.evaluation import rebuild_model

        model = rebuild_model(checkpoint)
        if not isinstance(model, DenseNet) and not hasattr(model, "rebuilt_from"):
            raise ProbeError(
                f"{where} holds a {checkpoint.arch}, not one of this toolkit's DenseNets; "
                "the commands that run a model connection by connection (data-driven "
                "metrics, agreement, prune) need one — heatmap and table with --metric "
                "weight still work on it"
            )
        return model.eval()
    from reuse_analysis.concat_order import detect_concat_order
    from reuse_analysis.rebuild import RebuildError, rebuild

    # torchvision's names, concatenated oldest first: the toolkit's DenseNet loads them.
    if detect_concat_order(state_dict, structure).order == "oldest-first":
        try:
            model = DenseNet(config_from_structure(structure, where))
            model.load_state_dict(dict(state_dict), strict=True)
            model.rebuilt_from = {}  # from weights alone: checked on data like any rebuild
            return model.eval()
        except (ProbeError, RuntimeError):
            pass
    # Any other layout: rebuilt from the checkpoint's own tensors (reuse_analysis.rebuild).
    try:
        return rebuild(state_dict, structure)
    except RebuildError as exc:
        raise ProbeError(
            f"{where}: data-driven metrics need a model the toolkit can run, and {exc}; "
            "weight-only metrics (--metric weight / bn-weight) still work"
        ) from None


def config_from_structure(structure: DenseNetStructure, where: str = "the weights") -> Any:
    """The :class:`DenseNetConfig` that an inferred structure describes."""
    from reuse_analysis.models import DenseNetConfig

    blocks = structure.blocks
    ks = {b.growth_rate for b in blocks}
    widths = {layer.bottleneck_width for b in blocks for layer in b.layers}
    k = ks.pop() if len(ks) == 1 else None
    width = widths.pop() if len(widths) == 1 else -1
    stem = "imagenet" if structure.stem and structure.stem[0].kernel[0] >= 7 else "cifar"
    problem = None
    if k is None or width == -1 or (width is not None and width % k):
        problem = "its blocks differ in growth rate or bottleneck width"
    elif structure.classifier is None or structure.input_channels is None:
        problem = "no classifier or stem was found"
    if problem is None:
        try:
            return DenseNetConfig(
                growth_rate=k,
                block_config=tuple(b.num_layers for b in blocks),
                num_init_features=blocks[0].in_channels,
                bn_size=width // k if width else 0,
                compression=structure.compression or 1.0,
                num_classes=structure.num_classes,
                in_channels=structure.input_channels,
                stem=stem,
            )
        except ValueError as exc:
            problem = str(exc)
    raise ProbeError(
        f"{where}: data-driven metrics need a model the toolkit can run, and {problem}; "
        "weight-only metrics (--metric weight / bn-weight) still work"
    )


# ----------------------------------------------------------------------------- the images
def load_data(
    model: nn.Module,
    checkpoint: Any,
    dataset: str | None,
    data_dir: str,
    *,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> Any:
    """The data set the model runs on (default: the one the checkpoint records), with the
    training statistics (or ``mean``/``std``), checked against the model's input channels
    and classes, and, for a model rebuilt from weights alone, against its batch norms."""
    from reuse_analysis.evaluation import override_normalisation, recorded_data

    where = str(checkpoint.path) if checkpoint is not None else "the model"
    meta = checkpoint.meta if checkpoint is not None else {}
    ds = recorded_data(where, meta, dataset, data_dir, model.config.to_dict())
    override_normalisation(ds, mean, std)
    if hasattr(model, "rebuilt_from"):
        from reuse_analysis.rebuild import check_on_data

        check_on_data(model, ds, meta, where, given=mean is not None)
    return ds


def probe_images(ds: Any, split: str, images: int) -> tuple[Tensor, Tensor]:
    """A fixed random subset of ``images`` images of a split, standardised, no augmentation."""
    from reuse_analysis.runtime import eval_subset

    if split not in SPLITS:
        raise ProbeError(f"--split must be one of {', '.join(SPLITS)}, not {split!r}")
    data = ds.train if split == "train" else ds.test
    if data is None or len(data) == 0:
        raise ProbeError(f"{ds.name} has no {split} split to run the model on")
    subset = eval_subset(data, images)
    x = subset.batch(torch.arange(len(subset)), ds.mean, ds.std)
    return x, subset.labels.clone()


# ----------------------------------------------------------------------------- connections
def _partial(conv: nn.Conv2d, a: Tensor, start: int, stop: int) -> Tensor:
    """The part of ``conv(a)`` that input channels ``start:stop`` contribute (no bias)."""
    return F.conv2d(
        a[:, start:stop], conv.weight[:, start:stop], None, conv.stride, conv.padding,
        conv.dilation, conv.groups,
    )  # fmt: skip


class _Net:
    """A :class:`DenseNet` run piece by piece: stem → blocks and transitions → head."""

    def __init__(self, model: nn.Module) -> None:
        parts = model.parts()
        self.stem = list(parts.stem)
        self.blocks = list(parts.blocks)
        self.transitions = list(parts.transitions)
        self.norm5 = parts.head_norm
        self.classifier = parts.classifier
        # The head may pool to an h×w map (``positions`` features per channel, flattened
        # channel-major) and go on after the classifier's first Linear (an MLP head).
        self.pool_head = parts.pool
        self.positions = parts.positions
        self.head_rest = parts.head_rest
        for conv in [layer.conv1 for b in self.blocks for layer in b.values()]:
            if conv.groups != 1:
                raise ProbeError("grouped first convolutions are not supported")

    def layers(self, b: int) -> list[nn.Module]:
        return list(self.blocks[b].values())

    def shared_parts(self, b: int, prefix: Tensor, start: int) -> list[Tensor]:
        """What the features before layer ``start`` + 1 contribute, the same in every variant
        that cuts a connection into layer ``start`` (1-based) of block ``b``.

        ``prefix`` holds those features for ``n`` images. A batch norm acts per channel and
        a convolution (or the classifier) sums over input channels, so each later layer's
        first conv, the transition conv or the logits split into a part from these channels,
        computed here once, and a part from the variant's own channels
        (:meth:`rest_of_block`, :meth:`after_shared_block`). Returns one ``[n·h·w, out]``
        matrix per later layer, then the transition's (or the logits' ``[n, classes]``).
        """
        n, c, h, w = prefix.shape
        rows = as_matrix(prefix)
        ws = scratch_buffer(prefix, c)
        parts = [
            _first_conv_rows(layer.norm1, layer.conv1, rows, 0, (n, h, w), ws)
            for layer in self.layers(b)[start:]
        ]
        t = self.transitions[b]
        if t is not None:
            parts.append(_first_conv_rows(t.norm, t.conv, rows, 0, (n, h, w), ws))
        else:
            head = self.pooled(prefix) @ self.classifier.weight[:, : c * self.positions].t()
            if self.classifier.bias is not None:
                head += self.classifier.bias
            parts.append(head)
        return parts

    def rest_of_block(
        self, b: int, c: int, new: Tensor, start: int, shared: Sequence[Tensor]
    ) -> Tensor:
        """Block ``b``'s channels from layer ``start`` (1-based) on, ``[x_start, …, x_L]``, for
        ``v`` variants that share the block's first ``c`` channels and differ from layer
        ``start``'s output ``new`` (``v·n`` images, variant-major) on.

        Each later layer computes its first conv over the variants' own channels only and
        adds the part ``shared`` (from :meth:`shared_parts`) holds for the first ``c``.
        """
        layers = self.layers(b)[start:]
        images, k, h, w = new.shape
        width = k + sum(_new_channels(layer) for layer in layers)
        buf = new.new_empty(images, h, w, width)  # channels-last, as in the fused block
        mat = buf.view(-1, width)
        buf[..., :k].copy_(new.permute(0, 2, 3, 1))
        ws = scratch_buffer(new, width)
        filled = k
        for layer, common in zip(layers, shared, strict=False):
            y = _first_conv_rows(layer.norm1, layer.conv1, mat[:, :filled], c, (images, h, w), ws)
            y = layer.drop1(as_nchw(_add_shared_rows(y, common), images, h, w))
            if layer.bottleneck:
                y = layer.drop2(layer.conv2(layer.relu2(layer.norm2(y))))
            mat[:, filled : filled + y.shape[1]].copy_(as_matrix(y))
            filled += y.shape[1]
        return buf.permute(0, 3, 1, 2)

    def after_shared_block(self, b: int, c: int, rest: Tensor, shared: Tensor) -> Tensor:
        """Logits from block ``b``'s output on, for variants whose output is the shared first
        ``c`` channels followed by ``rest`` (``shared``: the last of :meth:`shared_parts`)."""
        images, _, h, w = rest.shape
        t = self.transitions[b]
        if t is not None:
            ws = scratch_buffer(rest, rest.shape[1])
            z = _first_conv_rows(t.norm, t.conv, as_matrix(rest), c, (images, h, w), ws)
            z = as_nchw(_add_shared_rows(z, shared), images, h, w)
            return self.from_block(b + 1, t.pool(t.drop(z)))
        own = self.pooled(rest, c) @ self.classifier.weight[:, c * self.positions :].t()
        return self.head_rest(_add_shared_rows(own, shared))

    def block_outputs(self, x: Tensor) -> list[Tensor]:
        """Every block's output ``[x_0, …, x_L]`` for the images ``x``."""
        for m in self.stem:
            x = m(x)
        outs = []
        for b in range(len(self.blocks)):
            out = self.blocks[b](x)
            outs.append(out)
            if self.transitions[b] is not None:
                x = self.transitions[b](out)
        return outs

    def from_block(self, b: int, x0: Tensor) -> Tensor:
        """Logits from block ``b``'s input on."""
        return self.after_block(b, self.blocks[b](x0))

    def after_block(self, b: int, out: Tensor) -> Tensor:
        """Logits from block ``b``'s output on (its transition, later blocks, the head)."""
        if self.transitions[b] is None:
            return self.head_rest(self.classifier(self.pooled(out)))
        return self.from_block(b + 1, self.transitions[b](out))

    def pooled(self, out: Tensor, first: int = 0) -> Tensor:
        """The head's pooled features of ``out``, whose channels start at ``first``."""
        scale, shift = _sliced_scale_shift(self.norm5, first, out.shape[1])
        a = bn_relu(out, scale[:, None, None], shift[:, None, None])
        return self.pool_head(a).flatten(1)


def _new_channels(layer: nn.Module) -> int:
    return (layer.conv2 if layer.bottleneck else layer.conv1).out_channels


def _sliced_scale_shift(norm: nn.BatchNorm2d, first: int, count: int) -> tuple[Tensor, Tensor]:
    """The eval-mode batch norm of input channels ``first … first+count`` as ``x·scale + shift``."""
    part = slice(first, first + count)
    scale, shift, _ = bn_scale_shift(
        norm.running_mean[part], norm.running_var[part], norm.eps,
        norm.weight[part], norm.bias[part],
    )  # fmt: skip
    return scale, shift


def _first_conv_rows(
    norm: nn.BatchNorm2d,
    conv: nn.Conv2d,
    rows: Tensor,
    first: int,
    shape: tuple[int, int, int],
    ws: Tensor,
) -> Tensor:
    """``conv(relu(norm(·)))`` restricted to input channels ``first…`` (given as the
    ``[n·h·w, c]`` matrix ``rows``), as an ``[n·h·w, out]`` matrix; the bias goes with
    ``first == 0``. ``shape`` is ``(n, h, w)``; ``ws`` scratch for the 1×1 case."""
    c = rows.shape[1]
    scale, shift = _sliced_scale_shift(norm, first, c)
    weight = conv.weight[:, first : first + c]
    if weight.shape[2:] == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0):
        out = fused_bottleneck(rows, scale, shift, weight.reshape(weight.shape[0], c), ws)
    else:
        a = as_nchw(bn_relu(rows, scale, shift), *shape)
        args = (conv.stride, conv.padding, conv.dilation)
        out = as_matrix(F.conv2d(a, weight, None, *args)).contiguous()
    if first == 0 and conv.bias is not None:
        out += conv.bias
    return out


def _add_shared_rows(own: Tensor, common: Tensor) -> Tensor:
    """``own`` (rows of ``v`` variants, variant-major) plus ``common`` in each variant."""
    own.view(-1, *common.shape).add_(common)
    return own


def _groups(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# ----------------------------------------------------------------------------- per chunk
def _activation_chunk(net: _Net, columns: Sequence[Target], x: Tensor) -> dict[str, list]:
    """Σ over the chunk's images of mean |P_s| (over output channels and pixels)."""
    outs = net.block_outputs(x)
    result = {}
    for col in columns:
        b, out = col.block - 1, outs[col.block - 1]
        if col.kind == "classifier":
            pooled, w = net.pooled(out), net.classifier.weight
            parts = [pooled[:, s:e] @ w[:, s:e].t() for _, s, e in col.feature_slices]
        else:
            if col.kind == "layer":
                layer = net.layers(b)[col.index - 1]
                norm, relu, conv = layer.norm1, layer.relu1, layer.conv1
            else:
                t = net.transitions[b]
                norm, relu, conv = t.norm, t.relu, t.conv
            a = relu(norm(out[:, : conv.in_channels]))
            parts = [_partial(conv, a, s, e) for _, s, e in col.slices]
        result[col.key] = [float(p.abs().flatten(1).mean(1).double().sum()) for p in parts]
    return result


def _variant_logits(
    net: _Net,
    col: Target,
    out: Tensor,
    sources: Sequence[tuple[int, int, int]],
    shared: Sequence[Tensor] = (),
) -> Tensor:
    """Logits of the chunk with each of ``sources`` cut in turn, stacked: ``[V·n, classes]``.

    ``shared``: :meth:`_Net.shared_parts` of a layer column, computed once per column."""
    b = col.block - 1
    if col.kind == "classifier":
        pooled, w = net.pooled(out), net.classifier.weight
        logits = net.classifier(pooled)
        cut = torch.cat([logits - pooled[:, s:e] @ w[:, s:e].t() for _, s, e in sources])
        return net.head_rest(cut)
    if col.kind == "transition":
        t = net.transitions[b]
        a = t.relu(t.norm(out))
        z = t.conv(a)
        cut = torch.cat([z - _partial(t.conv, a, s, e) for _, s, e in sources])
        return net.from_block(b + 1, t.pool(t.drop(cut)))
    layer = net.layers(b)[col.index - 1]
    c = layer.conv1.in_channels
    prefix = out[:, :c]
    a = layer.relu1(layer.norm1(prefix))
    z = layer.conv1(a)
    new = layer.drop1(torch.cat([z - _partial(layer.conv1, a, s, e) for _, s, e in sources]))
    if layer.bottleneck:
        new = layer.drop2(layer.conv2(layer.relu2(layer.norm2(new))))
    if not shared:
        shared = net.shared_parts(b, prefix, col.index)
    rest = net.rest_of_block(b, c, new, col.index, shared[:-1])
    return net.after_shared_block(b, c, rest, shared[-1])


def _ablation_column(
    net: _Net,
    col: Target,
    out: Tensor,
    y: Tensor,
    base_loss: Tensor,
    base_correct: Tensor,
    loss: LossFn,
    batch_size: int,
) -> list[list[float]]:
    """Per source: Σ over the chunk of (loss cut − loss) and of (correct − correct cut)."""
    n = out.shape[0]
    per_pass = max(1, batch_size // n)
    shared: Sequence[Tensor] = ()
    if col.kind == "layer":
        c = net.layers(col.block - 1)[col.index - 1].conv1.in_channels
        shared = net.shared_parts(col.block - 1, out[:, :c], col.index)
    result = []
    for sources in _groups(col.feature_slices, per_pass):
        logits = _variant_logits(net, col, out, sources, shared)
        v = len(sources)
        losses = loss(logits, y.repeat(v)).view(v, n).double()
        correct = (logits.argmax(1) == y.repeat(v)).view(v, n)
        for i in range(v):
            result.append(
                [
                    float((losses[i] - base_loss).sum()),
                    float((base_correct.int() - correct[i].int()).sum()),
                ]
            )
    return result


def _taylor_chunk(
    model: nn.Module, columns: Sequence[Target], x: Tensor, y: Tensor, loss: LossFn
) -> dict[str, list]:
    """−Σ (∂L/∂w)·w per connection with L the chunk's summed loss (chunks add up; the
    caller divides by the number of images to get the mean loss's estimate)."""
    net = _Net(model)
    weights = {}
    for col in columns:
        b = col.block - 1
        if col.kind == "classifier":
            weights[col.key] = net.classifier.weight
        elif col.kind == "transition":
            weights[col.key] = net.transitions[b].conv.weight
        else:
            weights[col.key] = net.layers(b)[col.index - 1].conv1.weight
    params = list(weights.values())
    with torch.enable_grad():
        value = loss(model(x), y).sum()
        grads = torch.autograd.grad(value, params)
    result = {}
    for (key, w), g in zip(weights.items(), grads, strict=True):
        col = next(c for c in columns if c.key == key)
        gw = (g.double() * w.detach().double()).transpose(0, 1).reshape(w.shape[1], -1).sum(1)
        result[key] = [float(-gw[s:e].sum()) for _, s, e in col.feature_slices]
    return result


# ----------------------------------------------------------------------------- public API
def connection_table(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    metric: str,
    *,
    loss: LossFn = cross_entropy,
    chunk_size: int = 100,
    batch_size: int = 256,
    cache_dir: str | Path | None = None,
    data_key: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """A data-driven reuse table of ``model`` (a :class:`DenseNet`) on images ``x``, labels ``y``.

    ``metric`` is ``activation``, ``ablation`` or ``taylor`` (see the module docstring).
    Images run in chunks of ``chunk_size``; ablation variants are stacked so that one pass
    holds at most about ``batch_size`` images. With ``cache_dir`` the per-chunk results go
    to a JSON file keyed by the weights, ``data_key`` (what identifies the images), the
    loss and the chunking, so a rerun continues an interrupted computation.
    """
    _check_request(metric, x, y)
    model.eval()
    structure = infer_structure(model.state_dict())
    columns = structure.targets("oldest-first")
    param = next(model.parameters())
    key = _cache_key(model, x, y, metric, loss, chunk_size, param.dtype, data_key)
    store = Cache(cache_dir or None).record(metric, key, save_every_s=_SAVE_EVERY_S)
    total = len(x)
    chunks = [slice(i, min(i + chunk_size, total)) for i in range(0, total, chunk_size)]
    probe = _PROBES[metric]
    run = _ChunkRun(model, _Net(model), columns, loss, batch_size, store, probe.per_column)
    run.bar = _progress_bar(metric, run, len(chunks), progress)
    try:
        for i, rows in enumerate(chunks):
            if run.done(i) < run.per_chunk:
                saved = store.parts.setdefault(str(i), {})
                xb, yb = x[rows].to(param.device, param.dtype), y[rows].to(param.device)
                probe.run(run, xb, yb, saved)
                store.save()
    except KeyboardInterrupt:
        _save_on_interrupt(run)
        raise
    run.bar.close()
    store.save(force=True)
    return _table(metric, structure, columns, store.parts, total)


def _check_request(metric: str, x: Tensor, y: Tensor) -> None:
    if metric not in _PROBES:
        raise ValueError(f"metric must be one of {', '.join(DATA_METRICS)}, not {metric!r}")
    if len(x) == 0 or len(x) != len(y):
        raise ProbeError(f"need images with one label each, got {len(x)} images, {len(y)} labels")


def _cache_key(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    metric: str,
    loss: LossFn,
    chunk_size: int,
    dtype: torch.dtype,
    data_key: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """What identifies a computation: weights, images, loss, chunking and precision."""
    return {
        "version": _CACHE_VERSION,
        "metric": metric,
        "weights": state_hash(model.state_dict()),
        "data": dict(data_key) if data_key is not None else _tensor_key(x, y),
        "loss": getattr(loss, "__name__", repr(loss)),
        "chunk_size": chunk_size,
        "dtype": str(dtype),
    }


@dataclass
class _ChunkRun:
    """One connection_table computation: the model run piece by piece, its columns, the
    store of finished chunks and the progress bar."""

    model: nn.Module
    net: _Net
    columns: Sequence[Target]
    loss: LossFn
    batch_size: int
    store: Record
    per_column: bool  # progress counts target columns (ablation, the long one), not chunks
    bar: Any = None

    @property
    def per_chunk(self) -> int:
        """Progress units per chunk of images."""
        return len(self.columns) if self.per_column else 1

    def done(self, i: int) -> int:
        """Progress units of chunk ``i`` already in the store."""
        saved = self.store.parts.get(str(i), {})
        if self.per_column:
            return sum(c.key in saved for c in self.columns)
        return int(bool(saved))


def _progress_bar(metric: str, run: _ChunkRun, chunks: int, progress: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=chunks * run.per_chunk,
        initial=sum(run.done(i) for i in range(chunks)),
        desc=metric,
        unit="column" if run.per_column else "chunk",
        disable=not progress,
        dynamic_ncols=True,
    )


def _save_on_interrupt(run: _ChunkRun) -> None:
    from tqdm import tqdm

    run.store.save(force=True)
    run.bar.close()
    if run.store.path is not None:
        tqdm.write(f"interrupted; results so far are in {run.store.path}: rerun to continue")


def _run_taylor(run: _ChunkRun, x: Tensor, y: Tensor, saved: dict[str, Any]) -> None:
    saved.update(_taylor_chunk(run.model, run.columns, x, y, run.loss))
    run.bar.update(1)


def _run_activation(run: _ChunkRun, x: Tensor, y: Tensor, saved: dict[str, Any]) -> None:
    with torch.inference_mode():
        saved.update(_activation_chunk(run.net, run.columns, x))
    run.bar.update(1)


def _run_ablation(run: _ChunkRun, x: Tensor, y: Tensor, saved: dict[str, Any]) -> None:
    with torch.inference_mode():
        _ablation_chunk(
            run.net, run.columns, x, y, run.loss, run.batch_size, saved, run.bar, run.store
        )


def _tensor_key(x: Tensor, y: Tensor) -> dict[str, Any]:
    h = hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes())
    h.update(y.detach().cpu().contiguous().numpy().tobytes())
    return {"images": len(x), "sha256": h.hexdigest()}


def _ablation_chunk(
    net: _Net,
    columns: Sequence[Target],
    x: Tensor,
    y: Tensor,
    loss: LossFn,
    batch_size: int,
    saved: dict[str, Any],
    bar: Any,
    store: Record,
) -> None:
    outs = net.block_outputs(x)
    logits = net.after_block(len(outs) - 1, outs[-1])
    base_loss = loss(logits, y).double()
    base_correct = logits.argmax(1) == y
    saved["base"] = [float(base_loss.sum()), int(base_correct.sum())]
    for col in columns:
        if col.key in saved:
            continue
        out = outs[col.block - 1]
        saved[col.key] = _ablation_column(
            net, col, out, y, base_loss, base_correct, loss, batch_size
        )
        bar.update(1)
        store.save()


@dataclass(frozen=True)
class _Probe:
    """How a data-driven metric runs: what one chunk of images adds to the saved results,
    whether progress counts target columns (ablation, the long one) or chunks, and the name
    of the second stored value per connection, if it keeps one."""

    run: Callable[[_ChunkRun, Tensor, Tensor, dict[str, Any]], None]
    per_column: bool = False
    second: str | None = None


_PROBES: dict[str, _Probe] = {
    "activation": _Probe(_run_activation),
    "ablation": _Probe(_run_ablation, per_column=True, second="accuracy_drop"),
    "taylor": _Probe(_run_taylor),
}


def _table(
    metric: str,
    structure: DenseNetStructure,
    columns: Sequence[Target],
    chunks: Mapping[str, Mapping[str, Any]],
    total: int,
) -> pd.DataFrame:
    rows, drops = [], []
    for col in columns:
        # Stored per source: [value] (activation, taylor) or [loss, accuracy] (ablation).
        sums = np.zeros((len(col.slices), 2))
        for chunk in chunks.values():
            values = np.asarray(chunk[col.key], dtype=np.float64).reshape(len(col.slices), -1)
            sums[:, : values.shape[1]] += values
        for (source, _, _), (value, drop) in zip(col.slices, sums, strict=True):
            rows.append((col.block, source, col.index, col.kind, value / total))
            drops.append(drop / total)
    second = _PROBES[metric].second
    extra = {second: drops} if second else None
    return build_table(
        rows,
        metric,
        concat_order="oldest-first",
        structure=structure.summary(),
        extra=extra,
        attrs={"images": total},
    )


def probe_table(
    metric: str,
    state_dict: Mapping[str, Tensor],
    structure: DenseNetStructure,
    checkpoint: Any = None,
    settings: ProbeSettings | None = None,
    *,
    progress: bool = True,
) -> pd.DataFrame:
    """A data-driven reuse table for loaded weights, on the images ``settings`` describe.

    The model is rebuilt (:func:`runnable_model`), the images are a fixed random subset of
    the data set's split (default: the training split of the data set recorded in the
    checkpoint), and results are cached under ``settings.cache_dir``.
    """
    settings = settings or ProbeSettings()
    return probe_tables([metric], state_dict, structure, checkpoint, settings, progress=progress)[
        metric
    ]


@dataclass
class ProbeSetup:
    """The runnable model on its device and the data set it runs on: built once, shared by
    the data-driven metrics and by commands that go on to evaluate the model (prune)."""

    model: nn.Module
    data: Any  # a reuse_analysis.data.DataSet
    device: torch.device


def probe_setup(
    state_dict: Mapping[str, Tensor],
    structure: DenseNetStructure,
    checkpoint: Any = None,
    settings: ProbeSettings | None = None,
) -> ProbeSetup:
    """Rebuild the model (:func:`runnable_model`), load its data set and move it to the
    settings' device."""
    from reuse_analysis.runtime import pick_device

    settings = settings or ProbeSettings()
    model = runnable_model(state_dict, structure, checkpoint)
    ds = load_data(
        model, checkpoint, settings.dataset, settings.data_dir, mean=settings.mean, std=settings.std
    )
    device = pick_device(settings.device)
    return ProbeSetup(model.to(device), ds, device)


def probe_inputs(
    state_dict: Mapping[str, Tensor],
    structure: DenseNetStructure,
    checkpoint: Any = None,
    settings: ProbeSettings | None = None,
    setup: ProbeSetup | None = None,
) -> tuple[nn.Module, Tensor, Tensor, dict[str, Any]]:
    """The runnable model (on the settings' device), the images, their labels, and the
    record that identifies the images in the cache (``setup``: reuse a built model)."""
    settings = settings or ProbeSettings()
    if settings.images < 1 or settings.batch_size < 1 or settings.chunk_size < 1:
        raise ProbeError("--images, --batch-size and the chunk size must be positive")
    setup = setup or probe_setup(state_dict, structure, checkpoint, settings)
    ds = setup.data
    x, y = probe_images(ds, settings.split, settings.images)
    data_key = {
        "dataset": ds.name,
        "split": settings.split,
        "images": len(x),
        "mean": list(ds.mean),
        "std": list(ds.std),
    }
    return setup.model, x, y, data_key


def probe_tables(
    metrics: Sequence[str],
    state_dict: Mapping[str, Tensor],
    structure: DenseNetStructure,
    checkpoint: Any = None,
    settings: ProbeSettings | None = None,
    *,
    progress: bool = True,
) -> dict[str, pd.DataFrame]:
    """Several data-driven tables sharing one model and one set of images."""
    settings = settings or ProbeSettings()
    model, x, y, data_key = probe_inputs(state_dict, structure, checkpoint, settings)
    return {m: measured_table(m, model, x, y, data_key, settings, progress) for m in metrics}


def measured_table(
    metric: str,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    data_key: Mapping[str, Any],
    settings: ProbeSettings,
    progress: bool = True,
) -> pd.DataFrame:
    """:func:`connection_table` as the settings ask, with the images it saw in ``attrs``."""
    df = connection_table(
        model,
        x,
        y,
        metric,
        chunk_size=settings.chunk_size,
        batch_size=settings.batch_size,
        cache_dir=settings.cache_path(),
        data_key=data_key,
        progress=progress,
    )
    df.attrs.update(dataset=data_key["dataset"], split=settings.split, images=len(x))
    return df


__all__ = [
    "SPLITS",
    "LossFn",
    "ProbeError",
    "ProbeSettings",
    "ProbeSetup",
    "config_from_structure",
    "connection_table",
    "cross_entropy",
    "load_data",
    "measured_table",
    "probe_images",
    "probe_inputs",
    "probe_setup",
    "probe_table",
    "probe_tables",
    "runnable_model",
    "state_hash",
]
