import pytest
import torch

from skiprnn.tasks import AddingTask, get_task
from skiprnn.tasks.adding import TARGET_VARIANCE
from skiprnn.tasks.base import SyntheticStream


def _batch(task, n=512, seed=0):
    return task.sample(n, torch.Generator().manual_seed(seed))


def test_defaults_match_paper():
    t = get_task("adding")
    assert (t.seq_len, t.input_size, t.output_size, t.problem) == (50, 2, 1, "regression")
    assert (t.hidden_size, t.lr, t.batch_size, t.grad_clip) == (110, 1e-4, 256, 1.0)
    assert t.cost_per_sample == (0.0, 1e-5)
    assert t.p_skip == {"lstm": (0.2, 0.5), "gru": (0.02, 0.5)}
    assert t.predict_head == 1
    assert t.first_marker_range == range(0, 5) and t.second_marker_range == range(25, 50)


@pytest.mark.parametrize("T", [50, 7, 100])
def test_items_follow_definition(T):
    task = get_task("adding", seq_len=T)
    x, y = _batch(task)
    assert x.shape == (512, T, 2) and x.dtype == torch.float32
    assert y.shape == (512,) and y.dtype == torch.float32
    values, markers = x[..., 0], x[..., 1]
    assert values.min() >= -0.5 and values.max() < 0.5
    assert set(markers.unique().tolist()) <= {0.0, 1.0}
    assert torch.all(markers.sum(1) == 2)  # exactly two markers
    pos = markers.nonzero()[:, 1].view(512, 2)
    first, second = pos[:, 0], pos[:, 1]
    n1 = -(-T // 10)
    assert first.min() >= 0 and first.max() <= n1 - 1
    assert second.min() >= T // 2 and second.max() <= T - 1
    rows = torch.arange(512)
    assert torch.equal(y, values[rows, first] + values[rows, second])


def test_marker_positions_cover_whole_windows():
    x, _ = _batch(get_task("adding"), n=4096)
    pos = x[..., 1].nonzero()[:, 1].view(-1, 2)
    assert set(pos[:, 0].tolist()) == set(range(0, 5))
    assert set(pos[:, 1].tolist()) == set(range(25, 50))


def test_determinism_by_seed():
    task = get_task("adding")
    a, b, c = _batch(task, seed=1), _batch(task, seed=1), _batch(task, seed=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_heldout_sets_fixed_and_distinct():
    task = get_task("adding", val_size=300, test_size=200, batch_size=64)
    v1, v2, te = task.val_dataset(), task.val_dataset(), task.test_dataset()
    assert len(v1) == 300 and len(te) == 200
    assert torch.equal(v1.tensors[0], v2.tensors[0])
    assert not torch.equal(v1.tensors[0][:200], te.tensors[0])
    x, y = v1[0]
    assert x.shape == (50, 2) and y.shape == ()


def test_train_stream_deterministic_new_each_epoch_and_batched():
    task = get_task("adding", batch_size=8, train_batches_per_epoch=3)
    s1, s2 = task.train_dataset(seed=5), task.train_dataset(seed=5)
    assert isinstance(s1, SyntheticStream) and len(s1) == 24
    e0 = list(s1)
    assert len(e0) == 24 and e0[0][0].shape == (50, 2)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(e0, list(s2)))
    e1 = list(s1)  # second epoch: fresh data
    assert not torch.equal(e0[0][0], e1[0][0])
    s1.set_epoch(0)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(e0, list(s1)))
    other = list(task.train_dataset(seed=6))
    assert not torch.equal(e0[0][0], other[0][0])
    loader = torch.utils.data.DataLoader(task.train_dataset(seed=5), batch_size=8)
    xb, yb = next(iter(loader))
    assert xb.shape == (8, 50, 2) and yb.shape == (8,)


def test_loss_is_half_mse_and_solved_rule():
    task = get_task("adding")
    y = torch.tensor([0.0, 1.0, -1.0])
    pred = torch.tensor([[0.5], [1.0], [0.0]])
    mse = (0.25 + 0 + 1) / 3
    assert task.metric(pred, y).item() == pytest.approx(mse)
    assert task.loss(pred, y).item() == pytest.approx(mse / 2)
    assert task.loss(pred.squeeze(-1), y).item() == pytest.approx(mse / 2)
    assert task.solved_threshold == pytest.approx(1 / 600)
    assert task.solved(1e-3) and task.solved(1 / 600) and not task.solved(2e-3)
    with pytest.raises(ValueError):
        task.loss(torch.zeros(3, 2), y)


def test_zero_predictor_mse_is_target_variance():
    task = get_task("adding")
    _, y = _batch(task, n=20000)
    assert y.var().item() == pytest.approx(TARGET_VARIANCE, rel=0.05)


def test_bad_seq_len():
    with pytest.raises(ValueError):
        AddingTask(seq_len=1)
