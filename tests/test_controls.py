"""The training controls of skiprnn.controls: the budget schedule and the gate's parameter group."""

import math

import pytest
import torch

import skiprnn
from skiprnn.controls import BudgetSchedule, MetricWarmup, gate_param_groups, is_gate_parameter


def test_budget_schedule_is_zero_in_warmup_then_ramps_then_constant():
    s = BudgetSchedule(1e-4, warmup_steps=3, ramp_steps=4)
    got = [s(k) for k in range(9)]
    assert got[:3] == [0.0, 0.0, 0.0]
    assert got[3:7] == pytest.approx([0.25e-4, 0.5e-4, 0.75e-4, 1e-4])
    assert got[7:] == [1e-4, 1e-4]
    assert BudgetSchedule(1e-4)(0) == 1e-4   # the paper's


def test_metric_warmup_holds_the_budget_until_the_metric_passes_then_ramps_from_there():
    warm = MetricWarmup(level=0.01)                     # lower is better (an MSE)
    s = BudgetSchedule(1e-4, warmup_steps=3, ramp_steps=2, until=warm)
    assert warm.end(3) == math.inf
    assert [s.fraction(k) for k in (0, 3, 50)] == [0.0, 0.0, 0.0]        # not passed: no budget
    assert not warm.observe(10, 0.5) and not warm.observe(20, float("nan"))
    assert warm.observe(30, 0.01)                        # at the level counts
    assert warm.observe(40, 0.2) and warm.passed_at == 30   # stays released, at its first step
    assert warm.passed_at == 30
    assert [s.fraction(k) for k in (29, 30, 31, 32)] == [0.0, 0.5, 1.0, 1.0]
    # a warm-up given in steps still lasts at least that long
    late = MetricWarmup(level=0.9, higher_is_better=True)   # an accuracy
    late.observe(5, 0.95)
    assert BudgetSchedule(1.0, warmup_steps=100, ramp_steps=0, until=late).warmup_end() == 100
    assert late.end(0) == 5 and not late.passes(0.89)
    # the release travels in a state dict (a resumed run keeps it)
    again = MetricWarmup(level=0.01)
    again.load_state_dict(warm.state_dict())
    assert again.passed_at == 30


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "0.1", True])
def test_metric_warmup_refuses_a_level_that_is_not_a_number(bad):
    with pytest.raises(ValueError, match="level must be a finite number"):
        MetricWarmup(bad)
    with pytest.raises(ValueError, match="until must be a MetricWarmup"):
        BudgetSchedule(1e-4, until=0.5)


@pytest.mark.parametrize("kw", [dict(cost_per_sample=-1.0), dict(cost_per_sample=1e-4, warmup_steps=-1),
                                dict(cost_per_sample=1e-4, ramp_steps=2.5),
                                dict(cost_per_sample=float("nan"))])
def test_budget_schedule_refuses_bad_values(kw):
    with pytest.raises(ValueError, match="must be"):
        BudgetSchedule(**kw)


def test_gate_param_groups_put_exactly_the_gate_at_its_own_lr():
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"rnn": skiprnn.SkipLSTM(2, 8, num_layers=2),
                                 "head": torch.nn.Linear(8, 1)})
    model["head"].bias.requires_grad_(False)            # frozen: left out
    groups = gate_param_groups(model, lr=1e-3, gate_lr_mult=0.1)
    assert [g["name"] for g in groups] == ["main", "update_gate"]
    assert groups[0]["lr"] == 1e-3 and groups[1]["lr"] == pytest.approx(1e-4)
    gate = {id(p) for p in model["rnn"].update_gate.parameters()}
    assert {id(p) for p in groups[1]["params"]} == gate
    others = {id(p) for n, p in model.named_parameters() if "update_gate" not in n and p.requires_grad}
    assert {id(p) for p in groups[0]["params"]} == others
    # an optimizer takes them as they are, and steps the gate at its own rate
    opt = torch.optim.SGD(groups, lr=1e-3)
    b0 = model["rnn"].update_gate.bias.detach().clone()
    model["rnn"].update_gate.bias.grad = torch.ones(1)
    opt.step()
    torch.testing.assert_close(model["rnn"].update_gate.bias.detach(), b0 - 1e-4)
    # no gate, one group
    assert len(gate_param_groups(torch.nn.LSTM(2, 8), lr=1e-3, gate_lr_mult=0.1)) == 1
    with pytest.raises(ValueError, match="gate_lr_mult"):
        gate_param_groups(model, lr=1e-3, gate_lr_mult=-1)


