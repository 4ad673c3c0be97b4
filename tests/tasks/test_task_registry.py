import pytest

from skiprnn.tasks import TASKS, AddingTask, FrequencyTask, MNISTTask, get_task, task_names


def test_registry_names():
    assert set(TASKS) == {"adding", "frequency", "mnist"}
    assert task_names() == ["adding", "frequency", "mnist"]
    assert isinstance(get_task("adding"), AddingTask)
    assert isinstance(get_task("Frequency"), FrequencyTask)
    assert isinstance(get_task("mnist", limit=10), MNISTTask)


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError, match="adding, frequency, mnist"):
        get_task("imdb")


def test_unknown_override_lists_valid_options():
    with pytest.raises(ValueError, match="seq_len"):
        get_task("adding", sampling_period_ms=0.5)


def test_overrides_applied_and_hparams():
    t = get_task("adding", seq_len=100, hidden_size=32, lr=1e-3)
    assert (t.seq_len, t.hidden_size, t.lr) == (100, 32, 1e-3)
    hp = t.hparams()
    assert hp["task"] == "adding" and hp["seq_len"] == 100 and hp["input_size"] == 2


@pytest.mark.parametrize("name", ["adding", "frequency", "mnist"])
def test_common_interface(name):
    t = get_task(name)
    for attr in ("name", "input_size", "output_size", "seq_len", "problem", "hidden_size", "lr",
                 "batch_size", "cost_per_sample", "p_skip", "metric_name", "predict_head"):
        assert hasattr(t, attr), attr
    assert t.problem in ("regression", "classification")
    assert t.hidden_size == 110 and t.lr == 1e-4 and t.batch_size == 256
