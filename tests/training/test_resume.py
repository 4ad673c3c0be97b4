"""Stopping and resuming: last.ckpt is the latest state, and a run stopped (max_steps, Ctrl-C
mid-step, Ctrl-C during validation) and resumed ends with the very weights of one never stopped."""

import json
import sys

import pytest
import torch

pytest.importorskip("lightning")

import lightning.pytorch as pl  # noqa: E402

from skiprnn.training.config import ConfigError, RunConfig  # noqa: E402
from skiprnn.training.data import TaskDataModule  # noqa: E402
from skiprnn.training.fit import RunInterrupted, evaluate_run, fit  # noqa: E402


def _cfg(out, steps, model="skip_lstm", lr=1e-2, val_every=10, **kw):
    return RunConfig(task="adding", model=model, max_steps=steps, val_every=val_every, hidden_size=8,
                     batch_size=8, lr=lr, cost_per_sample=1e-3 if model.startswith("skip") else 0.0,
                     progress_bar=False, out=str(out), threads=1, eval_batch_size=16,
                     task_options={"val_size": 32, "test_size": 32}, **kw)


def _ckpt(run, name="last"):
    return torch.load(run / "checkpoints" / f"{name}.ckpt", map_location="cpu", weights_only=False)


class _Interrupt(pl.Callback):
    """Ctrl-C at ``step``: in the middle of a training step (after the forward pass, before the
    optimizer step) or before a validation batch."""

    def __init__(self, step, where):
        self.step, self.where = step, where

    def on_before_backward(self, trainer, pl_module, loss):
        if self.where == "train" and trainer.global_step == self.step:
            raise KeyboardInterrupt

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if self.where == "val" and trainer.global_step == self.step and batch_idx == 1:
            raise KeyboardInterrupt


#: gate controls whose schedules straddle the interruptions below (gate open until step 15, λ = 0
#: until 12, then ramped to step 22, the learning rate decayed from there; the gate at half the
#: learning rate)
CONTROLS = {"gate_warmup": 15, "budget_warmup": 12, "budget_ramp": 10, "gate_lr_mult": 0.5,
            "lr_decay": 0.1}


#: a warm-up that ends on the validation metric: any MSE passes 10, so the first validation (step
#: 10) releases it; the gate opens and λ ramps from there, the decay starts at step 16. The
#: release must travel in the checkpoint written at step 13, or the resumed run would keep the
#: gate open
METRIC_WARMUP = {"warmup_until_metric": 10.0, "gate_warmup": 4, "budget_warmup": 2,
                 "budget_ramp": 6, "lr_decay": 0.1}


@pytest.mark.parametrize("model,controls", [("skip_lstm", {}), ("random_skip_lstm", {}),
                                            ("skip_lstm", CONTROLS), ("skip_lstm", METRIC_WARMUP)],
                         ids=["skip_lstm", "random_skip_lstm", "skip_lstm-controls",
                              "skip_lstm-metric-warmup"])