def test_is_gate_parameter_names():
    assert is_gate_parameter("update_gate.weight") and is_gate_parameter("rnn.update_gate.bias")
    assert not is_gate_parameter("rnn.weight_hh_l0") and not is_gate_parameter("my_update_gate_x.w")
    bi = skiprnn.SkipGRU(3, 4, bidirectional=True)
    gates = [n for n, _ in bi.named_parameters() if is_gate_parameter(n)]
    assert gates == ["update_gate.weight", "update_gate.bias", "update_gate_reverse.weight",
                     "update_gate_reverse.bias"]


@pytest.mark.parametrize("make", [lambda: skiprnn.SkipLSTM(3, 16, num_layers=2),
                                  lambda: skiprnn.PlainLSTM(3, 16), lambda: torch.nn.LSTM(3, 16),
                                  lambda: skiprnn.SkipGRU(3, 16), lambda: torch.nn.GRU(3, 16)],
                         ids=["skip_lstm_2l", "plain_lstm", "nn_lstm", "skip_gru", "nn_gru"])
def test_chrono_init_sets_the_memory_gate_biases(make):
    torch.manual_seed(0)
    m = make()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    skiprnn.chrono_init_(m, 784)
    H = 16
    lstm = isinstance(m, torch.nn.LSTM) or getattr(m, "mode", None) == "lstm"
    for k in range(m.num_layers):
        b = getattr(m, f"bias_ih_l{k}").detach()
        keep = b[H:2 * H]
        assert bool((keep >= 0).all()) and bool((keep <= torch.log(torch.tensor(783.0))).all())
        assert float(keep.std()) > 0.5                      # spread over time scales, not constant
        if lstm:
            torch.testing.assert_close(b[:H], -keep)
        torch.testing.assert_close(getattr(m, f"bias_hh_l{k}").detach()[:2 * H], torch.zeros(2 * H))
    for n, p in m.named_parameters():                       # nothing else touched
        if n.startswith("weight"):
            assert torch.equal(p.detach(), before[n]), n
    with pytest.raises(ValueError, match="max_len"):
        skiprnn.chrono_init_(m, 2)


def test_mnist_standardize_option():
    from skiprnn.tasks import get_task
    pytest.importorskip("mnist")
    raw = get_task("mnist", limit=64).train_dataset()
    std = get_task("mnist", limit=64, standardize=True).train_dataset()
    x0, y0 = raw.batch(range(len(raw)))
    x1, y1 = std.batch(range(len(std)))
    torch.testing.assert_close(x1, (x0 - 0.1307) / 0.3081)
    assert torch.equal(y0, y1)
    xb, _ = std.batch([3, 5])
    torch.testing.assert_close(xb, x1[[3, 5]])
    torch.testing.assert_close(std[7][0], x1[7])
    with pytest.raises(ValueError, match="standardize must be True or False"):
        get_task("mnist", standardize="yes")


def test_cosine_decay_factor():
    from skiprnn.controls import CosineDecay
    d = CosineDecay(start=10, total=30, floor=0.1)
    assert [d(s) for s in (0, 10)] == [1.0, 1.0]
    assert d(20) == pytest.approx(0.55) and d(30) == pytest.approx(0.1) and d(99) == pytest.approx(0.1)
    assert all(d(s) >= d(s + 1) for s in range(40))
    assert CosineDecay(10, 5)(7) == 1.0                       # a run shorter than the start
    with pytest.raises(ValueError, match="floor"):
        CosineDecay(0, 10, floor=2.0)
