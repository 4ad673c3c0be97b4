"""Streaming, lazy inputs, runtime threshold and the exported step equal the whole-sequence forward."""

import math

import pytest
import torch

from skiprnn.inference import (SkipStream, evaluate_thresholds, export_step, lazy_forward,
                               plot_thresholds, stream)

from inference_testutil import assert_no_ties, assert_same, make_layer, random_state, run

KINDS = ["lstm", "gru"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("B", [1, 4], ids=lambda v: f"B{v}")
@pytest.mark.parametrize("fresh", [True, False], ids=["fresh", "continued"])
def test_stream_step_equals_whole(kind, B, fresh):
    layer = make_layer(kind, num_layers=2, seed=4)
    x = torch.randn(33, B, 5)
    hx = None if fresh else random_state(layer, B)
    ref = run(layer, x, "reference", hx=hx)
    assert_no_ties(ref.update_probs)
    st = stream(layer, B, state=hx)
    outs, us = [], []
    for t in range(x.shape[0]):
        o, u = st.step(x[t])
        outs.append(o)
        us.append(u)
    assert torch.equal(torch.stack(us), ref.updates)
    torch.testing.assert_close(torch.stack(outs), ref.output, atol=1e-5, rtol=0)
    for a, b in zip(ref.state, st.state):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_stream_skip_ahead_never_needs_skipped_inputs(kind):
    layer = make_layer(kind, seed=6)
    x = torch.randn(60, 5)
    ref = run(layer, x, "reference")
    st = SkipStream(layer)
    outs, t, touched = [], 0, []
    while t < 60:
        n = st.skips_ahead
        assert n == st.next_read_in
        if n:
            n = min(n, 60 - t)
            h = st.skip(n)
            outs += [h[0]] * n
            t += n
            continue
        touched.append(t)
        o, u = st.step(x[t])
        assert u.item() == 1.0
        outs.append(o)
        t += 1
    assert touched == torch.nonzero(ref.updates).flatten().tolist()
    torch.testing.assert_close(torch.stack(outs), ref.output, atol=1e-5, rtol=0)


def test_stream_feed_chunks_equal_whole():
    layer = make_layer("lstm", seed=8)
    x = torch.randn(50, 3, 5)
    ref = run(layer, x, "reference")
    st = SkipStream(layer, 3)
    parts = [st.feed(x[:7]), st.feed(x[7:30]), st.feed(x[30:])]
    got = type(ref)(torch.cat([p.output for p in parts]), parts[-1].state,
                    torch.cat([p.updates for p in parts]), torch.cat([p.update_probs for p in parts]))
    assert_same(ref, got)
    assert st.t == 50


def test_stream_bad_inputs():
    layer = make_layer("lstm")
    st = SkipStream(layer, 2)
    with pytest.raises(ValueError, match=r"step\(None\)"):
        st.step(None)  # the first step always reads
    with pytest.raises(ValueError, match=r"\(2, 5\).*got \(2, 3\)"):
        st.step(torch.randn(2, 3))
    with pytest.raises(ValueError, match="is read"):
        st.skip(1)
    with pytest.raises(ValueError, match="batch_size"):
        SkipStream(layer, 0)


def test_gate_never_opens_again_stream():
    layer = make_layer("gru")
    with torch.no_grad():
        layer.update_gate.weight.zero_()
        layer.update_gate.bias.fill_(-200.0)
    st = SkipStream(layer)
    st.step(torch.randn(5))
    assert st.skips_ahead == math.inf


@pytest.mark.parametrize("kind", KINDS)
def test_lazy_encoder_called_exactly_on_read_steps(kind):
    layer = make_layer(kind, input_size=6, seed=9)
    torch.manual_seed(0)
    frames = torch.randn(45, 2, 4, 4)
    enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32, 6))
    calls, fetched = [], []

    def encoder(f):
        calls.append(f.shape[0])
        return enc(f)

    def source(t):
        fetched.append(t)
        return frames[t]

    with torch.no_grad():
        feats = enc(frames.reshape(45, 32)).unsqueeze(1)
    ref = run(layer, feats, "reference")
    res = lazy_forward(layer, source, encoder, length=45, frame_flops=1000.0)
    read = torch.nonzero(ref.updates[:, 0]).flatten().tolist()
    assert fetched == read and len(calls) == len(read) and all(c == 1 for c in calls)
    assert res.stats["read_steps"][0] == read and res.stats["encoder_calls"] == len(read)
    assert_same(ref, res.output)
    assert res.stats["flops_saved"] > 0
    assert res.stats["encoder_flops_saved"] == (45 - len(read)) * 1000.0


