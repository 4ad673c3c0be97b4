"""Baselines, single-step cells and the generic SkipRNN behind the same contract."""

import pytest
import torch
from torch import nn

import skiprnn
from skiprnn import (PeriodicSkipGRU, PeriodicSkipLSTM, PlainGRU, PlainLSTM, RandomSkipGRU,
                     RandomSkipLSTM, SkipGRU, SkipGRUCell, SkipLSTM, SkipLSTMCell, SkipRNN)
from skiprnn_testutil import set_constant_gate


@pytest.mark.parametrize("cls", [PlainLSTM, PlainGRU])
def test_plain_baselines_match_torch_and_update_everywhere(cls):
    m = cls(3, 5, 2, batch_first=True)
    ref = (nn.LSTM if cls is PlainLSTM else nn.GRU)(3, 5, 2, batch_first=True)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(4, 6, 3)
    out = m(x)
    torch.testing.assert_close(out.output, ref(x)[0])
    assert torch.equal(out.updates, torch.ones(4, 6))
    lengths = torch.tensor([6, 2, 4, 1])
    out = m(x, lengths=lengths)
    assert out.updates.sum().item() == lengths.sum().item()
    alone = ref(x[1:2, :2])[0]
    torch.testing.assert_close(out.output[1, :2], alone[0])
    assert out.output[1, 2:].eq(0).all()


@pytest.mark.parametrize("cls", [RandomSkipLSTM, RandomSkipGRU])
def test_random_skip_rate_and_first_step(cls):
    m = cls(2, 4, p_skip=0.7)
    out = m(torch.randn(400, 50, 2))
    u = out.updates
    assert u[0].eq(1).all()
    assert set(u.unique().tolist()) == {0.0, 1.0}
    assert abs(u[1:].mean().item() - 0.3) < 0.02
    # a continued sequence has no forced first step
    cont = m(torch.randn(400, 50, 2), out.state)
    assert abs(cont.updates.mean().item() - 0.3) < 0.02
    assert cont.updates[0].mean() < 0.5
    # skipped steps copy the state
    assert torch.equal(out.output[1:][u[1:] == 0], out.output[:-1][u[1:] == 0])


@pytest.mark.parametrize("cls", [PeriodicSkipLSTM, PeriodicSkipGRU])
@pytest.mark.parametrize("period", [1, 2, 3, 7])
def test_periodic_skip_pattern_and_chunks(cls, period):
    m = cls(2, 4, period=period)
    x = torch.randn(40, 2, 2)
    out = m(x)
    expected = torch.tensor([1.0 if t % period == 0 else 0.0 for t in range(40)])
    assert torch.equal(out.updates[:, 0], expected)
    first = m(x[:11])
    second = m(x[11:], first.state)
    assert torch.equal(torch.cat([first.updates, second.updates]), out.updates)


@pytest.mark.parametrize("cell_cls,layer_cls", [(SkipLSTMCell, SkipLSTM), (SkipGRUCell, SkipGRU)])
def test_cell_steps_equal_layer(cell_cls, layer_cls):
    layer = layer_cls(3, 5).double()
    set_constant_gate(layer, 0.3)
    with torch.no_grad():
        layer.update_gate.weight.normal_(0, 0.3)
    cell = cell_cls(3, 5).double()
    cell.load_state_dict({k.replace("_l0", ""): v for k, v in layer.state_dict().items()})
    x = torch.randn(12, 2, 3, dtype=torch.double)
    whole = layer(x)
    state = None
    for t in range(12):
        o = cell(x[t], state)
        state = o.state
        torch.testing.assert_close(o.output, whole.output[t])
        assert torch.equal(o.update, whole.updates[t])
        torch.testing.assert_close(o.update_prob, whole.update_probs[t])


