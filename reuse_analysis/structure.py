"""The single source of truth for a DenseNet's layout: weights → blocks → layers → source slices.

The structure is inferred from tensor shapes, not from names, because checkpoints in the
wild name their modules in many ways. A dense block is recognised by its channel
arithmetic: sibling layers whose first convolutions read ``c0, c0+k, c0+2k, …`` channels
and whose last convolutions each add ``k`` channels. Names only break ties (natural sort,
so ``layer10`` follows ``layer9``); dict order is never used.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from reuse_analysis.errors import StructureError

ConcatOrder = Literal["oldest-first", "newest-first"]
CONCAT_ORDERS: tuple[str, ...] = ("oldest-first", "newest-first")

_MAX_CONVS_PER_LAYER = 4


# ----------------------------------------------------------------------------- data model
@dataclass(frozen=True)
class Conv:
    """A convolution weight ``[out, in, kh, kw]`` found in the state_dict."""

    key: str
    out_channels: int
    in_channels: int
    kernel: tuple[int, int]

    @property
    def module(self) -> str:
        return self.key.removesuffix(".weight")


@dataclass(frozen=True)
class DenseLayer:
    """One layer of a dense block: reads the concatenation, adds ``growth_rate`` channels."""

    index: int  # 1-based, forward order
    name: str  # module path, e.g. "features.denseblock1.denselayer3"
    in_channels: int  # width of the concatenation this layer reads
    convs: tuple[Conv, ...]  # forward order; convs[0] reads the concatenation
    norm: str | None  # module path of the normalisation in front of convs[0], if found

    @property
    def first_conv(self) -> Conv:
        return self.convs[0]

    @property
    def bottleneck_width(self) -> int | None:
        """Output width of the 1×1 bottleneck (DenseNet-B), None for a plain layer."""
        return self.convs[0].out_channels if len(self.convs) > 1 else None


TargetKind = Literal["layer", "transition", "classifier"]


@dataclass(frozen=True)
class Transition:
    """The 1×1 convolution between two blocks; the extra target column of its block."""

    name: str
    conv: Conv
    norm: str | None
    kind: ClassVar[TargetKind] = "transition"
    positions: ClassVar[int] = 1  # weight inputs per channel (see Classifier.positions)

    @property
    def compression(self) -> float:
        """θ as the model was built (1.0 for plain DenseNet, 0.5 for -C/-BC): the shortest
        decimal whose floor(θ·in) gives this transition's output width (0.6, not 43/72)."""
        theta = built_compression([(self.conv.in_channels, self.conv.out_channels)])
        return theta if theta is not None else self.conv.out_channels / self.conv.in_channels

    @property
    def weight_key(self) -> str:
        return self.conv.key

    @property
    def in_channels(self) -> int:
        return self.conv.in_channels

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    def macs(self, side: float) -> float:
        """Multiply–accumulates at a ``side``² input."""
        return _conv_macs(self.conv, side)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "weight": self.conv.key,
            "in_channels": self.conv.in_channels,
            "out_channels": self.conv.out_channels,
            "compression": round(self.compression, 4),
        }


@dataclass(frozen=True)
class HeadLayer:
    """One layer of the head after the last block: a Linear, or a 1-D norm between Linears."""

    key: str  # weight key
    kind: str  # "linear" | "norm"
    in_features: int
    out_features: int

    @property
    def name(self) -> str:
        return self.key.removesuffix(".weight")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "weight": self.key,
            "in": self.in_features,
            "out": self.out_features,
        }