def test_lazy_batched_source_encodes_only_reading_rows():
    layer = make_layer("lstm", seed=7, gate_std=1.5, gate_bias=-1.5)
    x = torch.randn(40, 3, 5)
    ref = run(layer, x, "reference")
    sizes = []

    def encoder(f):
        sizes.append(f.shape[0])
        return f

    res = lazy_forward(layer, x, encoder, batch_size=3)
    assert_same(ref, res.output)
    assert sum(sizes) == int(ref.updates.sum()) == res.stats["frames_encoded"]
    assert res.stats["source_calls"] == int((ref.updates.sum(1) > 0).sum())


@pytest.mark.parametrize("B", [1, 3])
def test_lazy_batch_first_layer_keeps_its_layout(B):
    """A batch_first layer gets (B, T, ...) results from lazy_forward, as from its forward."""
    layer = make_layer("lstm", seed=11, batch_first=True)
    x = torch.randn(B, 30, 5)
    ref = run(layer, x, "reference")
    res = lazy_forward(layer, lambda t: x[:, t] if B > 1 else x[0, t], length=30, batch_size=B)
    assert res.output.output.shape == (B, 30, 12) and res.output.updates.shape == (B, 30)
    assert_same(ref, res.output)


def test_lazy_bad_inputs():
    layer = make_layer("lstm")
    with pytest.raises(ValueError, match="holds 3 frames, expected at least length=10"):
        lazy_forward(layer, [torch.randn(5)] * 3, length=10)
    with pytest.raises(ValueError, match=r"frame at step 0 must have shape \(1, 5\).*got \(1, 4\)"):
        lazy_forward(layer, [torch.randn(4)] * 3)
    with pytest.raises(ValueError, match=r"encoder output at step 0 must have shape \(1, 5\)"):
        lazy_forward(layer, [torch.randn(4)] * 3, encoder=lambda f: f)
    with pytest.raises(ValueError, match="needs length"):
        lazy_forward(layer, lambda t: torch.randn(5))
    with pytest.raises(ValueError, match="batch of 2 frames"):
        lazy_forward(layer, torch.randn(4, 3, 5), batch_size=2)


def test_evaluate_thresholds(tmp_path):
    layer = make_layer("lstm", seed=1)
    model = torch.nn.Sequential()
    head = torch.nn.Linear(12, 1)

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.head = layer, head

        def forward(self, x):
            return self.head(self.rnn(x).output[-1])

    model = M()
    data = [(torch.randn(30, 4, 5), torch.randn(4, 1)) for _ in range(3)]
    rows = evaluate_thresholds(model, data, [0.3, 0.5, 0.8],
                               lambda out, b: float(((out - b[1]) ** 2).mean()))
    assert [r["threshold"] for r in rows] == [0.3, 0.5, 0.8]
    ups = [r["updates"] for r in rows]
    assert ups[0] >= ups[1] >= ups[2] and ups[0] > ups[2]
    assert layer.threshold == 0.5
    assert 0 < rows[2]["updates_fraction"] <= 1
    path = plot_thresholds(rows, tmp_path / "tau.png", metric_name="MSE")
    assert path.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_export_step_equals_layer(kind):
    layer = make_layer(kind, num_layers=2, seed=2)
    x = torch.randn(25, 3, 5)
    ref = run(layer, x, "reference")
    f = export_step(layer, batch_size=3, dynamic_batch=True).module()
    st = tuple(layer.initial_state(3))
    outs, us, ps = [], [], []
    for t in range(25):
        r = f(x[t], *st)
        outs.append(r[0])
        us.append(r[-2])
        ps.append(r[-1])
        st = r[1:-2]
    assert torch.equal(torch.stack(us), ref.updates)
    torch.testing.assert_close(torch.stack(outs), ref.output, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.stack(ps), ref.update_probs, atol=1e-6, rtol=0)


def test_export_onnx_optional(tmp_path):
    pytest.importorskip("onnx")
    from skiprnn.inference import export_onnx
    export_onnx(make_layer("gru"), tmp_path / "step.onnx")
    assert (tmp_path / "step.onnx").exists()
