"""Bad input gets a clear error naming what was expected and what came."""

import pytest
import torch

import skiprnn
from skiprnn import RandomSkipLSTM, SkipGRU, SkipLSTM, SkipLSTMCell, SkipRNN


@pytest.fixture
def lstm():
    return SkipLSTM(3, 5, num_layers=2)


def test_wrong_rank(lstm):
    with pytest.raises(ValueError, match=r"2-D .* or 3-D .* got 4-D"):
        lstm(torch.randn(2, 3, 4, 3))
    with pytest.raises(ValueError, match="got 1-D"):
        lstm(torch.randn(3))


def test_wrong_feature_size(lstm):
    with pytest.raises(ValueError, match="input_size. Expected 3, got 4"):
        lstm(torch.randn(5, 2, 4))


def test_integer_input(lstm):
    with pytest.raises(TypeError, match="floating-point.*int64"):
        lstm(torch.ones(5, 2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor or PackedSequence"):
        lstm([[1.0, 2.0, 3.0]])


def test_zero_steps_and_empty_batch(lstm):
    with pytest.raises(ValueError, match="T = 0"):
        lstm(torch.randn(0, 2, 3))
    with pytest.raises(ValueError, match="B = 0"):
        lstm(torch.randn(4, 0, 3))


def test_hx_wrong_shape(lstm):
    x = torch.randn(5, 2, 3)
    h = torch.zeros(2, 2, 5)
    with pytest.raises(ValueError, match=r"Expected h0 size \(2, 2, 5\), got \(1, 2, 5\)"):
        lstm(x, (torch.zeros(1, 2, 5), h))
    with pytest.raises(ValueError, match=r"Expected c0 size \(2, 2, 5\), got \(2, 3, 5\)"):
        lstm(x, (h, torch.zeros(2, 3, 5)))
    with pytest.raises(TypeError, match=r"tuple \(h0, c0\)"):
        lstm(x, h)
    with pytest.raises(ValueError, match="hold 2 tensors"):
        lstm(x, (h,))
    with pytest.raises(ValueError, match=r"Expected update_prob size \(2,\), got \(3,\)"):
        lstm(x, (h, h, torch.ones(3), torch.zeros(2)))
    gru = SkipGRU(3, 5)
    with pytest.raises(ValueError, match=r"Expected h0 size \(1, 2, 5\), got \(1, 2, 4\)"):
        gru(x, torch.zeros(1, 2, 4))


def test_lengths_out_of_range_or_wrong_size(lstm):
    x = torch.randn(5, 2, 3)
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 5\].*\[0, 5\]"):
        lstm(x, lengths=torch.tensor([5, 0]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 5\].*\[3, 6\]"):
        lstm(x, lengths=torch.tensor([6, 3]))
    with pytest.raises(ValueError, match=r"shape \(2,\).*got \(3,\)"):
        lstm(x, lengths=torch.tensor([5, 3, 2]))
    with pytest.raises(TypeError, match="integers"):
        lstm(x, lengths=torch.tensor([5.0, 3.0]))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="hidden_size must be a positive integer, got 0"):
        SkipLSTM(3, 0)
    with pytest.raises(ValueError, match="binarizer must be one of"):
        SkipLSTM(3, 4, binarizer="sign")
    with pytest.raises(ValueError, match=r"threshold must lie in \[0, 1\), got 1.5"):
        SkipGRU(3, 4, threshold=1.5)
    with pytest.raises(ValueError, match="backend must be one of"):
        SkipGRU(3, 4, backend="cuda")
    with pytest.raises(ValueError, match="dropout"):
        SkipGRU(3, 4, dropout=2.0)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, "0.5"])
def test_p_skip_outside_unit_interval(p):
    with pytest.raises(ValueError, match=r"p_skip must be a probability in \[0, 1\)"):
        RandomSkipLSTM(3, 4, p_skip=p)


