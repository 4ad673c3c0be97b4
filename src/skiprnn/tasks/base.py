"""Shared pieces of every task: the :class:`Task` base class, seeding and the synthetic data stream.

A task bundles everything about one experiment of the paper that is not the model: how its data
are made, its loss and metric, its "solved" rule and the paper's hyper-parameters.

Data conventions (all tasks)
----------------------------
* Every dataset yields items ``(x, y)``:

  - ``x``: ``float32`` tensor of shape ``(T, input_size)`` (time first, one item, no batch dim);
  - ``y``: ``float32`` 0-d tensor for ``problem == 'regression'`` or ``int64`` 0-d tensor (class
    index) for ``problem == 'classification'``.

  ``torch.utils.data.DataLoader`` with the default collate therefore gives ``x`` of shape
  ``(B, T, input_size)`` (batch first) and ``y`` of shape ``(B,)``.
* ``task.train_dataset(seed)``, ``task.val_dataset()`` and ``task.test_dataset()`` build the three
  splits. Synthetic tasks stream fresh training data (an :class:`SyntheticStream`) and hold fixed,
  seeded validation / test sets (``TensorDataset``); MNIST holds all three in memory.
* ``task.loss(pred, y)`` is the training loss (the paper code's scaling), ``task.metric(pred, y)``
  the reported metric averaged over the batch (aggregate over batches weighting by batch size),
  ``task.solved(value)`` the paper's "solved" rule.
* ``pred`` is the output of the head: ``(B, 1)`` or ``(B,)`` for regression, logits ``(B, C)`` for
  classification. The head is a linear layer from the last RNN output (the last ``h``, copied when the
  last step was skipped) to ``task.predict_head`` outputs.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field, fields
from typing import Callable, ClassVar, Iterator, Optional

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, IterableDataset, TensorDataset, get_worker_info

__all__ = ["Task", "SyntheticTask", "SyntheticStream", "derive_seed", "make_generator"]


def derive_seed(*parts: object) -> int:
    """A 63-bit seed derived from ``parts`` (e.g. ``(seed, 'train', epoch)``), stable across runs.

    Different tuples give unrelated seeds, so the training stream never replays the held-out sets.
    """
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def make_generator(*parts: object) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed` of ``parts``."""
    return torch.Generator().manual_seed(derive_seed(*parts))