@dataclass(frozen=True)
class Classifier:
    """The head: the first Linear ``[out, C·positions]`` reading the last block's features
    (the extra target column of the last block), and what follows it."""

    key: str  # weight key of the first Linear that reads the last block's features
    num_classes: int  # outputs of the whole head (the last Linear's rows)
    in_features: int  # what the first Linear reads: C (pooled) or C·positions (flattened)
    norm: str | None
    #: map positions per channel that the first Linear reads: 1 when it reads globally
    #: pooled features, h·w when it reads the flattened h×w map (channel-major).
    positions: int = 1
    #: every layer of the head in forward order, the first Linear included.
    layers: tuple[HeadLayer, ...] = ()
    #: why the head is judged to end in an embedding (not class scores); None: class scores.
    embedding: str | None = None
    kind: ClassVar[TargetKind] = "classifier"

    @property
    def name(self) -> str:
        return self.key.removesuffix(".weight")

    @property
    def weight_key(self) -> str:
        return self.key

    @property
    def in_channels(self) -> int:
        """Channels of the last block's output it reads (``in_features / positions``)."""
        return self.in_features // self.positions

    @property
    def out_channels(self) -> int:
        return self.num_classes

    @property
    def linears(self) -> tuple[HeadLayer, ...]:
        """The head's Linears in forward order (the first one alone when none were traced)."""
        found = tuple(layer for layer in self.layers if layer.kind == "linear")
        return found or (HeadLayer(self.key, "linear", self.in_features, self.num_classes),)

    def macs(self, side: float) -> float:
        """Multiply–accumulates of every Linear of the head (after pooling, so independent
        of ``side``)."""
        return sum(h.in_features * h.out_features for h in self.linears)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "weight": self.key,
            "in_features": self.in_features,
            "num_classes": self.num_classes,
            "positions": self.positions,
            "embedding": self.embedding,
            "head": [h.to_dict() for h in self.layers],
        }


@dataclass(frozen=True)
class Target:
    """One target column of a block: a layer's first conv, the transition or the classifier.

    This is the one place that says which weight a column reads its sources through, which
    norm sits in front of it, and which input channels came from which source; metrics,
    probes, pruning and reports all ask the structure for it.
    """

    block: int  # 1-based block index
    index: int  # 1-based column: layers 1..L, then L+1 for the transition or classifier
    kind: TargetKind
    name: str  # module path of the layer, transition or classifier
    weight_key: str  # the weight in the state_dict that reads the concatenation
    norm: str | None  # module path of the normalisation in front of it, if found
    in_channels: int  # width of the concatenation it reads
    #: ``(source, start, stop)`` channel ranges, sorted by source (0 = the block input).
    slices: tuple[tuple[int, int, int], ...]
    #: weight inputs per channel: h·w for a classifier on the flattened h×w map (channel c
    #: owns features c·p … c·p+p−1), else 1.
    positions: int = 1

    @property
    def key(self) -> str:
        """``"block/target"``, a column's name in caches and tables."""
        return f"{self.block}/{self.index}"

    @property
    def concat_slices(self) -> tuple[tuple[int, int, int], ...]:
        """The slices in the order the channels are concatenated (by start channel)."""
        return tuple(sorted(self.slices, key=lambda s: s[1]))

    @property
    def feature_slices(self) -> tuple[tuple[int, int, int], ...]:
        """``slices`` in the weight's input features: the same as ``slices`` except for a
        classifier on the flattened map, where each channel spans ``positions`` features."""
        p = self.positions
        return self.slices if p == 1 else tuple((s, a * p, b * p) for s, a, b in self.slices)

    def slice_of(self, source: int) -> tuple[int, int]:
        """``(start, stop)`` of ``source``'s channels; ValueError if it is not read."""
        for s, start, stop in self.slices:
            if s == source:
                return start, stop
        raise ValueError(f"target {self.index} of block {self.block} reads no source {source}")

    def feature_slice_of(self, source: int) -> tuple[int, int]:
        """``(start, stop)`` of ``source``'s inputs of the weight (see ``feature_slices``)."""
        start, stop = self.slice_of(source)
        return start * self.positions, stop * self.positions