def test_generic_skiprnn_with_lstmcell_equals_skiplstm():
    layer = SkipLSTM(3, 5).double()
    with torch.no_grad():
        layer.update_gate.bias.fill_(-0.4)
    cell = nn.LSTMCell(3, 5).double()
    cell.load_state_dict({k.replace("_l0", ""): v for k, v in layer.state_dict().items()
                          if not k.startswith("update_gate")})
    gen = SkipRNN(cell).double()
    gen.update_gate.load_state_dict(layer.update_gate.state_dict())
    x = torch.randn(15, 3, 3, dtype=torch.double)
    a, b = layer(x), gen(x)
    torch.testing.assert_close(a.output, b.output)
    assert torch.equal(a.updates, b.updates)
    assert 0 < a.updates.mean() < 1
    # continuation through SkipRNNState
    first = gen(x[:6])
    second = gen(x[6:], first.state)
    torch.testing.assert_close(second.output, b.output[6:])


def test_generic_skiprnn_with_rnncell_and_custom_cell():
    rnn = SkipRNN(nn.RNNCell(2, 4), batch_first=True)
    out = rnn(torch.randn(3, 9, 2), lengths=[9, 4, 1])
    assert out.output.shape == (3, 9, 4) and out.updates.shape == (3, 9)
    assert out.updates[1, 4:].eq(0).all()

    class Leaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 4)

        def forward(self, x, h):
            return 0.5 * h + torch.tanh(self.lin(x))

    gen = SkipRNN(Leaky(), gate_size=4)
    with torch.no_grad():
        gen.update_gate.weight.zero_()
        gen.update_gate.bias.fill_(-0.85)  # Δũ ≈ 0.3: update every other step
    out = gen(torch.randn(6, 2, 2), torch.zeros(2, 4))
    assert out.updates[:, 0].tolist() == [1, 0, 1, 0, 1, 0]


EXPECTED_CLASSES = {
    "lstm": PlainLSTM, "gru": PlainGRU, "skip_lstm": SkipLSTM, "skip_gru": SkipGRU,
    "random_skip_lstm": RandomSkipLSTM, "random_skip_gru": RandomSkipGRU,
    "periodic_skip_lstm": PeriodicSkipLSTM, "periodic_skip_gru": PeriodicSkipGRU,
}


def test_build_rnn_names():
    assert set(skiprnn.MODELS) == set(EXPECTED_CLASSES)
    for name in skiprnn.MODELS:
        m = skiprnn.build_rnn(name, 2, 4, paper_init=True, learn_init=True, batch_first=True)
        assert type(m) is EXPECTED_CLASSES[name], name
        assert m.init_state is not None and m.batch_first
        out = m(torch.randn(3, 5, 2))
        assert out.output.shape == (3, 5, 4) and out.updates.shape == (3, 5)
    m = skiprnn.build_rnn("skip_lstm", 2, 4, paper_init=True)
    assert torch.equal(m.bias_ih_l0[4:8], torch.ones(4)) and m.update_gate.bias.item() == 1.0
    assert skiprnn.build_rnn("random_skip_gru", 2, 4, p_skip=0.3).p_skip == 0.3
    assert skiprnn.build_rnn("periodic_skip_lstm", 2, 4, period=3).period == 3


@pytest.mark.parametrize("name", list(EXPECTED_CLASSES))
def test_build_rnn_paper_init(name):
    """§1.4: Glorot-uniform weights, zero biases but for LSTM's forget bias (+1) and GRU's reset and
    update gate biases (+1), learned-gate bias 1; every layer of the stack."""
    I, H, L = 40, 4, 2   # I >> H: Glorot's bound on W_ih is well below nn.LSTM's 1/√H
    m = skiprnn.build_rnn(name, I, H, L, paper_init=True)
    G = 4 if name.endswith("lstm") else 3
    for k in range(L):
        b_ih, b_hh = getattr(m, f"bias_ih_l{k}"), getattr(m, f"bias_hh_l{k}")
        expected = torch.zeros(G * H)
        if G == 4:
            expected[H:2 * H] = 1.0      # [i, f, g, o]: forget gate
        else:
            expected[:2 * H] = 1.0       # [r, z, n]: reset and update gates, candidate 0
        assert torch.equal(b_ih.detach(), expected), (name, k)
        assert torch.equal(b_hh.detach(), torch.zeros(G * H)), (name, k)
        for w in (getattr(m, f"weight_ih_l{k}"), getattr(m, f"weight_hh_l{k}")):
            bound = (6.0 / sum(w.shape)) ** 0.5
            assert w.abs().max() <= bound and w.abs().max() > 0.8 * bound, (name, k)
    assert getattr(m, "weight_ih_l0").abs().max() < 1 / H ** 0.5 - 0.1   # not nn.LSTM's init
    if name.startswith("skip_"):
        assert m.update_gate.bias.item() == 1.0
    # without paper_init: nn.LSTM's U(-1/√H, 1/√H) biases
    plain = skiprnn.build_rnn(name, I, H, L)
    assert plain.bias_hh_l0.abs().max() > 0


