"""A runnable model from any DenseNet checkpoint the structure inference understands.

The rebuild is made from the checkpoint's own tensors: every key is mapped onto a module
named as in the toolkit's :class:`~reuse_analysis.models.DenseNet` (torchvision's names),
channels of newest-first concatenations are permuted into oldest-first order (a
concatenation order is a permutation of the channels every later layer reads, so the
permuted network computes exactly what the original did), and where the result fits the
toolkit's DenseNet — whose fused blocks the data-driven metrics rely on — that is what is
returned. Anything else (a deep stem, a stem with its own norm, convolution biases, widths
that are no multiple of k, a head on a flattened map, an MLP head) becomes a
:class:`RebuiltDenseNet` of the same building blocks.

What weights cannot say is checked on data: :func:`verify` runs a batch through the
rebuild and compares the per-channel statistics each batch norm sees with the running
statistics the checkpoint stores. A wrong rebuild (a wrong concatenation order, say) or a
wrong input normalisation shows up there, and is refused with the batch norm that did not
match and by how much.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reuse_analysis.concat_order import detect_concat_order
from reuse_analysis.errors import ReuseAnalysisError
from reuse_analysis.models.densenet import DenseNetParts, parts_from_feature_info
from reuse_analysis.structure import (
    ConcatOrder,
    DenseBlock,
    DenseNetStructure,
    source_slices,
)

#: Batch norms whose batch statistics differ more than this from their running ones fail
#: the check: the median over channels of |batch mean − running mean| / running std …
MAX_MEAN_SHIFT = 0.3
#: … or of |log(batch variance / running variance)| (0.26: a factor 1.3 in variance).
MAX_LOG_VAR_RATIO = 0.26
_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var")


class RebuildError(ReuseAnalysisError):
    """Weights that cannot be rebuilt into a runnable model, or a rebuild that does not fit."""


# ----------------------------------------------------------------------------- the module
@dataclass(frozen=True)
class RebuiltConfig:
    """What a :class:`RebuiltDenseNet` was built for (a model rebuilt from weights alone)."""

    block_config: tuple[int, ...]
    in_channels: int
    num_classes: int
    stem: str  # "cifar" (stride 1, no pooling) or "imagenet" (stride-2 conv, max-pool)
    head_positions: int  # map positions per channel the first Linear reads (1: pooled)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rebuilt_from_weights": True,
            "block_config": list(self.block_config),
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "stem": self.stem,
            "head_positions": self.head_positions,
        }


class RebuiltDenseNet(nn.Module):
    """A DenseNet rebuilt from a checkpoint whose layout the toolkit's DenseNet cannot hold.

    Same names as the toolkit's model (``features.conv0 … denseblock{b}.denselayer{l} …
    transition{b} … norm5``, ``classifier``) so that the data-driven metrics run it piece
    by piece; ``classifier`` is the first Linear of the head, which reads the last block's
    features pooled to ``head_pool`` and flattened; ``head_rest`` holds what follows it
    (ReLU, 1-D norms and Linears of an MLP head; empty for a single Linear).
    """

    def __init__(
        self,
        config: RebuiltConfig,
        features: nn.Sequential,
        classifier: nn.Linear,
        head_rest: nn.Sequential,
        head_pool: tuple[int, int],
    ) -> None:
        super().__init__()
        self.config = config
        self.features = features
        self.classifier = classifier
        self.head_rest = head_rest
        self.head_pool = head_pool

    @property
    def head_positions(self) -> int:
        return self.head_pool[0] * self.head_pool[1]

    def pool_head(self, a: Tensor) -> Tensor:
        """Pool the last block's (normalised, rectified) map to ``head_pool``: as
        ``avg_pool2d(k)`` with ``k = side // target`` (what public CIFAR code writes, e.g.
        ``avg_pool2d(out, 4)``), which equals adaptive pooling wherever the side divides."""
        h, w = a.shape[-2:]
        th, tw = self.head_pool
        kh, kw = max(1, h // th), max(1, w // tw)
        if (h // kh, w // kw) == (th, tw):
            return F.avg_pool2d(a, (kh, kw))
        return F.adaptive_avg_pool2d(a, self.head_pool)

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """What the model is made of, forward order, as the toolkit's DenseNet describes
        itself (``module`` and ``kind``: stem, block, transition, head_norm, classifier)."""
        info = []
        for name in self.features._modules:
            kind = (
                "block" if name.startswith("denseblock")
                else "transition" if name.startswith("transition")
                else "head_norm" if name == "norm5"
                else "stem"
            )  # fmt: skip
            info.append({"module": f"features.{name}", "kind": kind})
        return [*info, {"module": "classifier", "kind": "classifier"}]

    def parts(self) -> DenseNetParts:
        """The modules by role, with the head's pooling, positions and the rest of the head
        (what the data-driven metrics run piece by piece)."""
        return parts_from_feature_info(
            self, pool=self.pool_head, positions=self.head_positions, head_rest=self.head_rest
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.pool_head(F.relu(self.features(x)))
        return self.head_rest(self.classifier(torch.flatten(out, 1)))


# ----------------------------------------------------------------------------- key mapping
def _order_permutation(c0: int, k: int, sources: int, order: ConcatOrder) -> Tensor:
    """Index ``perm`` with ``oldest_first_tensor = tensor[perm]`` along the channel axis."""
    perm = torch.empty(c0 + k * (sources - 1), dtype=torch.long)
    new = {s: (a, b) for s, a, b in source_slices(c0, k, sources, order)}
    for s, a, b in source_slices(c0, k, sources, "oldest-first"):
        perm[a:b] = torch.arange(*new[s])
    return perm


class _Mapper:
    """Collects ``rebuilt key → tensor`` from the checkpoint, remembering where each came
    from (for the batch-norm check's messages) and which keys were used."""

    def __init__(self, state_dict: Mapping[str, Tensor]) -> None:
        self.sd = state_dict
        self.out: dict[str, Tensor] = {}
        self.source: dict[str, str] = {}  # rebuilt module → checkpoint module
        self.used: set[str] = set()

    def has(self, module: str | None, suffix: str = "weight") -> bool:
        return module is not None and f"{module}.{suffix}" in self.sd

    def take(self, dst: str, src: str, perm: Tensor | None = None, dim: int = 1) -> None:
        """Copy every tensor of module ``src`` to module ``dst`` (permuted along ``dim``)."""
        self.source[dst] = src
        norm = self.sd[f"{src}.weight"].dim() == 1
        for suffix in (*_BN_SUFFIXES, "num_batches_tracked"):
            key = f"{src}.{suffix}"
            if key not in self.sd:
                continue
            t = self.sd[key]
            # A norm's tensors are per input channel; a conv's or Linear's bias per output.
            if perm is not None and ((norm and t.dim() == 1) or (suffix == "weight" and not norm)):
                t = t.index_select(0 if norm else dim, perm)
            self.out[f"{dst}.{suffix}"] = t
            self.used.add(key)

    def identity_norm(self, dst: str, width: int, like: Tensor) -> None:
        """A batch norm that passes its input through unchanged (where the file has none)."""
        eps = 1e-5
        self.out[f"{dst}.weight"] = torch.ones(width, dtype=like.dtype)
        self.out[f"{dst}.bias"] = torch.zeros(width, dtype=like.dtype)
        self.out[f"{dst}.running_mean"] = torch.zeros(width, dtype=like.dtype)
        self.out[f"{dst}.running_var"] = torch.full((width,), 1 - eps, dtype=like.dtype)
        self.out[f"{dst}.num_batches_tracked"] = torch.tensor(0)


def _block_perm(block: DenseBlock, target: int, order: ConcatOrder) -> Tensor | None:
    if order == "oldest-first" or target == 1:
        return None
    return _order_permutation(block.in_channels, block.growth_rate, target, order)


def _positions_perm(perm: Tensor | None, positions: int) -> Tensor | None:
    """A channel permutation spread over a flattened map of ``positions`` per channel."""
    if perm is None or positions == 1:
        return perm
    return (perm[:, None] * positions + torch.arange(positions)[None, :]).reshape(-1)


def _conv(weight: Tensor, bias: bool, stride: int = 1) -> nn.Conv2d:
    out, cin, kh, kw = weight.shape
    return nn.Conv2d(cin, out, (kh, kw), stride=stride, padding=(kh // 2, kw // 2), bias=bias)


def _bn(sd: Mapping[str, Tensor], module: str, dims: int = 2) -> nn.Module:
    width = sd[f"{module}.weight"].numel()
    return nn.BatchNorm2d(width) if dims == 2 else nn.BatchNorm1d(width)


def _norm_in(
    sd: Mapping[str, Tensor], scope: str, width: int, exclude: Sequence[str | None]
) -> str | None:
    """A batch norm of ``width`` channels under module ``scope`` (natural order first)."""
    from reuse_analysis.structure import _natural_key

    prefix = f"{scope}." if scope else ""
    found = [
        k.removesuffix(".weight")
        for k, v in sd.items()
        if k.startswith(prefix)
        and k.endswith(".weight")
        and v.dim() == 1
        and v.numel() == width
        and f"{k.removesuffix('weight')}running_var" in sd
        and k.removesuffix(".weight") not in exclude
    ]
    return min(found, key=_natural_key) if found else None


def _stem_norms(
    sd: Mapping[str, Tensor], structure: DenseNetStructure, taken: set[str]
) -> list[str | None]:
    """The batch norm right after each stem conv (same parent, next in name order), if any."""
    from reuse_analysis.structure import _natural_key

    stem = structure.stem
    norms: list[str | None] = []
    for i, conv in enumerate(stem):
        parent, _, leaf = conv.module.rpartition(".")
        after = _natural_key(conv.key)
        before = _natural_key(stem[i + 1].key) if i + 1 < len(stem) else None
        found = [
            k.removesuffix(".weight")
            for k, v in sd.items()
            if k.endswith(".weight")
            and v.dim() == 1
            and v.numel() == conv.out_channels
            and f"{k.removesuffix('weight')}running_var" in sd
            and k.removesuffix(".weight").rpartition(".")[0] == parent
            and k.removesuffix(".weight") not in taken
        ]
        # conv0 ↔ norm0 (torchvision, timm); else the next module by index (Sequential).
        number = _trailing_number(leaf)
        paired = [n for n in found if number is not None and _trailing_number(n) == number]
        between = [
            n
            for n in found
            if _natural_key(n) > after and (before is None or _natural_key(n) < before)
        ]
        pick = paired or between
        norms.append(min(pick, key=_natural_key) if pick else None)
        taken = taken | set(pick[:1])
    return norms


def _trailing_number(name: str) -> str | None:
    digits = len(name) - len(name.rstrip("0123456789"))
    return name[-digits:] if digits and not name[:-digits].endswith(".") else None


def _features(
    m: _Mapper, structure: DenseNetStructure, order: ConcatOrder
) -> tuple[nn.Sequential, str]:
    """The ``features`` Sequential (stem, blocks, transitions, norm5) and the stem kind."""
    from reuse_analysis.models.densenet import _DenseBlock, _Transition

    sd = m.sd
    if not structure.stem:
        raise RebuildError("no stem convolution was found, so the input layer is unknown")
    taken = {layer.norm for b in structure.blocks for layer in b.layers}
    taken |= {t.norm for t in structure.transitions}
    head = structure.classifier
    taken |= {head.norm} if head is not None else set()
    stem_norms = _stem_norms(sd, structure, {n for n in taken if n})
    imagenet = structure.stem[0].kernel[0] >= 7 or (len(structure.stem) > 1 and all(stem_norms))
    mods: list[tuple[str, nn.Module]] = []
    for i, (conv, norm) in enumerate(zip(structure.stem, stem_norms, strict=True)):
        w = sd[conv.key]
        stride = 2 if imagenet and i == 0 else 1
        mods.append((f"conv{i}", _conv(w, m.has(conv.module, "bias"), stride)))
        m.take(f"features.conv{i}", conv.module)
        if norm is not None:
            mods += [(f"norm{i}", _bn(sd, norm)), (f"relu{i}", nn.ReLU(inplace=True))]
            m.take(f"features.norm{i}", norm)
    if imagenet:
        mods.append(("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)))
    features = nn.Sequential(OrderedDict(mods))
    for block in structure.blocks:
        features.add_module(f"denseblock{block.index}", _dense_block(m, block, order, _DenseBlock))
        if block.extra_kind == "transition":
            t = block.extra
            conv = t.weight_key.removesuffix(".weight")
            trans = _Transition(t.in_channels, t.out_channels)
            trans.conv = _conv(sd[t.weight_key], m.has(conv, "bias"))
            perm = _block_perm(block, block.num_layers + 1, order)
            name = f"features.transition{block.index}"
            _take_norm(m, f"{name}.norm", t.norm, perm, t.weight_key)
            m.take(f"{name}.conv", conv, perm)
            features.add_module(f"transition{block.index}", trans)
    last = structure.blocks[-1]
    features.add_module("norm5", nn.BatchNorm2d(last.out_channels))
    norm5 = head.norm if head is not None else None
    if norm5 is not None:
        perm = _block_perm(last, last.num_layers + 1, order)
        m.take("features.norm5", norm5, perm)
    else:
        m.identity_norm("features.norm5", last.out_channels, sd[last.layers[0].first_conv.key])
    return features, "imagenet" if imagenet else "cifar"


def _take_norm(m: _Mapper, dst: str, src: str | None, perm: Tensor | None, what: str) -> None:
    if src is None or not m.has(src, "running_var"):
        raise RebuildError(
            f"no batch norm with running statistics was found in front of {what}; only "
            "DenseNets with a BN-ReLU-conv layer can be rebuilt"
        )
    m.take(dst, src, perm)


def _dense_block(m: _Mapper, block: DenseBlock, order: ConcatOrder, cls: type) -> nn.Module:
    sd = m.sd
    k = block.growth_rate
    widths = {layer.bottleneck_width for layer in block.layers}
    width = widths.pop() if len(widths) == 1 else None
    bn_size = 1 if width else 0
    built = cls(block.num_layers, block.in_channels, bn_size, k, 0.0)
    fused = True
    for layer, mod in zip(block.layers, built.values(), strict=True):
        name = f"features.denseblock{block.index}.denselayer{layer.index}"
        perm = _block_perm(block, layer.index, order)
        if len(layer.convs) > 2:
            raise RebuildError(
                f"`{layer.name}` chains {len(layer.convs)} convolutions; only plain (one) "
                "and bottleneck (two) dense layers can be rebuilt"
            )
        if bool(layer.bottleneck_width) != mod.bottleneck:
            raise RebuildError(f"the layers of block {block.index} mix plain and bottleneck")
        first = layer.convs[0]
        mod.conv1 = _conv(sd[first.key], m.has(first.module, "bias"))
        _take_norm(m, f"{name}.norm1", layer.norm, perm, first.key)
        m.take(f"{name}.conv1", first.module, perm)
        fused &= first.kernel == ((1, 1) if mod.bottleneck else (3, 3))
        fused &= not m.has(first.module, "bias")
        if mod.bottleneck:
            second = layer.convs[1]
            norm2 = _norm_in(sd, layer.name, second.in_channels, [layer.norm])
            mod.norm2 = nn.BatchNorm2d(second.in_channels)
            mod.conv2 = _conv(sd[second.key], m.has(second.module, "bias"))
            _take_norm(m, f"{name}.norm2", norm2, None, second.key)
            m.take(f"{name}.conv2", second.module)
            fused &= second.kernel == (3, 3) and not m.has(second.module, "bias")
    # The fused block assumes the toolkit's kernels and no biases.
    built.fused = fused
    return built


def _head(
    m: _Mapper, structure: DenseNetStructure, order: ConcatOrder
) -> tuple[nn.Linear, nn.Sequential, tuple[int, int]]:
    """The first Linear (input permuted into oldest-first order), the rest of the head, and
    the map size the last block's output is pooled to."""
    head = structure.classifier
    if head is None:
        raise RebuildError("no classifier reads the last block's features, so nothing to run")
    side = math.isqrt(head.positions)
    if side * side != head.positions:
        raise RebuildError(
            f"the classifier {head.key} reads {head.positions} positions per channel, which "
            "is no square map"
        )
    last = structure.blocks[-1]
    perm = _positions_perm(_block_perm(last, last.num_layers + 1, order), head.positions)
    first = nn.Linear(head.in_features, head.layers[0].out_features, bias=m.has(head.name, "bias"))
    m.take("classifier", head.name, perm)
    rest: list[nn.Module] = []
    for layer in head.layers[1:]:
        i = len(rest)
        if layer.kind == "norm":
            rest.append(_bn(m.sd, layer.name, dims=1))
            m.take(f"head_rest.{i}", layer.name)
            continue
        rest.append(nn.ReLU())
        i += 1
        rest.append(
            nn.Linear(layer.in_features, layer.out_features, bias=m.has(layer.name, "bias"))
        )
        m.take(f"head_rest.{i}", layer.name)
    # Linear [→ BN1d] → ReLU → Linear …: what weights cannot show (the activation) is ReLU.
    return first, nn.Sequential(*rest), (side, side)


def rebuild(
    state_dict: Mapping[str, Tensor],
    structure: DenseNetStructure,
    order: ConcatOrder | None = None,
) -> nn.Module:
    """A model in eval mode that computes what the checkpoint's network computed.

    ``order`` is the concatenation order (None: read it off the batch-norm statistics by
    :func:`reuse_analysis.concat_order.detect_concat_order`, oldest-first when they do not
    decide). The toolkit's :class:`DenseNet` when the mapped
    weights load into it strictly, else a :class:`RebuiltDenseNet`. Every rebuilt module
    remembers the checkpoint module it came from (``model.rebuilt_from``), which
    :func:`verify` names. Raises RebuildError for layouts that cannot be run.
    """
    decision = detect_concat_order(state_dict, structure)
    order = order or decision.order
    m = _Mapper(state_dict)
    features, stem = _features(m, structure, order)
    first, rest, pool = _head(m, structure, order)
    head = structure.classifier
    assert head is not None
    config = RebuiltConfig(
        block_config=tuple(b.num_layers for b in structure.blocks),
        in_channels=structure.stem[0].in_channels,
        num_classes=head.num_classes,
        stem=stem,
        head_positions=head.positions,
    )
    model: nn.Module = RebuiltDenseNet(config, features, first, rest, pool)
    mapped = dict(m.out)
    toolkit = _toolkit_model(mapped, structure)
    if toolkit is not None:
        model = toolkit
    else:
        _load(model, mapped)
    model.rebuilt_from = dict(m.source)  # type: ignore[assignment]
    model.concat_order = order  # type: ignore[assignment]
    model.concat_order_detected = decision.detected is not None  # type: ignore[assignment]
    return model.eval()


def _load(model: nn.Module, mapped: Mapping[str, Tensor]) -> None:
    try:
        model.load_state_dict(dict(mapped), strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise RebuildError(
            f"the rebuilt model does not take the checkpoint's weights ({first})"
        ) from None


def _toolkit_model(mapped: Mapping[str, Tensor], structure: DenseNetStructure) -> nn.Module | None:
    """The toolkit's DenseNet holding ``mapped``, when it can (its fused fast paths)."""
    from reuse_analysis.models import DenseNet
    from reuse_analysis.probes import ProbeError, config_from_structure

    try:
        model = DenseNet(config_from_structure(structure))
        model.load_state_dict(dict(mapped), strict=True)
    except (ProbeError, RuntimeError, ValueError):
        return None
    return model


# ----------------------------------------------------------------------------- verification
@dataclass(frozen=True)
class NormFit:
    """How the statistics one batch norm sees on data compare with its running ones."""

    name: str  # the checkpoint's module name
    mean_shift: float  # median over channels of |batch − running mean| / running std
    log_var_ratio: float  # median over channels of |log(batch var / running var)|

    @property
    def fits(self) -> bool:
        return self.mean_shift <= MAX_MEAN_SHIFT and self.log_var_ratio <= MAX_LOG_VAR_RATIO

    def describe(self) -> str:
        return (
            f"`{self.name}` sees channel means {self.mean_shift:.2f} running std away from "
            f"its running means and variances {math.exp(self.log_var_ratio):.2f}× off "
            f"(median over channels; a fit is ≤ {MAX_MEAN_SHIFT} and "
            f"≤ {math.exp(MAX_LOG_VAR_RATIO):.2f}×)"
        )


def norm_fits(model: nn.Module, x: Tensor) -> list[NormFit]:
    """Batch statistics against running statistics for every batch norm of ``model`` that
    holds trained statistics (untrained defaults, mean 0 and variance 1, say nothing)."""
    names = getattr(model, "rebuilt_from", {})
    found: list[tuple[str, nn.modules.batchnorm._BatchNorm]] = [
        (n, mod)
        for n, mod in model.named_modules()
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.track_running_stats
    ]
    seen: dict[str, tuple[Tensor, Tensor]] = {}

    def hook(name: str):
        def record(_mod: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            a = inputs[0].detach().double()
            dims = [0, *range(2, a.dim())]
            seen[name] = a.mean(dims), a.var(dims, unbiased=False)

        return record

    handles = [mod.register_forward_pre_hook(hook(n)) for n, mod in found]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    fits = []
    for n, mod in found:
        if n not in seen or _untrained(mod):
            continue
        mean, var = seen[n]
        rm, rv = mod.running_mean.double(), mod.running_var.double()
        floor = mod.eps + 1e-3 * float(rv.mean())
        shift = ((mean - rm).abs() / (rv + floor).sqrt()).median()
        ratio = ((var + floor) / (rv + floor)).log().abs().median()
        fits.append(NormFit(names.get(n, n), float(shift), float(ratio)))
    return fits


def _untrained(mod: nn.modules.batchnorm._BatchNorm) -> bool:
    return bool((mod.running_mean == 0).all() and (mod.running_var == 1).all()) or bool(
        (mod.running_var == 1 - mod.eps).all() and (mod.running_mean == 0).all()
    )


@dataclass(frozen=True)
class Verdict:
    """The batch-norm check of one rebuild on one normalisation of the data."""

    fits: tuple[NormFit, ...]
    augmented: bool = False  # measured on randomly cropped (zero-padded) and flipped images

    @property
    def ok(self) -> bool:
        return all(f.fits for f in self.fits)

    @property
    def misfits(self) -> list[NormFit]:
        return [f for f in self.fits if not f.fits]

    @property
    def first_fits(self) -> bool:
        """Whether the first batch norm (the one the input normalisation shows in) fits."""
        return not self.fits or self.fits[0].fits


def verify(
    model: nn.Module,
    images: Any,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    alternatives: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    label: str = "the data's normalisation",
    where: str = "the checkpoint",
    first_only: bool = False,
) -> str:
    """Refuse (RebuildError) a rebuild whose batch norms do not see what they were trained
    on with this normalisation; return a one-line note on what matched otherwise.

    ``images`` is an image split (``.batch(idx, mean, std)``), of which a fixed 256 (fewer
    when they are large) are used. When the first batch norm does not fit, each of ``alternatives``
    (``name → (mean, std)``) is tried, and the message names those that fit.
    ``first_only`` compares the first batch norm alone (the input normalisation): for a
    pruned checkpoint, whose later norms kept the statistics of the unpruned network.
    """
    note, _, _ = choose_normalisation(
        model, images, [(label, mean, std)], alternatives=alternatives, where=where,
        first_only=first_only,
    )  # fmt: skip
    return note


def choose_normalisation(
    model: nn.Module,
    images: Any,
    choices: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    *,
    alternatives: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    where: str = "the checkpoint",
    first_only: bool = False,
) -> tuple[str, tuple[float, ...], tuple[float, ...]]:
    """The first of ``choices`` (``(label, mean, std)``, in order of preference) with which
    every batch norm fits, with the note that says so; raise RebuildError when none does
    (naming which of ``alternatives`` would) or when the input fits but a later norm does
    not (the rebuild itself is wrong)."""
    from reuse_analysis.runtime import eval_subset

    subset = eval_subset(images, _check_images(images))
    idx = torch.arange(len(subset))
    param = next(model.parameters())

    # Models trained with the "+" augmentation (random crops of zero-padded images) keep
    # running statistics of padded images: a batch of those, as well as a plain one, is
    # compared, and the batch norms fit when they fit either.
    augment = [False, True] if hasattr(subset, "images") else [False]

    def check(m: Sequence[float], s: Sequence[float]) -> Verdict:
        verdicts = []
        for aug in augment:
            g = torch.Generator().manual_seed(0)
            x = subset.batch(idx, tuple(m), tuple(s), augment=aug, generator=g)
            fits = tuple(norm_fits(model, x.to(param.device, param.dtype)))
            verdicts.append(Verdict(fits[:1] if first_only else fits, aug))
        return next(
            (v for v in verdicts if v.ok),
            next((v for v in verdicts if v.first_fits), verdicts[0]),
        )

    failed: list[tuple[str, NormFit]] = []
    for label, mean, std in choices:
        verdict = check(mean, std)
        if not verdict.fits:
            note = f"batch-norm check: {where} holds untrained statistics; nothing to compare"
            return note, tuple(mean), tuple(std)
        if verdict.ok:
            return _fit_note(verdict, label, first_only, failed), tuple(mean), tuple(std)
        bad = verdict.misfits
        if verdict.first_fits:
            raise RebuildError(
                f"{where}: the rebuilt network does not compute what the original did — "
                f"{len(bad)} of {len(verdict.fits)} batch norms do not see the statistics "
                f"they were trained on, first {bad[0].describe()}; the layout was misread "
                f"(concat order {getattr(model, 'concat_order', 'oldest-first')}), or the "
                "data is not what the model was trained on"
            )
        failed.append((label, bad[0]))
    tried = {(tuple(m), tuple(s)) for _, m, s in choices}
    fitting = [
        f"{name} (--mean {_csv(m)} --std {_csv(s)})"
        for name, (m, s) in (alternatives or {}).items()
        if (tuple(m), tuple(s)) not in tried and check(m, s).first_fits
    ]
    advice = (
        f"with {' or '.join(fitting)} it fits"
        if fitting
        else "none of the usual normalisations fits either: pass the one the model was "
        "trained with as --mean/--std"
    )
    (label, bad), *others = failed
    nor = "".join(f", nor with {other}" for other, _ in others)
    raise RebuildError(
        f"{where}: the input normalisation does not match — with {label} "
        f"{bad.describe()}{nor}; {advice}"
    )


def _check_images(images: Any) -> int:
    """How many images the check runs: 256 at 32×32, fewer for larger images (at least 32;
    a 224-pixel image has 49 times the pixels, each a sample of every channel)."""
    if hasattr(images, "images"):
        side = int(images.images.shape[-1]) * int(images.images.shape[-2])
    else:
        side = int(getattr(images, "size", 224)) ** 2
    return max(32, min(256, 256 * 1024 // max(1, side)))


def _fit_note(
    verdict: Verdict, label: str, first_only: bool, failed: Sequence[tuple[str, NormFit]]
) -> str:
    worst = max(verdict.fits, key=lambda f: f.mean_shift + f.log_var_ratio)
    which = (
        f"the first batch norm ({worst.name}) sees the statistics it was trained on"
        if first_only
        else f"all {len(verdict.fits)} batch norms see the statistics they were trained on"
    )
    on = " on randomly cropped and flipped images" if verdict.augmented else ""
    note = (
        f"batch-norm check: {which} with {label}{on} (worst: {worst.name}, mean shift "
        f"{worst.mean_shift:.2f}, variance {math.exp(worst.log_var_ratio):.2f}×)"
    )
    if first_only:
        note += "; later ones keep the unpruned network's statistics"
    for other, bad in failed:
        note += f"; with {other} {bad.describe()}, so {label} are used"
    return note


def _csv(values: Sequence[float]) -> str:
    return ",".join(f"{v:.4g}" for v in values)


def normalisations(ds: Any, recorded: tuple[Sequence[float], Sequence[float]] | None) -> dict:
    """Candidate input normalisations for the data set ``ds``, by name."""
    from reuse_analysis.data import _STATS, ImageData, _stats

    c = ds.in_channels
    out: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {}
    if recorded is not None:
        out["the recorded statistics"] = (tuple(recorded[0]), tuple(recorded[1]))
    usual = _STATS.get(ds.name)
    if usual is not None:
        out[f"{ds.name}'s usual statistics"] = usual
    if isinstance(ds.train, ImageData) and len(ds.train):
        out["the data set's own statistics"] = _stats(ds.train)
    if c == 3:
        out["the ImageNet statistics"] = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        # kuangliu/pytorch-cifar's widely copied CIFAR statistics (a smaller std).
        out["pytorch-cifar's statistics"] = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    out["mean 0.5, std 0.5"] = ((0.5,) * c, (0.5,) * c)
    out["no normalisation (mean 0, std 1)"] = ((0.0,) * c, (1.0,) * c)
    return out


def check_on_data(
    model: nn.Module,
    ds: Any,
    meta: Mapping[str, Any],
    where: str,
    *,
    given: bool = False,
) -> str:
    """Verify a model rebuilt from weights on ``ds`` and settle its input normalisation:
    --mean/--std when ``given`` (``ds.mean/std`` hold them), else the recorded statistics,
    else the data set's usual ones — the first with which the batch norms fit, which
    ``ds.mean/std`` then hold. Prints the verdict on stderr and returns it; raises
    RebuildError when the rebuild or every allowed normalisation does not fit.

    The training split is used (what the running statistics were gathered on), the test
    split when there is none.
    """
    import sys

    recorded = meta.get("dataset") if isinstance(meta.get("dataset"), Mapping) else {}
    rec = (recorded["mean"], recorded["std"]) if recorded.get("mean") else None
    candidates = normalisations(ds, rec)
    if given:
        choices = [("--mean/--std", tuple(ds.mean), tuple(ds.std))]
    else:
        allowed = [name for name in candidates if name.startswith("the recorded")]
        allowed.append(_usual_name(ds, candidates))
        choices = [(name, *candidates[name]) for name in allowed]
    split = ds.train if ds.train is not None and len(ds.train) else ds.test
    note, mean, std = choose_normalisation(
        model, split, choices, alternatives=candidates, where=where,
        first_only=bool(meta.get("prune")),
    )  # fmt: skip
    ds.mean, ds.std = mean, std
    print(note, file=sys.stderr)
    return note


def _usual_name(ds: Any, candidates: Mapping[str, Any]) -> str:
    """The candidate that is the data set's usual normalisation (its well-known statistics,
    else those of its own training images)."""
    for name in (f"{ds.name}'s usual statistics", "the data set's own statistics"):
        if name in candidates:
            return name
    return "the ImageNet statistics"  # image folders of large images


def model_weights(
    model: nn.Module, state_dict: Mapping[str, Tensor], structure: DenseNetStructure
) -> tuple[dict[str, Tensor], DenseNetStructure]:
    """The weights and structure of the model that runs: a rebuild's own (toolkit names,
    oldest-first channels) where it renamed or permuted the checkpoint's, else unchanged.

    Commands that cut weights and run the model (prune) work in the rebuild's key space, so
    that a cut slice is the slice the running model reads, and what they save loads again.
    """
    from reuse_analysis.structure import infer_structure

    own = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    # A newest-first file keeps its key names when the toolkit's DenseNet fits it, but the
    # model holds its channels permuted: then the model's own weights are the ones to cut.
    permuted = getattr(model, "concat_order", "oldest-first") != "oldest-first"
    if not getattr(model, "rebuilt_from", None) or (
        own.keys() == dict(state_dict).keys() and not permuted
    ):
        return dict(state_dict), structure
    return own, infer_structure(own)


__all__ = [
    "MAX_LOG_VAR_RATIO",
    "MAX_MEAN_SHIFT",
    "NormFit",
    "RebuildError",
    "RebuiltConfig",
    "RebuiltDenseNet",
    "Verdict",
    "check_on_data",
    "choose_normalisation",
    "model_weights",
    "norm_fits",
    "normalisations",
    "rebuild",
    "verify",
]
