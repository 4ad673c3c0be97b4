"""The batched skipping engine (``skiprnn.ops.waves``): updates scheduled per row and run in waves.

Everything is compared with the training-path reference: the gates bit for bit, ũ bit for bit
when Δũ is a constant (with a learned gate Δũ comes from a candidate state that differs from the
reference's by float rounding), outputs and states up to float rounding.
"""

import numpy as np
import pytest
import torch

from skiprnn.inference import simulate_skips
from skiprnn.ops import waves
from skiprnn.ops.contract import GateOptions
from skiprnn.ops.naive import skip_rnn_naive
from skiprnn.ops.skipping import skip_rnn_skipping

from inference_testutil import assert_no_ties, assert_same, constant_gate, make_layer, random_state, run


@pytest.fixture(params=[False, True], ids=["blocks", "tiny-blocks"])
def tiny_blocks(request, monkeypatch):
    """Optionally replay 3 steps per block and fill 2 steps of outputs per block, so that runs
    and outputs cross block boundaries."""
    if request.param:
        monkeypatch.setattr(waves, "REPLAY_BLOCK", 3)
        monkeypatch.setattr(waves, "FILL_BLOCK_BYTES", 1)
    return request.param


@pytest.mark.parametrize("kind", ["lstm", "gru", "lstm_paper", "gru_paper"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=lambda v: f"L{v}")
def test_irregular_learned_gate_with_lengths(tiny_blocks, kind, num_layers):
    # rows at very different rates, finishing at different steps (the state is compacted)
    layer = make_layer(kind, num_layers=num_layers, seed=11, gate_std=1.5, gate_bias=-1.5)
    B, T = 17, 45
    x = torch.randn(T, B, 5) * 2
    lengths = torch.randint(1, T + 1, (B,))
    lengths[3] = T
    ref = run(layer, x, "reference", lengths=lengths)
    assert_no_ties(ref.update_probs[ref.update_probs > 0])
    got = run(layer, x, "skipping", lengths=lengths)
    assert layer.last_backend == "skipping"
    valid = torch.arange(T)[:, None] < lengths[None, :]
    assert 0.1 < ref.updates[valid].mean() < 0.9, "the test needs a mix of updates and skips"
    per_step = ref.updates.sum(1)
    assert ((per_step > 0) & (per_step < valid.sum(1))).sum() >= 8, \
        "rows should update at different steps"
    assert_same(ref, got)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("delta", [0.4, 0.052, 0.3])
@pytest.mark.parametrize("fresh", [True, False], ids=["synced", "continued"])
def test_constant_gate_probs_bitwise(tiny_blocks, kind, delta, fresh):
    # fresh: every row in one gate state (whole-batch waves, skipped outputs copied per wave);
    # continued: random accumulators, rows at different steps (gathered inputs, end fill)
    layer = make_layer(kind, seed=4)
    constant_gate(layer, delta)
    B, T = 9, 50
    x = torch.randn(T, B, 5)
    kw = {} if fresh else {"hx": random_state(layer, B)}
    ref = run(layer, x, "reference", **kw)
    got = run(layer, x, "skipping", **kw)
    assert_same(ref, got, exact_probs=True)
    rows_alike = bool((ref.updates == ref.updates[:, :1]).all())
    assert rows_alike == fresh


@pytest.mark.parametrize("kind,kw", [("lstm", {}), ("gru", {}), ("gru", {"reset_after": False})],
                         ids=["lstm", "gru", "gru_paper"])
def test_mask_with_holes(kind, kw):
    # a general (T, B) mask, not a prefix: padding steps in the middle neither update nor move ũ
    layer = make_layer(kind, num_layers=2, seed=6, **kw)
    B, T = 7, 40
    g = torch.Generator().manual_seed(2)
    x = torch.randn(T, B, 5, generator=g)
    mask = (torch.rand(T, B, generator=g) > 0.3).float()
    st = random_state(layer, B)
    args = (kind, x, tuple(st[:-2]), st.update_prob, st.cum_update_prob, layer.layer_weights(),
            layer.update_gate.weight, layer.update_gate.bias, GateOptions(mask=mask, **kw))
    with torch.no_grad():
        ref = skip_rnn_naive(*args)
        got = skip_rnn_skipping(*args)
    assert torch.equal(ref.updates, got.updates)
    assert ((got.updates == 0) | (mask == 1)).all()
    assert (got.update_probs[mask == 0] == 0).all() and (got.output[mask == 0] == 0).all()
    for a, b in zip(ref.tensors(), got.tensors()):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)


@pytest.mark.parametrize("up,cum,thr", [(0.4, 0.0, 0.5), (0.052, 0.0, 0.5), (0.3, 0.45, 0.5),
                                        (0.9, 0.3, 0.5), (0.7, 0.2, 0.95), (0.3, 0.0, 0.1),
                                        (1e-9, 0.0, 0.5), (0.011, 0.0, 0.5)])
def test_replay_equals_simulate_skips(tiny_blocks, up, cum, thr):
    # one row at a time and all in one call, against the scalar replay of Eq. 6
    T = 120
    rows = np.arange(4)
    starts = np.array([0, 3, 50, 110])
    f32 = np.float32
    replay = waves.GateReplay(T, 4, None, thr, f32)
    at, cum_end = replay.next_update(rows, starts, np.full(4, up, f32), np.full(4, cum, f32))
    rows_replay = waves.GateReplay(T, 4, None, thr, f32)
    for r, s in enumerate(starts):
        a1, c1 = rows_replay.next_update(rows[r:r + 1], starts[r:r + 1], np.array([up], f32),
                                         np.array([cum], f32))
        assert a1[0] == at[r]
        assert at[r] < T or c1[0] == cum_end[r]  # cum_end: for rows without a further update
    np.testing.assert_array_equal(rows_replay.probs, replay.probs)
    n, probs, c_after = simulate_skips(up, cum, thr, limit=T)
    for r, s in enumerate(starts):
        left = T - s
        skipped = min(n, left)
        np.testing.assert_array_equal(replay.probs[s:s + skipped, r], probs[:skipped])
        if n < left:  # the update: ũ crosses τ on the next step
            assert at[r] == s + n
            last = c_after if n else f32(cum)
            assert replay.probs[s + n, r] == last + min(f32(up), f32(1) - last) > thr
            assert (replay.probs[s + n + 1:, r] == 0).all()
        else:
            assert at[r] == T and cum_end[r] == probs[left - 1]


def test_replay_rejects_a_mask_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"valid must have shape \(5, 2\), got \(5, 3\)"):
        waves.GateReplay(5, 2, np.ones((5, 3), bool), 0.5, np.float32)


def test_rows_without_any_update():
    # a continued state whose accumulator never reaches τ: no wave at all, state unchanged
    layer = make_layer("lstm")
    constant_gate(layer, 1e-6)
    B = 3
    st = random_state(layer, B)
    st = layer.state_type(st.h, st.c, torch.full((B,), 1e-6), torch.full((B,), 0.2))
    x = torch.randn(10, B, 5)
    got = run(layer, x, "skipping", hx=st)
    ref = run(layer, x, "reference", hx=st)
    assert got.updates.sum() == 0
    assert_same(ref, got, exact_probs=True)
    assert torch.equal(got.output, st.h[-1].expand(10, B, -1))
