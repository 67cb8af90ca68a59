"""Known-answer tests: hand-set weights whose slice means are known give the exact table."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from reuse_analysis.metrics import COLUMNS, channel_usage, column_minmax, reuse_table
from reuse_analysis.structure import infer_structure, source_slices


def _conv(values: list[float], out: int = 2, kernel: int = 3) -> torch.Tensor:
    """A conv weight whose input channel c holds ±values[c] (signs alternate: abs matters)."""
    w = torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1).repeat(out, 1, kernel, kernel)
    signs = torch.ones_like(w)
    signs.view(-1)[::2] = -1
    return w * signs


def _hand_state_dict() -> dict[str, torch.Tensor]:
    """Block 1: c0=2, k=1, 2 plain layers; transition 4→2; block 2: c0=2, k=2, 2 layers."""
    sd = {
        "features.conv0.weight": _conv([1, 1, 1], out=2),
        # block 1 (c0 = 2, k = 1): layer t reads 2 + (t-1) channels
        "features.denseblock1.denselayer1.conv1.weight": _conv([0.2, 0.4], out=1),
        "features.denseblock1.denselayer2.conv1.weight": _conv([0.1, 0.3, 0.8], out=1),
        "features.transition1.conv.weight": _conv([0.5, 0.5, 0.25, 1.0], out=2, kernel=1),
        # block 2 (c0 = 2, k = 2)
        "features.denseblock2.denselayer1.conv1.weight": _conv([0.6, 0.2], out=2),
        "features.denseblock2.denselayer2.conv1.weight": _conv([0.0, 0.4, 0.9, 0.3], out=2),
        "features.norm5.weight": torch.ones(6),
        "classifier.weight": torch.tensor(
            [[1.0, -1.0, 0.5, -0.5, 2.0, 0.0], [1.0, -1.0, 0.5, -0.5, 0.0, -2.0]]
        ),
        "classifier.bias": torch.zeros(2),
    }
    return sd


EXPECTED_OLDEST_FIRST = [
    # block, source, target, kind, mean |w|
    (1, 0, 1, "layer", 0.3),
    (1, 0, 2, "layer", 0.2),
    (1, 1, 2, "layer", 0.8),
    (1, 0, 3, "transition", 0.5),
    (1, 1, 3, "transition", 0.25),
    (1, 2, 3, "transition", 1.0),
    (2, 0, 1, "layer", 0.4),
    (2, 0, 2, "layer", 0.2),
    (2, 1, 2, "layer", 0.6),
    (2, 0, 3, "classifier", 1.0),
    (2, 1, 3, "classifier", 0.5),
    (2, 2, 3, "classifier", 1.0),
]


def test_known_answer_oldest_first():
    sd = _hand_state_dict()
    df = reuse_table(sd, infer_structure(sd), "oldest-first")
    assert list(df.columns) == COLUMNS
    got = list(df[COLUMNS[:5]].itertuples(index=False, name=None))
    assert [g[:4] for g in got] == [e[:4] for e in EXPECTED_OLDEST_FIRST]
    assert [g[4] for g in got] == pytest.approx([e[4] for e in EXPECTED_OLDEST_FIRST], abs=1e-7)
    # column min-max: (0.5, 0.25, 1.0) -> (1/3, 0, 1); single-source columns are 1
    norm = df.set_index(["block", "source", "target"])["normalized"]
    assert norm[(1, 0, 1)] == 1.0
    assert norm[(1, 0, 2)] == 0.0 and norm[(1, 1, 2)] == 1.0
    assert norm[(1, 0, 3)] == pytest.approx(1 / 3)
    assert norm[(2, 0, 3)] == 1.0 and norm[(2, 1, 3)] == 0.0 and norm[(2, 2, 3)] == 1.0
    assert df.attrs["concat_order"] == "oldest-first"
    assert df.attrs["metric"] == "weight"


def test_known_answer_newest_first():
    """Layer t reads [x_{t-1}, …, x_1, x_0]: the same weights give a different table."""
    sd = _hand_state_dict()
    df = reuse_table(sd, infer_structure(sd), "newest-first")
    got = df.set_index(["block", "source", "target"])["mean_abs_weight"]
    # block 1, layer 2 reads [x1 (1 ch), x0 (2 ch)] = channels [0.1 | 0.3, 0.8]
    assert got[(1, 1, 2)] == pytest.approx(0.1)
    assert got[(1, 0, 2)] == pytest.approx(0.55)
    # transition reads [x2, x1, x0] = [0.5 | 0.5 | 0.25, 1.0]
    assert got[(1, 2, 3)] == pytest.approx(0.5)
    assert got[(1, 1, 3)] == pytest.approx(0.5)
    assert got[(1, 0, 3)] == pytest.approx(0.625)
    # classifier reads [x2 (2), x1 (2), x0 (2)]
    assert got[(2, 2, 3)] == pytest.approx(1.0)
    assert got[(2, 1, 3)] == pytest.approx(0.5)
    assert got[(2, 0, 3)] == pytest.approx(1.0)
    assert df.attrs["concat_order"] == "newest-first"


def test_source_slices_cover_the_input_exactly_once():
    for order in ("oldest-first", "newest-first"):
        slices = source_slices(24, 12, 5, order)
        assert [s for s, _, _ in slices] == [0, 1, 2, 3, 4]
        channels = sorted(c for _, a, b in slices for c in range(a, b))
        assert channels == list(range(24 + 12 * 4))
    assert source_slices(24, 12, 3, "oldest-first") == [(0, 0, 24), (1, 24, 36), (2, 36, 48)]
    assert source_slices(24, 12, 3, "newest-first") == [(0, 24, 48), (1, 12, 24), (2, 0, 12)]
    with pytest.raises(ValueError, match="concat order"):
        source_slices(24, 12, 3, "sideways")


def test_channel_usage_is_mean_abs_per_input_channel():
    w = torch.zeros(3, 2, 1, 1)
    w[:, 0] = torch.tensor([1.0, -2.0, 3.0]).view(3, 1, 1)
    w[:, 1] = -4.0
    assert channel_usage(w).tolist() == pytest.approx([2.0, 4.0])
    assert channel_usage(torch.tensor([[1.0, -3.0]])).tolist() == pytest.approx([1.0, 3.0])


def test_column_minmax_handles_single_and_constant_columns():
    values = pd.Series([2.0, 4.0, 6.0, 5.0, 3.0, 3.0])
    columns = pd.Series(["a", "a", "a", "b", "c", "c"])
    assert column_minmax(values, columns).tolist() == [0.0, 0.5, 1.0, 1.0, 1.0, 1.0]


def test_every_target_column_lists_every_earlier_source():
    sd = _hand_state_dict()
    df = reuse_table(sd, infer_structure(sd))
    for (_, target), group in df.groupby(["block", "target"]):
        assert sorted(group["source"]) == list(range(target))


def _with_norms(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The hand-made weights plus batch norms whose |γ|/√(σ²+ε) is known exactly."""
    from reuse_analysis.metrics import BN_EPS

    def norm(gammas: list[float], sigmas: list[float]) -> dict[str, torch.Tensor]:
        s = torch.tensor(sigmas, dtype=torch.float64)
        return {
            "weight": torch.tensor(gammas, dtype=torch.float64),
            "bias": torch.zeros(len(gammas), dtype=torch.float64),
            "running_mean": torch.zeros(len(gammas), dtype=torch.float64),
            "running_var": s * s - BN_EPS,  # so that √(σ² + ε) is exactly s
        }

    norms = {
        "features.denseblock1.denselayer1.norm1": norm([2.0, -1.0], [1.0, 2.0]),
        "features.denseblock1.denselayer2.norm1": norm([1.0, 1.0, -3.0], [2.0, 1.0, 4.0]),
        "features.transition1.norm": norm([1.0, 2.0, 1.0, 0.5], [1.0, 1.0, 2.0, 1.0]),
        "features.denseblock2.denselayer1.norm1": norm([1.0, 1.0], [0.5, 1.0]),
        "features.denseblock2.denselayer2.norm1": norm([1.0, 1.0, 1.0, 1.0], [1.0] * 4),
        "features.norm5": norm([1.0] * 4 + [2.0, 0.5], [1.0] * 6),
    }
    sd = {k: v for k, v in sd.items() if not k.startswith("features.norm5")}
    for module, tensors in norms.items():
        sd.update({f"{module}.{name}": t for name, t in tensors.items()})
    return sd


