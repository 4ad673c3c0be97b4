"""Build any of the package's recurrent layers by name (used by experiments and the CLI)."""

from __future__ import annotations

import torch
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
              p_skip: float = 0.5, period: int = 2, paper_init: bool = False,
              paper_init_joint: bool = False, reset_after: bool = True,
              **kwargs) -> nn.Module:
    """A layer by name: lstm, gru, skip_lstm, skip_gru, random_skip_{lstm,gru} (``p_skip``),
    periodic_skip_{lstm,gru} (``period``). Extra kwargs go to the layer (batch_first,
    learn_init, threshold, binarizer, backend, dropout, single_bias, ...).

    ``reset_after`` (GRU models only; False is the paper's GRU candidate, see ``SkipGRU``).
    ``paper_init``: the paper code's initialisation; with ``paper_init_joint`` TF's Glorot over
    the joint kernels (``paper_init_(joint=True)``).
    """
    cls = MODELS[check_model_name(name)]
    if cell_kind(name) == "gru":
        kwargs["reset_after"] = reset_after
    elif reset_after is not True:
        raise ValueError(f"reset_after applies to GRU models only; got reset_after={reset_after!r} "
                         f"for {name!r}")
    if paper_init_joint and not paper_init:
        raise ValueError("paper_init_joint=True selects the joint-kernel form of the paper "
                         "initialisation, so it needs paper_init=True; got paper_init=False")
    if name.startswith("random_"):
        kwargs["p_skip"] = p_skip
    elif name.startswith("periodic_"):
        kwargs["period"] = period
    if name in ("lstm", "gru"):
        for k in ("threshold", "binarizer", "backend"):
            kwargs.pop(k, None)
    m = cls(input_size, hidden_size, num_layers, **kwargs)
    return m.paper_init_(joint=paper_init_joint) if paper_init else m


def chrono_init_(m: nn.Module, max_len: int, generator: torch.Generator | None = None) -> nn.Module:
    """Chrono initialisation (Tallec & Ollivier, ICLR 2018) of an LSTM / GRU layer's gate biases
    for dependencies up to ``max_len`` steps: the forget gate's (LSTM) or the keep gate's (GRU's
    z, which weights the old state in nn.GRU) bias ~ log U(1, max_len − 1), and the LSTM input
    gate's its negative, so each unit starts with a memory time scale spread up to ``max_len``.
    The other parameters are left as they are. Works on Skip*, Plain* and torch's nn.LSTM / nn.GRU
    (bias in ``bias_ih_l{k}``; ``bias_hh_l{k}``'s rows for these gates are zeroed).
    """
    if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 3:
        raise ValueError(f"max_len must be an int >= 3 (the longest dependency in steps), got {max_len!r}")
    lstm = isinstance(m, nn.LSTM) or getattr(m, "mode", None) == "lstm"
    H, L = m.hidden_size, m.num_layers
    with torch.no_grad():
        for k in range(L):
            b_ih, b_hh = getattr(m, f"bias_ih_l{k}", None), getattr(m, f"bias_hh_l{k}", None)
            if b_ih is None:
                raise ValueError("chrono_init_ needs a layer with biases (bias=True)")
            u = torch.empty(H, dtype=b_ih.dtype).uniform_(1.0, float(max_len - 1), generator=generator)
            t = torch.log(u).to(b_ih.device)
            b_ih[H:2 * H] = t                 # LSTM forget gate / GRU z (keeps the old state)
            if lstm:
                b_ih[:H] = -t                 # LSTM input gate
            if b_hh is not None:
                b_hh[:2 * H] = 0.0
    return m


def paper_layer_kwargs(name: str) -> dict:
    """``build_rnn`` keyword arguments that make model ``name`` the paper code's model (issue 11):
    one bias per gate, the GRU's reset gate before the product (GRU models), a learned initial
    state, TF's Glorot over the joint kernels, forget / gate biases as the code's."""
    kw = {"single_bias": True, "learn_init": True, "paper_init": True, "paper_init_joint": True}
    if cell_kind(name) == "gru":
        kw["reset_after"] = False
    return kw


def paper_model(name: str, input_size: int, hidden_size: int, num_layers: int = 1,
                **kwargs) -> nn.Module:
    """The paper code's layer ``name`` (any of ``MODELS``): ``build_rnn`` with
    :func:`paper_layer_kwargs` (``kwargs`` add to them or override them, e.g. ``batch_first``).

    Equal, to rounding, to the official TensorFlow cells on the same weights
    (``tests/test_paper_exact.py``): ``SkipLSTM`` / ``SkipGRU`` with ``single_bias=True``
    (GRU: ``reset_after=False``), ``learn_init=True``, then ``paper_init_(joint=True)``. One
    deliberate difference: in a stack each GRU layer's candidate reads the previous layer's h
    (the official ``MultiSkipGRUCell`` gives it the raw input, a bug). The plain GRU in this form
    runs on the reference loop (nn.GRU has no reset-before candidate).
    """
    return build_rnn(name, input_size, hidden_size, num_layers,
                     **{**paper_layer_kwargs(name), **kwargs})