@pytest.mark.parametrize("cell_cls", [nn.RNNCell, nn.LSTMCell], ids=["rnncell", "lstmcell"])
def test_generic_skiprnn_padded_rows_equal_each_sequence_alone(cell_cls):
    rnn = SkipRNN(cell_cls(2, 4), batch_first=True).double()
    with torch.no_grad():
        rnn.update_gate.bias.fill_(-0.5)
    lengths = [9, 4, 1, 6]
    x = torch.randn(4, 9, 2, dtype=torch.double)
    x_pad = x.clone()
    for b, n in enumerate(lengths):
        x_pad[b, n:] = 1e3  # garbage in the padding must not matter
    out = rnn(x_pad, lengths=lengths)
    assert 0 < out.updates.sum() < sum(lengths)
    for b, n in enumerate(lengths):
        alone = rnn(x[b:b + 1, :n])
        torch.testing.assert_close(out.output[b, :n], alone.output[0], atol=1e-12, rtol=0)
        assert torch.equal(out.updates[b, :n], alone.updates[0])
        torch.testing.assert_close(out.update_probs[b, :n], alone.update_probs[0], atol=1e-12,
                                   rtol=0)
        assert out.updates[b, n:].eq(0).all() and out.output[b, n:].eq(0).all()
        assert out.update_probs[b, n:].eq(0).all()
        # the final state is each sequence's own (padding leaves every part untouched)
        cs, cs_alone = out.state.cell_state, alone.state.cell_state
        for a, s in zip(cs if isinstance(cs, tuple) else (cs,),
                        cs_alone if isinstance(cs_alone, tuple) else (cs_alone,)):
            torch.testing.assert_close(a[b], s[0], atol=1e-12, rtol=0)
        torch.testing.assert_close(out.state.update_prob[b], alone.state.update_prob[0],
                                   atol=1e-12, rtol=0)
        torch.testing.assert_close(out.state.cum_update_prob[b], alone.state.cum_update_prob[0],
                                   atol=1e-12, rtol=0)


def _lstmcell_pair(dtype=torch.double):
    """A SkipRNN around nn.LSTMCell with a gate that skips some steps (weights from the seed)."""
    cell = nn.LSTMCell(3, 5).to(dtype)
    gen = SkipRNN(cell).to(dtype)
    with torch.no_grad():
        gen.update_gate.weight.normal_(0, 1.0)
        gen.update_gate.bias.fill_(-0.3)
    return cell, gen


def test_generic_skiprnn_gate_index_picks_the_gate_feature():
    """gate_index: which state tensor feeds Δũ = σ(W_p z + b_p) (default -1: nn.LSTMCell's c)."""
    cell, gen = _lstmcell_pair()
    x = torch.randn(10, 2, 3, dtype=torch.double)

    def delta(z):
        return torch.sigmoid(gen.update_gate(z)).squeeze(-1)

    h1, c1 = cell(x[0])   # the first step always updates
    torch.testing.assert_close(gen(x[:1]).state.update_prob, delta(c1))
    gen.gate_index = 0
    torch.testing.assert_close(gen(x[:1]).state.update_prob, delta(h1))
    assert not torch.allclose(delta(h1), delta(c1))
    # over a sequence: Δũ after step t is σ(W_p h_t + b_p) where u_t = 1, else carried
    out = gen(x)
    assert 0 < out.updates.mean() < 1
    prev = torch.ones(2, dtype=torch.double)
    for t in range(10):
        st = gen(x[:t + 1]).state
        h = st.cell_state[0]
        u = out.updates[t]
        torch.testing.assert_close(st.update_prob, u * delta(h) + (1 - u) * prev)
        prev = st.update_prob
    # the h gate makes different skip decisions than the default c gate on these weights
    gen.gate_index = -1
    assert not torch.equal(gen(x).updates, out.updates)


