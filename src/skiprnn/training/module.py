"""The LightningModule: an RNN from ``build_rnn`` + a linear head, task loss + budget loss."""

from __future__ import annotations

import contextlib
import math
import random
from typing import Optional

import torch
from torch import nn

try:
    import lightning.pytorch as pl
except ImportError as e:  # pragma: no cover - lightning is an optional dependency
    raise ImportError("skiprnn.training needs Lightning: pip install 'skiprnn[train]'") from e

from ..controls import BudgetSchedule, CosineDecay, MetricWarmup, gate_param_groups, is_gate_parameter
from ..losses import budget_loss, target_rate_loss
from ..metrics import inference_flops
from ..modules import build_rnn
from ..modules.registry import cell_kind, chrono_init_, has_learned_gate, paper_layer_kwargs
from ..tasks import get_task
from .config import SOLVED_LEVEL, task_overrides
from .paper import paper_optimizer

__all__ = ["SkipRNNModule", "build_task", "final_hidden"]


def build_task(cfg: dict):
    """The task object of a run config (a dict, as saved in ``config.json``)."""
    return get_task(cfg["task"], **task_overrides(cfg))


def final_hidden(out, lengths=None) -> torch.Tensor:
    """The top layer's last h per sequence ``(B, H)`` (copied when the last step was skipped).

    Without padding it is ``output[:, -1]``; with ``lengths`` it is the final state, which is each
    sequence's own last valid step.
    """
    if lengths is None:
        return out.output[:, -1]
    st = out.state
    if isinstance(st, torch.Tensor):          # nn.GRU h_n
        return st[-1]
    h = getattr(st, "h", None)
    if h is None:                              # nn.LSTM (h_n, c_n)
        h = st[0]
    return h[-1]


