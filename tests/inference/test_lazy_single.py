"""lazy_forward at batch size 1 on the CPU (``lazy._lazy_single``): one concatenated GEMV per layer
and read step, NumPy pointwise maths, skipped runs filled in bulk. Everything equals the
training-path reference, and the results and stats equal the generic (SkipStream) path."""

import math

import pytest
import torch

from skiprnn import PeriodicSkipGRU, PeriodicSkipLSTM, RandomSkipLSTM
from skiprnn.inference import lazy, lazy_forward
from skiprnn.ops import skipping

from inference_testutil import (GATE_PATTERNS, assert_no_ties, assert_same, make_layer,
                                pattern_layer, random_state, run)

T = 50


@pytest.fixture
def no_stream(monkeypatch):
    """The B = 1 CPU path must not step a SkipStream."""

    def boom(*a, **k):
        raise AssertionError("SkipStream used on the B = 1 CPU path")

    monkeypatch.setattr(lazy, "SkipStream", boom)


def generic(layer, *args, **kw):
    """lazy_forward through the generic SkipStream loop."""
    old = lazy._single_ok
    lazy._single_ok = lambda layer: False
    try:
        return lazy_forward(layer, *args, **kw)
    finally:
        lazy._single_ok = old


@pytest.mark.parametrize("kind", ["lstm", "gru", "lstm_paper"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=lambda v: f"L{v}")
@pytest.mark.parametrize("pattern", list(GATE_PATTERNS))
@pytest.mark.parametrize("fresh", [True, False], ids=["fresh", "continued"])
@pytest.mark.parametrize("blocks", [False, True], ids=["one-mv", "row-blocks"])
def test_equals_reference(monkeypatch, no_stream, kind, num_layers, pattern, fresh, blocks):
    if blocks:  # H = 12: every concatenated matrix runs as AlternatingMV row blocks
        monkeypatch.setattr(skipping, "MV_BLOCK_BYTES", 700)
    layer = pattern_layer(kind, num_layers, pattern)
    torch.manual_seed(0)
    x = torch.randn(T, 1, 5)
    hx = None if fresh else random_state(layer, 1)
    ref = run(layer, x, "reference", hx=hx)
    assert_no_ties(ref.update_probs[ref.update_probs > 0])
    res = lazy_forward(layer, x[:, 0], hx=hx)
    assert_same(ref, res.output)
    reads = torch.nonzero(ref.updates[:, 0]).flatten().tolist()
    assert res.stats["read_steps"] == [reads] and res.stats["steps_read"] == len(reads)
    assert 0 < len(reads) < T


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_encoder_path_skips_the_stream(no_stream, kind):
    layer = pattern_layer(kind, 2, "dense-irregular", input_size=6)
    torch.manual_seed(1)
    frames = torch.randn(T, 2, 4, 4)
    enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32, 6))
    calls = []

    def encoder(f):
        calls.append(tuple(f.shape))
        return enc(f)

    with torch.no_grad():
        feats = enc(frames.reshape(T, 32)).unsqueeze(1)
    ref = run(layer, feats, "reference")
    fast = lazy_forward(layer, frames, encoder, frame_flops=123.0)
    n_fast = len(calls)
    reads = torch.nonzero(ref.updates[:, 0]).flatten().tolist()
    assert n_fast == len(reads)
    assert calls == [(1, 2, 4, 4)] * len(reads)
    assert_same(ref, fast.output)
    with pytest.raises(AssertionError, match="SkipStream used"):  # the generic path steps one
        generic(layer, frames, encoder, frame_flops=123.0)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_stats_equal_generic_path(kind):
    layer = pattern_layer(kind, 1, "sparse-irregular", input_size=6)
    torch.manual_seed(2)
    frames = torch.randn(T, 2, 4, 4)
    enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32, 6))
    fast = lazy_forward(layer, frames, enc, frame_flops=50.0)
    slow = generic(layer, frames, enc, frame_flops=50.0)
    assert fast.stats == slow.stats
    assert_same(slow.output, fast.output)


