"""TensorFlow 1.x's Adam (``tf.train.AdamOptimizer``), the optimiser of the paper's code.

TF1 folds the bias corrections into the step size and adds ε to the *uncorrected* √v::

    m_t = β1·m + (1 - β1)·g;   v_t = β2·v + (1 - β2)·g²
    lr_t = lr · √(1 - β2^t) / (1 - β1^t)
    θ  ← θ - lr_t · m_t / (√v_t + ε)

PyTorch's Adam adds ε to the corrected √(v_t / (1 - β2^t)):
``θ ← θ - lr/(1 - β1^t) · m_t / (√v_t / √(1 - β2^t) + ε')``. Multiplying numerator and
denominator by √(1 - β2^t) shows the two are equal when ``ε' = ε / √(1 - β2^t)``: TF's ε acts
like a PyTorch ε that starts about 30 times larger (t = 1, β2 = 0.999) and decays to ε. It matters
for parameters whose gradients are tiny (√v near ε: the learned initial state, rarely-updated
weights), which move more slowly under TF's form early in training.
"""

from __future__ import annotations

import math

import torch

__all__ = ["TFAdam"]


class TFAdam(torch.optim.Optimizer):
    """Adam exactly as TensorFlow 1.x's ``AdamOptimizer`` (ε added before the bias correction).

    Args:
        params: parameters or parameter groups (each group may set its own ``lr``, ``betas``,
            ``eps``: e.g. a learning-rate multiplier for the update gate).
        lr: step size (TF's ``learning_rate``); default 1e-3 as TF's; the paper uses 1e-4.
        betas: ``(β1, β2)``, default (0.9, 0.999).
        eps: TF's ``epsilon`` (1e-8), added to √v_t before the bias correction.

    The step count t is kept per parameter (like ``torch.optim.Adam``), so a parameter that gets no
    gradient in a step is not updated and its t does not advance (TF counts steps globally and
    updates every variable in the graph with its gradient, zero or not).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8):
        if not (isinstance(lr, (int, float)) and lr >= 0.0):
            raise ValueError(f"lr must be a number >= 0, got {lr!r}")
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2
                and all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas)):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        if not (isinstance(eps, (int, float)) and eps >= 0.0):
            raise ValueError(f"eps must be a number >= 0, got {eps!r}")
        super().__init__(params, dict(lr=float(lr), betas=tuple(float(b) for b in betas),
                                      eps=float(eps)))

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise RuntimeError("TFAdam does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(g, alpha=1.0 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
                lr_t = group["lr"] * math.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
                p.addcdiv_(m, v.sqrt().add_(group["eps"]), value=-lr_t)
        return loss
