"""The batched skipping engine hands the rest of a sequence to the dense CPU path when the update
fraction so far is above the break-even one (``skiprnn.ops.waves.DENSE_BREAK_EVEN``); either way
the results are the reference's (gates bit for bit, the rest up to float rounding)."""

import pytest
import torch

from skiprnn.ops import skipping, waves

from inference_testutil import (assert_no_ties, assert_same, constant_gate, make_layer,
                                random_state, run)


@pytest.fixture
def dense_calls(monkeypatch):
    """Short blocks (so that short sequences cross several), and a record of the steps each
    dense continuation ran."""
    monkeypatch.setattr(waves, "SWITCH_BLOCK", 16)
    calls = []
    make = skipping._dense_continuation

    def spy(cell, device_type):
        fn = make(cell, device_type)
        if fn is None:
            return None

        def dense(x, *args):
            calls.append(x.shape[0])
            return fn(x, *args)
        return dense

    monkeypatch.setattr(skipping, "_dense_continuation", spy)
    return calls


def check(layer, x, **kw):
    ref = run(layer, x, "reference", **kw)
    assert_no_ties(ref.update_probs[ref.update_probs > 0])
    got = run(layer, x, "skipping", **kw)
    assert layer.last_backend == "skipping"
    assert_same(ref, got)
    again = run(layer, x, "skipping", **kw)
    for a, b in zip((got.output, got.updates, got.update_probs, *got.state),
                    (again.output, again.updates, again.update_probs, *again.state)):
        assert torch.equal(a, b), "the same input must take the same route"
    return ref


@pytest.mark.parametrize("kind", ["gru", "gru_paper"])
def test_all_updates_go_dense(dense_calls, kind):
    layer = make_layer(kind, seed=3)
    constant_gate(layer, 0.9)  # Δũ > τ: every step is an update
    B, T = 6, 70
    ref = check(layer, torch.randn(T, B, 5))
    assert ref.updates.mean() == 1
    assert dense_calls == [T - 16, T - 16], "one switch per call, after the first block"


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_sparse_updates_stay_skipping(dense_calls, kind):
    layer = make_layer(kind, seed=3)
    constant_gate(layer, 0.052)  # an update every 10th step
    ref = check(layer, torch.randn(70, 6, 5))
    assert 0.05 < ref.updates.mean() < 0.15
    assert dense_calls == []


def test_lstm_never_switches_at_measured_constants(dense_calls):
    layer = make_layer("lstm", seed=3)
    constant_gate(layer, 0.9)
    check(layer, torch.randn(70, 6, 5))
    assert dense_calls == []


@pytest.mark.parametrize("kind", ["lstm", "gru", "lstm_paper", "gru_paper"])
@pytest.mark.parametrize("fresh", [True, False], ids=["fresh", "continued"])
def test_irregular_gate_with_lengths_switches_exactly(dense_calls, monkeypatch, kind, fresh):
    # a learned gate, rows at different rates and lengths, a carried state: the state handed over
    # at the block's end (h, c, Δũ, accumulator) continues every row exactly
    monkeypatch.setattr(waves, "DENSE_BREAK_EVEN", {"lstm": ((None, 0.05),), "gru": ((None, 0.05),)})
    layer = make_layer(kind, seed=11, gate_std=1.5, gate_bias=-0.5)
    B, T = 9, 60
    x = torch.randn(T, B, 5) * 2
    lengths = torch.randint(10, T + 1, (B,))
    lengths[2] = T
    lengths[4] = 3  # a row that ends before the first block's end
    kw = {"lengths": lengths} if fresh else {"lengths": lengths, "hx": random_state(layer, B)}
    ref = check(layer, x, **kw)
    valid = torch.arange(T)[:, None] < lengths[None, :]
    assert 0.05 < ref.updates[valid].mean() < 0.95
    assert dense_calls and all(n == T - 16 for n in dense_calls)


def test_break_even_classes():
    assert waves.dense_break_even("lstm", 110) is None
    assert waves.dense_break_even("gru", 110) < waves.dense_break_even("gru", 512) < 1