def test_generic_skiprnn_output_index_picks_the_output():
    """output_index: which state tensor is the per-step output (default 0: h; 1: nn.LSTMCell's c)."""
    _, gen = _lstmcell_pair()
    x = torch.randn(8, 2, 3, dtype=torch.double)
    h_out = gen(x)
    gen.output_index = 1
    c_out = gen(x)
    assert torch.equal(c_out.updates, h_out.updates)   # the gate is unchanged
    assert 0 < c_out.updates.mean() < 1
    for t in range(8):
        h_t, c_t = gen(x[:t + 1]).state.cell_state
        torch.testing.assert_close(c_out.output[t], c_t, atol=0, rtol=0)
        torch.testing.assert_close(h_out.output[t], h_t, atol=0, rtol=0)
    assert not torch.allclose(c_out.output, h_out.output)
    gen.output_index = -1   # negative indices count from the end, as Python's
    assert torch.equal(gen(x).output, c_out.output)
    # the constructor arguments set the same thing
    gen2 = SkipRNN(gen.cell, gate_index=0, output_index=1).double()
    gen2.update_gate.load_state_dict(gen.update_gate.state_dict())
    gen.gate_index, gen.output_index = 0, 1
    assert torch.equal(gen2(x).output, gen(x).output)


@pytest.mark.parametrize("cell_cls", [SkipLSTMCell, SkipGRUCell], ids=["lstm", "gru"])
def test_cell_unbatched_equals_batched_one_row(cell_cls):
    cell = cell_cls(3, 5).double()
    with torch.no_grad():
        cell.update_gate.bias.fill_(-0.3)
        cell.update_gate.weight.normal_(0, 1.0)
    xs = torch.randn(6, 3, dtype=torch.double)
    st_u, st_b, us = None, None, []
    for t in range(6):   # several steps: the unbatched state continues as the batched one
        ou = cell(xs[t], st_u)
        ob = cell(xs[t][None], st_b)
        st_u, st_b = ou.state, ob.state
        assert ou.output.shape == (5,) and ou.update.shape == () and ou.update_prob.shape == ()
        torch.testing.assert_close(ou.output, ob.output[0], atol=0, rtol=0)
        assert torch.equal(ou.update, ob.update[0])
        torch.testing.assert_close(ou.update_prob, ob.update_prob[0], atol=0, rtol=0)
        for a, b in zip(st_u, st_b):
            assert a.shape == b.shape[1:]
            torch.testing.assert_close(a, b[0], atol=0, rtol=0)
        us.append(ou.update.item())
    assert 0 < sum(us) < 6


@pytest.mark.parametrize("unbatched", [False, True])
@pytest.mark.parametrize("cell_cls,torch_cls", [(SkipLSTMCell, nn.LSTMCell),
                                                (SkipGRUCell, nn.GRUCell)], ids=["lstm", "gru"])
def test_cell_accepts_torch_cell_state(cell_cls, torch_cls, unbatched):
    """nn.LSTMCell's ``(h, c)`` / nn.GRUCell's ``h``: a fresh gate (Δũ = 1, so the step updates and
    equals the torch cell), the same as the full state with update_prob 1 and cum 0."""
    cell = cell_cls(3, 5).double()
    ref = torch_cls(3, 5).double()
    ref.load_state_dict({k: v for k, v in cell.state_dict().items()
                         if not k.startswith("update_gate")})
    shape = (5,) if unbatched else (2, 5)
    x = torch.randn(*shape[:-1], 3, dtype=torch.double)
    h, c = torch.randn(shape, dtype=torch.double), torch.randn(shape, dtype=torch.double)
    ones = torch.ones(shape[:-1], dtype=torch.double)
    zeros = torch.zeros_like(ones)
    if cell_cls is SkipLSTMCell:
        out = cell(x, (h, c))
        full = cell(x, skiprnn.SkipLSTMState(h, c, ones, zeros))
        h_ref, c_ref = ref(x, (h, c))
        torch.testing.assert_close(out.state.c, c_ref)
    else:
        out = cell(x, h)
        full = cell(x, skiprnn.SkipGRUState(h, ones, zeros))
        h_ref = ref(x, h)
    assert out.update.eq(1).all()
    torch.testing.assert_close(out.output, h_ref)
    torch.testing.assert_close(out.state.h, h_ref)
    torch.testing.assert_close(out.output, full.output, atol=0, rtol=0)
    for a, b in zip(out.state, full.state):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("cell_cls", [SkipLSTMCell, SkipGRUCell], ids=["lstm", "gru"])
