"""The paper recipe (issue 11): everything that makes a run the paper code's run.

Defaults of the CLI and the tasks already follow the paper (Adam lr 1e-4, batch 256, global-norm
clipping 1, λ constant, the learned initial state, ``paper_init_``). The recipe adds what only the
official TensorFlow code does:

* the model: :func:`skiprnn.paper_model` / :func:`skiprnn.modules.paper_layer_kwargs` (one bias
  per gate, the GRU's reset gate before the product, TF's joint-kernel Glorot initialisation);
* the optimiser: TF1's Adam, :class:`skiprnn.optim.TFAdam` (ε before the bias correction):
  :func:`paper_optimizer`;
* the task protocol: :func:`paper_task_options` (MNIST: the FIRST 5,000 training images held out
  for validation, evaluation in whole batches of 256, i.e. 9,984 test images).

Nothing here imports Lightning; the training module and the CLI call these functions.
"""

from __future__ import annotations

from ..modules.registry import paper_layer_kwargs
from ..optim import TFAdam

__all__ = ["PAPER_RECIPE", "paper_layer_kwargs", "paper_optimizer", "paper_task_options"]

#: Per-task options (``get_task`` overrides) of the paper code's protocol.
_TASK_OPTIONS = {
    "mnist": {"val_split": "first", "eval_drop_last": True},
}

#: The recipe in one record (what ``--recipe paper`` stands for; values the paper's code used).
PAPER_RECIPE = {
    "name": "paper",
    "optimizer": "TFAdam",          # skiprnn.optim.TFAdam: TF1's Adam
    "lr": 1e-4,
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "batch_size": 256,
    "grad_clip": 1.0,               # global norm
    "task_options": _TASK_OPTIONS,  # per task; the layer: paper_layer_kwargs(model)
}


def paper_task_options(task: str) -> dict:
    """The ``get_task`` overrides of the paper code's protocol for ``task`` ({} if none)."""
    return dict(_TASK_OPTIONS.get(task, {}))


def paper_optimizer(params, lr: float = PAPER_RECIPE["lr"]) -> TFAdam:
    """TF1's Adam with the paper's β and ε over ``params`` (parameters or parameter groups, e.g.
    with a learning-rate multiplier for the update gate: groups keep their own ``lr``)."""
    return TFAdam(params, lr=lr, betas=PAPER_RECIPE["betas"], eps=PAPER_RECIPE["eps"])

