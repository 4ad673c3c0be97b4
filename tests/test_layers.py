"""Skip LSTM / Skip GRU layers against nn.LSTM / nn.GRU and against the paper's equations."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import skiprnn
from skiprnn import SkipGRU, SkipLSTM
from skiprnn_testutil import open_gate, set_constant_gate

KINDS = [(SkipLSTM, nn.LSTM), (SkipGRU, nn.GRU)]
BACKENDS = ["reference", "auto"]


def _pair(skip_cls, plain_cls, I=3, H=6, L=1, **kw):
    plain = plain_cls(I, H, L, **kw).double()
    skip = skip_cls(I, H, L, **kw).double()
    missing, unexpected = skip.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected
    assert all(k.startswith(("update_gate", "init_state")) for k in missing)
    return skip, plain


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("L", [1, 2, 3])
@pytest.mark.parametrize("skip_cls,plain_cls", KINDS, ids=["lstm", "gru"])
def test_gate_open_equals_plain(skip_cls, plain_cls, L, backend):
    skip, plain = _pair(skip_cls, plain_cls, L=L)
    skip.backend = backend
    open_gate(skip)
    x = torch.randn(9, 4, 3, dtype=torch.double)
    out = skip(x)
    ref, ref_state = plain(x)
    assert torch.equal(out.updates, torch.ones(9, 4, dtype=torch.double))
    torch.testing.assert_close(out.output, ref, atol=1e-10, rtol=0)
    if skip_cls is SkipLSTM:
        torch.testing.assert_close(out.state.h, ref_state[0], atol=1e-10, rtol=0)
        torch.testing.assert_close(out.state.c, ref_state[1], atol=1e-10, rtol=0)
    else:
        torch.testing.assert_close(out.state.h, ref_state, atol=1e-10, rtol=0)


@pytest.mark.parametrize("skip_cls,plain_cls", KINDS, ids=["lstm", "gru"])
def test_gate_open_equals_plain_batch_first_with_h0(skip_cls, plain_cls):
    skip, plain = _pair(skip_cls, plain_cls, L=2, batch_first=True)
    open_gate(skip)
    x = torch.randn(4, 7, 3, dtype=torch.double)
    h0 = torch.randn(2, 4, 6, dtype=torch.double)
    hx = (h0, torch.randn_like(h0)) if skip_cls is SkipLSTM else h0
    out = skip(x, hx)
    ref, _ = plain(x, hx)
    assert out.output.shape == (4, 7, 6) and out.updates.shape == (4, 7)
    torch.testing.assert_close(out.output, ref, atol=1e-10, rtol=0)


# (backend requested, num_layers, grad enabled, backend that must run): dispatch picks the
# reference for stacked layers, the CPU fast path for one layer with autograd, and the skipping
# inference path for one layer without it
COPY_CASES = [("reference", 2, True, "reference"), ("auto", 2, True, "reference"),
              ("auto", 1, True, "cpu"), ("cpu", 1, True, "cpu"),
              ("auto", 1, False, "skipping"), ("skipping", 1, False, "skipping")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("backend,L,grad,used", COPY_CASES,
                         ids=["-".join(map(str, c)) for c in COPY_CASES])
@pytest.mark.parametrize("skip_cls", [SkipLSTM, SkipGRU], ids=["lstm", "gru"])
def test_skipped_steps_copy_state_exactly(skip_cls, backend, L, grad, used, dtype):
    torch.manual_seed(0)
    layer = skip_cls(3, 5, num_layers=L, backend=backend, dtype=dtype)
    set_constant_gate(layer, 0.2)  # update, skip 2, update, ...
    x = torch.randn(20, 3, 3, dtype=dtype)
    with torch.set_grad_enabled(grad):
        out = layer(x)
        assert layer.last_backend == used
        u = out.updates
        assert u[0].eq(1).all() and (u == 0).any()
        for t in range(1, 20):
            skipped = u[t] == 0
            assert torch.equal(out.output[t][skipped], out.output[t - 1][skipped])
            if (~skipped).any():
                assert not torch.equal(out.output[t][~skipped], out.output[t - 1][~skipped])
        # the final state equals the state after the last update, bit for bit
        last = int(torch.nonzero(u[:, 0]).max())
        assert last < 19  # the sequence ends on skipped steps
        steps = layer(x[: last + 1]).state
        assert layer.last_backend == used
    for a, b in zip(out.state[:-1], steps[:-1]):  # h (c) and the carried Δũ; ũ keeps growing
        assert torch.equal(a, b)


def _skip_runs(updates):
    """Lengths of the runs of zeros that follow each update (complete runs only)."""
    runs, cur, seen = [], 0, False
    for v in updates.tolist():
        if v == 1:
            if seen:
                runs.append(cur)
            seen, cur = True, 0
        else:
            cur += 1
    return runs


DELTAS = [0.95, 0.7, 0.3, 0.2, 0.12, 0.09, 0.07, 0.045, 0.03, 0.011]


@pytest.mark.parametrize("skip_cls", [SkipLSTM, SkipGRU], ids=["lstm", "gru"])
def test_skip_runs_match_closed_form(skip_cls):
    layer = skip_cls(2, 4)
    for delta in DELTAS:
        k = 0.5 / delta
        assert abs(k - round(k)) > 1e-3  # away from ties
        set_constant_gate(layer, delta)
        with torch.no_grad():
            u = layer(torch.randn(300, 2, 2), ).updates
        expected = skiprnn.n_skip(delta)
        for b in range(2):
            runs = _skip_runs(u[:, b])
            assert runs and all(r == expected for r in runs), (delta, runs, expected)


def test_n_skip_examples_from_the_paper():
    assert skiprnn.n_skip(0.9) == 0
    assert skiprnn.n_skip(0.3) == 1
    assert skiprnn.n_skip(0.2) == 2
    assert skiprnn.n_skip(0.12) == 4
    assert skiprnn.n_skip(torch.tensor([0.9, 0.3, 0.2, 0.12])).tolist() == [0, 1, 2, 4]
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        skiprnn.n_skip(0.0)


def test_exact_tie_skips_one_more_than_eq6():
    layer = SkipLSTM(2, 4)
    set_constant_gate(layer, 0.25)
    with torch.no_grad():
        layer.update_gate.bias.fill_(0.0)
        layer.update_gate.bias.add_(torch.logit(torch.tensor(0.25, dtype=torch.float64)).item())
    u = layer(torch.randn(30, 1, 2)).updates[:, 0]
    # ũ: 0.25, 0.5 (round(0.5) = 0), 0.75 -> two skips, one more than Eq. 6's 1
    assert set(_skip_runs(u)) == {2}


@pytest.mark.parametrize("skip_cls", [SkipLSTM, SkipGRU], ids=["lstm", "gru"])
def test_first_step_always_updates_and_bias_init(skip_cls):
    layer = skip_cls(2, 4)
    assert layer.update_gate.bias.item() == 1.0
    with torch.no_grad():
        layer.update_gate.bias.fill_(-50.0)
    out = layer(torch.randn(10, 3, 2))
    assert out.updates[0].eq(1).all()
    assert out.updates[1:].eq(0).all()
    assert out.update_probs[0].eq(1).all()


def test_update_probs_follow_eq5():
    layer = SkipGRU(2, 4)
    set_constant_gate(layer, 0.3)
    p = layer(torch.randn(6, 1, 2)).update_probs[:, 0]
    torch.testing.assert_close(p, torch.tensor([1.0, 0.3, 0.6, 0.3, 0.6, 0.3]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("skip_cls", [SkipLSTM, SkipGRU], ids=["lstm", "gru"])
def test_delta_uses_top_layer_feature(skip_cls):
    """Δũ depends on the top layer's new c (LSTM) / h (GRU): check against the reference formula."""
    layer = skip_cls(2, 3, num_layers=2).double()
    x = torch.randn(1, 2, 2, dtype=torch.double)
    out = layer(x)
    # after one (forced) step, the next ũ is Δũ from the top layer's new state
    if skip_cls is SkipLSTM:
        feat = out.state.c[-1]
    else:
        feat = out.state.h[-1]
    delta = torch.sigmoid(layer.update_gate(feat)).squeeze(-1)
    torch.testing.assert_close(out.state.update_prob, delta)
    assert out.state.cum_update_prob.eq(0).all()