def test_stopped_and_resumed_run_equals_an_uninterrupted_one(tmp_path, model, controls):
    straight = tmp_path / "straight"
    fit(_cfg(straight, 25, model, **controls), verbose=False)

    run = tmp_path / "run"
    fit(_cfg(run, 13, model, **controls), verbose=False)  # max_steps mid-epoch, between validations
    assert _ckpt(run)["global_step"] == 13
    with pytest.raises(RunInterrupted):                   # Ctrl-C inside step 18 (mid-epoch)
        fit(_cfg(run, 25, model, **controls), resume=run, verbose=False, callbacks=[_Interrupt(17, "train")])
    assert _ckpt(run)["global_step"] == 17
    with pytest.raises(RunInterrupted):                   # Ctrl-C during the validation at step 20
        fit(_cfg(run, 25, model, **controls), resume=run, verbose=False, callbacks=[_Interrupt(20, "val")])
    assert _ckpt(run)["global_step"] == 20
    r = fit(_cfg(run, 25, model, **controls), resume=run, verbose=False)
    assert r["steps"] == 25
    if controls is METRIC_WARMUP:
        assert r["warmup_released_at"] == 10
        assert json.loads((straight / "results.json").read_text())["warmup_released_at"] == 10
        # the held-open model's metric, which decides the release, is logged while it holds
        import csv
        with open(straight / "csv" / "metrics.csv") as f:
            held = [row for row in csv.DictReader(f) if row.get("val/mse_held_open")]
        assert [int(row["step"]) for row in held] == [9] and float(held[0]["val/mse_held_open"]) < 10

    a, b = _ckpt(straight), _ckpt(run)
    assert a["global_step"] == b["global_step"] == 25
    if controls.get("lr_decay"):    # the decay went on where it was: lr = lr·f(25) in both
        from skiprnn.controls import CosineDecay
        f = CosineDecay(16 if controls is METRIC_WARMUP else 22, 25, 0.1)(25)
        for ck in (a, b):
            assert ck["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1e-2 * f)
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    # the interrupted validation ran again on resume: validations at steps 10, 20 (and none twice)
    import csv
    val_steps = []
    for d in ("csv", "csv_resume1", "csv_resume2", "csv_resume3"):
        if not (run / d / "metrics.csv").exists():   # an interrupted session may have logged nothing
            continue
        with open(run / d / "metrics.csv") as f:
            val_steps += [int(row["step"]) + 1 for row in csv.DictReader(f) if row.get("val/loss")]
    # (the re-run validation is logged a couple of steps late: Lightning's logging-step counter
    # after a restart mid-validation)
    assert len(val_steps) == 2 and val_steps[0] == 10 and 20 <= val_steps[1] <= 22


def test_last_checkpoint_is_the_latest_state(tmp_path):
    # lr 1.0 diverges: the validation loss at step 20 is worse than at step 10 (best stays at 10)
    run = tmp_path / "run"
    r = fit(_cfg(run, 20, "random_skip_lstm", lr=1.0, test_ckpt="last"), verbose=False)
    assert _ckpt(run, "best")["global_step"] == 10
    assert _ckpt(run)["global_step"] == 20 == r["steps"] == r["test_checkpoint_step"]
    # stopped by max_steps between validations: the last steps are saved too
    run2 = tmp_path / "run2"
    r = fit(_cfg(run2, 13, test_ckpt="last"), verbose=False)
    assert _ckpt(run2)["global_step"] == 13 == r["test_checkpoint_step"]


def test_resume_with_nothing_to_do_keeps_results(tmp_path, capsys):
    run = tmp_path / "run"
    fit(_cfg(run, 5, val_every=5), verbose=False)
    before = (run / "results.json").read_text()
    r = fit(_cfg(run, 5, val_every=5), resume=run)
    assert "nothing to do" in capsys.readouterr().out
    assert r["steps"] == 5 and (run / "results.json").read_text() == before
    assert not (run / "csv_resume1").exists()


def test_run_stopped_in_its_last_validation_is_finished_by_a_resume(tmp_path):
    """Ctrl-C during the validation at max_steps: last.ckpt is at max_steps but no results.json
    was written; the resume re-runs that validation and the test evaluation."""
    run = tmp_path / "run"
    with pytest.raises(RunInterrupted):
        fit(_cfg(run, 10, val_every=5), verbose=False, callbacks=[_Interrupt(10, "val")])
    assert _ckpt(run)["global_step"] == 10 and not (run / "results.json").exists()
    r = fit(_cfg(run, 10, val_every=5), resume=run, verbose=False)
    assert r is not None and r["steps"] == 10 and (run / "results.json").exists()


def test_directory_of_a_killed_run_is_not_reused(tmp_path):
    run = tmp_path / "run"
    (run / "csv").mkdir(parents=True)
    (run / "csv" / "metrics.csv").write_text("epoch,step\n")
    _cfg(run, 5).save(run / "config.json")
    with pytest.raises(ConfigError, match="already holds a run"):
        fit(_cfg(run, 5, val_every=5), verbose=False)
    fit(_cfg(run, 5, val_every=5), overwrite=True, verbose=False)
    assert not (run / "csv_resume1").exists()


def test_random_skip_evaluation_is_reproducible_and_command_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/x/skiprnn/__main__.py", "train", "--out", "a b"])
    run = tmp_path / "run"
    r = fit(_cfg(run, 5, "random_skip_lstm", val_every=5), verbose=False)
    assert r["command"] == "python -m skiprnn train --out 'a b'"
    e1, e2 = evaluate_run(run), evaluate_run(run)
    assert e1["results"][0]["mse"] == e2["results"][0]["mse"] == pytest.approx(r["test_metric"], rel=1e-6)
    assert json.loads((run / "results.json").read_text())["test_metric"] == r["test_metric"]


class _Trainer:
    global_rank, world_size = 0, 1

    def __init__(self, step, epoch):
        self.global_step, self.current_epoch = step, epoch


def test_training_loader_starts_at_the_trainers_step():
    """Batch s % N of epoch s // N for global step s (synthetic stream and shuffled in-memory data)."""
    from skiprnn.tasks import get_task
    from skiprnn.tasks.mnist import MNISTDataset

    task = get_task("adding", batch_size=4, train_batches_per_epoch=5)
    gen = torch.Generator().manual_seed(0)
    train = MNISTDataset(torch.randint(0, 256, (37, 784), dtype=torch.uint8, generator=gen),
                         torch.randint(0, 10, (37,), generator=gen))

    class Mem:
        batch_size = 8   # 5 batches per epoch, the last one of 5 items

        def train_dataset(self, seed):
            return train

    for t in (task, Mem()):
        dm = TaskDataModule(t, seed=2)
        full = []
        for epoch in range(3):
            dm.trainer = _Trainer(5 * epoch, epoch)
            full += [b[0] for b in dm.train_dataloader()]
        assert len(full) == 15
        assert not torch.equal(full[0], full[5]) and not torch.equal(full[5], full[10])
        for s in (0, 3, 5, 7, 11):
            dm.trainer = _Trainer(s, 9)   # the trainer's own epoch count does not matter
            got = [b[0] for b in dm.train_dataloader()]
            assert len(got) == 5 - s % 5
            for a, b in zip(got, full[s:]):
                assert torch.equal(a, b)


def test_training_flushes_subnormals_and_restores_the_callers_setting(tmp_path):
    """Subnormal gradients (long back-propagation) are ~10-100x slower on x86: fit() flushes them
    while it trains and gives the caller's setting back."""
    from skiprnn.training.fit import flushing_denormals

    seen = []

    class _Probe(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(flushing_denormals())

    torch.set_flush_denormal(False)
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormal floats")
    torch.set_flush_denormal(False)
    r = fit(_cfg(tmp_path / "run", 3, val_every=3), verbose=False, callbacks=[_Probe()])
    assert seen == [True, True, True]
    assert r["hardware"]["cpu_flush_denormal"] is True
    assert not flushing_denormals()


def test_best_metric_checkpoint_is_the_best_validation_metric(tmp_path):
    # lr 1.0 diverges: the best validation MSE is the first validation's (step 10), whatever the
    # budget term did; best_metric.ckpt holds it and `best_metric` names it
    import csv

    from skiprnn.training.fit import choose_checkpoint

    run = tmp_path / "run"
    r = fit(_cfg(run, 30, lr=1.0), verbose=False)
    with open(run / "csv" / "metrics.csv") as f:
        vals = [(float(r["val/mse"]), int(r["step"]) + 1) for r in csv.DictReader(f) if r.get("val/mse")]
    best_step = min(vals)[1]
    assert _ckpt(run, "best_metric")["global_step"] == best_step
    assert choose_checkpoint(run / "checkpoints", "best_metric")[1].name == "best_metric.ckpt"
    # results.json measures the final weights and this checkpoint too, as `evaluate` does
    from skiprnn.training.fit import evaluate_run

    others = r["test_other_checkpoints"]
    assert r["test_checkpoint"] == "best" and set(others) == {"last", "best_metric"}
    assert others["last"]["step"] == 30 and others["best_metric"]["step"] == best_step
    for name, o in others.items():
        ev = evaluate_run(run, ckpt=name)["results"][0]
        assert o["metric"] == pytest.approx(ev["mse"], rel=1e-6)
        assert o["updates_mean"] == pytest.approx(ev["updates_mean"], rel=1e-6)


def test_init_from_starts_from_the_checkpoints_weights_with_fresh_training_state(tmp_path):
    first = tmp_path / "first"
    fit(_cfg(first, 10), verbose=False)
    start = {}

    class _Weights(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            start.update({k: v.detach().clone() for k, v in pl_module.state_dict().items()})
            start["step"] = trainer.global_step

    src = first / "checkpoints" / "last.ckpt"
    second = tmp_path / "second"
    fit(_cfg(second, 5, init_from=str(src)), verbose=False, callbacks=[_Weights()])
    saved = _ckpt(first)["state_dict"]
    assert start.pop("step") == 0   # a new run: step count, optimizer and schedules from zero
    assert set(start) == set(saved)
    for k, v in saved.items():
        assert torch.equal(start[k], v), k
    assert json.loads((second / "config.json").read_text())["init_from"] == str(src)
    # the weights moved on from there
    assert not torch.equal(_ckpt(second)["state_dict"]["rnn.weight_hh_l0"], saved["rnn.weight_hh_l0"])


def test_init_from_a_checkpoint_of_another_size_names_what_differs(tmp_path):
    first = tmp_path / "first"
    fit(_cfg(first, 2, val_every=2), verbose=False)
    cfg = _cfg(tmp_path / "second", 2, init_from=str(first / "checkpoints" / "last.ckpt"))
    cfg.hidden_size = 4
    with pytest.raises(ConfigError, match=r"rnn.weight_hh_l0 \(32, 8\) \(this run: \(16, 4\)\)"):
        fit(cfg, verbose=False)
    assert not (tmp_path / "second").exists()   # nothing half-written
    with pytest.raises(ConfigError, match="--init-from expects a checkpoint file"):
        fit(_cfg(tmp_path / "third", 2, init_from=str(tmp_path / "none.ckpt")), verbose=False)


def test_run_records_say_which_cpu_loop_ran(monkeypatch):
    """results.json's hardware block names the Skip LSTM's CPU loop (the fused C kernels and the
    torch ops round differently, so a rerun must know which one to ask for)."""
    from skiprnn.training.fit import environment_info

    monkeypatch.setenv("SKIPRNN_CPU_KERNELS", "python")
    assert environment_info()["cpu_kernels"] == "per-step torch ops (SKIPRNN_CPU_KERNELS=python)"
    monkeypatch.setenv("SKIPRNN_CPU_KERNELS", "auto")
    got = environment_info()["cpu_kernels"]
    assert got == "fused C kernels" or got.startswith("per-step torch ops (the C kernels did not build")