def test_negative_cost_per_sample():
    u = torch.ones(4, 2)
    with pytest.raises(ValueError, match="cost_per_sample must be a number >= 0, got -1"):
        skiprnn.budget_loss(u, -1e-5 * 1e5)
    with pytest.raises(ValueError, match="target_rate"):
        skiprnn.target_rate_loss(u, 1.5)
    with pytest.raises(ValueError, match=r"updates must be \(T, B\)"):
        skiprnn.budget_loss(torch.ones(2, 2, 2, 2), 0.1)


def test_cells_and_generic_errors():
    with pytest.raises(ValueError, match=r"shape \(B, 3\) or \(3,\), got \(2, 4\)"):
        SkipLSTMCell(3, 4)(torch.randn(2, 4))
    with pytest.raises(ValueError, match="gate_size is required"):
        SkipRNN(torch.nn.Identity())
    with pytest.raises(ValueError, match="unknown model 'skip_rnn'; valid models: lstm, gru"):
        skiprnn.build_rnn("skip_rnn", 2, 3)
    with pytest.raises(ValueError, match="backend 'cpu' supports one layer"):
        SkipLSTM(3, 4, num_layers=2, backend="cpu")(torch.randn(2, 1, 3))


def test_input_dtype_or_device_other_than_the_layers(lstm):
    with pytest.raises(ValueError, match=r"layer's dtype torch.float32, got torch.float64"):
        lstm(torch.randn(5, 2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"layer's dtype torch.float32, got torch.float16"):
        lstm(torch.randn(5, 2, 3, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"input is on meta but the layer's parameters are on cpu"):
        lstm(torch.randn(5, 2, 3, device="meta"))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # under autocast: run in the layer's dtype
        out = SkipLSTM(3, 5)(torch.randn(5, 2, 3, dtype=torch.bfloat16))
    assert out.output.shape == (5, 2, 5) and out.output.dtype == torch.float32


def test_skipping_backend_needs_no_grad(monkeypatch):
    layer = SkipLSTM(3, 5, backend="skipping")
    with pytest.raises(ValueError, match="inference only.*no_grad"):
        layer(torch.randn(5, 2, 3))
    with torch.no_grad():
        assert layer(torch.randn(5, 2, 3)).output.shape == (5, 2, 5)
    monkeypatch.setenv("SKIPRNN_BACKEND", "bogus")
    with pytest.raises(ValueError, match="SKIPRNN_BACKEND must be one of .* got 'bogus'"):
        SkipLSTM(3, 5)(torch.randn(5, 2, 3))


def test_state_in_another_dtype_or_device():
    layer = SkipLSTM(3, 5)
    x = torch.randn(4, 2, 3)
    h = torch.zeros(1, 2, 5)
    with pytest.raises(ValueError, match="h0 must have the input's dtype torch.float32, got torch.float64"):
        layer(x, (h.double(), h))
    with pytest.raises(ValueError, match="c0 is on meta but the input is on cpu"):
        layer(x, (h, h.to("meta")))
    st = layer(x).state  # a state from the layer continues as it is
    assert layer(x, st).output.shape == (4, 2, 5)


def test_cell_input_dtype_other_than_the_cells():
    cell = SkipLSTMCell(3, 5)
    with pytest.raises(ValueError, match=r"layer's dtype torch.float32, got torch.float64"):
        cell(torch.randn(2, 3, dtype=torch.float64))


@pytest.mark.parametrize("cell, n", [(SkipLSTMCell, 2), (skiprnn.SkipGRUCell, 1)])
def test_cell_state_of_the_wrong_length(cell, n):
    c = cell(3, 4)
    x, h = torch.randn(2, 3), torch.zeros(2, 4)
    for k in (n + 1, n + 3):
        with pytest.raises(ValueError, match=f"state must hold {n} tensors .* got {k}"):
            c(x, (h,) * k)
    assert c(x, (h,) * n).output.shape == (2, 4)   # the right lengths still run
    assert c(x, (h,) * n + (torch.ones(2), torch.zeros(2))).output.shape == (2, 4)
