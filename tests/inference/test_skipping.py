"""The skipping inference path equals the training-path reference (backend='reference')."""

import numpy as np
import pytest
import torch

from skiprnn.inference import simulate_skips, skip_rnn_skipping
from skiprnn.metrics import n_skip
from skiprnn.ops.contract import GateOptions
from skiprnn.ops.naive import skip_rnn_naive

from inference_testutil import assert_no_ties, assert_same, constant_gate, make_layer, random_state, run


@pytest.mark.parametrize("kind", ["lstm", "gru", "lstm_paper", "gru_paper"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=lambda v: f"L{v}")
@pytest.mark.parametrize("B", [1, 6], ids=lambda v: f"B{v}")
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("fresh", [True, False], ids=["fresh", "continued"])
def test_equals_reference(kind, num_layers, B, ragged, fresh):
    layer = make_layer(kind, num_layers=num_layers, seed=3)
    T = 37
    x = torch.randn(T, B, 5)
    kw = {}
    if ragged:
        lengths = torch.randint(1, T + 1, (B,))
        lengths[0] = T if B > 1 else 23
        kw["lengths"] = lengths
    if not fresh:
        kw["hx"] = random_state(layer, B)
    ref = run(layer, x, "reference", **kw)
    assert_no_ties(ref.update_probs[ref.update_probs > 0])
    got = run(layer, x, "skipping", **kw)
    assert layer.last_backend == "skipping"
    assert 0.1 < ref.updates.mean() < 0.9, "the test needs a mix of updates and skips"
    assert_same(ref, got)
    if ragged:
        for b, n in enumerate(kw["lengths"].tolist()):
            assert (got.output[n:, b] == 0).all() and (got.updates[n:, b] == 0).all()


def test_auto_routes_no_grad_calls_here():
    layer = make_layer("lstm")
    x = torch.randn(20, 3, 5)
    with torch.no_grad():
        layer(x)
    assert layer.last_backend == "skipping"
    layer(x)  # autograd needed: not the skipping path
    assert layer.last_backend != "skipping"


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_float64(kind):
    layer = make_layer(kind, dtype=torch.float64, seed=5)
    x = torch.randn(30, 4, 5, dtype=torch.float64)
    ref, got = run(layer, x, "reference"), run(layer, x, "skipping")
    assert got.output.dtype == torch.float64
    assert_same(ref, got, atol=1e-12)


@pytest.mark.parametrize("delta,threshold", [(0.3, 0.5), (0.12, 0.5), (0.07, 0.5), (0.3, 0.8),
                                             (0.3, 0.1)])
def test_constant_gate_skip_pattern(delta, threshold):
    layer = make_layer("lstm", threshold=threshold)
    constant_gate(layer, delta)
    x = torch.randn(50, 1, 5)
    got = run(layer, x, "skipping")
    ref = run(layer, x, "reference")
    assert_same(ref, got)
    steps = torch.nonzero(got.updates[:, 0]).flatten()
    gaps = set(torch.diff(steps).tolist())
    assert len(gaps) == 1
    if threshold == 0.5:
        assert gaps == {n_skip(delta) + 1}


def test_batched_rows_differ_and_steps_without_updates_do_nothing():
    layer = make_layer("lstm", seed=7, gate_std=1.5, gate_bias=-1.5)
    x = torch.randn(40, 8, 5)
    ref, got = run(layer, x, "reference"), run(layer, x, "skipping")
    assert_same(ref, got)
    assert (ref.updates.sum(1) == 0).any(), "some steps should have no updating row"
    assert not (ref.updates == ref.updates[:, :1]).all(), "rows should differ"


def test_gate_that_never_opens_again():
    # Δũ underflows to 0 after the first update: the reference never updates again
    layer = make_layer("gru")
    with torch.no_grad():
        layer.update_gate.weight.zero_()
        layer.update_gate.bias.fill_(-200.0)
    x = torch.randn(25, 2, 5)
    ref, got = run(layer, x, "reference"), run(layer, x, "skipping")
    assert_same(ref, got)
    assert got.updates.sum().item() == 2
    n, _, _ = simulate_skips(0.0, 0.0)
    assert n == float("inf")


def test_forced_and_tensor_threshold_fall_back_to_reference():
    layer = make_layer("lstm")
    x = torch.randn(12, 3, 5)
    st = layer.initial_state(3)
    args = ("lstm", x, (st.h, st.c), st.update_prob, st.cum_update_prob, layer.layer_weights(),
            layer.update_gate.weight, layer.update_gate.bias)
    forced = (torch.rand(12, 3) > 0.5).float()
    thr = torch.rand(12, 3)
    with torch.no_grad():
        for opts in (GateOptions(forced=forced, constant_delta=0.0), GateOptions(threshold=thr)):
            a = skip_rnn_naive(*args, opts)
            b = skip_rnn_skipping(*args, opts)
            for ta, tb in zip(a.tensors(), b.tensors()):
                assert torch.equal(ta, tb)


def test_gru_result_fields():
    layer = make_layer("gru", num_layers=2)
    x = torch.randn(9, 2, 5)
    st = layer.initial_state(2)
    res = skip_rnn_skipping("gru", x, (st.h,), st.update_prob, st.cum_update_prob,
                            layer.layer_weights(), layer.update_gate.weight,
                            layer.update_gate.bias)
    assert len(res.state) == 1
    assert [tuple(r.shape) for r in res.tensors()] == [(9, 2, 12), (2, 2, 12), (2,), (2,),
                                                       (9, 2), (9, 2)]
    assert not any(r.requires_grad for r in res.tensors())


def test_simulate_skips_matches_eq6():
    for d in (0.9, 0.3, 0.2, 0.12, 0.07, 0.011):
        n, probs, cum = simulate_skips(d, 0.0, limit=None)
        assert n == n_skip(d) and len(probs) == n
    n, probs, _ = simulate_skips(0.01, 0.0, limit=5)
    assert n == 5 and probs.dtype == np.float32


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_batch_first_and_unbatched(kind):
    layer = make_layer(kind, batch_first=True, seed=2)
    x = torch.randn(3, 25, 5)
    assert_same(run(layer, x, "reference"), run(layer, x, "skipping"))
    xu = torch.randn(25, 5)
    assert_same(run(layer, xu, "reference"), run(layer, xu, "skipping"))