def test_budget_loss_gradient_reaches_gate_bias():
    layer = SkipLSTM(2, 8)
    out = layer(torch.randn(20, 4, 2))
    loss = skiprnn.budget_loss(out.updates, 1e-2)
    loss.backward()
    assert layer.update_gate.bias.grad is not None
    assert layer.update_gate.bias.grad.abs().item() > 0
    assert layer.update_gate.weight.grad.abs().sum().item() > 0


@pytest.mark.parametrize("skip_cls", [SkipLSTM, SkipGRU], ids=["lstm", "gru"])
def test_gradcheck_float64(skip_cls):
    """With Δũ fixed (W_p = 0, Δũ = 0.3: update, skip, update, ...) the layer is differentiable in
    its inputs, state and weights, and autograd must match finite differences."""
    layer = skip_cls(2, 3, num_layers=2).double()
    set_constant_gate(layer, 0.3)
    x = torch.randn(5, 2, 2, dtype=torch.double, requires_grad=True)
    h0 = torch.randn(2, 2, 3, dtype=torch.double, requires_grad=True)
    c0 = torch.randn(2, 2, 3, dtype=torch.double, requires_grad=True)

    def f(x, h0, c0):
        hx = (h0, c0) if skip_cls is SkipLSTM else h0
        out = layer(x, hx)
        return out.output, out.state.h

    assert torch.autograd.gradcheck(f, (x, h0, c0))
    # weights: functional call so the parameter itself is the checked input
    from torch.func import functional_call

    params = {k: v.detach().clone().requires_grad_(True) for k, v in layer.named_parameters()
              if k.startswith(("weight_hh_l1", "bias_ih_l0"))}

    def g(*vals):
        p = dict(zip(params, vals))
        hx = (h0.detach(), c0.detach()) if skip_cls is SkipLSTM else h0.detach()
        return functional_call(layer, p, (x.detach(), hx)).output

    assert torch.autograd.gradcheck(g, tuple(params.values()))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("skip_cls", [SkipLSTM, SkipGRU], ids=["lstm", "gru"])
