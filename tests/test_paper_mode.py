"""The paper-mode options of the layers (issue 11): one bias per gate, the paper's GRU candidate
(``reset_after=False``), TF's joint-kernel initialisation, on every layer class and builder.
(Equality with the official cells' equations: ``test_paper_exact.py``.)"""

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from skiprnn import (PeriodicSkipGRU, PlainGRU, PlainLSTM, RandomSkipGRU, SkipGRU, SkipGRUCell,
                     SkipLSTM, SkipLSTMCell, build_rnn, flops_per_update)
from skiprnn.ops.cells import cell_spec

DT = torch.float64


def _copy_params(dst, src):
    """Copy the parameters ``src`` has (the RNN weights) into ``dst``."""
    with torch.no_grad():
        theirs = dict(src.named_parameters())
        for n, p in dst.named_parameters():
            if n in theirs:
                p.copy_(theirs[n])


@pytest.mark.parametrize("cls", [SkipLSTM, SkipGRU])
def test_single_bias_has_no_bias_hh_and_adam_moves_the_bias_like_tf(cls):
    """Two biases get identical gradients, so Adam moves their sum twice as fast; one bias moves
    as TF's does. Same function when bias_hh = 0."""
    torch.manual_seed(0)
    two = cls(3, 5, dtype=DT)
    one = cls(3, 5, single_bias=True, dtype=DT)
    assert "bias_hh_l0" not in dict(one.named_parameters())
    assert "bias_hh_l0" not in one.state_dict() and "_zero_bias" not in one.state_dict()
    assert "single_bias=True" in repr(one)
    _copy_params(one, two)
    with torch.no_grad():
        two.bias_hh_l0.zero_()
    x = torch.randn(11, 4, 3, dtype=DT)
    for m in (one, two):
        m.last_loss = m(x).output.pow(2).sum()
    torch.testing.assert_close(one.last_loss, two.last_loss, atol=1e-12, rtol=0)
    moved = []
    for m in (one, two):
        before = m.bias_ih_l0.detach().clone() + (0 if m.single_bias else m.bias_hh_l0.detach())
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        m.last_loss.backward()
        opt.step()
        after = m.bias_ih_l0.detach() + (0 if m.single_bias else m.bias_hh_l0.detach())
        moved.append((after - before).abs())
    big = moved[1] > 1e-6
    torch.testing.assert_close(moved[1][big], 2 * moved[0][big], rtol=1e-6, atol=0)


def test_single_bias_needs_bias_and_is_a_bool():
    with pytest.raises(ValueError, match="bias=True"):
        SkipLSTM(2, 3, bias=False, single_bias=True)
    with pytest.raises(TypeError, match="single_bias must be a bool"):
        SkipGRU(2, 3, single_bias="yes")
    with pytest.raises(TypeError, match="reset_after must be a bool"):
        SkipGRU(2, 3, reset_after=0)


def test_single_bias_follows_dtype_and_device_moves():
    m = SkipLSTM(2, 3, single_bias=True).to(DT)
    assert all(p.dtype == DT for lay in m.layer_weights() for p in lay)
    m(torch.randn(4, 1, 2, dtype=DT))


def test_reset_after_changes_the_candidate_only_for_false():
    torch.manual_seed(1)
    a = SkipGRU(3, 6, dtype=DT)
    b = SkipGRU(3, 6, reset_after=False, dtype=DT)
    _copy_params(b, a)
    x = torch.randn(9, 2, 3, dtype=DT)
    assert not torch.allclose(a(x).output, b(x).output)
    assert "reset_after=False" in repr(b) and "reset_after" not in repr(a)


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_step_reset_before_equals_the_tf_form(reset_after):
    """``reset_after=False`` is ``tanh(W_c [x, r ⊙ h] + b_c)`` with ``W_c = [W_in | W_hn]``."""
    torch.manual_seed(2)
    I, H, B = 3, 4, 5
    w_ih, w_hh = torch.randn(3 * H, I, dtype=DT), torch.randn(3 * H, H, dtype=DT)
    b_ih, b_hh = torch.randn(3 * H, dtype=DT), torch.randn(3 * H, dtype=DT)
    x, h = torch.randn(B, I, dtype=DT), torch.randn(B, H, dtype=DT)
    r = torch.sigmoid(x @ w_ih[:H].t() + b_ih[:H] + h @ w_hh[:H].t() + b_hh[:H])
    z = torch.sigmoid(x @ w_ih[H:2 * H].t() + b_ih[H:2 * H] + h @ w_hh[H:2 * H].t() + b_hh[H:2 * H])
    if reset_after:
        hn = h @ w_hh[2 * H:].t() + b_hh[2 * H:]
        n = torch.tanh(x @ w_ih[2 * H:].t() + b_ih[2 * H:] + r * hn)
    else:
        w_c = torch.cat([w_ih[2 * H:], w_hh[2 * H:]], 1)
        n = torch.tanh(torch.cat([x, r * h], 1) @ w_c.t() + b_ih[2 * H:] + b_hh[2 * H:])
    want = z * h + (1 - z) * n
    (got,) = cell_spec("gru", reset_after).step(x, (h,), w_ih, w_hh, b_ih, b_hh)
    torch.testing.assert_close(got, want, atol=1e-14, rtol=0)


