"""Build any of the package's recurrent layers by name (used by experiments and the CLI)."""

from __future__ import annotations

from torch import nn

from .baselines import (PeriodicSkipGRU, PeriodicSkipLSTM, PlainGRU, PlainLSTM, RandomSkipGRU,
                        RandomSkipLSTM)
from .rnn import SkipGRU, SkipLSTM

MODELS = {
    "lstm": PlainLSTM,
    "gru": PlainGRU,
    "skip_lstm": SkipLSTM,
    "skip_gru": SkipGRU,
    "random_skip_lstm": RandomSkipLSTM,
    "random_skip_gru": RandomSkipGRU,
    "periodic_skip_lstm": PeriodicSkipLSTM,
    "periodic_skip_gru": PeriodicSkipGRU,
}


def cell_kind(name: str) -> str:
    """'lstm' or 'gru' for a model name."""
    check_model_name(name)
    return "lstm" if name.endswith("lstm") else "gru"


def has_learned_gate(name: str) -> bool:
    return check_model_name(name).startswith("skip_")


def check_model_name(name: str) -> str:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
    return name


def build_rnn(name: str, input_size: int, hidden_size: int, num_layers: int = 1, *,
              p_skip: float = 0.5, period: int = 2, paper_init: bool = False, **kwargs) -> nn.Module:
    """A layer by name: lstm, gru, skip_lstm, skip_gru, random_skip_{lstm,gru} (``p_skip``),
    periodic_skip_{lstm,gru} (``period``). Extra kwargs go to the layer (batch_first,
    learn_init, threshold, binarizer, backend, dropout, ...)."""
    cls = MODELS[check_model_name(name)]
    if name.startswith("random_"):
        kwargs["p_skip"] = p_skip
    elif name.startswith("periodic_"):
        kwargs["period"] = period
    if name in ("lstm", "gru"):
        for k in ("threshold", "binarizer", "backend"):
            kwargs.pop(k, None)
    m = cls(input_size, hidden_size, num_layers, **kwargs)
    if paper_init:
        if hasattr(m, "paper_init_"):
            m.paper_init_()
        else:
            _paper_init_plain(m)
    return m


def _paper_init_plain(m: nn.RNNBase) -> None:
    """Glorot-uniform weights, zero biases, forget bias 1 (LSTM) / r,z biases 1 (GRU)."""
    import torch

    H = m.hidden_size
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("weight_"):
                nn.init.xavier_uniform_(p)
            elif name.startswith("bias_"):
                p.zero_()
                if name.startswith("bias_ih"):
                    if isinstance(m, nn.LSTM):
                        p[H:2 * H] = 1.0
                    else:
                        p[:2 * H] = 1.0
