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


def test_build_rnn_names():
    for name in skiprnn.MODELS:
        m = skiprnn.build_rnn(name, 2, 4, paper_init=True, learn_init=True, batch_first=True)
        out = m(torch.randn(3, 5, 2))
        assert out.output.shape == (3, 5, 4) and out.updates.shape == (3, 5)
    m = skiprnn.build_rnn("skip_lstm", 2, 4, paper_init=True)
    assert torch.equal(m.bias_ih_l0[4:8], torch.ones(4)) and m.update_gate.bias.item() == 1.0