@pytest.mark.parametrize("reset_after", [True, False])
def test_flop_count_is_the_same_for_both_candidates(reset_after):
    """The paper's FLOP count (§6) is the cell's multiply-accumulates: r ⊙ h before or after the
    product does not change them (3·(I + H)·H per GRU step)."""
    I, H, B = 5, 7, 1
    args = [torch.randn(*s) for s in ((B, I), (B, H), (3 * H, I), (3 * H, H), (3 * H,), (3 * H,))]
    with FlopCounterMode(display=False) as fc:
        x, h, *weights = args
        cell_spec("gru", reset_after).step(x, (h,), *weights)
    macs = fc.get_total_flops() / 2
    assert macs == flops_per_update("gru", I, H, skip=False) == 3 * (I + H) * H


def test_cells_take_the_options_and_equal_the_layer():
    torch.manual_seed(3)
    for cell, layer in ((SkipGRUCell(3, 4, reset_after=False, single_bias=True, dtype=DT),
                         SkipGRU(3, 4, reset_after=False, single_bias=True, dtype=DT)),
                        (SkipLSTMCell(3, 4, single_bias=True, dtype=DT),
                         SkipLSTM(3, 4, single_bias=True, dtype=DT))):
        assert cell.bias_hh is None
        with torch.no_grad():
            mine = dict(layer.named_parameters())
            for n, p in cell.named_parameters():
                mine[n if n.startswith("update_gate") else n + "_l0"].copy_(p)
        x = torch.randn(6, 2, 3, dtype=DT)
        ref = layer(x)
        st, outs = None, []
        for t in range(6):
            o = cell(x[t], st)
            st = o.state
            outs.append(o.output)
        torch.testing.assert_close(torch.stack(outs), ref.output, atol=1e-12, rtol=0)


def test_baselines_take_the_options():
    torch.manual_seed(4)
    x = torch.randn(10, 3, 2, dtype=DT)
    for cls in (RandomSkipGRU, PeriodicSkipGRU):
        m = cls(2, 5, reset_after=False, single_bias=True, dtype=DT)
        assert m.reset_after is False and m.bias_hh_l0 is None
        m(x)

@pytest.mark.parametrize("num_layers", [1, 2])  # one layer: the CPU fast path; two: the reference
@pytest.mark.parametrize("grad", [True, False])  # no grad: the skipping engine
def test_plain_gru_paper_form_is_the_skip_gru_with_the_gate_open(num_layers, grad):
    torch.manual_seed(4)
    x = torch.randn(10, 3, 2, dtype=DT)
    plain = PlainGRU(2, 5, num_layers=num_layers, reset_after=False, dtype=DT)
    skip = SkipGRU(2, 5, num_layers=num_layers, reset_after=False, dtype=DT, backend="reference")
    _copy_params(skip, plain)
    with torch.no_grad():
        skip.update_gate.weight.zero_()
        skip.update_gate.bias.fill_(50.0)
    lengths = torch.tensor([10, 4, 7])
    with torch.set_grad_enabled(grad):
        a, b = plain(x, lengths=lengths), skip(x, lengths=lengths)
    torch.testing.assert_close(a.output, b.output, atol=1e-12, rtol=0)
    torch.testing.assert_close(a.state, b.state.h, atol=1e-12, rtol=0)
    assert torch.equal(a.updates, b.updates)
    assert torch.equal(a.updates, (torch.arange(10)[:, None] < lengths).to(DT))
    if grad:
        ga = torch.autograd.grad(a.output.sum(), [plain.weight_hh_l0, plain.bias_ih_l0])
        gb = torch.autograd.grad(b.output.sum(), [skip.weight_hh_l0, skip.bias_ih_l0])
        for u, v in zip(ga, gb):
            torch.testing.assert_close(u, v, atol=1e-12, rtol=0)


def test_plain_baselines_paper_options():
    torch.manual_seed(4)
    x = torch.randn(10, 3, 2, dtype=DT)
    nn_form = PlainGRU(2, 5, dtype=DT)
    paper = PlainGRU(2, 5, reset_after=False, dtype=DT)
    _copy_params(paper, nn_form)
    assert not torch.allclose(nn_form(x).output, paper(x).output)
    assert "reset_after=False" in repr(paper)
    lstm = PlainLSTM(2, 5, single_bias=True)
    assert not lstm.bias_hh_l0.requires_grad and (lstm.bias_hh_l0 == 0).all()
    lstm(torch.randn(4, 1, 2)).output.sum().backward()
    assert lstm.bias_hh_l0.grad is None and lstm.bias_ih_l0.grad is not None


def test_from_plain_refuses_the_paper_options():
    with pytest.raises(ValueError, match="reset_after=False"):
        SkipGRU.from_gru(torch.nn.GRU(2, 3), reset_after=False)
    with pytest.raises(ValueError, match="single_bias=True"):
        SkipLSTM.from_lstm(torch.nn.LSTM(2, 3), single_bias=True)


