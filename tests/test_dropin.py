"""The layers as drop-ins for nn.LSTM / nn.GRU: unpacking, state round trips, the nn surface."""

import pickle

import pytest
import torch
from torch import nn

import skiprnn
from skiprnn import LSTMHidden, SkipGRU, SkipLSTM

CPU_BACKENDS = ["reference", "cpu"]


def _layers(backend):
    return 2 if backend == "reference" else 1     # the fast paths run one layer


def _gate_sometimes_skips(layer):
    """A gate that updates on some steps only, so a lost ũ would change the results."""
    with torch.no_grad():
        layer.update_gate.weight.zero_()
        layer.update_gate.bias.fill_(-0.4)   # Δũ = 0.40: update, skip, update, ...
    return layer


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_lstm_unpacks_like_nn_lstm(backend):
    torch.manual_seed(0)
    m = SkipLSTM(3, 5, num_layers=_layers(backend), backend=backend)
    x = torch.randn(7, 4, 3)
    res = m(x)
    out, (h_n, c_n) = m(x)
    assert torch.equal(out, res.output)
    assert torch.equal(h_n, res.state.h) and torch.equal(c_n, res.state.c)
    assert h_n.shape == c_n.shape == (_layers(backend), 4, 5)
    assert len(res) == 2 and isinstance(res[1], LSTMHidden)
    assert res.updates.shape == res.update_probs.shape == (7, 4)
    assert torch.equal(res[1].update_prob, res.state.update_prob)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gru_unpacks_like_nn_gru(backend):
    torch.manual_seed(0)
    m = SkipGRU(3, 5, backend=backend)
    x = torch.randn(7, 4, 3)
    out, h_n = m(x)
    assert isinstance(h_n, torch.Tensor) and h_n.shape == (1, 4, 5)
    assert torch.equal(h_n, m(x).state.h)
    assert torch.equal(h_n.cum_update_prob, m(x).state.cum_update_prob)


@pytest.mark.parametrize("cls", [SkipLSTM, SkipGRU])
@pytest.mark.parametrize("backend", CPU_BACKENDS + ["skipping"])
@pytest.mark.parametrize("layout", ["time_major", "batch_first", "unbatched"])
def test_returned_hidden_continues_the_sequence_exactly(cls, backend, layout):
    torch.manual_seed(1)
    m = _gate_sometimes_skips(cls(3, 5, num_layers=_layers(backend), backend=backend,
                                  batch_first=layout == "batch_first"))
    if backend == "skipping":          # the inference engine runs without autograd
        m.requires_grad_(False)
    shape = {"time_major": (9, 4, 3), "batch_first": (4, 9, 3), "unbatched": (9, 3)}[layout]
    x = torch.randn(*shape)
    t_dim = 1 if layout == "batch_first" else 0
    first, second = x.narrow(t_dim, 0, 5), x.narrow(t_dim, 5, 4)
    whole = m(x)
    out1, hidden = m(first)
    out2, hidden2 = m(second, hidden)
    # the skipping engine batches the input projection per call, so chunks may differ in the ulp
    tol = 1e-6 if backend == "skipping" else 0.0
    torch.testing.assert_close(torch.cat([out1, out2], t_dim), whole.output, rtol=0, atol=tol)
    u2 = m(second, hidden).updates
    assert torch.equal(torch.cat([m(first).updates, u2], t_dim), whole.updates)
    full2 = m(second, m(first).state)            # the full record continues the same way
    torch.testing.assert_close(full2.output, out2, rtol=0, atol=0)
    # the gate's state rode along: a plain nn-style state from the same tensors starts a fresh gate
    plain = (tuple(t.clone() for t in hidden) if cls is SkipLSTM else hidden.clone())
    assert not hasattr(plain, "update_prob")
    assert not torch.equal(m(second, plain).updates, m(second, hidden).updates)


def test_gru_hidden_does_not_mark_the_callers_h0():
    m = SkipGRU(3, 5)
    h0 = torch.zeros(1, 2, 5)
    _, h_n = m(torch.randn(4, 2, 3), h0)
    assert h_n is not h0 and not hasattr(h0, "update_prob")