@dataclass(frozen=True)
class DenseBlock:
    """A dense block: ``layers`` read ``c0 + k·(t-1)`` channels, then ``extra`` reads all."""

    index: int  # 1-based, forward order
    name: str  # the container's module path ("" for the model root)
    in_channels: int  # c0, the width of the block input x_0
    growth_rate: int  # k
    layers: tuple[DenseLayer, ...]
    extra: Transition | Classifier | None = None

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def out_channels(self) -> int:
        return self.in_channels + self.growth_rate * self.num_layers

    @property
    def extra_kind(self) -> str | None:
        return self.extra.kind if self.extra is not None else None

    @property
    def num_targets(self) -> int:
        return self.num_layers + (self.extra is not None)

    def targets(self, order: ConcatOrder = "oldest-first") -> tuple[Target, ...]:
        """Every target column, forward order: the layers, then the transition or classifier."""
        return tuple(self.target(t, order) for t in range(1, self.num_targets + 1))

    def target(self, index: int, order: ConcatOrder = "oldest-first") -> Target:
        """Target column ``index`` (1..L the layers, L+1 the transition or classifier)."""
        slices = tuple(self.source_slices(index, order))
        if index <= self.num_layers:
            layer = self.layers[index - 1]
            return Target(
                self.index, index, "layer", layer.name, layer.first_conv.key, layer.norm,
                layer.in_channels, slices,
            )  # fmt: skip
        extra = self.extra
        assert extra is not None  # source_slices checked the index
        return Target(
            self.index, index, extra.kind, extra.name, extra.weight_key, extra.norm,
            extra.in_channels, slices, extra.positions,
        )  # fmt: skip

    def source_slices(
        self, target: int, order: ConcatOrder = "oldest-first"
    ) -> list[tuple[int, int, int]]:
        """``(source, start, stop)`` channel ranges of every source that ``target`` reads.

        Targets 1..L are the layers; ``L+1`` is the transition or classifier.
        """
        if not 1 <= target <= self.num_targets:
            raise ValueError(f"block {self.index} has no target {target}")
        return source_slices(self.in_channels, self.growth_rate, target, order)