def test_build_rnn_options():
    m = build_rnn("skip_gru", 2, 4, reset_after=False, single_bias=True)
    assert m.reset_after is False and m.single_bias
    assert build_rnn("gru", 2, 4, reset_after=False).reset_after is False
    with pytest.raises(ValueError, match="GRU models only"):
        build_rnn("skip_lstm", 2, 4, reset_after=False)
    with pytest.raises(ValueError, match="paper_init=True"):
        build_rnn("skip_lstm", 2, 4, paper_init_joint=True)


def test_auto_backend_runs_the_paper_gru_on_the_fast_paths():
    m = SkipGRU(2, 4, reset_after=False)
    x = torch.randn(5, 3, 2)
    m(x)
    assert m.last_backend == "cpu"
    with torch.no_grad():
        m(x)
    assert m.last_backend == "skipping"


@pytest.mark.parametrize("name,I,H", [("skip_lstm", 1, 110), ("skip_gru", 1, 110),
                                      ("lstm", 3, 40), ("gru", 3, 40)])
def test_paper_init_joint_bounds(name, I, H):
    """TF's Glorot over the joint kernel: bound sqrt(6 / (I + H + G·H)); the GRU's gates and
    candidate kernels each have their own. The separate form (default) keeps its bounds."""
    torch.manual_seed(5)
    gru = name.endswith("gru")
    kw = {"reset_after": False} if gru else {}
    m = build_rnn(name, I, H, paper_init=True, paper_init_joint=True, **kw)
    w = torch.cat([m.weight_ih_l0, m.weight_hh_l0], 1)
    blocks = [(0, 2 * H), (2 * H, 3 * H)] if gru else [(0, 4 * H)]
    for lo, hi in blocks:
        bound = math.sqrt(6 / (I + H + hi - lo))
        blk = w[lo:hi].abs()
        assert blk.max() <= bound
        assert blk.max() > 0.95 * bound  # uses the whole range
    b = m.bias_ih_l0.detach()
    if gru:
        assert (b[:2 * H] == 1).all() and (b[2 * H:] == 0).all()
    else:
        assert (b[H:2 * H] == 1).all() and b[:H].abs().sum() == 0 and b[2 * H:].abs().sum() == 0
    if hasattr(m, "update_gate"):
        assert m.update_gate.bias.item() == 1.0
    # the default (separate Glorot) is unchanged: the LSTM's W_ih (I = 1) exceeds the joint bound
    if name == "skip_lstm":
        sep = build_rnn(name, I, H, paper_init=True)
        assert sep.weight_ih_l0.abs().max() > math.sqrt(6 / (I + H + 4 * H))
        assert sep.weight_ih_l0.abs().max() <= math.sqrt(6 / (I + 4 * H))


def test_cell_paper_init_joint():
    c = SkipGRUCell(1, 50, reset_after=False, single_bias=True).paper_init_(joint=True)
    assert c.weight_ih[2 * 50:].abs().max() <= math.sqrt(6 / (1 + 100))
    assert (c.bias_ih[:100] == 1).all()


@pytest.mark.parametrize("name", ["skip_lstm", "skip_gru", "lstm", "gru", "random_skip_gru"])
def test_paper_model(name):
    from skiprnn import paper_model
    from skiprnn.modules import paper_layer_kwargs

    torch.manual_seed(6)
    m = paper_model(name, 1, 16, batch_first=True)
    gru = name.endswith("gru")
    assert m.single_bias and m.learn_init and m.batch_first
    assert getattr(m, "reset_after", True) is (not gru)
    assert paper_layer_kwargs(name).get("reset_after", True) is (not gru)
    assert not any(n.startswith("bias_hh") and p.requires_grad for n, p in m.named_parameters())
    bound = math.sqrt(6 / (1 + 16 + (2 if gru else 4) * 16))
    assert m.weight_hh_l0[:(2 if gru else 4) * 16].abs().max() <= bound
    out = m(torch.rand(2, 30, 1))
    out.output.sum().backward()
    assert m.init_state.grad is not None


def test_paper_recipe_functions():
    from skiprnn.optim import TFAdam
    from skiprnn.training.paper import PAPER_RECIPE, paper_optimizer, paper_task_options

    assert paper_task_options("mnist") == {"val_split": "first", "eval_drop_last": True}
    assert paper_task_options("adding") == {}
    m = SkipLSTM(2, 3)
    groups = [{"params": [m.weight_ih_l0]}, {"params": [m.update_gate.weight], "lr": 1e-3}]
    opt = paper_optimizer(groups)
    assert isinstance(opt, TFAdam)
    assert [g["lr"] for g in opt.param_groups] == [PAPER_RECIPE["lr"], 1e-3]
    assert opt.param_groups[0]["eps"] == 1e-8 and opt.param_groups[0]["betas"] == (0.9, 0.999)
    from skiprnn.tasks import get_task
    task = get_task("mnist", **paper_task_options("mnist"))
    assert task.val_split == "first" and task.eval_drop_last