def test_result_and_hidden_pickle():
    m = _gate_sometimes_skips(SkipLSTM(3, 5))
    with torch.no_grad():
        res = m(torch.randn(6, 2, 3))
    back = pickle.loads(pickle.dumps(res))
    assert torch.equal(back.output, res.output) and torch.equal(back.updates, res.updates)
    assert isinstance(back[1], LSTMHidden)
    assert torch.equal(back[1].cum_update_prob, res.state.cum_update_prob)


@pytest.mark.parametrize("skip_cls, plain_cls", [(SkipLSTM, nn.LSTM), (SkipGRU, nn.GRU)])
def test_all_weights_and_flatten_parameters_as_nn(skip_cls, plain_cls):
    torch.manual_seed(2)
    plain = plain_cls(3, 5, num_layers=2)
    skip = getattr(skip_cls, "from_" + plain_cls.__name__.lower())(plain)
    assert skip.flatten_parameters() is None and plain.flatten_parameters() is None
    assert len(skip.all_weights) == len(plain.all_weights) == 2
    for ours, theirs in zip(skip.all_weights, plain.all_weights):
        assert [tuple(p.shape) for p in ours] == [tuple(p.shape) for p in theirs]
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
        assert all(isinstance(p, nn.Parameter) for p in ours)
    assert skip.bidirectional is False and skip.proj_size == 0
    one_bias = skip_cls(3, 5, single_bias=True)
    assert [p.shape[0] for p in one_bias.all_weights[0]] == [plain.weight_ih_l0.shape[0]] * 3


@pytest.mark.parametrize("cls", [SkipLSTM, SkipGRU])
def test_nn_options_without_a_skip_counterpart_are_refused_clearly(cls):
    with pytest.raises(ValueError, match=r"bidirectional=True\) supports num_layers=1.*got num_layers=2"):
        cls(3, 5, num_layers=2, bidirectional=True)
    bi = cls(3, 5, bidirectional=True)
    with pytest.raises(ValueError, match="cannot be streamed"):
        bi.stream()
    with pytest.raises(ValueError, match="bidirectional"):
        skiprnn.lazy_forward(bi, torch.randn(6, 3))
    with pytest.raises(ValueError, match="bidirectional"):
        skiprnn.export_step(bi)
    with pytest.raises(TypeError, match="bidirectional must be a bool"):
        cls(3, 5, bidirectional=1)
    with pytest.raises(ValueError, match=r"proj_size > 0.*got proj_size=2"):
        cls(3, 5, proj_size=2)
    with pytest.raises(ValueError, match="non-negative integer"):
        cls(3, 5, proj_size=-1)
    assert cls(3, 5, bidirectional=False, proj_size=0).hidden_size == 5


def test_from_lstm_with_projection_is_refused_clearly():
    with pytest.raises(ValueError, match="proj_size"):
        SkipLSTM.from_lstm(nn.LSTM(3, 5, proj_size=2))


def test_skip_output_is_exported_at_the_top_level():
    assert skiprnn.SkipOutput is type(SkipLSTM(2, 3)(torch.randn(4, 1, 2)))


# ---------------------------------------------------------------------- bidirectional


def _open(layer):
    for gate in layer._update_gates():
        with torch.no_grad():
            gate.weight.zero_()
            gate.bias.fill_(30.0)
    return layer


@pytest.mark.parametrize("skip_cls, plain_cls", [(SkipLSTM, nn.LSTM), (SkipGRU, nn.GRU)])
@pytest.mark.parametrize("grad", [True, False])
def test_bidirectional_with_the_gates_open_equals_nn(skip_cls, plain_cls, grad):
    torch.manual_seed(3)
    plain = plain_cls(3, 5, bidirectional=True, batch_first=True)
    skip = _open(getattr(skip_cls, "from_" + plain_cls.__name__.lower())(plain))
    assert [tuple(p.shape) for w in skip.all_weights for p in w] == \
        [tuple(p.shape) for w in plain.all_weights for p in w]
    x = torch.randn(4, 9, 3)
    lengths = torch.tensor([9, 4, 6, 1])
    with torch.set_grad_enabled(grad):
        out, hidden = skip(x)
        ref, ref_hidden = plain(x)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
        for a, b in zip(hidden if skip_cls is SkipLSTM else [hidden],
                        ref_hidden if skip_cls is SkipLSTM else [ref_hidden]):
            assert a.shape == (2, 4, 5)
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        # padded batch: the reverse direction starts at each sequence's own last step
        res = skip(x, lengths=lengths)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        ref_p, ref_ph = plain(packed)
        ref_p, _ = nn.utils.rnn.pad_packed_sequence(ref_p, batch_first=True, total_length=9)
        torch.testing.assert_close(res.output, ref_p, rtol=0, atol=1e-6)
        torch.testing.assert_close(res.state.h, ref_ph[0] if skip_cls is SkipLSTM else ref_ph,
                                   rtol=0, atol=1e-6)
    assert res.updates.shape == (4, 9, 2)
    assert torch.equal(skiprnn.update_counts(res.updates, batch_first=True), 2.0 * lengths)


