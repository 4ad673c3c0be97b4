"""skiprnn: Skip RNN (Campos et al., ICLR 2018) for PyTorch.

Layers that drop in where nn.LSTM / nn.GRU stand and learn to skip state updates::

    import torch, skiprnn
    rnn = skiprnn.SkipLSTM(input_size=2, hidden_size=110)
    out = rnn(torch.randn(50, 8, 2))          # (output, state, updates, update_probs)
    loss = skiprnn.budget_loss(out.updates, cost_per_sample=1e-5)
"""

from .inference import (SkipStepModule, SkipStream, evaluate_thresholds, export_step,
                        lazy_forward)
from .losses import budget_loss, target_rate_loss
from .metrics import flops_per_update, inference_flops, n_skip, update_counts, update_fraction
from .modules import (MODELS, PeriodicSkipGRU, PeriodicSkipLSTM, PlainGRU, PlainLSTM,
                      RandomSkipGRU, RandomSkipLSTM, SkipCellOutput, SkipGRU, SkipGRUCell,
                      SkipGRUState, SkipLSTM, SkipLSTMCell, SkipLSTMState, SkipOutput, SkipRNN,
                      SkipRNNState, UnsupportedExportError, build_rnn, chrono_init_, paper_model)
from .controls import BudgetSchedule, MetricWarmup, gate_param_groups
from .ops.cpu_rnn import release_cpu_buffers
from .optim import TFAdam
from .outputs import LSTMHidden

__version__ = "0.1.0"

__all__ = [
    "SkipLSTM", "SkipGRU", "SkipLSTMCell", "SkipGRUCell", "SkipRNN", "SkipOutput", "SkipLSTMState",
    "SkipGRUState", "SkipRNNState", "SkipCellOutput", "PlainLSTM", "PlainGRU", "RandomSkipLSTM",
    "RandomSkipGRU", "PeriodicSkipLSTM", "PeriodicSkipGRU", "MODELS", "build_rnn", "budget_loss",
    "target_rate_loss", "n_skip", "update_counts", "update_fraction", "flops_per_update",
    "inference_flops", "SkipStream", "lazy_forward", "evaluate_thresholds", "SkipStepModule",
    "export_step", "UnsupportedExportError", "release_cpu_buffers", "paper_model", "TFAdam",
    "chrono_init_", "BudgetSchedule", "MetricWarmup", "gate_param_groups", "LSTMHidden", "__version__",
]