def test_cell_bernoulli_binarizer(cell_cls):
    """binarizer='bernoulli': u ~ Bernoulli(ũ) in training (straight-through gradient), τ = 0.5
    in eval."""
    cell = cell_cls(2, 4, binarizer="bernoulli")
    B = 4000
    x = torch.randn(B, 2)
    h = torch.zeros(B, 4)
    p = torch.full((B,), 0.3, requires_grad=True)   # the carried Δũ: ũ = 0.3 this step
    cum = torch.zeros(B)
    state = (lambda up: skiprnn.SkipLSTMState(h, h, up, cum) if cell_cls is SkipLSTMCell
             else skiprnn.SkipGRUState(h, up, cum))
    o1, o2 = cell(x, state(p)), cell(x, state(p))
    assert set(o1.update.unique().tolist()) == {0.0, 1.0}
    assert abs(o1.update.mean().item() - 0.3) < 0.03
    assert not torch.equal(o1.update, o2.update)
    torch.testing.assert_close(o1.update_prob, p.detach())
    o1.update.sum().backward()
    assert torch.equal(p.grad, torch.ones(B))            # ∂u/∂ũ = 1
    cell.eval()
    e = cell(x, state(p.detach()))
    assert e.update.eq(0).all()                           # round(0.3) = 0
    assert cell(x, state(torch.full((B,), 0.7))).update.eq(1).all()


@pytest.mark.parametrize("cell_cls,layer_cls", [(SkipLSTMCell, SkipLSTM), (SkipGRUCell, SkipGRU)])
def test_cell_steps_gradients_equal_layer(cell_cls, layer_cls):
    """Gradients through a few cell steps (straight-through gate included) equal the layer's over
    the same steps, for the input, every weight and the gate."""
    layer = layer_cls(3, 5).double()
    with torch.no_grad():
        layer.update_gate.bias.fill_(-0.3)
        layer.update_gate.weight.normal_(0, 0.5)
    cell = cell_cls(3, 5).double()
    cell.load_state_dict({k.replace("_l0", ""): v for k, v in layer.state_dict().items()})
    T = 6
    x = torch.randn(T, 2, 3, dtype=torch.double)
    w_out = torch.randn(T, 2, 5, dtype=torch.double)
    w_u, w_p = torch.randn(2, T, 2, dtype=torch.double)

    def loss_of(out, u, p, final_h):
        return (out * w_out).sum() + (u * w_u).sum() + (p * w_p).sum() + final_h.pow(2).sum()

    xl = x.clone().requires_grad_(True)
    whole = layer(xl)
    assert 0 < whole.updates.mean() < 1
    loss_of(whole.output, whole.updates, whole.update_probs, whole.state.h[0]).backward()
    xc = x.clone().requires_grad_(True)
    state, outs, us, ps = None, [], [], []
    for t in range(T):
        o = cell(xc[t], state)
        state = o.state
        outs.append(o.output), us.append(o.update), ps.append(o.update_prob)
    assert torch.equal(torch.stack(us), whole.updates)
    loss_of(torch.stack(outs), torch.stack(us), torch.stack(ps), state.h).backward()
    torch.testing.assert_close(xc.grad, xl.grad)
    lp = dict(layer.named_parameters())
    for name, p in cell.named_parameters():
        q = lp[name if name.startswith("update_gate") else name + "_l0"]
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, q.grad, msg=name)