@dataclass
class Task:
    """Base class of all tasks (a dataclass: every field can be overridden via ``get_task``).

    Class-level facts (not overridable): ``name``, ``problem`` ('regression' | 'classification'),
    ``metric_name``, ``higher_is_better``. Subclasses define ``input_size``, ``output_size`` and
    ``seq_len`` (fields or properties).

    Paper defaults (fields): ``hidden_size=110``, ``num_layers=1``, ``lr=1e-4`` (Adam,
    betas (0.9, 0.999), eps 1e-8), ``batch_size=256``, ``grad_clip=1.0`` (global norm),
    ``cost_per_sample`` (the λ grid of the paper for this task), ``p_skip`` (random-skip baseline
    grid, a dict cell kind -> tuple of probabilities; empty when the paper ran none).
    """

    name: ClassVar[str] = "task"
    problem: ClassVar[str] = "regression"
    metric_name: ClassVar[str] = "metric"
    higher_is_better: ClassVar[bool] = True

    hidden_size: int = 110
    num_layers: int = 1
    lr: float = 1e-4
    batch_size: int = 256
    grad_clip: float = 1.0
    cost_per_sample: tuple = (0.0,)
    p_skip: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_field_types(self)
        check_positive_int("hidden_size", self.hidden_size)
        check_positive_int("num_layers", self.num_layers)
        check_positive_int("batch_size", self.batch_size)
        check_finite_positive("lr", self.lr)
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise ValueError(f"grad_clip must be a finite number >= 0, got {self.grad_clip!r}")

    # ----- shapes -------------------------------------------------------------------------------
    input_size: ClassVar[int] = 1
    output_size: ClassVar[int] = 1

    @property
    def predict_head(self) -> int:
        """Number of outputs of the linear head on the last RNN output (= ``output_size``)."""
        return self.output_size

    # ----- loss / metric ------------------------------------------------------------------------
    def loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def metric(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def solved(self, metric_value: float) -> Optional[bool]:  # pragma: no cover
        raise NotImplementedError

    # ----- data ---------------------------------------------------------------------------------
    def train_dataset(self, seed: int = 0) -> Dataset:  # pragma: no cover
        raise NotImplementedError

    def val_dataset(self) -> Dataset:  # pragma: no cover
        raise NotImplementedError

    def test_dataset(self) -> Dataset:  # pragma: no cover
        raise NotImplementedError

    def data_source(self) -> Optional[dict]:
        """Where the data come from, for run records (None: not known). Reading a dataset from
        files, this loads it, so a missing or corrupt file shows before a run starts."""
        return None

    # ----- helpers ------------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        """Names accepted as overrides by ``get_task``."""
        return [f.name for f in fields(cls) if f.init]


class Classification:
    """The classification tasks' loss and metric (a mixin, before the :class:`Task` base)."""

    problem: ClassVar[str] = "classification"
    metric_name: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True

    def loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy; pred logits (B, C), y (B,) int64."""
        return F.cross_entropy(pred, y)

    def metric(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Accuracy over the batch (0-d tensor)."""
        return accuracy(pred.detach(), y)


# ----- shared loss / metric helpers ---------------------------------------------------------------
def _regression_pred(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``pred`` (B, 1) or (B,) -> (B,) float, checked against ``y`` (B,)."""
    if pred.dim() == y.dim() + 1 and pred.shape[-1] == 1:
        pred = pred.squeeze(-1)
    if pred.shape != y.shape:
        raise ValueError(f"regression pred must have shape {tuple(y.shape)} or "
                         f"{tuple(y.shape) + (1,)}, got {tuple(pred.shape)}")
    return pred


def mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the batch: ``mean((pred - y)^2)``; pred (B,)|(B,1), y (B,)."""
    pred = _regression_pred(pred, y)
    return F.mse_loss(pred.float(), y.float())


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Fraction of ``argmax(logits, -1) == y``; logits (B, C), y (B,) int64. Returns a 0-d float."""
    if logits.dim() != 2 or logits.shape[0] != y.shape[0]:
        raise ValueError(f"logits must have shape (B, C) with B={y.shape[0]}, got {tuple(logits.shape)}")
    return (logits.argmax(-1) == y).float().mean()


# ----- synthetic tasks: on-the-fly training stream, fixed seeded held-out sets --------------------
class SyntheticStream(IterableDataset):
    """Training stream of freshly generated items ``(x, y)`` for synthetic tasks.

    Items are produced ``batch_size`` at a time by ``sample_fn(batch_size, generator)`` (which
    returns ``x (B, T, I)``, ``y (B,)``) and yielded one by one, so a ``DataLoader`` with the same
    ``batch_size`` gets exactly one generated batch per step (stratified for the frequency task).

    * Deterministic: batch k of epoch e is a function of ``(seed, e, worker id)`` only.
    * Each call to ``iter()`` is a new epoch with new data (an internal epoch counter; call
      :meth:`set_epoch` to set it explicitly, e.g. with non-persistent DataLoader workers).
    * ``num_batches`` batches per epoch (``len()`` = ``num_batches * batch_size`` items); ``None``
      streams forever. With DataLoader workers, each worker makes its share of the batches.
    """

    def __init__(self, sample_fn: Callable[[int, torch.Generator], tuple],
                 batch_size: int, num_batches: Optional[int], seed: int = 0, tag: str = "train"):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sample_fn = sample_fn
        self.batch_size = int(batch_size)
        self.num_batches = None if num_batches is None else int(num_batches)
        self.seed = seed
        self.tag = tag
        self.epoch = 0
        self._explicit_epoch = False

    def set_epoch(self, epoch: int) -> None:
        """Use the data of epoch ``epoch`` for the next iteration."""
        self.epoch = int(epoch)
        self._explicit_epoch = True

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("an endless SyntheticStream (num_batches=None) has no length")
        return self.num_batches * self.batch_size

    def batches(self) -> Iterator[tuple]:
        """Iterate over whole batches ``(x (B, T, I), y (B,))`` of the current epoch."""
        epoch = self.epoch
        if not self._explicit_epoch:
            self.epoch += 1
        self._explicit_epoch = False
        info = get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        gen = make_generator(self.seed, self.tag, epoch, wid)
        k = wid
        while self.num_batches is None or k < self.num_batches:
            yield self.sample_fn(self.batch_size, gen)
            k += nw

    def __iter__(self) -> Iterator[tuple]:
        for x, y in self.batches():
            for i in range(x.shape[0]):
                yield x[i], y[i]


@dataclass
class SyntheticTask(Task):
    """A task whose data are generated: ``sample(n, generator)`` is its definition.

    Extra fields: ``train_batches_per_epoch`` (300: the paper code validates every 300 iterations,
    so one "epoch" here = one validation period), ``val_size`` (3840 = the code's 15 batches of
    256), ``test_size`` (10000), ``heldout_seed`` (seeds the fixed validation/test sets; the run's
    ``seed`` only seeds the training stream).
    """

    train_batches_per_epoch: Optional[int] = 300
    val_size: int = 15 * 256
    test_size: int = 10_000
    heldout_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.train_batches_per_epoch is not None:
            check_positive_int("train_batches_per_epoch", self.train_batches_per_epoch)
        check_positive_int("val_size", self.val_size)
        check_positive_int("test_size", self.test_size)
        check_positive_int("heldout_seed", self.heldout_seed, minimum=0)

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> tuple:  # pragma: no cover
        """``n`` fresh items as a batch: ``x (n, T, input_size)`` float32, ``y (n,)``."""
        raise NotImplementedError

    def sample_batch(self, batch_size: Optional[int] = None,
                     generator: Optional[torch.Generator] = None) -> tuple:
        """One training batch (``batch_size`` defaults to the task's)."""
        return self.sample(self.batch_size if batch_size is None else batch_size, generator)

    def train_dataset(self, seed: int = 0) -> SyntheticStream:
        """Endless-in-spirit stream of fresh items, ``train_batches_per_epoch`` batches per epoch."""
        return SyntheticStream(self.sample, self.batch_size, self.train_batches_per_epoch, seed=seed,
                               tag=f"{self.name}/train")

    def data_source(self) -> dict:
        """Generated by :meth:`sample` (held-out sets seeded by ``heldout_seed``)."""
        return {"kind": "generated", "task": self.name, "heldout_seed": self.heldout_seed}

    def _heldout(self, split: str, n: int) -> TensorDataset:
        gen = make_generator(self.heldout_seed, self.name, split, self.seq_len)
        # generated in chunks of batch_size so that consecutive items form (stratified) batches
        parts = [self.sample(min(self.batch_size, n - start), gen)
                 for start in range(0, n, self.batch_size)]
        return TensorDataset(*(torch.cat(p) for p in zip(*parts)))

    def val_dataset(self) -> TensorDataset:
        """Fixed validation set of ``val_size`` items (same for every run with the same task config)."""
        return self._heldout("val", self.val_size)

    def test_dataset(self) -> TensorDataset:
        """Fixed test set of ``test_size`` items, disjoint in seed from validation and training."""
        return self._heldout("test", self.test_size)


_TYPE_CHECKS = {
    "int": ("an int", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "float": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, (str, os.PathLike))),
    "bool": ("True or False", lambda v: isinstance(v, bool)),
    "tuple": ("a tuple or list", lambda v: isinstance(v, (tuple, list))),
    "dict": ("a dict", lambda v: isinstance(v, dict)),
}


def check_field_types(task) -> None:
    """Raise ``ValueError`` naming the option, the expected type and the value when an init field
    of the task dataclass has a value of the wrong type (e.g. ``val_size='abc'``). Fields with an
    annotation other than int / float / str / bool / tuple / dict (optionally ``Optional[...]``)
    are not checked."""
    for f in fields(task):
        if not f.init:
            continue
        ann = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        optional = ann.startswith("Optional[") and ann.endswith("]")
        base = ann[len("Optional["):-1] if optional else ann
        if base not in _TYPE_CHECKS:
            continue
        v = getattr(task, f.name)
        if v is None and optional:
            continue
        what, ok = _TYPE_CHECKS[base]
        if not ok(v):
            raise ValueError(f"task option {f.name} must be {what}{' or None' if optional else ''}, "
                             f"got {v!r} ({type(v).__name__})")


def check_positive_int(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_finite_positive(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)
