"""Our layers in the paper's mode against the official TensorFlow cells' equations (issue 11).

The functions ``tf_*`` below are a float64 plain-torch transcription of the equations of the
paper's code (``SkipLSTMCell`` / ``SkipGRUCell`` / their multi-layer versions, TF 1.x; written
from the equations in ``paper.md`` §1.4-1.5, in TF's layout: batch-major input, one joint kernel
``[I + H, G·H]`` per cell applied to ``concat([x, h])``, one bias vector, ``tf.round`` with an
identity gradient, ``tf.minimum``'s gradient, the learned initial state tiled over the batch and
the budget loss ``mean_b Σ_t λ·u_t``). Our layers with ``single_bias=True`` (GRU:
``reset_after=False``) and ``learn_init=True`` must equal them to 1e-12 in outputs, update
probabilities, the exact 0/1 gate sequence and every parameter's gradient, on the reference and
CPU backends (784-step MNIST-shaped inputs included) and on the Triton kernels (interpreted
without a GPU: tiny shapes).

Deliberate difference: the official ``MultiSkipGRUCell`` feeds the raw input to every layer's
candidate kernel (paper.md §1.5, a bug there); the transcription, like our layers, feeds each
layer the previous layer's h, as the multi-layer LSTM does.
"""

import math
import os

import pytest
import torch

import skiprnn
from skiprnn import SkipGRU, SkipLSTM

DT = torch.float64


