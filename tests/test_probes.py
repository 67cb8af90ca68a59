"""Data-driven metrics on tiny DenseNets in float64: exact against brute force.

The reference for ablation is the naive one: the connection's slice zeroed in a copy of
the weights and a full forward pass.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from reuse_analysis.models import create_model
from reuse_analysis.probes import connection_table, cross_entropy
from reuse_analysis.prune import apply_cuts
from reuse_analysis.structure import infer_structure

TINY = {"growth_rate": 3, "block_config": (3, 2), "num_init_features": 4, "num_classes": 5}


def _tiny(bn_size: int = 2, seed: int = 0, linear: bool = False) -> torch.nn.Module:
    """A two-block DenseNet with non-trivial batch-norm statistics, in float64, eval mode.

    ``linear``: every batch norm maps x to x/100 + 1, which stays positive for the O(1)
    activations of this network, so no ReLU ever clips.
    """
    torch.manual_seed(seed)
    model = create_model("densenet_bc_100", bn_size=bn_size, **TINY).double().eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5) if not linear else m.running_mean.zero_()
            m.running_var.uniform_(0.5, 2.0) if not linear else m.running_var.fill_(1e4 - m.eps)
            m.weight.data.uniform_(0.5, 1.5) if not linear else m.weight.data.fill_(1.0)
            m.bias.data.uniform_(-0.3, 0.3) if not linear else m.bias.data.fill_(1.0)
    model.classifier.bias.data.uniform_(-0.1, 0.1)
    return model


def _images(n: int = 11, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(
        0, 5, (n,), generator=g
    )


def _naive(model, x, y, loss=cross_entropy) -> pd.DataFrame:
    """One full forward per connection with its slice zeroed."""
    sd = model.state_dict()
    structure = infer_structure(sd)
    table = connection_table(model, x, y, "activation")  # just for the list of connections
    copy = create_model("densenet_bc_100", **model.config.to_dict()).double().eval()
    rows = []
    with torch.no_grad():
        base = model(x)
        for r in table.itertuples():
            cut = pd.DataFrame(
                [(r.block, r.source, r.target)], columns=["block", "source", "target"]
            )
            copy.load_state_dict(apply_cuts(sd, structure, cut))
            logits = copy(x)
            rows.append(
                (
                    r.block,
                    r.source,
                    r.target,
                    float((loss(logits, y) - loss(base, y)).mean()),
                    float(
                        ((base.argmax(1) == y).double() - (logits.argmax(1) == y).double()).mean()
                    ),
                )
            )
    return pd.DataFrame(rows, columns=["block", "source", "target", "loss", "acc"])


@pytest.mark.parametrize("bn_size", [2, 0], ids=["bottleneck", "plain"])
def test_fast_ablation_equals_naive(bn_size):
    model = _tiny(bn_size)
    x, y = _images()
    # chunks of 4 images, at most 9 per pass: several chunks and several variant groups
    fast = connection_table(model, x, y, "ablation", chunk_size=4, batch_size=9)
    assert list(fast.columns[4:]) == ["loss_increase", "normalized", "accuracy_drop"]
    assert fast.attrs["metric"] == "ablation" and fast.attrs["concat_order"] == "oldest-first"
    naive = _naive(model, x, y)
    assert len(fast) == len(naive) == (3 * 4 // 2 + 4) + (2 * 3 // 2 + 3)
    assert fast[["block", "source", "target"]].values.tolist() == (
        naive[["block", "source", "target"]].values.tolist()
    )
    torch.testing.assert_close(
        torch.tensor(fast.loss_increase.values), torch.tensor(naive.loss.values),
        rtol=0, atol=1e-12,
    )  # fmt: skip
    assert fast.accuracy_drop.tolist() == naive.acc.tolist()
    assert fast.loss_increase.abs().max() > 1e-3  # the cuts do change something


def test_ablation_of_an_already_zero_slice_changes_nothing():
    model = _tiny()
    sd = model.state_dict()
    structure = infer_structure(sd)
    cuts = pd.DataFrame(
        [(1, 1, 2), (1, 0, 4), (2, 2, 3)], columns=["block", "source", "target"]
    )  # a layer, the transition, the classifier
    model.load_state_dict(apply_cuts(sd, structure, cuts))
    x, y = _images()
    table = connection_table(model, x, y, "ablation", chunk_size=5)
    cut = table.merge(cuts, on=["block", "source", "target"])
    assert len(cut) == 3
    assert cut.loss_increase.abs().max() < 1e-13
    assert (cut.accuracy_drop == 0).all()
    others = table.drop(index=cut.index)
    assert others.loss_increase.abs().max() > 1e-3


def _linear_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A loss linear in the logits: minus the logit of the true class."""
    return -logits.gather(1, labels[:, None])[:, 0]