def test_chunked_equals_whole(skip_cls, backend):
    layer = skip_cls(3, 5, backend=backend)
    with torch.no_grad():
        layer.update_gate.bias.fill_(-0.7)
    x = torch.randn(23, 4, 3)
    whole = layer(x)
    state, outs, us, ps = None, [], [], []
    for chunk in (x[:5], x[5:6], x[6:17], x[17:]):
        o = layer(chunk, state)
        state = o.state
        outs.append(o.output), us.append(o.updates), ps.append(o.update_probs)
    assert torch.equal(torch.cat(us), whole.updates)
    torch.testing.assert_close(torch.cat(outs), whole.output, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.cat(ps), whole.update_probs, atol=1e-6, rtol=0)
    for a, b in zip(state, whole.state):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert 0 < whole.updates.mean() < 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("skip_cls", [SkipLSTM, SkipGRU], ids=["lstm", "gru"])
def test_padded_batch_equals_each_sequence_alone(skip_cls, backend):
    layer = skip_cls(3, 5, num_layers=2 if backend == "reference" else 1, batch_first=True,
                     backend=backend).double()
    with torch.no_grad():
        layer.update_gate.bias.fill_(-0.5)
    lengths = torch.tensor([7, 3, 1, 5])
    x = torch.randn(4, 7, 3, dtype=torch.double)
    x_pad = x.clone()
    for b, n in enumerate(lengths):
        x_pad[b, n:] = 1e3  # garbage in the padding must not matter
    out = layer(x_pad, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        alone = layer(x[b:b + 1, :n])
        torch.testing.assert_close(out.output[b, :n], alone.output[0], atol=1e-12, rtol=0)
        assert torch.equal(out.updates[b, :n], alone.updates[0])
        assert out.updates[b, n:].eq(0).all() and out.output[b, n:].eq(0).all()
        assert out.update_probs[b, n:].eq(0).all()
        for a, s in zip(out.state, alone.state):
            torch.testing.assert_close(a[..., b, :] if a.dim() == 3 else a[b], s[..., 0, :] if s.dim() == 3 else s[0])
    loss = skiprnn.budget_loss(out.updates, 1.0, lengths=lengths, batch_first=True)
    assert loss.item() == pytest.approx(out.updates.sum().item() / 4)


@pytest.mark.parametrize("skip_cls", [SkipLSTM, SkipGRU], ids=["lstm", "gru"])
def test_packed_sequence_equals_padded(skip_cls):
    layer = skip_cls(3, 5).double()
    with torch.no_grad():
        layer.update_gate.bias.fill_(-0.5)
    lengths = torch.tensor([4, 6, 2])
    x = torch.randn(6, 3, 3, dtype=torch.double)
    padded = layer(x, lengths=lengths)
    packed = layer(pack_padded_sequence(x, lengths, enforce_sorted=False))
    out, out_lengths = pad_packed_sequence(packed.output)
    assert torch.equal(out_lengths, lengths)
    torch.testing.assert_close(out, padded.output)
    assert torch.equal(packed.updates, padded.updates)
    for a, b in zip(packed.state, padded.state):
        torch.testing.assert_close(a, b)


def test_unbatched_input_and_state_roundtrip():
    layer = SkipLSTM(3, 5, num_layers=2)
    x = torch.randn(8, 3)
    out = layer(x)
    assert out.output.shape == (8, 5) and out.updates.shape == (8,)
    assert out.state.h.shape == (2, 5) and out.state.update_prob.shape == ()
    batched = layer(x.unsqueeze(1))
    torch.testing.assert_close(out.output, batched.output[:, 0])
    # continue from the unbatched state
    whole = layer(torch.cat([x, x]))
    second = layer(x, out.state)
    torch.testing.assert_close(second.output, whole.output[8:], atol=1e-6, rtol=0)


@pytest.mark.parametrize("skip_cls,plain_cls,conv", [(SkipLSTM, nn.LSTM, "from_lstm"),
                                                       (SkipGRU, nn.GRU, "from_gru")],
                         ids=["lstm", "gru"])
def test_from_plain_roundtrip(skip_cls, plain_cls, conv):
    plain = plain_cls(3, 5, 2, batch_first=True)
    skip = getattr(skip_cls, conv)(plain)
    assert skip.batch_first and skip.num_layers == 2
    for k, v in plain.state_dict().items():
        assert torch.equal(skip.state_dict()[k], v)
    back = plain_cls(3, 5, 2, batch_first=True)
    back.load_state_dict({k: v for k, v in skip.state_dict().items() if not k.startswith("update_gate")})
    x = torch.randn(2, 4, 3)
    torch.testing.assert_close(back(x)[0], plain(x)[0])
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in skip.named_parameters()
                                                       if not n.startswith("update_gate")]
    with pytest.raises(TypeError, match="expects an nn"):
        getattr(skip_cls, conv)(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="bidirectional"):
        getattr(skip_cls, conv)(plain_cls(3, 5, 2, bidirectional=True))
    assert getattr(skip_cls, conv)(plain_cls(3, 5, bidirectional=True)).bidirectional


