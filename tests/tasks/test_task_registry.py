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


def test_overrides_applied():
    t = get_task("adding", seq_len=100, hidden_size=32, lr=1e-3)
    assert (t.seq_len, t.hidden_size, t.lr) == (100, 32, 1e-3)


@pytest.mark.parametrize("name", ["adding", "frequency", "mnist"])
def test_common_interface(name):
    t = get_task(name)
    for attr in ("name", "input_size", "output_size", "seq_len", "problem", "hidden_size", "lr",
                 "batch_size", "cost_per_sample", "p_skip", "metric_name", "predict_head"):
        assert hasattr(t, attr), attr
    assert t.problem in ("regression", "classification")
    assert t.hidden_size == 110 and t.lr == 1e-4 and t.batch_size == 256


@pytest.mark.parametrize("name, over, msg", [
    ("adding", {"val_size": "abc"}, "val_size must be an int, got 'abc' (str)"),
    ("adding", {"test_size": -1}, "test_size must be an int >= 1"),
    ("frequency", {"val_size": 0}, "val_size must be an int >= 1"),
    ("adding", {"train_batches_per_epoch": 0}, "train_batches_per_epoch must be an int >= 1"),
    ("adding", {"seq_len": 2.5}, "seq_len must be an int"),
    ("frequency", {"duration_ms": "long"}, "duration_ms must be a number"),
    ("adding", {"batch_size": 0}, "batch_size must be an int >= 1"),
    ("adding", {"lr": -1.0}, "lr must be a finite number > 0"),
    ("mnist", {"val_size": "5k"}, "val_size must be an int"),
    ("mnist", {"limit_train": "all"}, "limit_train must be an int or None"),
    ("mnist", {"source": "web"}, "source must be"),
])
def test_bad_field_values_are_refused_at_construction(name, over, msg):
    """Wrong types / ranges fail when the task is built, naming the option, not deep in training."""
    with pytest.raises(ValueError, match=__import__("re").escape(msg)):
        get_task(name, **over)


def test_field_checks_accept_the_usual_spellings():
    import pathlib
    get_task("mnist", data_dir=pathlib.Path("/nowhere"), limit=None)   # a Path, None: fine
    get_task("frequency", target_period_ms=[5.0, 6.0], sampling_period_ms=1)   # a list, an int
    get_task("adding", train_batches_per_epoch=None, grad_clip=0)