class SkipRNNModule(pl.LightningModule):
    """RNN (any model of ``skiprnn.MODELS``) + linear head on the last output.

    ``loss = task.loss(head(h_T), y) + λ·Σ_t u_t`` (the budget acts on learned gates only).
    Logs ``{train,val,test}/loss``, ``/task_loss``, ``/<metric>``, ``/updates`` (mean Σ_t u_t per
    sequence), ``/update_fraction`` and ``/flops`` (paper §6 inference FLOPs per sequence).
    """

    def __init__(self, config: dict):
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.config = config
        self.task = build_task(config)
        t = self.task
        self.model_name = config["model"]
        self.cell = cell_kind(self.model_name)
        self.learned_gate = has_learned_gate(self.model_name)
        self.cost_per_sample = float(config.get("cost_per_sample") or 0.0) if self.learned_gate else 0.0
        #: with ``warmup_until_metric``: the gate and budget warm-ups also last until a validation's
        #: task metric passes that level (the release step is saved in checkpoints)
        level = config.get("warmup_until_metric") if self.learned_gate else None
        if level == SOLVED_LEVEL:
            level = self.task.solved_threshold
        self.metric_warmup = (None if level is None
                              else MetricWarmup(float(level), self.task.higher_is_better))
        #: λ per optimizer step (0 during the warm-up, then a ramp; the paper's is constant)
        self.budget = BudgetSchedule(self.cost_per_sample, int(config.get("budget_warmup") or 0),
                                     int(config.get("budget_ramp") or 0), until=self.metric_warmup)
        #: optimizer steps during which the gate is held open (every step updates, τ = 0) and its
        #: W_p, b_p do not train
        self.gate_warmup = int(config.get("gate_warmup") or 0) if self.learned_gate else 0
        self.target_rate = config.get("target_rate") if self.learned_gate else None
        self.target_weight = float(_setting(config, "target_weight", 1.0))
        kw = {"batch_first": True, "learn_init": True}
        if self.model_name.startswith(("skip_", "random_", "periodic_")):
            kw["backend"] = config.get("backend", "auto")
        if self.learned_gate and config.get("max_skip") is not None:
            kw["max_skip"] = int(config["max_skip"])   # at most K skipped steps in a row
        #: the paper recipe trains with TF1's Adam; the official code's layer (one bias per gate,
        #: the GRU's reset before the product, TF's joint Glorot) is its `layer` (runs written
        #: before that setting existed: the recipe's)
        self.paper_exact = config.get("recipe") == "paper"
        if (config.get("layer") or ("paper" if self.paper_exact else "nn")) == "paper":
            kw.update(paper_layer_kwargs(self.model_name))
        kw.setdefault("paper_init", True)
        self.rnn = build_rnn(self.model_name, t.input_size, t.hidden_size, t.num_layers,
                             p_skip=config.get("p_skip", 0.5), period=config.get("period", 2), **kw)
        if config.get("init") == "chrono":          # forget biases for memories up to T steps
            chrono_init_(self.rnn, max(int(t.seq_len), 3))
        self.head = nn.Linear(t.hidden_size, t.predict_head)
        nn.init.xavier_uniform_(self.head.weight)   # tf.contrib.layers.linear: Xavier, zero bias
        nn.init.zeros_(self.head.bias)
        self.metric_name = t.metric_name

    # ------------------------------------------------------------------ model
    def forward(self, x, lengths=None):
        out = self.rnn(x, lengths=lengths)
        return self.head(final_hidden(out, lengths)), out

    def flops(self, mean_updates: float) -> float:
        t = self.task
        return inference_flops(mean_updates, self.cell, t.input_size, t.hidden_size, t.num_layers,
                               skip=self.learned_gate)

    def _split_batch(self, batch):
        return batch if len(batch) == 3 else (*batch, None)

    @contextlib.contextmanager
    def held_open(self, on: bool = True):
        """Within: the learned gate updates at every step (threshold τ = 0: ũ > 0 always), with its
        straight-through gradients as usual. ``on=False``: no change."""
        if not on:
            yield
            return
        tau = self.rnn.threshold
        self.rnn.threshold = 0.0
        try:
            yield
        finally:
            self.rnn.threshold = tau

    def gate_held_open(self) -> bool:
        """Whether this optimizer step is in the gate's warm-up (gate open, W_p and b_p frozen):
        the first ``gate_warmup`` steps, and with a metric warm-up until its level has passed."""
        if not self.learned_gate:
            return False
        end = (self.gate_warmup if self.metric_warmup is None
               else self.metric_warmup.end(self.gate_warmup))
        return int(self.global_step) < end

    def _step(self, batch, stage: str):
        x, y, lengths = self._split_batch(batch)
        open_ = stage == "train" and self.gate_held_open()
        with self.held_open(open_):
            pred, out = self(x, lengths)
        task_loss = self.task.loss(pred, y)
        # training: λ of this optimizer step (the schedule's); validation / test: the full λ, so
        # that the validation loss (best.ckpt) measures the run's objective at every step
        share = self.budget.fraction(int(self.global_step)) if stage == "train" else 1.0
        budget = self._budget_term(out.updates, lengths, share)
        loss = task_loss + budget
        B = x.shape[0]
        if stage == "train":
            self.train_backend = getattr(self.rnn, "last_backend", "torch")
        values = {"loss": loss.detach(), "task_loss": task_loss.detach()}
        if self.cost_per_sample > 0 or self.target_rate is not None:
            values["budget_loss"] = budget.detach()
        with torch.no_grad():
            counts, lens = _counts(out.updates.detach(), lengths)
            upd = counts.mean()
            # FLOPs are linear in the updates: a tensor product, no host sync
            values.update({self.metric_name: self.task.metric(pred.detach(), y), "updates": upd,
                           "update_fraction": (counts / lens).mean(),
                           "flops": upd * self.flops(1.0)})
        if stage == "train":
            self._log_train(values, B)
            if self.learned_gate and self._trainer is not None and self._writes_step_logs():
                with self.held_open(open_):
                    self._gate_diagnostics(x, out, lengths, share)
        else:
            if stage == "val" and self.metric_warmup is not None and self.metric_warmup.passed_at is None:
                self._add_release_metric(x, y, lengths, B)
            for k, v in values.items():
                self.log(f"{stage}/{k}", v, prog_bar=k in self._pbar_keys(stage), batch_size=B,
                         sync_dist=True, on_step=False, on_epoch=True)
        return loss

    @torch.no_grad()
    def _add_release_metric(self, x, y, lengths, B: int) -> None:
        """What releases a metric warm-up: the task metric of the model as it trains while the
        warm-up holds, i.e. with the gate held open (the logged validation uses the gate's own
        decisions, made by W_p, b_p that have not trained yet), summed weighted by batch size as
        Lightning's epoch mean."""
        with self.held_open():
            pred, _ = self(x, lengths)
        metric = self.task.metric(pred, y)
        prev = getattr(self, "_val_metric_sums", None) or (0.0, 0)
        self._val_metric_sums = (prev[0] + metric * B, prev[1] + B)

    def _budget_term(self, updates, lengths, share: float):
        """λ·Σ_t u_t (mean over the batch) plus the target-rate loss when the run has one, both
        at ``share`` of their full weight (the budget schedule's warm-up and ramp; 1 outside
        training)."""
        lam = self.cost_per_sample * share
        budget = (budget_loss(updates, lam, lengths=lengths, batch_first=True) if lam > 0
                  else updates.new_zeros(()))
        if self.target_rate is not None and share > 0:
            budget = budget + target_rate_loss(updates, float(self.target_rate), lengths=lengths,
                                               weight=self.target_weight * share, batch_first=True)
        return budget

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    # ------------------------------------------------------------------ training-step logging
    # ``self.log`` costs ~0.6 ms of host time per call (Lightning copies the metric's metadata on
    # every call): seven metrics a step were ~4 ms, more than a whole fused Skip LSTM forward +
    # backward at the adding shape on a GPU. And a progress-bar metric logged on a step is turned
    # into a Python number after every batch (``.item()``: a host-GPU sync per step). So the
    # training metrics go to Lightning only at the steps its loggers write (every
    # ``log_every_n_steps``; the loggers read them there) and never as progress-bar metrics: the
    # progress bar (``callbacks.StepMetricsProgressBar``) shows ``progress_values``, read from the
    # device at those steps only. The epoch means (batch-size weighted, as Lightning's own) are
    # summed on the device and logged at the epoch's end. The logged names are Lightning's:
    # ``train/<name>_step`` and ``train/<name>_epoch``.
    def _pbar_keys(self, stage: str) -> tuple:
        return ((() if stage == "test" else ("loss",)) + (self.metric_name, "update_fraction"))

    def _log_train(self, values: dict, batch_size: int) -> None:
        vec = torch.stack([v.detach().float().reshape(()) for v in values.values()])
        sums = getattr(self, "_train_sums", None)
        if sums is None or sums[0] != list(values) or sums[1].device != vec.device:
            self._train_sums = sums = [list(values), torch.zeros_like(vec), 0]
        sums[1].add_(vec, alpha=batch_size)
        sums[2] += batch_size
        self._unlogged = (list(values), vec, batch_size)
        if self._trainer is None or self._writes_step_logs():
            self._log_step_values()

    def _log_step_values(self) -> None:
        names, vec, batch_size = self._unlogged
        self._unlogged = None
        for k, v in zip(names, vec):
            self.log(f"train/{k}_step", v, on_step=True, on_epoch=False, batch_size=batch_size)
        if self._trainer is not None and self.trainer.progress_bar_callback is not None:
            pbar = self._pbar_keys("train")
            self.progress_values = {k: v for k, v in zip(names, vec.tolist()) if k in pbar}

    # ------------------------------------------------------------------ gate diagnostics
    #: position buckets of ``gate/updates_pos<k>`` (fraction of updates in each eighth of the sequence)
    POSITION_BUCKETS = 8

    def _rnn_parameters(self) -> list:
        """``(name, parameter)`` of the RNN that train (the gate's W_p, b_p and the cell's)."""
        return [(n, p) for n, p in self.rnn.named_parameters() if p.requires_grad]

    def _gate_diagnostics(self, x, out, lengths, share: float) -> None:
        """What decides the gate, at the steps the loggers write (``gate/*`` metrics): λ, W_p's
        norm and b_p, the distribution of Δũ, where in the sequence the updates fall, and (in
        ``on_after_backward``) the gradient split into its task and budget parts: on b_p, on W_p,
        on the cell's own weights (the budget reaches them too, through the state Δũ reads), and
        the fraction of the cell's weights whose budget part is the larger one (Adam moves each
        weight by about the learning rate in the direction of its dominant part, however small
        λ is)."""
        gate = self.rnn.update_gate
        u = out.updates.detach()                         # (B, T)
        p = out.update_probs.detach()
        m = None if lengths is None else _mask(lengths, u.shape[1], u.device)
        # ũ_{t+1} = Δũ_t after an update: the Δũ values drawn on this batch (others NaN)
        after = u[:, :-1] > 0.5
        if m is not None:
            after = after & (m[:, 1:] > 0)
        deltas = torch.where(after, p[:, 1:].float(), float("nan")).flatten()
        q = torch.nanquantile(deltas, torch.tensor([0.1, 0.5, 0.9], device=deltas.device))
        vals = {"lambda": torch.tensor(self.cost_per_sample * share, device=u.device),
                "bias": gate.bias.detach().reshape(()).float(),
                "weight_norm": gate.weight.detach().float().norm(),
                "delta_q10": q[0], "delta_q50": q[1], "delta_q90": q[2],
                "delta_mean": deltas.nanmean()}
        um = u if m is None else u * m
        per_t = um.sum(0) / (u.shape[0] if m is None else m.sum(0).clamp_min(1))
        for k, chunk in enumerate(per_t.tensor_split(self.POSITION_BUCKETS)):
            vals[f"updates_pos{k}"] = chunk.mean()
        self._log_scalars("gate/", vals)
        # the budget part of the gate's gradient (the task part is the rest, in on_after_backward).
        # The fast paths back-propagate a call once, so the budget's gradient comes from a second
        # forward of the same batch (same weights: the same graph; random draws restored after)
        params = [p for _, p in self._rnn_parameters()]
        self._budget_grads = None
        if params:
            self._budget_grads = tuple(None for _ in params)
            if share > 0 and (self.cost_per_sample > 0 or self.target_rate is not None):
                devs = [u.device.index or 0] if u.device.type == "cuda" else []
                with torch.random.fork_rng(devices=devs):
                    again = self.rnn(x, lengths=lengths)
                    part = self._budget_term(again.updates, lengths, share)
                self._budget_grads = torch.autograd.grad(part, params, allow_unused=True)

    def _log_scalars(self, prefix: str, values: dict) -> None:
        """Log 0-d tensors as step metrics with one device read for all of them."""
        numbers = torch.stack([v.detach().float().reshape(()) for v in values.values()]).tolist()
        for k, v in zip(values, numbers):
            self.log(prefix + k, v, on_step=True, on_epoch=False, batch_size=1)

    def on_after_backward(self):
        self._log_gradient_split()
        if self.gate_held_open():
            # the gate is held open: its W_p, b_p stay where they start (a gradient through a
            # gate that decides nothing would only drift them; Adam skips parameters without one)
            for n, p in self._rnn_parameters():
                if is_gate_parameter(n):
                    p.grad = None

    def _log_gradient_split(self) -> None:
        grads = getattr(self, "_budget_grads", None)
        if grads is None:
            return
        self._budget_grads = None
        gate = self.rnn.update_gate
        cell_task, cell_budget = [], []
        vals = {}
        for (name, p), gb in zip(self._rnn_parameters(), grads):
            total = p.grad if p.grad is not None else torch.zeros_like(p)
            gb = torch.zeros_like(p) if gb is None else gb
            gt = total - gb
            if p is gate.bias:        # signed: positive makes the optimizer lower Δũ (fewer updates)
                vals["grad_bias_task"], vals["grad_bias_budget"] = gt.sum(), gb.sum()
            elif p is gate.weight:
                vals["grad_weight_task"] = torch.linalg.vector_norm(gt)
                vals["grad_weight_budget"] = torch.linalg.vector_norm(gb)
            elif not is_gate_parameter(name):
                cell_task.append(gt.flatten())
                cell_budget.append(gb.flatten())
        if cell_task:
            gt, gb = torch.cat(cell_task), torch.cat(cell_budget)
            vals["grad_cell_task"] = torch.linalg.vector_norm(gt)
            vals["grad_cell_budget"] = torch.linalg.vector_norm(gb)
            vals["cell_budget_dominated"] = (gb.abs() > gt.abs()).float().mean()
        self._log_scalars("gate/", vals)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        # a callback that stops training (max_time's Timer, SolvedStopping) sets should_stop after
        # the step: Lightning then writes this step's metrics too
        if getattr(self, "_unlogged", None) is not None and self._writes_step_logs():
            self._log_step_values()
        self._unlogged = None

    def _writes_step_logs(self) -> bool:
        """Whether Lightning writes the step metrics of this training step to the loggers."""
        conn = getattr(self.trainer, "_logger_connector", None)
        try:
            return bool(conn.should_update_logs)
        except Exception:  # another Lightning: log every step
            return True

    def on_train_epoch_start(self):
        self._train_sums = None

    #: the latest training values for the progress bar (Python numbers, set at logging steps)
    progress_values: dict = {}

    def on_train_epoch_end(self):
        sums = getattr(self, "_train_sums", None)
        if sums is None or sums[2] == 0:
            return
        names, total, n = sums
        for k, v in zip(names, total / n):
            self.log(f"train/{k}_epoch", v, on_step=False, on_epoch=True, sync_dist=True)
        self._train_sums = None

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self):
        # Adam with the paper's β/ε; global-norm clipping is done by the Trainer (gradient_clip_val).
        # The update gate's W_p, b_p may have their own learning rate (gate_lr_mult, 1 = the paper's).
        mult = float(_setting(self.config, "gate_lr_mult", 1.0))
        groups = ([p for p in self.parameters() if p.requires_grad] if mult == 1.0
                  else gate_param_groups(self, self.task.lr, mult))
        if self.paper_exact:
            opt = paper_optimizer(groups, lr=self.task.lr)      # TF1's Adam (ε before bias correction)
        else:
            opt = torch.optim.Adam(groups, lr=self.task.lr, betas=(0.9, 0.999), eps=1e-8)
        floor = self.config.get("lr_decay")
        if floor is None:
            return opt
        # cosine decay from the end of the budget's ramp to the run's last step
        total = (self.trainer.estimated_stepping_batches if self._trainer is not None
                 else self.config.get("max_steps"))
        if total is None or not math.isfinite(total):
            raise ValueError("lr_decay needs a run with a known length (max_steps or max_epochs), "
                             f"got {total!r} steps")
        total, floor = int(total), float(floor)

        def factor(step: int) -> float:
            start = self._decay_start()    # later than planned while a metric warm-up holds
            return 1.0 if not math.isfinite(start) else CosineDecay(int(start), total, floor)(step)
        # a function, not an object: LambdaLR saves an object's attributes in the checkpoint and a
        # resume would restore the old run length; a resume with a new --max-steps re-plans the
        # decay from the current step to the new end
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _decay_start(self) -> float:
        """The step the learning-rate decay starts: ``lr_decay_start`` when the run gives one,
        else the end of the budget's ramp (for a model without a gate, the recipe's, so that it
        decays as the Skip model beside it); ``inf`` while a metric warm-up holds."""
        if self.config.get("lr_decay_start") is not None:
            return int(self.config["lr_decay_start"])
        if self.metric_warmup is not None:   # the budget's own schedule knows when its ramp ends
            return self.budget.warmup_end() + self.budget.ramp_steps
        from .config import recipe_settings
        rec = recipe_settings(self.config.get("recipe") or "paper", self.config["task"])
        return sum(int(self.config.get(k) if self.config.get(k) is not None else rec.get(k) or 0)
                   for k in ("budget_warmup", "budget_ramp"))

    # ------------------------------------------------------------------ random state in checkpoints
    # Random-skip masks (and anything else drawing from the global RNGs) go on where they were after
    # a resume: checkpoints hold the torch / CUDA / numpy / python RNG states. A checkpoint written
    # in the middle of a training step (an interrupt) holds the state from the start of that step,
    # which the resumed run trains again; one written during validation, the state before it.
    # The saved state is applied just before the first training batch (or validation) of the
    # resumed session, so nothing the Trainer draws while it restores counts.
    def on_train_batch_start(self, batch, batch_idx):
        self._apply_saved_rng()
        # torch's states only (~1 µs; numpy's and python's cost ~60 µs a step and no training
        # step draws from them): rng_state() completes them if a checkpoint is written mid-step
        self._rng_step = (int(self.trainer.global_step), _torch_rng_state())

    def on_validation_start(self):
        self._apply_saved_rng()
        self._val_metric_sums = None
        self._rng_val = rng_state()

    def on_validation_epoch_end(self):
        self._rng_val = None
        # a metric warm-up is released by the first validation that passes its level; decided
        # here, before any checkpoint of this validation is written (those come at its end)
        sums, self._val_metric_sums = getattr(self, "_val_metric_sums", None), None
        mw = self.metric_warmup
        if mw is None or mw.passed_at is not None or sums is None or self.trainer.sanity_checking:
            return
        # every rank decides on the whole validation set (the same release step on all ranks)
        total = torch.stack([torch.as_tensor(sums[0], dtype=torch.float64),
                             torch.as_tensor(float(sums[1]), dtype=torch.float64)]).to(self.device)
        total = self.trainer.strategy.reduce(total, reduce_op="sum")
        m = float(total[0] / total[1])
        # shown while the warm-up holds (the logged val/<metric> is the free gate's)
        self.log(f"val/{self.metric_name}_held_open", m, batch_size=1)
        if mw.observe(int(self.trainer.global_step), m):
            from lightning.pytorch.utilities import rank_zero_info
            rank_zero_info(f"[skiprnn] val/{self.metric_name} with the gate held open = {m:.4g} "
                           f"passed {mw.level:g} at step {mw.passed_at}: the gate's and the "
                           "budget's warm-up end")

    def on_save_checkpoint(self, checkpoint):
        state = getattr(self, "_saved_rng", None)   # restored but not applied yet
        state = getattr(self, "_rng_val", None) if state is None else state
        step = getattr(self, "_rng_step", None)
        if state is None and step is not None and self._trainer is not None \
                and step[0] == int(self.trainer.global_step) and self.trainer.training:
            state = rng_state(step[1])   # saved mid-step (optimizer step not taken): it runs again
        checkpoint["skiprnn_rng"] = state if state is not None else rng_state()
        if self.metric_warmup is not None:
            checkpoint["skiprnn_metric_warmup"] = self.metric_warmup.state_dict()
        if getattr(self, "_rng_val", None) is not None:
            _mark_mid_validation(checkpoint)

    def on_load_checkpoint(self, checkpoint):
        self._saved_rng = checkpoint.get("skiprnn_rng")
        if self.metric_warmup is not None and "skiprnn_metric_warmup" in checkpoint:
            self.metric_warmup.load_state_dict(checkpoint["skiprnn_metric_warmup"])

    def _apply_saved_rng(self):
        state = getattr(self, "_saved_rng", None)
        if state is not None:
            self._saved_rng = None
            set_rng_state(state)

    # ------------------------------------------------------------------ evaluation helper
    @torch.no_grad()
    def evaluate(self, loader, device: Optional[torch.device] = None) -> dict:
        """Exact metrics over a whole loader on one device (no Trainer): metric, losses, mean and
        std of updates per sequence, update fraction, FLOPs. Used for results.json and evaluate."""
        was_training = self.training
        self.eval()
        device = device or next(self.parameters()).device
        n = 0
        sums = {"metric": 0.0, "task_loss": 0.0, "budget_loss": 0.0, "frac": 0.0}
        counts_all = []
        for batch in loader:
            x, y, lengths = self._split_batch(batch)
            x, y = x.to(device), y.to(device)
            pred, out = self(x, lengths)
            B = x.shape[0]
            counts, lens = _counts(out.updates, lengths)
            sums["metric"] += float(self.task.metric(pred, y)) * B
            sums["task_loss"] += float(self.task.loss(pred, y)) * B
            sums["budget_loss"] += self.cost_per_sample * float(counts.sum())
            sums["frac"] += float((counts / lens).sum())
            counts_all.append(counts.float().cpu())
            n += B
        if was_training:
            self.train()
        c = torch.cat(counts_all)
        mean_u = float(c.mean())
        res = {
            self.metric_name: sums["metric"] / n,
            "task_loss": sums["task_loss"] / n,
            "loss": (sums["task_loss"] + sums["budget_loss"]) / n,
            "updates_mean": mean_u,
            "updates_std": float(c.std()) if c.numel() > 1 else 0.0,
            "update_fraction": sums["frac"] / n,
            "flops": self.flops(mean_u),
            "num_sequences": n,
        }
        res["solved"] = self.task.solved(res[self.metric_name])
        return res


