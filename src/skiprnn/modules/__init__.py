"""nn.Modules: Skip cells and layers, baselines, and a registry by name."""

from .baselines import (PeriodicSkipGRU, PeriodicSkipLSTM, PlainGRU, PlainLSTM, RandomSkipGRU,
                        RandomSkipLSTM)
from .cells import SkipCellOutput, SkipGRUCell, SkipLSTMCell, SkipRNN, SkipRNNState
from .registry import (MODELS, build_rnn, cell_kind, chrono_init_, has_learned_gate,
                       paper_layer_kwargs, paper_model)
from .rnn import SkipGRU, SkipGRUState, SkipLSTM, SkipLSTMState, SkipOutput, UnsupportedExportError

__all__ = [
    "UnsupportedExportError",
    "SkipLSTM", "SkipGRU", "SkipLSTMCell", "SkipGRUCell", "SkipRNN", "SkipOutput", "SkipLSTMState",
    "SkipGRUState", "SkipRNNState", "SkipCellOutput", "PlainLSTM", "PlainGRU", "RandomSkipLSTM",
    "RandomSkipGRU", "PeriodicSkipLSTM", "PeriodicSkipGRU", "MODELS", "build_rnn", "cell_kind",
    "has_learned_gate", "paper_model", "paper_layer_kwargs", "chrono_init_",
]
