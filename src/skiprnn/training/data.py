"""LightningDataModules for the paper's tasks.

* Synthetic tasks (adding, frequency): the training data are a fresh stream; one "epoch" is
  ``task.train_batches_per_epoch`` batches (the validation period), each epoch's data a function
  of ``(seed, epoch, rank)`` so resumed runs and DDP ranks never replay each other's batches.
  Validation and test sets are fixed and seeded by the task (the same for every run).
* MNIST: the task's in-memory splits, shuffled each epoch with an order that is a function of
  ``(seed, epoch)`` (a DistributedSampler under DDP); a dataset with a ``batch(indices)`` method
  is read a whole batch at a time (one gather instead of a call per item and a collate: ~5 ms less
  host time per batch of 256 on a CPU core).
* Resuming: the training batch of optimizer step ``s`` is batch ``s % N`` of epoch ``s // N``
  (``N`` batches per epoch), whatever the session. Each time the training loader is iterated it
  asks the trainer for its ``global_step`` and starts there, so a run resumed mid-epoch goes on
  with the next batch of that epoch: no batch is trained twice or skipped, and a resumed run sees
  the batches of an uninterrupted one.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, RandomSampler

from ..tasks import SyntheticStream
from ..tasks.base import derive_seed

__all__ = ["TaskDataModule"]


class _EpochBatches(IterableDataset):
    """Whole batches of a :class:`SyntheticStream`; :class:`_StepLoader` sets ``epoch``."""

    def __init__(self, stream: SyntheticStream):
        super().__init__()
        self.stream = stream
        self.epoch = 0

    def __len__(self) -> int:
        return self.stream.num_batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        self.stream.set_epoch(self.epoch)
        return iter(self.stream.batches())


class _StepLoader(DataLoader):
    """A training DataLoader that starts where the trainer is: batch ``s % N`` of epoch ``s // N``
    for ``s = position()`` (the trainer's global step; ``N = len(self)``).

    ``position`` returns ``(global_step, epoch)``; a ``None`` step means "no trainer step known":
    the epoch is then used from its first batch. The epoch goes to the dataset's / sampler's
    ``set_epoch`` and, with ``order_seed``, seeds the sampler's own generator (epoch 0:
    ``order_seed`` itself). The sampler's generator is not the loader's: a fresh iterator draws
    its workers' base seed from the loader's generator and a persistent one does not, so sharing
    it would give a resumed session (fresh iterator) another order than an uninterrupted run.
    The batches of the epoch before ``s % N`` are skipped (map-style data: read and dropped).
    """

    def __init__(self, *args, position=None, order_seed=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.position = position
        self.order_seed = order_seed

    # Lightning's resumable-loader protocol: the position lives in the trainer's global step,
    # which the checkpoint holds, so there is nothing else to save (and no "not resumable" warning)
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def _start(self) -> tuple[int, int]:
        step, epoch = self.position() if self.position is not None else (None, 0)
        try:
            n = 0 if step is None else len(self)
        except TypeError:   # an endless stream: no epochs to align with
            n = 0
        return divmod(int(step), n) if n > 0 else (int(epoch), 0)

    def __iter__(self):
        epoch, skip = self._start()
        for obj in (self.dataset, self.sampler, getattr(self.batch_sampler, "sampler", None)):
            if callable(getattr(obj, "set_epoch", None)):
                obj.set_epoch(epoch)
        order = getattr(self.sampler, "generator", None)
        if self.order_seed is not None and order is not None:
            order.manual_seed(self.order_seed if epoch == 0
                              else derive_seed(self.order_seed, "train-order", epoch))
        it = super().__iter__()
        for _ in range(skip):
            try:
                next(it)
            except StopIteration:
                break
        return it


class _Batched(Dataset):
    """``ds`` read whole batches at a time: the DataLoader's fetcher calls ``__getitems__`` with
    the batch sampler's indices, ``ds.batch`` gathers them, and ``_as_is`` passes the result
    through the collate step. Same batches, in the same order, as item-by-item loading."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        return self.ds[i]

    def __getitems__(self, indices):
        return self.ds.batch(indices)


def _as_is(batch):
    return batch


def _loader_args(ds) -> tuple:
    """``(dataset, collate_fn)`` for a DataLoader over ``ds``."""
    if callable(getattr(ds, "batch", None)):
        return _Batched(ds), _as_is
    return ds, None


class TaskDataModule(pl.LightningDataModule):
    """Train/val/test loaders for a task object (``skiprnn.tasks.get_task``)."""

    def __init__(self, task, seed: int = 0, eval_batch_size: int = 1024, num_workers: int = 0):
        super().__init__()
        self.task = task
        self.seed = int(seed)
        self.eval_batch_size = int(eval_batch_size)
        self.num_workers = int(num_workers)
        self._val = self._test = None
        self.synthetic = hasattr(task, "sample")

    def _position(self) -> tuple:
        """``(global_step or None, epoch)`` of the trainer (where the training data go on)."""
        tr = getattr(self, "trainer", None)
        if tr is None:
            return None, 0
        step = getattr(tr, "global_step", None)
        return (None if step is None else int(step)), int(tr.current_epoch)

    def train_dataloader(self):
        if self.synthetic:
            tr = getattr(self, "trainer", None)   # DDP: each rank its own stream
            seed = (self.seed if tr is None or tr.world_size == 1
                    else f"{self.seed}/rank{tr.global_rank}")
            stream = self.task.train_dataset(seed)
            # its own generator: creating the iterator then draws no number from the global RNG
            # (a resumed run would otherwise draw one more than an uninterrupted one)
            return _StepLoader(_EpochBatches(stream), batch_size=None, position=self._position,
                               generator=torch.Generator().manual_seed(self.seed))
        ds, collate = _loader_args(self.task.train_dataset(self.seed))
        sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(self.seed))
        return _StepLoader(ds, batch_size=self.task.batch_size, sampler=sampler,
                           generator=torch.Generator().manual_seed(self.seed),
                           num_workers=self.num_workers, drop_last=False, collate_fn=collate,
                           persistent_workers=self.num_workers > 0, position=self._position,
                           order_seed=self.seed)

    def val_dataset(self):
        if self._val is None:
            self._val = self.task.val_dataset()
        return self._val

    def test_dataset(self):
        if self._test is None:
            self._test = self.task.test_dataset()
        return self._test

    def _eval_loader(self, ds):
        ds, collate = _loader_args(ds)
        return DataLoader(ds, batch_size=self.eval_batch_size, shuffle=False,
                          num_workers=self.num_workers, collate_fn=collate)

    def val_dataloader(self):
        return self._eval_loader(self.val_dataset())

    def test_dataloader(self):
        return self._eval_loader(self.test_dataset())