@dataclass(frozen=True)
class DenseNetStructure:
    """Everything inferred from a state_dict: blocks in forward order, stem and head."""

    blocks: tuple[DenseBlock, ...]
    input_channels: int | None
    num_classes: int | None
    stem: tuple[Conv, ...]
    num_parameters: int
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def transitions(self) -> tuple[Transition, ...]:
        return tuple(b.extra for b in self.blocks if isinstance(b.extra, Transition))

    @property
    def classifier(self) -> Classifier | None:
        last = self.blocks[-1].extra
        return last if isinstance(last, Classifier) else None

    def targets(self, order: ConcatOrder = "oldest-first") -> tuple[Target, ...]:
        """Every target column of every block, forward order."""
        return tuple(t for b in self.blocks for t in b.targets(order))

    def target(self, block: int, index: int, order: ConcatOrder = "oldest-first") -> Target:
        """Target ``index`` of block ``block`` (both 1-based); ValueError if there is none."""
        if not 1 <= block <= len(self.blocks):
            raise ValueError(f"the model has no block {block}")
        return self.blocks[block - 1].target(index, order)

    @property
    def compressions(self) -> dict[int, float]:
        """Block index → θ of the transition after it (blocks followed by a transition)."""
        return {b.index: b.extra.compression for b in self.blocks if b.extra_kind == "transition"}

    @property
    def bottleneck(self) -> bool:
        return any(layer.bottleneck_width for b in self.blocks for layer in b.layers)

    @property
    def compression(self) -> float | None:
        """The one θ every transition was built with (floor(θ·in) = out for all), or None."""
        pairs = [(t.conv.in_channels, t.conv.out_channels) for t in self.transitions]
        theta = built_compression(pairs) if pairs else None
        if theta is not None:
            return theta
        thetas = [t.compression for t in self.transitions]
        return thetas[0] if thetas and all(abs(t - thetas[0]) < 0.02 for t in thetas) else None

    @property
    def variant(self) -> str:
        """ "DenseNet", "DenseNet-B", "DenseNet-C" or "DenseNet-BC" (paper §3)."""
        compressed = any(t.compression < 0.99 for t in self.transitions)
        suffix = ("B" if self.bottleneck else "") + ("C" if compressed else "")
        return f"DenseNet-{suffix}" if suffix else "DenseNet"

    @property
    def depth(self) -> int:
        """Paper-style depth L: weighted layers on the main path (convs, transitions, fc)."""
        convs = sum(len(layer.convs) for b in self.blocks for layer in b.layers)
        head = self.classifier
        linears = len(head.linears) if head is not None else 0
        return len(self.stem) + convs + len(self.transitions) + linears

    def summary(self) -> str:
        """One line, e.g. ``DenseNet-BC, 3 blocks × 16 layers, k=12, θ=0.5``."""
        sizes = [b.num_layers for b in self.blocks]
        if len(set(sizes)) == 1:
            layers = f"{len(sizes)} blocks × {sizes[0]} layers"
        else:
            layers = f"{len(sizes)} blocks ({'-'.join(map(str, sizes))} layers)"
        ks = sorted({b.growth_rate for b in self.blocks})
        parts = [self.variant, layers, "k=" + "/".join(map(str, ks))]
        if self.compression is not None and self.compression < 0.99:
            parts.append(f"θ={self.compression:g}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description, as printed by ``reuse-analysis info --json``."""
        return {
            "variant": self.variant,
            "depth": self.depth,
            "num_parameters": self.num_parameters,
            "input_channels": self.input_channels,
            "num_classes": self.num_classes,
            "stem": [c.key for c in self.stem],
            "blocks": [_block_dict(b) for b in self.blocks],
            "notes": list(self.notes),
        }


def _block_dict(block: DenseBlock) -> dict[str, Any]:
    extra = block.extra.to_dict() if block.extra is not None else None
    widths = {layer.bottleneck_width for layer in block.layers}
    return {
        "index": block.index,
        "name": block.name,
        "num_layers": block.num_layers,
        "growth_rate": block.growth_rate,
        "in_channels": block.in_channels,
        "out_channels": block.out_channels,
        "bottleneck_width": widths.pop() if len(widths) == 1 else sorted(widths, key=str),
        "layers": [
            {"index": layer.index, "name": layer.name, "first_conv": layer.first_conv.key}
            for layer in block.layers
        ],
        "extra": extra,
    }


def built_compression(widths: Sequence[tuple[int, int]]) -> float | None:
    """The shortest decimal θ with ``floor(θ·in) == out`` for every ``(in, out)``, or None.

    A transition keeps floor(θ·in) channels, so a file stores only an interval of θ per
    transition, ``[out/in, (out+1)/in)``; the value the model was built with is, in
    practice, the shortest decimal in the intersection (0.6 for 72 → 43, not 0.597222).
    """
    import math

    lo = max(out / cin for cin, out in widths)
    hi = min((out + 1) / cin for cin, out in widths)
    for digits in range(0, 7):
        scale = 10**digits
        theta = math.ceil(lo * scale - 1e-9) / scale
        if theta < hi and all(math.floor(theta * cin) == out for cin, out in widths):
            return theta
    return None


def source_slices(
    c0: int, k: int, num_sources: int, order: ConcatOrder = "oldest-first"
) -> list[tuple[int, int, int]]:
    """Channel ranges of ``x_0`` (c0 channels) and ``x_1..x_{n-1}`` (k each) in a concatenation.

    ``oldest-first`` is ``[x_0, x_1, …]`` (torchvision); ``newest-first`` is
    ``[x_{n-1}, …, x_1, x_0]`` (``torch.cat([new, old])``). Returned sorted by source.
    """
    if order not in CONCAT_ORDERS:
        raise ValueError(f"concat order must be one of {', '.join(CONCAT_ORDERS)}, not {order!r}")
    n = num_sources
    if order == "oldest-first":
        return [(0, 0, c0)] + [(s, c0 + k * (s - 1), c0 + k * s) for s in range(1, n)]
    return [(0, k * (n - 1), k * (n - 1) + c0)] + [
        (s, k * (n - 1 - s), k * (n - s)) for s in range(1, n)
    ]


# ----------------------------------------------------------------------------- inference
def _natural_key(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


@dataclass(frozen=True)
class _Unit:
    """A module whose convolutions form one chain (each reads what the previous wrote)."""

    name: str
    convs: tuple[Conv, ...]

    @property
    def head_in(self) -> int:
        return self.convs[0].in_channels

    @property
    def tail_out(self) -> int:
        return self.convs[-1].out_channels


def _chain(convs: Sequence[Conv]) -> tuple[Conv, ...] | None:
    """Order ``convs`` so that each reads the previous one's output; prefer name order."""
    if not 1 <= len(convs) <= _MAX_CONVS_PER_LAYER:
        return None
    for perm in itertools.permutations(convs):
        if all(a.out_channels == b.in_channels for a, b in itertools.pairwise(perm)):
            return tuple(perm)
    return None


class _Tree:
    """The module tree spanned by the convolution weights."""

    def __init__(self, convs: Sequence[Conv]) -> None:
        self.convs = list(convs)
        self.children: dict[str, set[str]] = {}
        self._under: dict[str, list[Conv]] = {}
        for conv in convs:
            parts = conv.module.split(".")
            for depth in range(len(parts) + 1):
                node = ".".join(parts[:depth])
                self._under.setdefault(node, []).append(conv)
                if depth < len(parts):
                    self.children.setdefault(node, set()).add(parts[depth])

    def convs_under(self, node: str) -> list[Conv]:
        return list(self._under.get(node, ()))

    def child_nodes(self, node: str) -> list[str]:
        names = sorted(self.children.get(node, ()), key=_natural_key)
        return [f"{node}.{n}" if node else n for n in names]


def _unit(tree: _Tree, node: str) -> _Unit | None:
    ordered = _chain(sorted(tree.convs_under(node), key=lambda c: _natural_key(c.key)))
    return _Unit(node, ordered) if ordered else None


def _progression(units: Sequence[_Unit]) -> bool:
    k = units[0].tail_out
    return all(u.tail_out == k for u in units) and all(
        b.head_in == a.head_in + k for a, b in itertools.pairwise(units)
    )


def _runs(items: Sequence[_Unit | None]) -> list[tuple[int, int]]:
    """Maximal index ranges ``[i, j)`` of ≥ 2 consecutive units in channel progression."""
    runs, i = [], 0
    while i < len(items):
        first, j = items[i], i + 1
        if first is not None:
            while j < len(items) and _follows(items[j - 1], items[j], first.tail_out):
                j += 1
        if j - i >= 2:
            runs.append((i, j))
        i = j
    return runs


def _follows(a: _Unit | None, b: _Unit | None, k: int) -> bool:
    return a is not None and b is not None and b.tail_out == k and b.head_in == a.head_in + k


def _describe(item: _Unit | None, node: str, tree: _Tree) -> str:
    if item is None:
        shapes = ", ".join(
            f"{c.key} [{c.out_channels}, {c.in_channels}, …]" for c in tree.convs_under(node)
        )
        return f"`{node}` has convolutions that do not chain ({shapes})"
    return f"`{node}` reads {item.head_in} and writes {item.tail_out} channels"


def _check_neighbours(
    node: str, nodes: list[str], items: list[_Unit | None], runs: list[tuple[int, int]], tree: _Tree
) -> None:
    """Raise if a module right next to a run of dense layers breaks its channel arithmetic.

    A stem or transition before a run must write the run's ``c0``; one after it must read
    the run's output. Anything else there is a layer whose shapes were corrupted.
    """
    for i, j in runs:
        first, last = items[i], items[j - 1]
        assert first is not None and last is not None
        k, c0, out = first.tail_out, first.head_in, last.head_in + last.tail_out
        before, after = i - 1, j
        if before >= 0 and not (items[before] and items[before].tail_out == c0):
            prev = items[before]
            expected = ""
            if prev is not None and prev.head_in == c0 - k:
                expected = f" (a layer of this block writes k={k})"
            elif prev is not None:
                expected = f" (a layer of this block would read {c0 - k})"
            raise StructureError(
                f"{_describe(prev, nodes[before], tree)}, which does not fit the dense block "
                f"`{node}` next to it (k={k}, layers reading {c0}, {c0 + k}, …){expected}; "
                "the checkpoint's shapes look corrupted: re-save or re-download it"
            )
        if after < len(items) and not (items[after] and items[after].head_in == out):
            raise StructureError(
                f"{_describe(items[after], nodes[after], tree)}, where the dense block "
                f"`{node}` (k={k}) expects a layer or transition reading {out} channels; "
                "the checkpoint's shapes look corrupted: re-save or re-download it"
            )


def _blocks_in(tree: _Tree, node: str) -> list[tuple[str, list[_Unit]]]:
    """Dense blocks among the children of ``node``: runs of layers in channel progression."""
    nodes = tree.child_nodes(node)
    if len(nodes) < 2:
        return []
    items = [_unit(tree, n) for n in nodes]
    units = [u for u in items if u is not None]
    # A container holding only layers: its forward order is the channel order, whatever
    # the children are called.
    if len(units) == len(items):
        by_width = sorted(units, key=lambda u: u.head_in)
        if _progression(by_width):
            return [(node, by_width)]
    runs = _runs(items)
    if runs:
        _check_neighbours(node, nodes, items, runs, tree)
    if len(runs) == 1:
        i, j = runs[0]
        return [(node, [u for u in items[i:j] if u is not None])]
    short = [n.rsplit(".", 1)[-1] for n in nodes]
    return [
        (f"{node}[{short[i]}..{short[j - 1]}]", [u for u in items[i:j] if u is not None])
        for i, j in runs
    ]


def _norm_before(state_dict: Mapping[str, torch.Tensor], scope: str, width: int) -> str | None:
    """The first 1-D-weighted module (BatchNorm, …) in ``scope`` that has ``width`` features."""
    prefix = scope + "." if scope else ""
    found = [
        k.removesuffix(".weight") for k in _norm_keys(state_dict, width) if k.startswith(prefix)
    ]
    return min(found, key=_natural_key) if found else None


def _norm_keys(state_dict: Mapping[str, torch.Tensor], width: int) -> list[str]:
    """Keys of 1-D ``weight`` tensors with ``width`` entries (normalisation layers)."""
    return [
        k
        for k, v in state_dict.items()
        if v.dim() == 1 and k.endswith(".weight") and v.shape[0] == width
    ]


def _layers(
    state_dict: Mapping[str, torch.Tensor], units: Sequence[_Unit]
) -> tuple[DenseLayer, ...]:
    return tuple(
        DenseLayer(
            index=i + 1,
            name=u.name,
            in_channels=u.head_in,
            convs=u.convs,
            norm=_norm_before(state_dict, u.name, u.head_in),
        )
        for i, u in enumerate(units)
    )


def _owner(tree: _Tree, conv: Conv) -> str:
    """The highest module that holds this convolution and no other."""
    parts = conv.module.split(".")
    name = conv.module
    for depth in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:depth])
        if len(tree.convs_under(parent)) != 1:
            break
        name = parent
    return name