# ------------------------------------------------------------------------------------------------
# the transcription (TF layout and conventions)
# ------------------------------------------------------------------------------------------------
class _RoundIdentityGrad(torch.autograd.Function):
    """``tf.round`` (half to even) under ``gradient_override_map({'Round': 'Identity'})``."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        return g


def tf_minimum(x, y):
    """``tf.minimum``: its gradient goes to ``x`` where ``x <= y`` (ties included), else ``y``."""
    return torch.where(x <= y, x, y)


def tf_linear(args, kernel, bias):
    return torch.cat(args, 1) @ kernel + bias


def tf_lstm_cell(x, c, h, p):
    """BasicLSTMCell: ``[i, j, f, o] = W[x, h] + b``; forget_bias 1 added inside the sigmoid."""
    i, j, f, o = tf_linear([x, h], p["kernel"], p["bias"]).chunk(4, 1)
    new_c = c * torch.sigmoid(f + 1.0) + torch.sigmoid(i) * torch.tanh(j)
    new_h = torch.tanh(new_c) * torch.sigmoid(o)
    return new_c, new_h


def tf_gru_cell(x, h, p):
    """GRU of the paper's code: ``[r, u] = σ(W_g[x, h] + b_g)``, ``c = tanh(W_c[x, r⊙h] + b_c)``,
    ``h' = u⊙h + (1 - u)⊙c`` (TF's convention: the gate weights the old state)."""
    r, u = torch.sigmoid(tf_linear([x, h], p["gates_kernel"], p["gates_bias"])).chunk(2, 1)
    c = torch.tanh(tf_linear([x, r * h], p["candidate_kernel"], p["candidate_bias"]))
    return u * h + (1 - u) * c


def tf_skip_rnn(kind, x, cells, init, gate, cost_per_sample, minimum=tf_minimum, stats=None):
    """A (multi-layer) Skip LSTM / GRU cell unrolled over ``x`` ``(B, T, I)`` (``dynamic_rnn``).

    ``cells``: per layer the TF variables; ``init``: per layer the learned initial state, ``(1, H)``
    tensors (LSTM: ``(c, h)``), tiled to the batch; ``gate``: ``kernel (H, 1)``, ``bias (1,)``.
    Returns ``(outputs (B, T, H), updates (B, T), u_tilde (B, T), budget_loss)``; ``stats["ties"]``
    counts the exact ties of the min after the first step.
    """
    B, T, _ = x.shape
    L = len(cells)
    if kind == "lstm":
        state = [(c.expand(B, -1), h.expand(B, -1)) for c, h in init]
    else:
        state = [h.expand(B, -1) for h in init]
    update_prob = torch.ones(B, 1, dtype=x.dtype)  # not trainable
    cum_update_prob = torch.zeros(B, 1, dtype=x.dtype)
    outputs, gates, probs = [], [], []
    for t in range(T):
        inp = x[:, t]
        cand = []
        for k in range(L):
            if kind == "lstm":
                new_c, new_h = tf_lstm_cell(inp, *state[k], cells[k])
                cand.append((new_c, new_h))
            else:
                new_h = tf_gru_cell(inp, state[k], cells[k])
                cand.append(new_h)
            inp = new_h
        feature = cand[-1][0] if kind == "lstm" else cand[-1]  # the top layer's new c / new h
        new_update_prob_tilde = torch.sigmoid(feature @ gate["kernel"] + gate["bias"])
        if stats is not None and t > 0:
            stats["ties"] = stats.get("ties", 0) + int((update_prob == 1.0 - cum_update_prob).sum())
        cum = cum_update_prob + minimum(update_prob, 1.0 - cum_update_prob)
        u = _RoundIdentityGrad.apply(cum)
        if kind == "lstm":
            state = [(u * nc + (1 - u) * c, u * nh + (1 - u) * h)
                     for (nc, nh), (c, h) in zip(cand, state)]
            out = state[-1][1]
        else:
            state = [u * nh + (1 - u) * h for nh, h in zip(cand, state)]
            out = state[-1]
        update_prob = u * new_update_prob_tilde + (1 - u) * update_prob
        cum_update_prob = u * 0.0 + (1 - u) * cum
        outputs.append(out)
        gates.append(u[:, 0])
        probs.append(cum[:, 0])
    updates = torch.stack(gates, 1)
    budget = torch.mean(torch.sum(cost_per_sample * updates, 1), 0)
    return torch.stack(outputs, 1), updates, torch.stack(probs, 1), budget


# ------------------------------------------------------------------------------------------------
# TF variables <-> our parameters
# ------------------------------------------------------------------------------------------------
def _lstm_rows(H):
    """Our gate rows [i, f, g, o] as TF kernel columns ([i, j, f, o]; TF's j is our g)."""
    i, j, f, o = (torch.arange(k * H, (k + 1) * H) for k in range(4))
    return torch.cat([i, f, j, o])


def ours_from_tf(kind, tf, I, H):
    """Our state_dict entries from the TF variables (values only; forget_bias folded into b_f)."""
    d = {}
    for k, p in enumerate(tf["cells"]):
        n_in = I if k == 0 else H
        if kind == "lstm":
            rows = _lstm_rows(H)
            K = p["kernel"][:, rows]
            b = p["bias"][rows].clone()
            b[H:2 * H] += 1.0  # TF adds forget_bias = 1 inside σ(f + 1)
        else:
            K = torch.cat([p["gates_kernel"], p["candidate_kernel"]], 1)  # [r, u=z, candidate]
            b = torch.cat([p["gates_bias"], p["candidate_bias"]])
        d[f"weight_ih_l{k}"] = K[:n_in].t()
        d[f"weight_hh_l{k}"] = K[n_in:].t()
        d[f"bias_ih_l{k}"] = b
    d["update_gate.weight"] = tf["gate"]["kernel"].t()
    d["update_gate.bias"] = tf["gate"]["bias"]
    d["init_state"] = torch.stack([torch.stack([h for _, h in tf["init"]]),
                                   torch.stack([c for c, _ in tf["init"]])]) \
        if kind == "lstm" else torch.stack(tf["init"])[None]
    return d


def tf_from_ours(kind, d, I, H):
    """The inverse map, applied to gradients (constant offsets do not change them)."""
    L = sum(1 for n in d if n.startswith("weight_ih_l"))
    cells, init = [], []
    for k in range(L):
        K = torch.cat([d[f"weight_ih_l{k}"], d[f"weight_hh_l{k}"]], 1).t()
        b = d[f"bias_ih_l{k}"]
        if kind == "lstm":
            inv = torch.argsort(_lstm_rows(H))
            cells.append({"kernel": K[:, inv], "bias": b[inv]})
            init.append((d["init_state"][1, k], d["init_state"][0, k]))
        else:
            cells.append({"gates_kernel": K[:, :2 * H], "gates_bias": b[:2 * H],
                          "candidate_kernel": K[:, 2 * H:], "candidate_bias": b[2 * H:]})
            init.append(d["init_state"][0, k])
    return {"cells": cells, "init": init,
            "gate": {"kernel": d["update_gate.weight"].t(), "bias": d["update_gate.bias"]}}


def random_tf_variables(kind, I, H, L, delta, gen, gate_scale=0.3, gate_bias=None):
    """TF variables: Glorot-uniform kernels, random biases, a learned initial state ~ N(0, 1), and
    an update gate with bias logit(``delta``) (or ``gate_bias``) and a kernel of std
    ``gate_scale / sqrt(H)`` (small: Δũ stays near ``delta``)."""

    def glorot(n_in, n_out):
        a = math.sqrt(6.0 / (n_in + n_out))
        return (torch.rand(n_in, n_out, generator=gen, dtype=DT) * 2 - 1) * a

    def rnd(*shape, scale):
        return torch.randn(*shape, generator=gen, dtype=DT) * scale

    cells, init = [], []
    for k in range(L):
        n_in = I if k == 0 else H
        if kind == "lstm":
            cells.append({"kernel": glorot(n_in + H, 4 * H), "bias": rnd(4 * H, scale=0.2)})
            init.append((rnd(1, H, scale=1.0), rnd(1, H, scale=1.0)))
        else:
            cells.append({"gates_kernel": glorot(n_in + H, 2 * H),
                          "gates_bias": 1.0 + rnd(2 * H, scale=0.2),
                          "candidate_kernel": glorot(n_in + H, H),
                          "candidate_bias": rnd(H, scale=0.2)})
            init.append(rnd(1, H, scale=1.0))
    b = math.log(delta / (1 - delta)) if gate_bias is None else gate_bias
    gate = {"kernel": rnd(H, 1, scale=gate_scale / math.sqrt(H)),
            "bias": torch.full((1,), b, dtype=DT)}
    return {"cells": cells, "init": init, "gate": gate}


def leaves_of(tf):
    out = []
    for p in tf["cells"]:
        out += list(p.values())
    for s in tf["init"]:
        out += list(s) if isinstance(s, tuple) else [s]
    return out + [tf["gate"]["kernel"], tf["gate"]["bias"]]


def paper_layer(kind, I, H, L, backend):
    if kind == "lstm":
        return SkipLSTM(I, H, L, batch_first=True, learn_init=True, single_bias=True,
                        backend=backend, dtype=DT)
    return SkipGRU(I, H, L, batch_first=True, learn_init=True, single_bias=True,
                   reset_after=False, backend=backend, dtype=DT)


def compare(kind, T, B, I, H, L, backend, *, seed, delta, lam=1e-2, rate=None, stats=None,
            minimum=tf_minimum, **gate):
    """Run both on the same weights and input; assert equality of everything (1e-12)."""
    gen = torch.Generator().manual_seed(seed)
    tf = random_tf_variables(kind, I, H, L, delta, gen, **gate)
    for t in leaves_of(tf):
        t.requires_grad_(True)
    x = torch.rand(B, T, I, generator=gen, dtype=DT)
    w_out = torch.randn(B, T, H, generator=gen, dtype=DT)
    w_prob = torch.randn(B, T, generator=gen, dtype=DT)

    out_tf, u_tf, p_tf, budget_tf = tf_skip_rnn(kind, x, tf["cells"], tf["init"], tf["gate"], lam,
                                                minimum=minimum, stats=stats)
    loss_tf = (out_tf * w_out).sum() + (p_tf * w_prob).sum() + budget_tf
    grads_tf = torch.autograd.grad(loss_tf, leaves_of(tf))

    layer = paper_layer(kind, I, H, L, backend)
    assert not any(n.startswith("bias_hh") for n, _ in layer.named_parameters())
    with torch.no_grad():
        mine = dict(layer.named_parameters())
        for n, v in ours_from_tf(kind, tf, I, H).items():
            assert mine[n].shape == v.shape, n
            mine[n].copy_(v)
    res = layer(x)
    assert layer.last_backend == backend
    loss = ((res.output * w_out).sum() + (res.update_probs * w_prob).sum()
            + skiprnn.budget_loss(res.updates, lam, batch_first=True))
    loss.backward()

    assert torch.equal(res.updates, u_tf), "binary gate sequences differ"
    if rate is not None:
        assert rate[0] <= res.updates.mean().item() <= rate[1], res.updates.mean().item()
    # no decision within rounding of the threshold (else a flip would be legitimate)
    assert ((p_tf - 0.5).abs() > 1e-9).all()
    torch.testing.assert_close(res.output, out_tf, atol=1e-12, rtol=0)
    torch.testing.assert_close(res.update_probs, p_tf, atol=1e-12, rtol=0)
    torch.testing.assert_close(loss, loss_tf, atol=1e-12, rtol=0)
    grads = tf_from_ours(kind, {n: p.grad for n, p in layer.named_parameters()}, I, H)
    for i, (a, b) in enumerate(zip(leaves_of(grads), grads_tf)):
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a, b, atol=1e-12 * scale, rtol=0, msg=lambda m: f"grad {i}: {m}")
    return res