@pytest.mark.parametrize("cls", [SkipLSTM, SkipGRU])
def test_bidirectional_directions_are_two_unidirectional_layers(cls):
    """Each direction is the unidirectional layer with that direction's weights and gate, the
    reverse one run over each sequence reversed within its length; the budget counts both."""
    torch.manual_seed(4)
    bi = cls(3, 5, bidirectional=True)
    with torch.no_grad():
        bi.update_gate.bias.fill_(-0.4)
        bi.update_gate_reverse.bias.fill_(0.3)
    fwd, rev = cls(3, 5), cls(3, 5)
    sd = bi.state_dict()
    fwd.load_state_dict({k: v for k, v in sd.items() if "reverse" not in k})
    rev.load_state_dict({k.replace("_reverse", ""): v for k, v in sd.items()
                         if "reverse" in k or not k.startswith(("weight_", "bias_", "update_gate"))})
    x = torch.randn(8, 3, 3)
    lengths = torch.tensor([8, 5, 2])
    res = bi(x, lengths=lengths)
    f = fwd(x, lengths=lengths)
    x_rev = torch.zeros_like(x)
    for b, n in enumerate(lengths.tolist()):
        x_rev[:n, b] = x[:n, b].flip(0)
    r = rev(x_rev, lengths=lengths)
    r_out, r_u = torch.zeros_like(r.output), torch.zeros_like(r.updates)
    for b, n in enumerate(lengths.tolist()):
        r_out[:n, b], r_u[:n, b] = r.output[:n, b].flip(0), r.updates[:n, b].flip(0)
    torch.testing.assert_close(res.output, torch.cat([f.output, r_out], -1), rtol=0, atol=0)
    assert torch.equal(res.updates, torch.stack([f.updates, r_u], -1))
    assert 0 < res.updates[..., 0].sum() < lengths.sum() and 0 < res.updates[..., 1].sum()
    torch.testing.assert_close(res.state.h, torch.cat([f.state.h, r.state.h]), rtol=0, atol=0)
    assert torch.equal(res.state.cum_update_prob,
                       torch.stack([f.state.cum_update_prob, r.state.cum_update_prob]))
    # the budget counts both directions, and both gates get its gradient
    loss = skiprnn.budget_loss(res.updates, 1e-2, lengths=lengths)
    expected = 1e-2 * (f.updates.sum() + r.updates.sum()) / 3
    torch.testing.assert_close(loss, expected)
    frac = skiprnn.update_fraction(res.updates, lengths=lengths)
    assert ((frac > 0) & (frac <= 1)).all()
    loss.backward()
    assert bi.update_gate.bias.grad.abs() > 0 and bi.update_gate_reverse.bias.grad.abs() > 0


def test_bidirectional_learned_initial_state_paper_init_and_repr():
    m = SkipLSTM(3, 5, bidirectional=True, learn_init=True, single_bias=True).paper_init_(joint=True)
    assert m.init_state.shape == (2, 2, 1, 5)
    assert "bidirectional=True" in repr(m)
    assert m.update_gate_reverse.bias.item() == 1.0
    assert torch.all(m.bias_ih_l0_reverse[5:10] == 1.0)       # the forget gate's bias
    out, (h, c) = m(torch.randn(6, 4, 3))
    assert out.shape == (6, 4, 10) and h.shape == c.shape == (2, 4, 5)
    loss = out.sum() + skiprnn.budget_loss(m(torch.randn(6, 4, 3)).updates, 1e-2)
    loss.backward()
    assert m.init_state.grad is not None and m.weight_hh_l0_reverse.grad.abs().sum() > 0