def _find_convs(state_dict: Mapping[str, torch.Tensor]) -> list[Conv]:
    return [
        Conv(k, v.shape[0], v.shape[1], (v.shape[2], v.shape[3]))
        for k, v in state_dict.items()
        if k.endswith("weight") and v.dim() == 4 and v.is_floating_point()
    ]


def _not_a_densenet(
    convs: Sequence[Conv], state_dict: Mapping[str, torch.Tensor]
) -> StructureError:
    if not convs:
        sample = ", ".join(list(state_dict)[:3])
        return StructureError(
            f"the weights hold no convolution at all ({len(state_dict)} tensors, e.g. {sample}); "
            "point the command at a DenseNet checkpoint"
        )
    return StructureError(
        f"no dense block found among {len(convs)} convolutions: no group of two or more "
        "sibling layers whose inputs grow by a constant number of channels (c0, c0+k, "
        "c0+2k, …); this does not look like a DenseNet (a ResNet or VGG, say), and only "
        "densely connected networks can be analysed"
    )


def infer_structure(state_dict: Mapping[str, torch.Tensor]) -> DenseNetStructure:
    """Infer blocks, layers, transitions, stem and classifier from weight shapes alone.

    Raises StructureError when no dense block is found or the shapes contradict each other.
    """
    convs = _find_convs(state_dict)
    tree = _Tree(convs)
    found: list[tuple[str, list[_Unit]]] = []
    for node in sorted(tree.children, key=_natural_key):
        found += _blocks_in(tree, node)
    if not found:
        raise _not_a_densenet(convs, state_dict)

    used = {c.key for _, units in found for u in units for c in u.convs}
    free = [c for c in convs if c.key not in used]
    starts = {units[0].head_in: i for i, (_, units) in enumerate(found)}
    links: dict[int, tuple[int, Conv]] = {}
    for i, (_, units) in enumerate(found):
        out = units[-1].head_in + units[-1].tail_out
        for conv in sorted(free, key=lambda c: _natural_key(c.key)):
            nxt = starts.get(conv.out_channels)
            if conv.in_channels == out and nxt is not None and nxt != i:
                links[i] = (nxt, conv)
                break
    order = _forward_order(found, links)
    notes: list[str] = []
    blocks: list[DenseBlock] = []
    for pos, i in enumerate(order):
        name, units = found[i]
        extra: Transition | Classifier | None = None
        if i in links:
            conv = links[i][1]
            owner = _owner(tree, conv)
            extra = Transition(owner, conv, _norm_before(state_dict, owner, conv.in_channels))
        blocks.append(
            DenseBlock(
                index=pos + 1,
                name=name,
                in_channels=units[0].head_in,
                growth_rate=units[0].tail_out,
                layers=_layers(state_dict, units),
                extra=extra,
            )
        )
    classifier = _classifier(state_dict, blocks, used | {t.conv.key for t in _trans(blocks)})
    if classifier is None:
        notes.append(
            f"no classifier reads the last block's {blocks[-1].out_channels} channels: "
            "the last block has no extra target column"
        )
    else:
        blocks[-1] = _replace_extra(blocks[-1], classifier)
    transition_keys = {t.conv.key for t in _trans(blocks)}
    stem = _stem(free, transition_keys, blocks[0].in_channels)
    if not stem:
        notes.append("no stem convolution found: the input channel count is unknown")
    return DenseNetStructure(
        blocks=tuple(blocks),
        input_channels=stem[0].in_channels if stem else None,
        num_classes=classifier.num_classes if classifier else None,
        stem=tuple(stem),
        num_parameters=count_parameters(state_dict),
        notes=tuple(notes),
    )