def _mark_mid_validation(checkpoint: dict) -> None:
    """A checkpoint written during validation (an interrupt): make its validation progress read as
    "stopped inside the first validation step", the state from which Lightning runs the whole
    validation again on resume (the RNG state saved is the one from before the validation).
    Stopped between two validation batches, Lightning would skip the validation instead."""
    loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    prog = loop.get("epoch_loop.val_loop.batch_progress")
    if not isinstance(prog, dict):
        return
    for part in ("total", "current"):
        c = prog.get(part)
        if isinstance(c, dict) and "processed" in c:
            c.update(ready=1, started=1, processed=0, completed=0)


def _torch_rng_state() -> dict:
    st = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def rng_state(torch_part: Optional[dict] = None) -> dict:
    """The global random states (torch CPU, CUDA when initialised, numpy, python), as tensors and
    plain numbers (what ``torch.load(weights_only=True)`` reads back). ``torch_part``: torch's
    states taken earlier (``_torch_rng_state()``) instead of the current ones."""
    version, words, gauss = random.getstate()
    st = dict(torch_part) if torch_part is not None else _torch_rng_state()
    st["python"] = [version, torch.tensor(words, dtype=torch.int64), gauss]
    try:
        import numpy as np
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        st["numpy"] = [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                       float(cached)]
    except ImportError:  # pragma: no cover
        pass
    return st