def test_taylor_equals_ablation_when_the_loss_is_linear_in_each_weight_slice():
    # No ReLU ever clips, so the logits are affine in each single layer's weights, and
    # with a loss linear in the logits the first-order estimate is exact.
    model = _tiny(linear=True)
    x, y = _images()
    taylor = connection_table(model, x, y, "taylor", loss=_linear_loss, chunk_size=4)
    ablation = connection_table(model, x, y, "ablation", loss=_linear_loss, chunk_size=4)
    assert taylor.attrs["metric"] == "taylor"
    assert "taylor_loss_increase" in taylor.columns
    scale = ablation.loss_increase.abs().max()
    assert scale > 1e-3
    torch.testing.assert_close(
        torch.tensor(taylor.taylor_loss_increase.values),
        torch.tensor(ablation.loss_increase.values),
        rtol=1e-9, atol=1e-9 * scale,
    )  # fmt: skip


def test_taylor_is_only_first_order_with_cross_entropy():
    model = _tiny()
    x, y = _images()
    taylor = connection_table(model, x, y, "taylor", chunk_size=4).taylor_loss_increase
    ablation = connection_table(model, x, y, "ablation", chunk_size=4).loss_increase
    assert (taylor - ablation).abs().max() > 1e-6
    assert taylor.corr(ablation) > 0.5  # but it tracks the exact values


def test_activation_is_the_mean_absolute_partial_output():
    model = _tiny()
    x, y = _images()
    table = connection_table(model, x, y, "activation", chunk_size=4)
    got = table.set_index(["block", "source", "target"])["mean_abs_contribution"]
    seen = {}
    layer = model.features.denseblock1.denselayer2

    def keep_input(module, inputs, output):
        seen["a"] = inputs[0].detach()

    layer.conv1.register_forward_hook(keep_input)
    with torch.no_grad():
        features = model.features(x)
    w = layer.conv1.weight.detach()
    a = seen["a"]  # what layer 2 of block 1 convolves: relu(bn([x0, x1]))
    for source, (start, stop) in enumerate([(0, 4), (4, 7)]):
        part = torch.nn.functional.conv2d(a[:, start:stop], w[:, start:stop])
        assert got[(1, source, 2)] == pytest.approx(float(part.abs().mean()), rel=1e-12)
    pooled = torch.relu(features).mean((2, 3))
    wc = model.classifier.weight.detach()
    c0 = model.features.transition1.conv.out_channels  # ⌊(4 + 3·3)/2⌋ = 6
    for source, (start, stop) in enumerate([(0, c0), (c0, c0 + 3), (c0 + 3, c0 + 6)]):
        part = pooled[:, start:stop] @ wc[:, start:stop].t()
        assert got[(2, source, 3)] == pytest.approx(float(part.abs().mean()), rel=1e-12)


def test_interrupted_ablation_resumes_from_its_cache(tmp_path):
    model = _tiny()
    x, y = _images()
    calls = {"n": 0}

    def flaky(logits, labels):
        calls["n"] += 1
        if calls["n"] == 12:
            raise KeyboardInterrupt
        return cross_entropy(logits, labels)

    flaky.__name__ = "cross_entropy"  # the same loss, as far as the cache is concerned
    with pytest.raises(KeyboardInterrupt):
        connection_table(model, x, y, "ablation", loss=flaky, chunk_size=4, cache_dir=tmp_path)
    (saved,) = tmp_path.glob("ablation-*.json")
    calls["n"] = -(10**6)
    resumed = connection_table(
        model, x, y, "ablation", loss=flaky, chunk_size=4, cache_dir=tmp_path
    )
    passes_after = calls["n"] + 10**6
    fresh_calls = {"n": 0}

    def counting(logits, labels):
        fresh_calls["n"] += 1
        return cross_entropy(logits, labels)

    fresh = connection_table(model, x, y, "ablation", loss=counting, chunk_size=4)
    pd.testing.assert_frame_equal(resumed, fresh)
    assert passes_after < fresh_calls["n"]  # finished columns were not redone
    # a rerun reads everything from the cache
    calls["n"] = 0
    again = connection_table(model, x, y, "ablation", loss=flaky, chunk_size=4, cache_dir=tmp_path)
    assert calls["n"] == 0
    pd.testing.assert_frame_equal(again, fresh)
    assert saved.exists()


def test_densenet_parts_describe_the_model_and_run_as_it_does():
    model = _tiny()
    info = model.feature_info
    assert [i["kind"] for i in info] == [
        "stem", "block", "transition", "block", "head_norm", "classifier"
    ]  # fmt: skip
    # block 1: 4 + 3·3 = 13 channels, the transition keeps 6, block 2: 6 + 2·3 = 12
    assert [i["num_chs"] for i in info] == [4, 13, 6, 12, 12, 5]
    assert [i["reduction"] for i in info] == [1, 1, 2, 2, 2, None]
    parts = model.parts()
    assert parts.transitions[-1] is None and len(parts.blocks) == 2
    x, _ = _images(3)
    with torch.no_grad():
        h = x
        for m in parts.stem:
            h = m(h)
        for block, transition in zip(parts.blocks, parts.transitions, strict=True):
            h = block(h)
            h = transition(h) if transition is not None else h
        h = torch.relu(parts.head_norm(h)).mean(dim=(2, 3))
        torch.testing.assert_close(parts.classifier(h), model(x))