def count_parameters(state_dict: Mapping[str, torch.Tensor]) -> int:
    """Number of learnable values: every tensor except batch-norm running statistics."""
    skip = ("running_mean", "running_var", "num_batches_tracked")
    return sum(v.numel() for k, v in state_dict.items() if not k.endswith(skip))


def _trans(blocks: Sequence[DenseBlock]) -> list[Transition]:
    return [b.extra for b in blocks if isinstance(b.extra, Transition)]


def _replace_extra(block: DenseBlock, extra: Transition | Classifier) -> DenseBlock:
    return DenseBlock(
        block.index, block.name, block.in_channels, block.growth_rate, block.layers, extra
    )


def _forward_order(
    found: Sequence[tuple[str, list[_Unit]]], links: Mapping[int, tuple[int, Conv]]
) -> list[int]:
    """Follow transitions from the block nothing leads into; every block must be reached."""
    targets = {nxt for nxt, _ in links.values()}
    heads = [i for i in range(len(found)) if i not in targets]
    if len(heads) != 1:
        described = "; ".join(
            f"`{found[i][0]}` (reads {found[i][1][0].head_in}, writes "
            f"{found[i][1][-1].head_in + found[i][1][-1].tail_out} channels)"
            for i in range(len(found))
            if i not in links
        )
        raise StructureError(
            f"found {len(found)} dense blocks but no transition convolution connects them "
            f"into one chain (blocks without a transition after them: {described}); "
            "a transition's shape may be corrupted"
        )
    order, i = [heads[0]], heads[0]
    while i in links:
        i = links[i][0]
        if i in order:
            raise StructureError("the transitions between dense blocks form a cycle")
        order.append(i)
    return order


