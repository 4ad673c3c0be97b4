"""Skipping inference: skipped steps cost nothing, and their inputs need not be produced.

* ``skip_rnn_skipping``: whole-sequence forward for both cells (the dispatcher's 'skipping'
  backend, used by the layers for no-grad calls; arguments ``skiprnn.ops.contract``).
* ``SkipStream`` / ``stream(layer)``: step-by-step, with ``skips_ahead`` (inputs not to produce).
* ``lazy_forward``: frames fetched and encoded only on the steps that are read.
* ``evaluate_thresholds``: accuracy vs updates over the runtime threshold τ.
* ``SkipStepModule`` / ``export_step``: one step as an exportable graph (torch.export).
"""

from .export import SkipGRUStep, SkipLSTMStep, SkipStepModule, export_onnx, export_step
from .lazy import LazyResult, lazy_forward
from ..ops.skipping import simulate_skips, skip_rnn_skipping
from .stream import SkipStream, stream
from .thresholds import evaluate_thresholds, plot_thresholds, skip_layers

__all__ = ["skip_rnn_skipping", "simulate_skips", "SkipStream", "stream",
           "lazy_forward", "LazyResult", "evaluate_thresholds", "plot_thresholds", "skip_layers",
           "SkipStepModule", "SkipLSTMStep", "SkipGRUStep", "export_step", "export_onnx"]