def set_rng_state(st: dict) -> None:
    """Restore what :func:`rng_state` returned (parts this process cannot take are skipped)."""
    if st.get("torch") is not None:
        torch.set_rng_state(st["torch"].cpu())
    if st.get("python") is not None:
        version, words, gauss = st["python"]
        random.setstate((version, tuple(int(w) for w in words.tolist()), gauss))
    cuda = st.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    if st.get("numpy") is not None:
        try:
            import numpy as np
            kind, keys, pos, has_gauss, cached = st["numpy"]
            np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        except ImportError:  # pragma: no cover
            pass


def _setting(config: dict, key: str, default):
    """``config[key]``, or ``default`` where it is missing or None (not where it is 0)."""
    v = config.get(key)
    return default if v is None else v


def _counts(u, lengths) -> tuple:
    """Σ_t u_t per sequence of ``(B, T)`` updates (padding excluded) and the lengths, ``(B,)``."""
    if lengths is None:
        counts = u.sum(1)
        return counts, torch.full_like(counts, u.shape[1])
    counts = (u * _mask(lengths, u.shape[1], u.device)).sum(1)
    return counts, torch.as_tensor(lengths, device=u.device).to(counts.dtype)


def _mask(lengths, T, device):
    lengths = torch.as_tensor(lengths, device=device)
    return (torch.arange(T, device=device)[None, :] < lengths[:, None]).float()