def _classifier(
    state_dict: Mapping[str, torch.Tensor],
    blocks: Sequence[DenseBlock],
    used: set[str],
) -> Classifier | None:
    """The head: the first Linear that reads the last block's output (pooled, or the
    flattened map: ``C·positions`` features), the norm in front of it, and the Linears (with
    1-D norms between them) that follow it, so an MLP head reports its real outputs."""
    last = blocks[-1]
    owners = [layer.name for b in blocks for layer in b.layers] + [t.name for t in _trans(blocks)]
    width = last.out_channels
    linears = [
        k
        for k, v in state_dict.items()
        if k.endswith("weight") and v.dim() == 2 and v.is_floating_point() and k not in used
    ]
    pooled = [k for k in linears if state_dict[k].shape[1] == width]
    flat = [
        k for k in linears if state_dict[k].shape[1] > width and state_dict[k].shape[1] % width == 0
    ]
    matching = pooled or flat
    if not matching:
        if linears:
            shapes = ", ".join(f"{k} {list(state_dict[k].shape)}" for k in linears[:3])
            raise StructureError(
                f"the last dense block outputs {width} channels but no linear layer reads "
                f"that many, nor a flattened map of them ({shapes}); the checkpoint's shapes "
                "look corrupted"
            )
        return None
    key = min(matching, key=_natural_key)
    inside = tuple(f"{name}." for name in owners)
    norms = [
        k.removesuffix(".weight")
        for k, v in state_dict.items()
        if k.endswith(".weight")
        and v.dim() == 1
        and v.numel() == width
        and not k.startswith(inside)
        and not k.startswith(key.removesuffix("weight"))
    ]
    norm = max(norms, key=_natural_key) if norms else None
    layers = _head_layers(state_dict, key, [k for k in linears if k != key], inside, norm)
    return Classifier(
        key,
        layers[-1].out_features if layers[-1].kind == "linear" else layers[-2].out_features,
        state_dict[key].shape[1],
        norm,
        positions=state_dict[key].shape[1] // width,
        layers=tuple(layers),
        embedding=_embedding_reason(layers),
    )


