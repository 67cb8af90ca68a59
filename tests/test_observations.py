"""The four observations on hand-shaped weights, against untrained and permuted nulls."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from reuse_analysis.cli import cli
from reuse_analysis.metrics import COLUMNS, column_minmax
from reuse_analysis.models import create_model
from reuse_analysis.nulls import permuted_inputs, untrained_like
from reuse_analysis.observations import (
    FAILS,
    HOLDS,
    NOT_APPLICABLE,
    VERDICTS,
    classifier_focus,
    dispersion,
    evenness,
    focus_ratio,
    kept_share,
    observations,
    row0_weakest,
    spread,
)
from reuse_analysis.structure import infer_structure

LAYERS = 6


def _fresh(seed=0):
    torch.manual_seed(seed)
    model = create_model("densenet40", block_config=(LAYERS,) * 3)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    return sd, infer_structure(sd)


def _shaped(factor, seed=0):
    """Fresh weights with each target's source slice scaled by ``factor(block, s, t, n)``."""
    sd, structure = _fresh(seed)
    for block in structure.blocks:
        keys = [(layer.index, layer.first_conv.key) for layer in block.layers]
        keys.append(
            (
                block.num_layers + 1,
                block.extra.key if block.extra_kind == "classifier" else block.extra.conv.key,
            )
        )
        for target, key in keys:
            for s, start, stop in block.source_slices(target):
                sd[key][:, start:stop] *= factor(block.index, s, target, block.num_layers)
    return sd, structure


def _paper_like(b, s, t, n):
    """Broad but uneven use, row 0 weakest in later blocks, classifier on the last layers."""
    if t == n + 1 and b == 3:
        return 3.0 if s > n - 2 else 1.0 + 0.2 * (s % 2)
    if s == 0 and b >= 2:
        return 0.3
    return 1.0 + 0.5 * ((s + t) % 2)


def _dominant(b, s, t, n):
    """Every target reads essentially one source (its predecessor)."""
    return 20.0 if s == t - 1 else 0.01


def _by_number(obs):
    return {o.number: o for o in obs}


# ------------------------------------------------------------------ the statistics
def test_statistics_on_hand_set_rows():
    uniform = np.ones((1, 4))
    one = np.array([[1.0, 0.0, 0.0, 0.0]])
    assert evenness(uniform)[0] == pytest.approx(1.0)
    assert evenness(one)[0] == pytest.approx(0.25)
    assert dispersion(uniform)[0] == 0.0
    assert dispersion(np.array([[1.0, 3.0]]))[0] == pytest.approx(0.5)
    assert row0_weakest(np.array([[0.1, 1.0, 2.0], [1.0, 0.1, 2.0]])).tolist() == [1.0, 0.0]
    # median 1.0: 0.05 is under a tenth of it, 0.2 is not
    assert kept_share(np.array([[0.05, 0.2, 1.0, 1.0, 3.0]]))[0] == pytest.approx(0.8)
    # 9 sources: last quarter = ceil(8 / 4) = 2 sources at 3.0 against seven at 1.0
    assert focus_ratio(np.array([[1.0] * 7 + [3.0, 3.0]]))[0] == pytest.approx(3.0)


# ------------------------------------------------------------------ verdicts
def test_untrained_network_passes_no_observation():
    sd, structure = _fresh()
    obs = _by_number(observations(sd, structure))
    assert obs[1].verdict == NOT_APPLICABLE
    assert obs[2].verdict == NOT_APPLICABLE
    assert obs[3].verdict == FAILS
    assert obs[4].verdict == FAILS
    # the statistic sits on its untrained null
    assert obs[1].value == pytest.approx(obs[1].null["untrained"].mean, abs=0.01)


def test_paper_like_weights_hold_every_observation():
    sd, structure = _shaped(_paper_like)
    obs = _by_number(observations(sd, structure))
    assert [obs[i].verdict for i in (1, 2, 3, 4)] == [HOLDS] * 4
    assert obs[3].value == 1.0  # every layer of blocks 2, 3 with ≥ 3 sources: row 0 weakest
    assert obs[3].null["untrained"].mean < 0.3 and obs[3].null["untrained"].p_value <= 0.05
    (last,) = obs[4].blocks
    assert last.parts == {"uses_whole_block": HOLDS, "concentrates_on_last": HOLDS}
    assert obs[4].value == pytest.approx(3.0 / 1.1 * 1.0, rel=0.1)
    for o in obs.values():
        lo, hi = o.interval
        assert lo <= o.value <= hi


def test_permuting_input_channels_destroys_the_verdicts():
    sd, structure = _shaped(_paper_like)
    obs = _by_number(observations(permuted_inputs(sd, structure, 7), structure))
    assert obs[1].verdict == NOT_APPLICABLE
    assert obs[3].verdict == FAILS
    assert obs[4].verdict == FAILS


def test_one_dominant_source_fails_spread():
    sd, structure = _shaped(_dominant)
    obs = _by_number(observations(sd, structure))
    assert obs[1].verdict == FAILS and obs[2].verdict == FAILS
    assert all(b.verdict == FAILS for b in obs[1].blocks)
    assert obs[1].value < 0.5 and obs[1].interval[1] < 0.5


