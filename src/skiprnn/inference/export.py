"""A single Skip RNN step as a graph without data-dependent control flow (torch.export / ONNX).

The step always computes the candidate (a compiled graph cannot branch on data); the caller skips
the call altogether on steps it knows are skipped (``skiprnn.inference.simulate_skips`` gives how
many, from ``update_prob`` / ``cum`` after each call), and feeds the state back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.cells import cell_spec
from ..ops.naive import accumulate, check_cap_holds, floor_update_prob

__all__ = ["SkipStepModule", "SkipLSTMStep", "SkipGRUStep", "export_step"]


class _StepBase(nn.Module):
    def __init__(self, layer):
        super().__init__()
        if getattr(layer, "gate_mode", "learned") != "learned":
            raise ValueError("SkipStepModule needs a learned-gate layer")
        self.layer = layer
        self.threshold = float(layer.threshold)
        self.max_skip = getattr(layer, "max_skip", None)
        check_cap_holds(self.max_skip, self.threshold)
        self.spec = cell_spec(layer.mode, getattr(layer, "reset_after", True))

    def _gate(self, feat, update_prob, cum):
        g = self.layer.update_gate
        # a no-op on the step's own Δũ
        update_prob = floor_update_prob(update_prob, self.max_skip, self.threshold)
        u_tilde = accumulate(update_prob, cum)
        u = u_tilde > self.threshold
        delta = floor_update_prob(torch.sigmoid(F.linear(feat, g.weight, g.bias)).squeeze(-1),
                                  self.max_skip, self.threshold)
        return (u, u_tilde, torch.where(u, delta, update_prob),
                torch.where(u, torch.zeros_like(u_tilde), u_tilde))

    def _step(self, x_t: Tensor, state: tuple, update_prob: Tensor, cum: Tensor):
        """The candidate of the whole stack (:meth:`skiprnn.ops.cells.CellSpec.stack`), then the
        gate: ``state`` per cell state name ``(L, B, H)`` -> ``(output (B, H), *state,
        update_prob, cum, update (B,), u_tilde (B,))``."""
        new, feat = self.spec.stack(x_t, state, self.layer.layer_weights())
        u, u_tilde, new_up, new_cum = self._gate(feat, update_prob, cum)
        ub = u.unsqueeze(0).unsqueeze(-1)
        new_state = [torch.where(ub, torch.stack(n), s) for n, s in zip(new, state)]
        return (new_state[0][-1], *new_state, new_up, new_cum, u.to(x_t.dtype), u_tilde)


class SkipLSTMStep(_StepBase):
    """``forward(x_t (B, I), h (L, B, H), c (L, B, H), update_prob (B,), cum (B,))`` →
    ``(output (B, H), h, c, update_prob, cum, update (B,), u_tilde (B,))``."""

    def forward(self, x_t: Tensor, h: Tensor, c: Tensor, update_prob: Tensor, cum: Tensor):
        return self._step(x_t, (h, c), update_prob, cum)


class SkipGRUStep(_StepBase):
    """``forward(x_t (B, I), h (L, B, H), update_prob (B,), cum (B,))`` →
    ``(output (B, H), h, update_prob, cum, update (B,), u_tilde (B,))``."""

    def forward(self, x_t: Tensor, h: Tensor, update_prob: Tensor, cum: Tensor):
        return self._step(x_t, (h,), update_prob, cum)


def SkipStepModule(layer) -> nn.Module:
    """The single-step module of a SkipLSTM (``SkipLSTMStep``) or SkipGRU (``SkipGRUStep``)."""
    if getattr(layer, "bidirectional", False):
        raise ValueError("a bidirectional layer has no single step to export: its reverse "
                         "direction starts from the end of the sequence")
    return (SkipLSTMStep if layer.mode == "lstm" else SkipGRUStep)(layer).eval()


def example_inputs(layer, batch_size: int = 1):
    st = layer.initial_state(batch_size)
    p = next(layer.parameters())
    x = torch.zeros(batch_size, layer.input_size, device=p.device, dtype=p.dtype)
    return (x, *st)


def export_step(layer, batch_size: int = 1, dynamic_batch: bool = False):
    """``torch.export.export`` of the single step (an ``ExportedProgram``; ``.module()`` runs it)."""
    mod = SkipStepModule(layer)
    args = example_inputs(layer, batch_size)
    dyn = None
    if dynamic_batch:  # the batch dimension: 1 of the (L, B, H) states, 0 of the other inputs
        B = torch.export.Dim("batch", min=1, max=1 << 16)
        dyn = tuple({1 if a.dim() == 3 else 0: B} for a in args)
    return torch.export.export(mod, args, dynamic_shapes=dyn)


def export_onnx(layer, path, batch_size: int = 1):
    """ONNX export of the single step (needs the ``onnx`` package); returns the path."""
    mod = SkipStepModule(layer)
    args = example_inputs(layer, batch_size)
    names = ["x_t", "h"] + (["c"] if layer.mode == "lstm" else []) + ["update_prob", "cum"]
    torch.onnx.export(mod, args, str(path), input_names=names, dynamo=True)
    return path