@pytest.mark.parametrize("source_kind", ["tensor", "list", "callable"])
def test_sources_and_encoder_inputs(no_stream, source_kind):
    layer = pattern_layer("lstm", 1, "dense-regular", input_size=6)
    torch.manual_seed(3)
    frames = torch.randn(20, 2, 4, 4)
    enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32, 6))
    seen, fetched = [], []

    def encoder(f):
        seen.append(f.clone())
        return enc(f)

    if source_kind == "tensor":
        source, kw = frames, {}
    elif source_kind == "list":
        source, kw = list(frames), {}
    else:
        def source(t):
            fetched.append(t)
            return frames[t]
        kw = dict(length=20)
    res = lazy_forward(layer, source, encoder, **kw)
    reads = list(range(0, 20, 2))
    assert res.stats["read_steps"] == [reads]
    assert res.stats["encoder_calls"] == res.stats["source_calls"] == len(reads)
    assert [s.shape for s in seen] == [torch.Size([1, 2, 4, 4])] * len(reads)
    for s, t in zip(seen, reads):
        assert torch.equal(s[0], frames[t])
    if source_kind == "callable":
        assert fetched == reads
    with torch.no_grad():
        ref = run(layer, enc(frames.reshape(20, 32)).unsqueeze(1), "reference")
    assert_same(ref, res.output)


def test_encoder_output_other_dtype_and_requires_grad(no_stream):
    layer = pattern_layer("gru", 1, "dense-irregular")
    torch.manual_seed(5)
    x = torch.randn(T, 5, dtype=torch.float64)
    w = torch.ones(1, requires_grad=True)

    def encoder(f):  # float64 features that would require grad outside no_grad
        with torch.enable_grad():
            return f * w

    res = lazy_forward(layer, x, encoder)
    ref = run(layer, x.float().unsqueeze(1), "reference")
    assert_same(ref, res.output)
    assert res.output.output.dtype == torch.float32


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_float64_no_bias_learned_init(no_stream, kind):
    layer = make_layer(kind, num_layers=2, seed=6, dtype=torch.float64, bias=False,
                       learn_init=True, gate_std=1.5, gate_bias=-0.4)
    torch.manual_seed(6)
    x = torch.randn(T, 1, 5, dtype=torch.float64)
    ref = run(layer, x, "reference")
    assert_no_ties(ref.update_probs[ref.update_probs > 0])
    res = lazy_forward(layer, x[:, 0])
    assert_same(ref, res.output, atol=1e-12)
    assert res.output.output.dtype == torch.float64


@pytest.mark.parametrize("cls", [PeriodicSkipLSTM, PeriodicSkipGRU])
@pytest.mark.parametrize("fresh", [True, False], ids=["fresh", "continued"])
def test_periodic_baseline(no_stream, cls, fresh):
    torch.manual_seed(7)
    layer = cls(5, 12, num_layers=2, period=3).eval()
    x = torch.randn(T, 1, 5)
    hx = None
    if not fresh:
        hx = run(layer, x[:4], "reference").state  # mid-period
    ref = run(layer, x, "reference", hx=hx)
    res = lazy_forward(layer, x[:, 0], hx=hx)
    assert_same(ref, res.output)
    assert res.stats["steps_read"] == int(ref.updates.sum())


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_gate_never_opens_again(no_stream, kind):
    layer = make_layer(kind, seed=8)
    with torch.no_grad():
        layer.update_gate.weight.zero_()
        layer.update_gate.bias.fill_(-200.0)  # Δũ underflows to 0 after the first update
    x = torch.randn(T, 1, 5)
    ref = run(layer, x, "reference")
    res = lazy_forward(layer, x[:, 0])
    assert_same(ref, res.output)
    assert res.stats["read_steps"] == [[0]]
    assert (res.output.output[1:] == res.output.output[0]).all()


def test_random_gate_still_refused():
    layer = RandomSkipLSTM(5, 12)
    with pytest.raises(ValueError, match="deterministic gate"):
        lazy_forward(layer, torch.randn(10, 5))


def test_bad_inputs_single():
    layer = make_layer("lstm")
    with pytest.raises(ValueError, match=r"frame at step 0 must have shape \(5,\).*got \(4,\)"):
        lazy_forward(layer, torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"encoder output at step 0 must have shape \(1, 5\).*"
                                         r"got \(5,\)"):
        lazy_forward(layer, torch.randn(3, 5), encoder=lambda f: f[0])
    with pytest.raises(ValueError, match=r"encoder output at step 0 .* got list"):
        lazy_forward(layer, torch.randn(3, 5), encoder=lambda f: [0.0] * 5)


def test_state_continues_across_calls(no_stream):
    layer = pattern_layer("lstm", 2, "dense-irregular")
    torch.manual_seed(9)
    x = torch.randn(T, 1, 5)
    ref = run(layer, x, "reference")
    a = lazy_forward(layer, x[:17, 0])
    b = lazy_forward(layer, x[17:, 0], hx=a.output.state)
    got = type(ref)(torch.cat([a.output.output, b.output.output]), b.output.state,
                    torch.cat([a.output.updates, b.output.updates]),
                    torch.cat([a.output.update_probs, b.output.update_probs]))
    assert_same(ref, got)
    assert math.isfinite(float(b.output.state.update_prob))