KINDS = ["lstm", "gru"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_random_input(kind, backend):
    compare(kind, T=37, B=5, I=3, H=7, L=1, backend=backend, seed=1, delta=0.3)


@pytest.mark.parametrize("kind", KINDS)
def test_two_layer_stack(kind):
    """One gate from the top layer, every layer fed the previous layer's candidate h."""
    compare(kind, T=29, B=4, I=3, H=6, L=2, backend="reference", seed=2, delta=0.3)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_mnist_shaped_784_steps(kind, backend):
    """784 steps of one pixel, the gate updating 30-60 % of the steps."""
    compare(kind, T=784, B=3, I=1, H=8, L=1, backend=backend, seed=3, delta=0.36, lam=1e-4,
            rate=(0.3, 0.6))


def _interpreted_triton():
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        pytest.skip("float64 comparison: interpreter only")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU and Triton not in interpreter mode")


@pytest.mark.parametrize("kind", KINDS)
def test_triton_interpreted(kind):
    """The fused Triton kernels (TRITON_INTERPRET=1 without a GPU), tiny shape."""
    _interpreted_triton()
    compare(kind, T=9, B=2, I=2, H=4, L=1, backend="triton", seed=4, delta=0.3)


# a strong update gate: Δũ = σ(...) is exactly 1.0 in float64 on some updates (ties of the min
# after them) and moderate on others, so the tie's gradient reaches the parameters
SATURATING = {"lstm": dict(seed=15, gate_scale=40.0, gate_bias=25.0),
              "gru": dict(seed=29, gate_scale=60.0, gate_bias=30.0)}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_saturated_gate_ties(kind, backend):
    """Δũ == 1.0 right after an update makes min(Δũ, 1 - ũ_acc) tie; TF sends the whole gradient
    to Δũ (torch.minimum would split it 50/50, which changes the parameters' gradients here)."""
    stats = {}
    compare(kind, T=12, B=3, I=2, H=5, L=1, backend=backend, delta=0.3, stats=stats,
            **SATURATING[kind])
    assert stats["ties"] > 0
    with pytest.raises(AssertionError, match="grad"):  # the 50/50 rule is told apart
        compare(kind, T=12, B=3, I=2, H=5, L=1, backend=backend, delta=0.3,
                minimum=torch.minimum, **SATURATING[kind])


BACKENDS = ["reference", "cpu"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", BACKENDS + ["triton"])
@pytest.mark.parametrize("up0,cum0", [(1.0, 0.0), (0.25, 0.75)], ids=["fresh", "continued"])
def test_min_tie_gradient_goes_to_delta(kind, backend, up0, cum0):
    """ũ = cum + min(Δũ, 1 - cum) at an exact tie: ∂ũ/∂Δũ = ∂ũ/∂cum = 1 (TF), not 1/2."""
    if backend == "triton":
        _interpreted_triton()
    layer = (SkipLSTM(2, 3, dtype=DT, backend=backend) if kind == "lstm"
             else SkipGRU(2, 3, dtype=DT, backend=backend))
    B = 2
    st = layer.initial_state(B)
    up = torch.full((B,), up0, dtype=DT, requires_grad=True)
    cum = torch.full((B,), cum0, dtype=DT, requires_grad=True)
    st = st._replace(update_prob=up, cum_update_prob=cum)
    res = layer(torch.rand(4, B, 2, dtype=DT), st)
    assert layer.last_backend == backend
    assert res.updates[0].tolist() == [1.0, 1.0]
    g_up, g_cum = torch.autograd.grad(res.update_probs[0].sum(), [up, cum])
    assert g_up.tolist() == [1.0, 1.0]
    assert g_cum.tolist() == [1.0, 1.0]
