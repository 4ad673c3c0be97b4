"""The LightningModule and data module: shapes, losses, exact evaluation, data streams."""

import math

import pytest
import torch

pytest.importorskip("lightning")

from skiprnn.training.config import ConfigError, RunConfig  # noqa: E402
from skiprnn.training.data import TaskDataModule  # noqa: E402
from skiprnn.training.module import SkipRNNModule, final_hidden  # noqa: E402


def _cfg(**kw):
    c = RunConfig(max_steps=1, hidden_size=8, **kw)
    c.task_options = dict(val_size=64, test_size=96, **c.task_options)
    return c.validate().to_dict()


@pytest.mark.parametrize("model", ["lstm", "gru", "skip_lstm", "skip_gru", "random_skip_lstm",
                                   "random_skip_gru", "periodic_skip_gru"])
def test_step_and_evaluate(model):
    torch.manual_seed(0)
    m = SkipRNNModule(_cfg(model=model, cost_per_sample=1e-2 if model.startswith("skip") else 0.0))
    x, y = m.task.sample(16)
    pred, out = m(x)
    assert pred.shape == (16, 1)
    assert out.updates.shape == (16, 50)
    task_loss = m.task.loss(pred, y)
    assert torch.isfinite(task_loss)
    dm = TaskDataModule(m.task, eval_batch_size=40)   # 96 items in batches 40, 40, 16
    r = m.evaluate(dm.test_dataloader())
    xs, ys = dm.test_dataset().tensors
    with torch.no_grad():
        p_all, o_all = m.eval()(xs)
    if not model.startswith("random"):
        assert math.isclose(r["mse"], float(m.task.metric(p_all, ys)), rel_tol=1e-5)
        assert math.isclose(r["updates_mean"], float(o_all.updates.sum(1).mean()), rel_tol=1e-6)
    assert r["num_sequences"] == 96
    assert 0 < r["update_fraction"] <= 1
    assert r["flops"] > 0
    if model in ("lstm", "gru"):
        assert r["updates_mean"] == 50
    if model.startswith("skip"):
        # the budget term is λ·Σu per sequence on top of the task loss
        assert math.isclose(r["loss"] - r["task_loss"], 1e-2 * r["updates_mean"], rel_tol=1e-5)


def test_budget_only_for_learned_gates():
    m = SkipRNNModule(_cfg(model="random_skip_lstm", cost_per_sample=1.0))
    assert m.cost_per_sample == 0.0
    m = SkipRNNModule(_cfg(model="skip_gru", cost_per_sample=1e-3))
    assert m.cost_per_sample == 1e-3


def test_paper_flops_for_full_size_models():
    m = SkipRNNModule(RunConfig(max_steps=1).to_dict())   # 110 units, adding task
    assert m.flops(50) == pytest.approx(50 * (4 * 112 * 110 + 110))
    m = SkipRNNModule(RunConfig(model="gru", max_steps=1).to_dict())
    assert m.flops(50) == pytest.approx(1.848e6)


def test_final_hidden_uses_state_with_lengths():
    torch.manual_seed(0)
    for model in ("lstm", "gru", "skip_lstm"):
        m = SkipRNNModule(_cfg(model=model))
        x = torch.randn(3, 7, 2)
        lengths = torch.tensor([7, 4, 2])
        out = m.rnn(x, lengths=lengths)
        h = final_hidden(out, lengths)
        for b, L in enumerate(lengths.tolist()):
            ref = m.rnn(x[b:b + 1, :L])
            torch.testing.assert_close(h[b], ref.output[0, -1], atol=1e-5, rtol=1e-5)


def test_synthetic_stream_epochs_and_ranks():
    m = SkipRNNModule(_cfg())
    dm = TaskDataModule(m.task, seed=3)
    dl = dm.train_dataloader()
    e0 = [b[0] for b in dl]
    assert len(e0) == len(dl) == m.task.train_batches_per_epoch
    assert e0[0].shape == (m.task.batch_size, 50, 2)
    again = [b[0] for b in dl]   # epoch taken from the trainer (none: 0): the same data
    torch.testing.assert_close(e0[0], again[0])

    class T:  # a stand-in trainer at epoch 1, rank 1 of 2
        current_epoch, global_rank, world_size = 1, 1, 2
    dm.trainer = T()
    other = next(iter(dm.train_dataloader()))[0]
    assert not torch.equal(other, e0[0])