def _parent(key: str) -> str:
    return key.removesuffix(".weight").rpartition(".")[0]


def _head_layers(
    state_dict: Mapping[str, torch.Tensor],
    first: str,
    others: Sequence[str],
    inside: tuple[str, ...],
    norm5: str | None,
) -> list[HeadLayer]:
    """The chain of Linears from ``first`` on (each reads the previous one's outputs), with
    the 1-D batch norms that sit beside them (same parent module) and match their widths."""

    def linear(k: str) -> HeadLayer:
        out, cin = state_dict[k].shape
        return HeadLayer(k, "linear", int(cin), int(out))

    def norm_after(k: str, width: int, near: Sequence[str]) -> HeadLayer | None:
        parents = {_parent(n) for n in near}
        found = [
            n
            for n, v in state_dict.items()
            if n.endswith(".weight")
            and v.dim() == 1
            and v.numel() == width
            and f"{n.removesuffix('weight')}running_mean" in state_dict
            and not n.startswith(inside)
            and n.removesuffix(".weight") != norm5
            and _parent(n) in parents
            and _natural_key(n) > _natural_key(k)
        ]
        if not found:
            return None
        n = min(found, key=_natural_key)
        return HeadLayer(n, "norm", width, width)

    layers, current, left = [linear(first)], first, list(others)
    while True:
        out = layers[-1].out_features
        nxt = sorted((k for k in left if state_dict[k].shape[1] == out), key=_natural_key)
        bn = norm_after(current, out, [current, *nxt[:1]])
        if bn is not None:
            layers.append(bn)
        if not nxt:
            return layers
        current = nxt[0]
        left.remove(current)
        layers.append(linear(current))


_EMBEDDING_NAMES = re.compile(r"embed|emb\b|emb_|feat|proj|descriptor", re.I)


def _embedding_reason(layers: Sequence[HeadLayer]) -> str | None:
    """Why the head looks like it ends in an embedding rather than class scores, or None."""
    if layers[-1].kind == "norm":
        return f"its last Linear is followed by a batch norm (`{layers[-1].name}`)"
    name = layers[-1].name
    if _EMBEDDING_NAMES.search(name.rpartition(".")[2] or name):
        return f"its last Linear is called `{name}`"
    return None


def _stem(free: Sequence[Conv], transition_keys: set[str], c0: int) -> list[Conv]:
    """Convolutions before block 1: a chain ending in ``c0`` channels (deep stems included)."""
    candidates = [c for c in free if c.key not in transition_keys]
    ordered = _chain(sorted(candidates, key=lambda c: _natural_key(c.key)))
    if ordered and ordered[-1].out_channels == c0:
        return list(ordered)
    return [c for c in candidates if c.out_channels == c0][:1]


def default_input_size(structure: DenseNetStructure) -> int:
    """224 for an ImageNet-style stem (a 7×7 first convolution), else 32 (CIFAR)."""
    return 224 if structure.stem and structure.stem[0].kernel[0] >= 7 else 32


def estimate_macs(structure: DenseNetStructure, input_size: int | None = None) -> int:
    """Multiply–accumulates of one forward pass at ``input_size``², from the shapes alone.

    Strides are not stored in weights, so this assumes the common layouts: an ImageNet
    stem (7×7 first conv) divides the resolution by 4, a CIFAR stem keeps it, and every
    transition halves it.
    """
    size = input_size or default_input_size(structure)
    side = size / 4 if structure.stem and structure.stem[0].kernel[0] >= 7 else size
    stem_side = size / 2 if side != size else size
    macs = sum(_conv_macs(c, stem_side) for c in structure.stem)
    for block in structure.blocks:
        macs += sum(_conv_macs(c, side) for layer in block.layers for c in layer.convs)
        if block.extra is not None:
            macs += block.extra.macs(side)
            side /= 2 if block.extra_kind == "transition" else 1
    return int(macs)


def _conv_macs(conv: Conv, side: float) -> float:
    return conv.out_channels * conv.in_channels * conv.kernel[0] * conv.kernel[1] * side * side
