"""Helpers for the skipping-inference tests."""

from functools import partial

import torch

from skiprnn import SkipGRU, SkipLSTM
from skiprnn_testutil import set_constant_gate as constant_gate

# "*_paper": the paper code's cells (one bias per gate; GRU with the reset gate before W_hn)
CLASSES = {"lstm": SkipLSTM, "gru": SkipGRU,
           "lstm_paper": partial(SkipLSTM, single_bias=True),
           "gru_paper": partial(SkipGRU, single_bias=True, reset_after=False)}


def make_layer(kind, input_size=5, hidden_size=12, num_layers=1, seed=0, gate_std=0.6,
               gate_bias=-0.4, dtype=torch.float32, **kw):
    """A layer whose learned gate gives a varied skip pattern (mix of updates and skips)."""
    torch.manual_seed(seed)
    m = CLASSES[kind](input_size, hidden_size, num_layers=num_layers, dtype=dtype, **kw).eval()
    with torch.no_grad():
        m.update_gate.weight.normal_(0.0, gate_std)
        m.update_gate.bias.fill_(gate_bias)
    return m


# skip patterns of a layer at batch size 1 (``pattern_layer``): a constant Δũ, or a learned gate
GATE_PATTERNS = {
    "dense-regular": dict(delta=0.4),  # a read every 2nd step
    "sparse-regular": dict(delta=0.052),  # every 10th step
    "dense-irregular": dict(gate_std=1.5, gate_bias=-0.4),  # learned: mean interval ≈ 1-2.5
    "sparse-irregular": dict(gate_std=2.0, gate_bias=-2.0),  # learned: mean interval ≈ 3-10
}


def pattern_layer(kind, num_layers, pattern, **kw):
    """``make_layer(kind, num_layers, seed=4, ...)`` with the skip pattern ``GATE_PATTERNS[pattern]``."""
    p = dict(GATE_PATTERNS[pattern])
    delta = p.pop("delta", None)
    layer = make_layer(kind, num_layers=num_layers, seed=4, **p, **kw)
    if delta is not None:
        constant_gate(layer, delta)
    return layer


def random_state(layer, B, seed=1, cum=True):
    """A non-fresh state: random h (and c), a carried Δũ and a partly filled accumulator."""
    g = torch.Generator().manual_seed(seed)
    L, H = layer.num_layers, layer.hidden_size
    dt = next(layer.parameters()).dtype
    hc = [torch.randn(L, B, H, generator=g, dtype=dt) * 0.5
          for _ in range(2 if layer.mode == "lstm" else 1)]
    up = (torch.rand(B, generator=g, dtype=dt) * 0.5 + 0.13)
    c = (torch.rand(B, generator=g, dtype=dt) * 0.3) if cum else torch.zeros(B, dtype=dt)
    return layer.state_type(*hc, up, c)


def run(layer, x, backend, **kw):
    old = layer.backend
    layer.backend = backend
    try:
        with torch.no_grad():
            return layer(x, **kw)
    finally:
        layer.backend = old


def assert_no_ties(update_probs, threshold=0.5, eps=1e-5):
    """The tests compare binary gates bit for bit: keep ũ away from the threshold."""
    gap = (update_probs - threshold).abs().min().item()
    assert gap > eps, f"ũ comes within {gap:g} of τ={threshold}: pick another seed"


def assert_same(ref, got, exact_probs=False, atol=1e-5):
    """Same gates; ũ, outputs and states within ``atol`` (ũ within min(atol, 1e-6): it is a sum of
    sigmoids, tighter than the outputs in float32, and float64 callers' atol=1e-12 holds it too)."""
    assert torch.equal(ref.updates, got.updates), "binary gates differ"
    if exact_probs:
        assert torch.equal(ref.update_probs, got.update_probs)
    else:
        torch.testing.assert_close(got.update_probs, ref.update_probs, atol=min(atol, 1e-6),
                                   rtol=0)
    torch.testing.assert_close(got.output, ref.output, atol=atol, rtol=0)
    assert len(ref.state) == len(got.state)
    for name, a, b in zip(ref.state._fields, ref.state, got.state):
        assert a.shape == b.shape, name
        torch.testing.assert_close(b, a, atol=atol, rtol=0, msg=f"state.{name} differs")