@pytest.mark.parametrize("kw, msg", [
    (dict(cost_per_sample=-1e-5), "cost-per-sample"),
    (dict(p_skip=1.0), "p-skip"),
    (dict(batch_size=0), "batch-size"),
    (dict(lr=0.0), "lr"),
    (dict(max_time="5 minutes"), "max-time"),
    (dict(model="nope"), "valid models"),
    (dict(task="nope"), "valid tasks"),
    (dict(max_steps=None), "stop rule"),
])
def test_config_errors(kw, msg):
    base = dict(max_steps=1)
    base.update(kw)
    with pytest.raises(ConfigError, match=msg):
        RunConfig(**base).validate()


def test_in_memory_data_read_a_batch_at_a_time_gives_the_same_batches():
    """MNIST-like datasets with a ``batch(indices)`` gather: the data module's loaders yield
    exactly the batches (and order) of item-by-item loading with the default collate."""
    from torch.utils.data import DataLoader

    from skiprnn.tasks.mnist import MNISTDataset

    gen = torch.Generator().manual_seed(0)
    train = MNISTDataset(torch.randint(0, 256, (70, 784), dtype=torch.uint8, generator=gen),
                         torch.randint(0, 10, (70,), generator=gen))
    test = MNISTDataset(torch.randint(0, 256, (33, 784), dtype=torch.uint8, generator=gen),
                        torch.randint(0, 10, (33,), generator=gen))

    class Task:  # the parts of a task the data module uses
        batch_size = 16

        def train_dataset(self, seed):
            return train

        def val_dataset(self):
            return test

        def test_dataset(self):
            return test

    dm = TaskDataModule(Task(), seed=5, eval_batch_size=10)
    fast = list(dm.train_dataloader())
    # epoch 0's order: a RandomSampler with its own generator seeded with the run's seed
    ref = list(DataLoader(train, batch_size=16, sampler=torch.utils.data.RandomSampler(
        train, generator=torch.Generator().manual_seed(5))))
    assert len(fast) == len(ref) == 5
    for (xa, ya), (xb, yb) in zip(fast, ref):
        assert xa.shape == xb.shape and xa.dtype == xb.dtype == torch.float32
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for fast_b, ref_b in zip(dm.test_dataloader(), DataLoader(test, batch_size=10)):
        assert all(torch.equal(a, b) for a, b in zip(fast_b, ref_b))
    assert train[3][0].shape == (784, 1)  # item access unchanged


def _logged(m):
    """Capture ``self.log`` calls of a module used without a Trainer (name -> value)."""
    logged = {}

    def log(name, value, **kw):
        logged[name] = value
    m.log = log
    return logged


@pytest.mark.parametrize("model", ["skip_lstm", "skip_gru"])
def test_training_step_loss_is_task_loss_plus_budget(model):
    lam = 1e-2
    torch.manual_seed(0)
    m = SkipRNNModule(_cfg(model=model, cost_per_sample=lam))
    torch.manual_seed(0)
    m0 = SkipRNNModule(_cfg(model=model, cost_per_sample=0.0))
    for a, b in zip(m.parameters(), m0.parameters()):
        assert torch.equal(a, b)   # the same model but for λ
    with torch.no_grad():          # a gate that skips some steps, so Σu is neither 0 nor T
        for mod in (m, m0):
            mod.rnn.update_gate.bias.fill_(-0.3)
    x, y = m.task.sample(8)
    logged = _logged(m)
    _logged(m0)
    loss = m.training_step((x, y), 0)
    # independently: a forward of the same (deterministic: one layer, no dropout) model
    pred, out = m(x)
    u = out.updates
    assert 0 < u.mean() < 1
    budget = lam * u.sum(1).mean()
    torch.testing.assert_close(loss, m.task.loss(pred, y) + budget)
    torch.testing.assert_close(logged["train/budget_loss_step"], budget.detach())
    torch.testing.assert_close(logged["train/updates_step"], u.sum(1).mean().detach())
    # the budget term reaches the gate bias: its gradient is λ·∂(mean Σu)/∂b on top of the task's
    loss.backward()
    g = m.rnn.update_gate.bias.grad.clone()
    assert g.abs().item() > 0
    m0.training_step((x, y), 0).backward()
    g0 = m0.rnn.update_gate.bias.grad.clone()
    assert not torch.allclose(g, g0)
    _, out_b = m(x)
    (g_budget,) = torch.autograd.grad(lam * out_b.updates.sum(1).mean(), m.rnn.update_gate.bias)
    assert g_budget.abs().item() > 0
    torch.testing.assert_close(g - g0, g_budget, rtol=1e-4, atol=1e-7)


