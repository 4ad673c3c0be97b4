import math

import pytest
import torch

from skiprnn.tasks import FrequencyTask, get_task


def test_defaults_and_lengths():
    t = get_task("frequency")
    assert (t.seq_len, t.input_size, t.output_size, t.problem) == (100, 1, 2, "classification")
    assert t.cost_per_sample == (0.0, 1e-5, 1e-4) and t.p_skip == {}
    assert get_task("frequency", sampling_period_ms=0.5).seq_len == 200
    with pytest.raises(ValueError):
        FrequencyTask(sampling_period_ms=0.3)
    with pytest.raises(ValueError):
        FrequencyTask(distractor_min_period_ms=0.0)


@pytest.mark.parametrize("ts,T", [(1.0, 100), (0.5, 200)])
def test_items_shapes_and_time_grid(ts, T):
    task = get_task("frequency", sampling_period_ms=ts)
    x, y = task.sample(10, torch.Generator().manual_seed(0))
    assert x.shape == (10, T, 1) and x.dtype == torch.float32
    assert y.shape == (10,) and y.dtype == torch.int64
    assert x.abs().max() <= 1.0
    t = task.times_ms()
    assert t[0] == 0 and t[-1] == pytest.approx(100 - ts) and t[1] - t[0] == pytest.approx(ts)


@pytest.mark.parametrize("n", [10, 11, 256])
def test_stratified(n):
    _, y = get_task("frequency").sample(n, torch.Generator().manual_seed(0))
    assert y[: n // 2].eq(0).all() and y[n // 2:].eq(1).all()


def test_period_ranges_by_class():
    task = get_task("frequency")
    g = torch.Generator().manual_seed(0)
    p0 = task.sample_periods(20000, 0, g)
    p1 = task.sample_periods(20000, 1, g)
    assert p0.min() >= 5 and p0.max() <= 6
    assert p1.min() >= 1 and p1.max() <= 100
    assert not ((p1 > 5) & (p1 < 6)).any()
    # uniform over the union: P(period < 5) = 4 / 98
    assert (p1 < 5).float().mean().item() == pytest.approx(4 / 98, abs=0.01)


def test_signal_is_cosine_of_sampled_period_and_phase():
    # regenerate with the same generator stream and check the formula cos(2π t/P + φ), φ∈[0,P)
    task = get_task("frequency")
    n = 6
    x, _ = task.sample(n, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    periods = torch.cat([task.sample_periods(3, 0, g), task.sample_periods(3, 1, g)])
    phase = torch.rand(n, generator=g, dtype=torch.float64) * periods
    assert (phase < periods).all()
    t = task.times_ms()
    for i in range(n):
        expect = torch.cos(2 * math.pi * t / periods[i] + phase[i]).float()
        assert torch.allclose(x[i, :, 0], expect, atol=1e-6)


def test_determinism_and_heldout_sets():
    task = get_task("frequency", val_size=64, test_size=32, batch_size=16)
    a = task.sample(8, torch.Generator().manual_seed(1))
    b = task.sample(8, torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0])
    v = task.val_dataset()
    assert torch.equal(v.tensors[0], task.val_dataset().tensors[0])
    # every batch_size chunk of the held-out set is stratified
    assert v.tensors[1].view(4, 16).sum(1).eq(8).all()
    assert len(task.test_dataset()) == 32


def test_loss_metric_solved():
    task = get_task("frequency")
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, 1, 1])
    assert task.metric(logits, y).item() == pytest.approx(0.75)
    assert task.loss(logits, y).item() == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item())
    assert task.solved(0.995) and not task.solved(0.99)