def test_classifier_that_ignores_early_sources_fails_the_first_half():
    def ignores(b, s, t, n):
        if t == n + 1 and b == 3:
            return 1e-3 if 1 <= s <= 3 else (3.0 if s > n - 2 else 1.0)
        return _paper_like(b, s, t, n)

    sd, structure = _shaped(ignores)
    obs = _by_number(observations(sd, structure))
    (last,) = obs[4].blocks
    assert last.parts["uses_whole_block"] == FAILS
    assert last.parts["concentrates_on_last"] == HOLDS
    assert obs[4].verdict == FAILS
    assert last.extra["uses_whole_block"].value == pytest.approx(4 / 7)


def test_a_failing_block_is_not_hidden_by_the_others():
    def block2_flat(b, s, t, n):
        return (1.0 + 0.5 * ((s + t) % 2)) if b == 2 else _paper_like(b, s, t, n)

    sd, structure = _shaped(block2_flat)
    obs = _by_number(observations(sd, structure))
    verdicts = {b.block: b.verdict for b in obs[3].blocks}
    assert verdicts == {2: FAILS, 3: HOLDS}
    assert obs[3].verdict == FAILS
    assert obs[3].value == 0.0  # the weakest block's statistic


def test_single_block_model_has_nothing_to_measure_for_transitions():
    torch.manual_seed(0)
    model = create_model("densenet40", block_config=(5,))
    sd = model.state_dict()
    obs = _by_number(observations(sd, infer_structure(sd)))
    assert math.isnan(obs[2].value) and obs[2].blocks == ()
    assert math.isnan(obs[3].value)


def test_untrained_null_matches_the_initialiser():
    sd, structure = _fresh()
    fresh = untrained_like(sd, structure, 3)
    key = structure.blocks[1].layers[2].first_conv.key
    w = fresh[key]
    assert float(w.std()) == pytest.approx(math.sqrt(2 / w[0].numel()), rel=0.05)
    cls = fresh[structure.classifier.key]
    assert float(cls.abs().max()) <= 1 / math.sqrt(cls.shape[1])


# ------------------------------------------------------------------ command
def test_observations_json_schema(tmp_path):
    sd, _ = _shaped(_paper_like)
    path = tmp_path / "m.pt"
    torch.save(sd, path)
    result = CliRunner().invoke(cli, ["observations", str(path), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["concat_order"]["order"] == "oldest-first"
    assert payload["concat_order"]["basis"] == "assumed (nothing in the file decides)"
    assert [o["number"] for o in payload["observations"]] == [1, 2, 3, 4]
    for o in payload["observations"]:
        assert o["verdict"] in VERDICTS
        assert isinstance(o["statistic"], float) and len(o["interval"]) == 2
        assert set(o["null"]) == {"untrained", "permuted"}
        assert {"mean", "sd", "p_value"} <= set(o["null"]["untrained"])
        assert o["blocks"] and all("verdict" in b and "block" in b for b in o["blocks"])
    assert [o["verdict"] for o in payload["observations"]] == [HOLDS] * 4
    text = CliRunner().invoke(cli, ["observations", str(path)])
    assert text.exit_code == 0 and "Observation 3: holds" in text.stdout


def test_observations_on_a_bad_file_is_one_error_line(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"nope")
    result = CliRunner().invoke(cli, ["observations", str(bad), "--json"])
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert result.stdout == ""


# ------------------------------------------------------------------ table helpers
def _table(weight, blocks=1, layers=3):
    rows = []
    for b in range(1, blocks + 1):
        for t in range(1, layers + 2):
            kind = "layer" if t <= layers else ("classifier" if b == blocks else "transition")
            for s in range(t):
                rows.append((b, s, t, kind, float(weight(b, s, t, layers))))
    df = pd.DataFrame(rows, columns=COLUMNS[:-1])
    df["normalized"] = column_minmax(df.mean_abs_weight, df.block * 1000 + df.target)
    return df


def test_exact_spread_and_focus_values_of_a_table():
    df = _table(lambda b, s, t, n: [1.0, 0.4, 0.6, 0.5][s] if t == 4 else 1.0)
    sp = spread(df).set_index(["block", "target"])["spread"]
    assert sp[(1, 4)] == 0.75  # 1.0, 0.4, 0.6, 0.5: three of four reach 0.5
    focus = classifier_focus(df)
    assert focus["last_sources"] == 1
    assert focus["ratio"] == pytest.approx(0.5 / np.mean([1.0, 0.4, 0.6]))


def test_untrained_and_barely_trained_checkpoints_are_named():
    from reuse_analysis.nulls import checkpoint_warnings

    sd, structure = _fresh()
    (line,) = checkpoint_warnings(sd, structure, {"concat_order": "oldest-first"})
    assert line.startswith("the weights look untrained (every batch norm's running statistics")
    assert "num_batches_tracked = 0" in line and "initialisation scale" in line
    stepped = dict(sd)  # statistics moved by data, weights untouched: barely trained
    for key in [k for k in sd if k.endswith("running_mean")]:
        stepped[key] = sd[key] + 0.1
    for key in [k for k in sd if k.endswith("num_batches_tracked")]:
        stepped[key] = torch.tensor(5)
    (line,) = checkpoint_warnings(stepped, structure, {"concat_order": "oldest-first"})
    assert line.startswith("the weights look barely trained (")
    shaped, _ = _shaped(_paper_like)
    shaped.update({k: stepped[k] for k in stepped if "running" in k or "tracked" in k})
    assert checkpoint_warnings(shaped, structure, {"concat_order": "oldest-first"}) == []