def test_step_with_lengths_counts_only_valid_steps():
    lam = 1e-2
    torch.manual_seed(0)
    m = SkipRNNModule(_cfg(model="skip_lstm", cost_per_sample=lam))
    with torch.no_grad():
        m.rnn.update_gate.bias.fill_(-0.3)
    x, y = m.task.sample(4)
    lengths = torch.tensor([50, 31, 12, 3])
    x_pad = x.clone()
    for b, n in enumerate(lengths.tolist()):
        x_pad[b, n:] = 1e3          # garbage on padding must not matter
    logged = _logged(m)
    loss = m.training_step((x_pad, y, lengths), 0)
    # each sequence alone: its prediction from its last valid step, its own Σu
    preds, counts = [], []
    for b, n in enumerate(lengths.tolist()):
        p, o = m(x[b:b + 1, :n])
        preds.append(p)
        counts.append(o.updates.sum())
    pred, counts = torch.cat(preds), torch.stack(counts)
    assert counts.min() > 0 and (counts < lengths).any()
    expected = m.task.loss(pred, y) + lam * counts.mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logged["train/budget_loss_step"], lam * counts.mean().detach())
    # validation logs the same quantities under val/, fractions over each valid length
    logged.clear()
    assert m.validation_step((x_pad, y, lengths), 0) is None
    torch.testing.assert_close(logged["val/loss"], expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logged["val/updates"], counts.mean().detach())
    torch.testing.assert_close(logged["val/update_fraction"], (counts / lengths).mean().detach())