def test_bn_weight_scales_each_input_channel_by_gamma_over_sigma():
    sd = _with_norms(_hand_state_dict())
    df = reuse_table(sd, infer_structure(sd), metric="bn-weight")
    assert list(df.columns) == [*COLUMNS[:4], "mean_abs_bn_weight", "normalized"]
    assert df.attrs["metric"] == "bn-weight"
    got = df.set_index(["block", "source", "target"])["mean_abs_bn_weight"]
    # block 1 layer 1: channels |w| = (0.2, 0.4), scales (2/1, 1/2) → mean(0.4, 0.2)
    assert got[(1, 0, 1)] == pytest.approx(0.3)
    # layer 2: |w| (0.1, 0.3 | 0.8), scales (1/2, 1/1 | 3/4) → (0.05, 0.3) and 0.6
    assert got[(1, 0, 2)] == pytest.approx(0.175)
    assert got[(1, 1, 2)] == pytest.approx(0.6)
    # transition: |w| (0.5, 0.5 | 0.25 | 1.0), scales (1, 2 | 0.5 | 0.5)
    assert got[(1, 0, 3)] == pytest.approx(0.75)
    assert got[(1, 1, 3)] == pytest.approx(0.125)
    assert got[(1, 2, 3)] == pytest.approx(0.5)
    # block 2 layer 1: |w| (0.6, 0.2), scales (2, 1) → mean(1.2, 0.2)
    assert got[(2, 0, 1)] == pytest.approx(0.7)
    # classifier: |w| per channel (1, 1, .5, .5, 1, 1), norm5 scales (1, 1, 1, 1, 2, .5)
    assert got[(2, 2, 3)] == pytest.approx(1.25)
    # where every scale is 1, bn-weight equals weight
    weight = reuse_table(sd, infer_structure(sd)).set_index(["block", "source", "target"])
    assert got[(2, 1, 2)] == pytest.approx(weight["mean_abs_weight"][(2, 1, 2)])