def test_learned_initial_state_broadcasts_and_trains():
    layer = SkipLSTM(2, 4, num_layers=2, learn_init=True)
    for B in (1, 5):
        out = layer(torch.randn(3, B, 2))
        assert out.output.shape == (3, B, 4)
    out.output.sum().backward()
    assert layer.init_state.grad is not None and layer.init_state.grad.abs().sum() > 0
    fresh = layer.initial_state(3)
    assert torch.equal(fresh.h[:, 0], layer.init_state[0, :, 0].detach())


def test_threshold_trades_updates():
    layer = SkipLSTM(2, 8)
    with torch.no_grad():
        layer.update_gate.bias.fill_(-1.2)
    x = torch.randn(100, 4, 2)
    counts = []
    for tau in (0.2, 0.5, 0.9):
        layer.threshold = tau
        counts.append(layer(x).updates.sum().item())
    assert counts[0] > counts[1] > counts[2]


def test_bernoulli_binarizer_is_stochastic_in_training_and_binary():
    layer = SkipGRU(2, 8, binarizer="bernoulli")
    with torch.no_grad():
        layer.update_gate.bias.fill_(-1.0)
    x = torch.randn(200, 2, 2)
    u1, u2 = layer(x).updates, layer(x).updates
    assert set(u1.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(u1, u2)
    u1.sum().backward()
    assert layer.update_gate.bias.grad.abs().item() > 0
    layer.eval()
    assert torch.equal(layer(x).updates, layer(x).updates)


@pytest.mark.parametrize("skip_cls", [SkipLSTM, SkipGRU], ids=["lstm", "gru"])
def test_bernoulli_binarizer_samples_with_probability_u_tilde(skip_cls):
    """In training the Bernoulli binarizer draws u ~ Bernoulli(ũ). With a constant Δũ = 0.3, ũ
    takes the levels 0.3, 0.6, 0.9 (then 1) after an update; at each level the empirical update
    frequency must be that level. Seeded, so deterministic; the tolerance is 5 binomial standard
    deviations sqrt(p(1-p)/n) (n > 10^4 samples per level: at most ±0.013), far from e.g. √p
    (0.55, 0.77, 0.95) or 1 - p."""
    torch.manual_seed(0)
    layer = skip_cls(1, 2, binarizer="bernoulli")
    set_constant_gate(layer, 0.3)
    assert layer.training
    with torch.no_grad():
        out = layer(torch.randn(100, 1000, 1))
    u, p = out.updates, out.update_probs
    assert set(u.unique().tolist()) == {0.0, 1.0}
    for level in (0.3, 0.6, 0.9):
        at = (p - level).abs() < 1e-4
        n = int(at.sum())
        assert n > 10_000, (level, n)
        freq = u[at].mean().item()
        tol = 5 * (level * (1 - level) / n) ** 0.5
        assert abs(freq - level) < tol, (level, freq, tol, n)
    assert u[(p - 1).abs() < 1e-6].eq(1).all()  # ũ = 1 always updates
    assert ((p - 0.3).abs() < 1e-4)[1:][u[:-1] == 1].all()  # the step after an update has ũ = Δũ


def test_dropout_between_layers_only_in_training():
    layer = SkipLSTM(2, 8, num_layers=2, dropout=0.5)
    open_gate(layer)
    x = torch.randn(5, 3, 2)
    layer.eval()
    a, b = layer(x).output, layer(x).output
    assert torch.equal(a, b)
    layer.train()
    assert not torch.equal(layer(x).output, layer(x).output)


@pytest.mark.parametrize("skip_cls", [SkipLSTM, SkipGRU], ids=["lstm", "gru"])
def test_env_backend_overrides_the_layers_choice(skip_cls, monkeypatch):
    """SKIPRNN_BACKEND (a valid value) wins over the layer's backend; unset, 'auto' on CPU with
    autograd picks the CPU fast path."""
    layer = skip_cls(3, 5, backend="auto")
    x = torch.randn(6, 2, 3)
    monkeypatch.delenv("SKIPRNN_BACKEND", raising=False)
    ref = layer(x)
    assert layer.last_backend == "cpu"
    monkeypatch.setenv("SKIPRNN_BACKEND", "reference")
    out = layer(x)
    assert layer.last_backend == "reference"
    torch.testing.assert_close(out.output, ref.output, atol=1e-6, rtol=0)
    assert torch.equal(out.updates, ref.updates)
    # it also overrides an explicit backend, both ways
    layer.backend = "cpu"
    layer(x)
    assert layer.last_backend == "reference"
    layer.backend = "reference"
    monkeypatch.setenv("SKIPRNN_BACKEND", "cpu")
    layer(x)
    assert layer.last_backend == "cpu"
    monkeypatch.delenv("SKIPRNN_BACKEND")
    layer(x)
    assert layer.last_backend == "reference"


@pytest.mark.parametrize("make, grad, expect, why", [
    (lambda: SkipLSTM(3, 5), True, "cpu", "one layer"),
    (lambda: SkipGRU(3, 5), False, "skipping", "no autograd"),
    (lambda: SkipLSTM(3, 5, num_layers=2), True, "reference", "num_layers=2"),
    (lambda: SkipLSTM(3, 5, num_layers=2), False, "skipping", "no autograd"),
    (lambda: SkipGRU(3, 5, binarizer="bernoulli"), True, "reference", "Bernoulli"),
    (lambda: skiprnn.RandomSkipLSTM(3, 5), False, "reference", "random-skip"),
    (lambda: skiprnn.PeriodicSkipGRU(3, 5), True, "reference", "periodic"),
    (lambda: SkipLSTM(3, 5, backend="reference"), False, "reference", "backend='reference'"),
])
def test_backend_for_names_the_backend_the_call_then_uses(make, grad, expect, why, monkeypatch):
    monkeypatch.delenv("SKIPRNN_BACKEND", raising=False)
    layer = make()
    x = torch.randn(2, 6, 3)
    with torch.set_grad_enabled(grad):
        choice = layer.backend_for(x)
        layer(x)
    assert choice.name == layer.last_backend == expect
    assert why in choice.reason
    monkeypatch.setenv("SKIPRNN_BACKEND", "reference")
    assert "SKIPRNN_BACKEND='reference'" in layer.backend_for(x).reason