@pytest.mark.parametrize("model", ["skip_lstm", "lstm"])
def test_training_steps_do_not_wait_for_the_device(model, tmp_path):
    """No ``.item()``-like read (``aten._local_scalar_dense``: a host-GPU sync on CUDA) in a
    training step but at the steps the loggers write (every ``log_every_n_steps``, one read) and
    at the epoch's end; the step metrics still reach the CSV there, the epoch means at the end.
    (Adam's reads of its step counters are left out: those live on the CPU on every device.)"""
    import traceback

    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils._python_dispatch import TorchDispatchMode

    from skiprnn.training.callbacks import StepMetricsProgressBar

    reads = []

    class Reads(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default and not any(
                    "torch/optim/" in f.filename.replace("\\", "/")
                    for f in traceback.extract_stack()):
                reads.append(1)
            return func(*args, **(kwargs or {}))

    at_start = {}

    class Mark(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            at_start[trainer.global_step] = len(reads)

    torch.manual_seed(0)
    cfg = _cfg(model=model, cost_per_sample=1e-3 if model == "skip_lstm" else 0.0)
    cfg["task_options"]["train_batches_per_epoch"] = 30
    m = SkipRNNModule(cfg)
    trainer = pl.Trainer(max_steps=60, log_every_n_steps=10, limit_val_batches=0,
                         logger=CSVLogger(str(tmp_path)), enable_checkpointing=False,
                         enable_progress_bar=True, enable_model_summary=False,
                         num_sanity_val_steps=0, callbacks=[Mark(), StepMetricsProgressBar()])
    with Reads():
        trainer.fit(m, TaskDataModule(m.task))
    per_step = [at_start[s + 1] - at_start[s] for s in range(59)]
    writes = {s for s in range(59) if (s + 1) % 10 == 0}
    epoch_ends = {29}
    assert all(per_step[s] == 0 for s in range(59) if s not in writes | epoch_ends), str(per_step)
    import csv
    rows = list(csv.DictReader(open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv")))
    # the loggers read each step metric there (the gate diagnostics of a learned gate too), the
    # progress bar its three in one read
    n_gate = len([k for k in rows[0] if k.startswith("gate/")])
    assert n_gate == (22 if model == "skip_lstm" else 0)
    assert all(1 <= per_step[s] <= 9 + n_gate for s in writes - epoch_ends), str(per_step)
    step_rows = [r for r in rows if r.get("train/loss_step")]
    assert [int(r["step"]) for r in step_rows] == [9, 19, 29, 39, 49, 59]
    epoch_rows = [r for r in rows if r.get("train/loss_epoch")]
    assert [int(r["epoch"]) for r in epoch_rows] == [0, 1]
    assert all(float(r["train/update_fraction_epoch"]) > 0 for r in epoch_rows)
    # the progress bar shows the values of the last logging step
    assert set(m.progress_values) == {"loss", "mse", "update_fraction"}
    assert m.progress_values["loss"] == pytest.approx(float(step_rows[-1]["train/loss_step"]))


def test_a_stop_between_logging_steps_still_writes_that_steps_metrics(tmp_path):
    """A callback that stops training after a step (max_time's Timer) makes Lightning write that
    step's metrics although it is not a logging step: they must be there, and be that step's."""
    import csv

    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    losses = []

    class StopAt7(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))
            if trainer.global_step == 7:
                trainer.should_stop = True

    torch.manual_seed(0)
    m = SkipRNNModule(_cfg(model="skip_lstm", cost_per_sample=1e-3))
    trainer = pl.Trainer(max_steps=100, log_every_n_steps=5, limit_val_batches=0,
                         logger=CSVLogger(str(tmp_path)), enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, callbacks=[StopAt7()])
    trainer.fit(m, TaskDataModule(m.task))
    assert trainer.global_step == 7
    rows = list(csv.DictReader(open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv")))
    step_rows = {int(r["step"]): float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")}
    assert sorted(step_rows) == [4, 6]
    assert step_rows[4] == pytest.approx(losses[4]) and step_rows[6] == pytest.approx(losses[6])


@pytest.mark.parametrize("workers", [0, 1])
def test_in_memory_epoch_order_does_not_depend_on_the_iterator(workers):
    """Epoch e's order is a function of (seed, e) only: reading epoch 1 after epoch 0 from one
    (persistent-worker) loader, or first from a fresh loader (a resumed session), is the same."""
    class Task:
        batch_size = 4

        def train_dataset(self, seed):
            return torch.utils.data.TensorDataset(torch.arange(12.0)[:, None])

    def loader(epoch_of):
        dm = TaskDataModule(Task(), seed=3, num_workers=workers)
        dl = dm.train_dataloader()
        dl.position = epoch_of
        return dl

    pos = {"v": (None, 0)}
    dl = loader(lambda: pos["v"])
    first = [b[0].flatten().tolist() for b in dl]
    pos["v"] = (None, 1)
    again = [b[0].flatten().tolist() for b in dl]            # same loader, epoch 1
    fresh = [b[0].flatten().tolist() for b in loader(lambda: (None, 1))]
    assert again == fresh and again != first


# ---------------------------------------------------------------------------- training controls
def test_training_loss_follows_the_budget_schedule_and_the_gate_warmup():
    """λ is 0 during the budget warm-up, then ramps; the gate is held open (every step updates)
    during the gate warm-up even where it would skip; validation uses the full λ and the gate."""
    torch.manual_seed(0)
    cfg = _cfg(model="skip_lstm", cost_per_sample=1e-2, budget_warmup=2, budget_ramp=2, gate_warmup=3)
    m = SkipRNNModule(cfg)
    with torch.no_grad():
        m.rnn.update_gate.bias.fill_(-1.5)          # Δũ ≈ 0.18: the gate skips on its own
    x, y = m.task.sample(16)
    expected_lam = [0.0, 0.0, 0.5e-2, 1e-2, 1e-2]
    for step, lam in enumerate(expected_lam):
        m._trainer = None
        type(m).global_step = property(lambda self, s=step: s)
        try:
            loss = m.training_step((x, y), 0)
        finally:
            del type(m).global_step
        pred, out = m(x)            # outside the warm-up context: the gate's own decisions
        with m.held_open(step < 3):
            pred_t, out_t = m(x)
        task = m.task.loss(pred_t, y)
        counts = out_t.updates.sum(1).mean()
        torch.testing.assert_close(loss, task + lam * counts)
        if step < 3:
            assert bool((out_t.updates == 1).all())
            assert float(out.updates.detach().mean()) < 0.6          # it would have skipped
        else:
            assert float(out_t.updates.detach().mean()) < 0.6
    # validation: the full λ, the gate's own decisions
    m.validation_step((x, y), 0)


def test_gate_parameters_do_not_train_while_the_gate_is_held_open():
    import types
    torch.manual_seed(0)
    m = SkipRNNModule(_cfg(model="skip_lstm", cost_per_sample=1e-2, gate_warmup=2))
    x, y = m.task.sample(16)
    for step, frozen in ((0, True), (1, True), (2, False)):
        m._trainer = types.SimpleNamespace(global_step=step)
        m._writes_step_logs = lambda: False
        m._log_train = lambda values, batch_size: None
        m.zero_grad()
        m.training_step((x, y), 0).backward()
        m.on_after_backward()
        assert (m.rnn.update_gate.weight.grad is None) == frozen
        assert (m.rnn.update_gate.bias.grad is None) == frozen
        assert m.rnn.weight_hh_l0.grad is not None


def test_metric_warmup_holds_the_gate_open_and_lambda_at_zero_until_released():
    import types
    m = SkipRNNModule(_cfg(model="skip_lstm", cost_per_sample=1e-2, gate_warmup=2, budget_warmup=0,
                           budget_ramp=0, warmup_until_metric=0.05))
    assert m.metric_warmup.level == 0.05 and not m.metric_warmup.higher_is_better
    for step in (0, 2, 500):           # past the step warm-ups: still held, no budget
        m._trainer = types.SimpleNamespace(global_step=step)
        assert m.gate_held_open() and m.budget.fraction(step) == 0.0
    m.metric_warmup.observe(600, 0.04)
    for step, held in ((599, True), (600, False), (700, False)):
        m._trainer = types.SimpleNamespace(global_step=step)
        assert m.gate_held_open() == held
        assert m.budget.fraction(step) == (0.0 if held else 1.0)
    # what releases it: the validation metric of the model as it trains (gate held open), not
    # that of the untrained gate's own decisions
    torch.manual_seed(0)
    with torch.no_grad():
        m.rnn.update_gate.bias.fill_(-3.0)          # Δũ ≈ 0.05: the free gate skips most steps
    x, y = m.task.sample(32)
    m._val_metric_sums = None
    m._add_release_metric(x, y, None, 32)
    with torch.no_grad(), m.held_open():
        held = m.task.metric(m(x)[0], y)
        assert bool((m(x)[1].updates == 1).all())
    with torch.no_grad():
        free_pred, free_out = m(x)
    assert float(free_out.updates.mean()) < 0.5
    assert float(m._val_metric_sums[0] / m._val_metric_sums[1]) == pytest.approx(float(held))
    assert float(held) != pytest.approx(float(m.task.metric(free_pred, y)))
    # a model without a learned gate has no metric warm-up
    with pytest.raises(ConfigError, match="warmup-until-metric"):
        RunConfig(task="adding", model="lstm", max_steps=1,
                  warmup_until_metric=0.05).validate({"warmup_until_metric"})


@pytest.mark.parametrize("model,start,expected_start", [("lstm", None, 3000), ("lstm", 0, 0),
                                                       ("skip_lstm", 4, 4)])
def test_lr_decay_start_sets_where_the_cosine_decay_starts(model, start, expected_start):
    from skiprnn.controls import CosineDecay
    cfg = RunConfig(task="mnist", model=model, max_steps=10, hidden_size=8, lr=1e-3, lr_decay=0.1,
                    lr_decay_start=start, recipe="fast")
    m = SkipRNNModule(cfg.validate().to_dict() | {"task_options": {"standardize": True}})
    sched = m.configure_optimizers()["lr_scheduler"]["scheduler"]
    for step in (0, 5, 10):
        assert sched.lr_lambdas[0](step) == pytest.approx(CosineDecay(expected_start, 10, 0.1)(step))
    with pytest.raises(ConfigError, match="--lr-decay-start .* no decay"):
        RunConfig(task="adding", model=model, max_steps=10, lr_decay_start=5).validate()


def test_gate_lr_mult_reaches_the_optimizer():
    m = SkipRNNModule(_cfg(model="skip_lstm", cost_per_sample=1e-3, lr=2e-3, gate_lr_mult=0.25))
    opt = m.configure_optimizers()
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["main"]["lr"] == 2e-3 and groups["update_gate"]["lr"] == pytest.approx(5e-4)
    assert {id(p) for p in groups["update_gate"]["params"]} == {id(p) for p in m.rnn.update_gate.parameters()}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(m.parameters()))
    # the paper's: one group
    assert len(SkipRNNModule(_cfg(model="skip_lstm")).configure_optimizers().param_groups) == 1


def test_gate_diagnostics_split_the_gradient_into_task_and_budget(tmp_path):
    """At a logging step the gate's gradient is logged in two parts that add up to the total, and
    the budget part equals the budget's own gradient."""
    torch.manual_seed(0)
    m = SkipRNNModule(_cfg(model="skip_lstm", cost_per_sample=1e-2))
    x, y = m.task.sample(16)
    logged = {}
    m.log = lambda name, value, **kw: logged.__setitem__(name, value)
    import types
    m._trainer = types.SimpleNamespace(global_step=0)
    m._writes_step_logs = lambda: True
    m._log_train = lambda values, batch_size: None
    loss = m.training_step((x, y), 0)
    loss.backward()
    m.on_after_backward()
    total = m.rnn.update_gate.bias.grad.sum().item()
    assert logged["gate/grad_bias_task"] + logged["gate/grad_bias_budget"] == pytest.approx(total, rel=1e-5)
    m.zero_grad()
    pred, out = m(x)
    budget_loss_ = 1e-2 * out.updates.sum(1).mean()
    budget_loss_.backward()
    assert logged["gate/grad_bias_budget"] == pytest.approx(m.rnn.update_gate.bias.grad.item(), rel=1e-5)
    assert logged["gate/lambda"] == pytest.approx(1e-2)
    assert 0 < logged["gate/delta_q10"] <= logged["gate/delta_q50"] <= logged["gate/delta_q90"] <= 1
    assert all(0 <= logged[f"gate/updates_pos{k}"] <= 1 for k in range(8))


def test_init_chrono_reaches_the_layer():
    H = 8
    m = SkipRNNModule(_cfg(model="skip_lstm", init="chrono"))
    f = m.rnn.bias_ih_l0.detach()[H:2 * H]
    assert float(f.std()) > 0.3 and float(f.max()) <= float(torch.log(torch.tensor(m.task.seq_len - 1.0)))
    torch.testing.assert_close(m.rnn.bias_ih_l0.detach()[:H], -f)
    paper = SkipRNNModule(_cfg(model="skip_lstm")).rnn.bias_ih_l0.detach()[H:2 * H]
    torch.testing.assert_close(paper, torch.ones(H))              # the paper's forget bias 1


def test_target_rate_loss_joins_the_training_loss():
    from skiprnn.losses import target_rate_loss
    torch.manual_seed(0)
    m = SkipRNNModule(_cfg(model="skip_lstm", cost_per_sample=1e-3, target_rate=0.3, target_weight=2.0))
    x, y = m.task.sample(16)
    m._trainer = None
    loss = m.training_step((x, y), 0)
    pred, out = m(x)
    expected = (m.task.loss(pred, y) + 1e-3 * out.updates.sum(1).mean()
                + target_rate_loss(out.updates, 0.3, weight=2.0, batch_first=True))
    torch.testing.assert_close(loss, expected)
    assert float(target_rate_loss(out.updates, 0.3, weight=2.0, batch_first=True)) > 0


def test_zero_valued_controls_are_not_replaced_by_defaults():
    """gate_lr_mult=0 freezes the gate (not '1 = default'); target_weight=0 adds nothing."""
    m = SkipRNNModule(_cfg(model="skip_lstm", cost_per_sample=1e-3, gate_lr_mult=0.0,
                           target_rate=0.3, target_weight=0.0))
    groups = {g["name"]: g for g in m.configure_optimizers().param_groups}
    assert groups["update_gate"]["lr"] == 0.0
    assert m.target_weight == 0.0


@pytest.mark.parametrize("warmup, ramp, share", [(1, 0, 0.0), (0, 4, 0.25), (0, 0, 1.0)])
def test_target_rate_loss_follows_the_budget_schedule(warmup, ramp, share):
    """Like λ, the target-rate loss is off during the budget warm-up and ramps in with it (at
    step 0 here: a warm-up of 1 step gives share 0, a 4-step ramp 1/4)."""
    from skiprnn.losses import target_rate_loss
    torch.manual_seed(0)
    m = SkipRNNModule(_cfg(model="skip_lstm", cost_per_sample=1e-3, target_rate=0.3,
                           target_weight=2.0, budget_warmup=warmup, budget_ramp=ramp))
    x, y = m.task.sample(16)
    m._trainer = None
    assert m.global_step == 0
    loss = m.training_step((x, y), 0)
    pred, out = m(x)
    expected = (m.task.loss(pred, y) + share * 1e-3 * out.updates.sum(1).mean()
                + target_rate_loss(out.updates, 0.3, weight=2.0 * share, batch_first=True))
    torch.testing.assert_close(loss, expected)