def test_bn_weight_without_batch_norm_is_an_input_error():
    from reuse_analysis.errors import StructureError

    sd = _hand_state_dict()  # no norms in front of the layers
    with pytest.raises(StructureError, match="bn-weight needs the batch norm"):
        reuse_table(sd, infer_structure(sd), metric="bn-weight")


def test_data_driven_metrics_are_not_weight_only():
    sd = _hand_state_dict()
    with pytest.raises(ValueError, match="runs the model on images"):
        reuse_table(sd, infer_structure(sd), metric="ablation")


def test_registry_computes_every_metric_it_names():
    from reuse_analysis.metrics import REGISTRY, MetricInputs, compute_tables
    from reuse_analysis.tables import METRICS

    assert list(REGISTRY) == list(METRICS)
    assert [m.name for m in REGISTRY.values() if m.data_driven] == [
        "activation", "ablation", "taylor"
    ]  # fmt: skip
    sd = _hand_state_dict()
    structure = infer_structure(sd)
    inputs = MetricInputs(sd, structure, concat_order="newest-first")
    tables = compute_tables(["weight"], inputs)
    pd.testing.assert_frame_equal(tables["weight"], reuse_table(sd, structure, "newest-first"))
    # block 1, layer 2 reads x_0 (2 channels) and x_1: newest first, x_1 is channel 0
    row = tables["weight"].query("block == 1 and target == 2 and source == 1")
    assert float(row.mean_abs_weight.iloc[0]) == pytest.approx(0.1)
