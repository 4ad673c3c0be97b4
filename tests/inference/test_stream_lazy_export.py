"""Streaming, lazy inputs, runtime threshold and the exported step equal the whole-sequence forward."""

import math

import pytest
import torch

from skiprnn.inference import (SkipStream, evaluate_thresholds, export_step, lazy_forward,
                               plot_thresholds, stream)

from inference_testutil import assert_no_ties, assert_same, make_layer, random_state, run

KINDS = ["lstm", "gru", "lstm_paper", "gru_paper"]


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
    with pytest.raises(ValueError, match=r"frame at step 0 must have shape \(5,\).*got \(4,\)"):
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

    model = M().train()  # evaluate_thresholds runs in eval mode, then restores this
    gen = torch.Generator().manual_seed(3)
    # batches of different sizes: the metric is the batch-size-weighted mean
    data = [(torch.randn(30, B, 5, generator=gen), torch.randn(B, 1, generator=gen))
            for B in (4, 1, 7)]

    def mse(out, b):
        return float(((out - b[1]) ** 2).mean())

    taus = [0.3, 0.5, 0.8]
    rows = evaluate_thresholds(model, data, taus, mse)
    assert model.training and layer.training and head.training
    assert layer.threshold == 0.5
    assert [r["threshold"] for r in rows] == taus
    ups = [r["updates"] for r in rows]
    assert ups[0] >= ups[1] >= ups[2] and ups[0] > ups[2]
    assert 0 < rows[2]["updates_fraction"] <= 1
    # each row against a manual evaluation at its τ
    for tau, row in zip(taus, rows):
        layer.threshold = tau
        model.eval()
        m_sum = u_sum = 0.0
        with torch.no_grad():
            for x, y in data:
                m_sum += mse(model(x), (x, y)) * x.shape[1]
                u_sum += float(layer(x).updates.sum())
        n = sum(x.shape[1] for x, _ in data)
        assert row["metric"] == pytest.approx(m_sum / n, rel=1e-6, abs=1e-9), tau
        assert row["updates"] == pytest.approx(u_sum / n, rel=1e-12), tau
        assert row["updates_fraction"] == pytest.approx(u_sum / (30 * n), rel=1e-12), tau
    metrics = [r["metric"] for r in rows]
    assert len(set(metrics)) == 3  # τ changes the model's output
    path = plot_thresholds(rows, tmp_path / "tau.png", metric_name="MSE")
    assert path.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_export_step_equals_layer(kind):
    """Exported at batch 3 with a dynamic batch dimension, the step runs at batch 3, 1 and 5
    (fresh and continued states) and matches the layer's whole-sequence forward."""
    layer = make_layer(kind, num_layers=2, seed=2)
    f = export_step(layer, batch_size=3, dynamic_batch=True).module()
    gen = torch.Generator().manual_seed(0)  # a draw whose ũ stays 2e-4 away from τ
    for B, fresh in ((3, True), (1, True), (5, True), (5, False)):
        x = torch.randn(25, B, 5, generator=gen)
        hx = None if fresh else random_state(layer, B, seed=B)
        ref = run(layer, x, "reference", hx=hx)
        assert_no_ties(ref.update_probs)
        st = tuple(layer.initial_state(B) if fresh else hx)
        outs, us, ps = [], [], []
        for t in range(25):
            r = f(x[t], *st)
            outs.append(r[0])
            us.append(r[-2])
            ps.append(r[-1])
            st = r[1:-2]
        assert torch.stack(outs).shape == (25, B, 12), B
        assert torch.equal(torch.stack(us), ref.updates), B
        assert 0 < ref.updates.mean() < 1, B  # both updates and skips
        torch.testing.assert_close(torch.stack(outs), ref.output, atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.stack(ps), ref.update_probs, atol=1e-6, rtol=0)
        for name, a, b in zip(ref.state._fields, ref.state, st):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=0, msg=f"state.{name} at B={B}")


def test_export_onnx_optional(tmp_path):
    pytest.importorskip("onnx")
    from skiprnn.inference import export_onnx
    export_onnx(make_layer("gru"), tmp_path / "step.onnx")
    assert (tmp_path / "step.onnx").exists()
