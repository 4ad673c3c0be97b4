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
    with pytest.raises(ValueError, match=r"bidirectional=True\) is not supported.*reverse"):
        cls(3, 5, bidirectional=True)
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
