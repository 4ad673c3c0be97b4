"""Skip LSTM / Skip GRU sequence layers that drop in where nn.LSTM / nn.GRU stand.

Parameters are named and laid out exactly as nn.LSTM's / nn.GRU's (``weight_ih_l{k}``,
``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``, same gate order), so an nn.LSTM
state_dict loads with ``strict=False``. The update-gate projection (W_p, b_p) is
``module.update_gate``, an ``nn.Linear(hidden_size, 1)`` whose bias starts at 1.0 (paper §1.4).

The paper's own cells (TensorFlow, issue 11) differ from nn.LSTM / nn.GRU in two ways that the
layers offer as options: ``single_bias=True`` keeps one bias vector per gate (``bias_ih_l{k}``
only; there is no ``bias_hh_l{k}``, so Adam moves the bias as TF's does, not twice as fast), and
the GRU's ``reset_after=False`` applies the reset gate before the matrix product,
``n = tanh(W_in x + b_in + W_hn (r ⊙ h) + b_hn)``: ``weight_hh_l{k}`` keeps its shape and its
candidate rows ``W_hn`` act on ``r ⊙ h`` (TF's joint candidate kernel ``W_c = [W_inᵀ; W_hnᵀ]``).
``paper_init_(joint=True)`` is TF's Glorot initialisation of the joint kernels.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..ops import dispatch
from ..ops.cells import cell_spec
from ..ops.contract import GateOptions, RecurrenceResult
from ..ops.naive import check_cap_holds, check_max_skip
from ..ops.ste import bernoulli_thresholds, check_binarizer, check_threshold
from ..outputs import SkipGRUState, SkipLSTMState, SkipOutput
from ._checks import check_input, check_lengths, check_matches_weights, check_state_tensor


class UnsupportedExportError(RuntimeError):
    """TorchScript (``torch.jit.script`` / ``torch.jit.trace``) or the TorchScript-based ONNX
    exporter was asked to compile a Skip RNN layer; the message says what is supported."""


def unsupported_export(layer, how: str) -> UnsupportedExportError:
    name = type(layer).__name__
    return UnsupportedExportError(
        f"{name} cannot be {how}: its forward picks a backend per call and runs data-dependent "
        "Python loops, which TorchScript cannot capture. Supported instead: "
        "skiprnn.export_step(layer) (torch.export of one step without data-dependent control flow; "
        "`.module()` runs it, the caller skips the calls of skipped steps), "
        "skiprnn.inference.export_onnx(layer, path) (that step as ONNX, via the torch.export-based "
        "exporter torch.onnx.export(..., dynamo=True)), and for eager inference the layer itself, "
        "layer.stream() and skiprnn.lazy_forward")


_PARAM_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def check_single_bias(single_bias, bias) -> bool:
    if not isinstance(single_bias, bool):
        raise TypeError(f"single_bias must be a bool, got {type(single_bias).__name__}")
    if single_bias and not bias:
        raise ValueError("single_bias=True keeps one bias per gate, so it needs bias=True; "
                         "got bias=False")
    return single_bias


def check_nn_only_options(name: str, bidirectional, proj_size, num_layers: int = 1) -> None:
    """Check nn.LSTM's ``bidirectional`` and ``proj_size`` and refuse, with the reason, what the
    Skip layers do not have (they are keywords so that code written for nn.LSTM gets a message,
    not a TypeError)."""
    if not isinstance(bidirectional, bool):
        raise TypeError(f"bidirectional must be a bool, got {type(bidirectional).__name__}")
    if bidirectional and num_layers > 1:
        raise ValueError(
            f"{name}(bidirectional=True) supports num_layers=1: a stack shares one update gate "
            "across its layers, but a bidirectional stack's layer k + 1 reads both directions of "
            "layer k, so no gate could serve a whole direction. Stack bidirectional layers "
            f"yourself (each with its own gates); got num_layers={num_layers}")
    if not (isinstance(proj_size, int) and not isinstance(proj_size, bool)) or proj_size < 0:
        raise ValueError(f"proj_size must be a non-negative integer, got {proj_size!r}")
    if proj_size:
        raise ValueError(
            f"{name} does not support proj_size > 0 (nn.LSTM's projected h): the update gate reads "
            "the unprojected state and the paper defines no projection; put an nn.Linear on the "
            f"output instead; got proj_size={proj_size}")


def check_layer_max_skip(name: str, max_skip, binarizer: str, threshold: float,
                         gate_mode: str = "learned") -> int | None:
    """A layer's ``max_skip`` (None or an int K ≥ 1), refused where the cap could not hold: no
    learned gate, the Bernoulli binarizer (sampled in training), a threshold τ >= 1."""
    max_skip = check_max_skip(max_skip)
    if max_skip is None:
        return None
    if gate_mode != "learned":
        raise ValueError(f"max_skip floors a learned update gate; {name} has a {gate_mode} gate "
                         f"(got max_skip={max_skip})")
    if binarizer == "bernoulli":
        raise ValueError(f"{name}: max_skip cannot cap runs of skipped steps under "
                         "binarizer='bernoulli' (a sampled gate may stay shut for any number of "
                         "steps in training); use binarizer='round'")
    check_cap_holds(max_skip, threshold)
    return max_skip


def reversal_index(T: int, B: int, mask: Tensor | None, device) -> Tensor:
    """``(T, B)`` time indices that reverse each sequence within its valid length (padding stays
    at the end, in place); applying it twice is the identity."""
    t = torch.arange(T, device=device).unsqueeze(1)
    if mask is None:
        return (T - 1 - t).expand(T, B)
    lengths = mask.sum(0)
    return torch.where(t < lengths, lengths - 1 - t, t)


def reverse_time(v: Tensor, order: Tensor) -> Tensor:
    """``v`` ``(T, B, ...)`` with each sequence's valid steps in reverse order (:func:`reversal_index`)."""
    idx = order.reshape(order.shape + (1,) * (v.dim() - 2)).expand(v.shape)
    return v.gather(0, idx)


def paper_init_weights(mode: str, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
                       b_hh: Tensor | None, joint: bool = False) -> None:
    """The paper code's initialisation of one LSTM / GRU layer, in place (under no_grad).

    Biases: zero, except the LSTM forget gate's 1 (TF adds ``forget_bias=1`` inside σ; a bias
    starting at 1 is the same function) and the GRU r, z gates' 1 (TF's ``bias_start=1.0``),
    all in ``b_ih``. Weights: ``joint=False``: Glorot-uniform on ``w_ih`` and ``w_hh`` apart;
    ``joint=True``: as TF, Glorot over the joint kernel ``[W_ih | W_hh]ᵀ`` of shape
    ``(I + H, G·H)``, bound ``sqrt(6 / (I + H + G·H))``; for the GRU the gates' kernel
    ``(I + H, 2H)`` and the candidate's ``(I + H, H)`` are separate kernels in TF, each with its
    own bound.
    """
    H, n_in = w_hh.shape[1], w_ih.shape[1]
    if not joint:
        nn.init.xavier_uniform_(w_ih)
        nn.init.xavier_uniform_(w_hh)
    else:
        blocks = [(0, 4 * H)] if mode == "lstm" else [(0, 2 * H), (2 * H, 3 * H)]
        for lo, hi in blocks:
            bound = math.sqrt(6.0 / (n_in + H + hi - lo))  # Glorot over the (I + H, hi - lo) kernel
            for w in (w_ih, w_hh):
                nn.init.uniform_(w[lo:hi], -bound, bound)
    for b in (b_ih, b_hh):
        if b is not None:
            b.zero_()
    if b_ih is not None:
        b_ih[slice(H, 2 * H) if mode == "lstm" else slice(0, 2 * H)] = 1.0


class SkipRNNBase(nn.Module):
    """Shared machinery of Skip LSTM / Skip GRU and their skipping baselines."""

    mode = "lstm"
    gate_mode = "learned"
    reset_after = True  # GRU layers: see _GRUCandidate
    max_skip = None

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, binarizer: str = "round",
                 threshold: float = 0.5, learn_init: bool = False, backend: str = "auto",
                 single_bias: bool = False, bidirectional: bool = False, proj_size: int = 0,
                 max_skip: int | None = None, device=None, dtype=None):
        super().__init__()
        check_nn_only_options(type(self).__name__, bidirectional, proj_size, num_layers)
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size),
                        ("num_layers", num_layers)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not (isinstance(dropout, (int, float)) and 0.0 <= dropout <= 1.0):
            raise ValueError(f"dropout must be a number in [0, 1], got {dropout!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout acts between stacked layers only (as in nn.LSTM), so a non-zero "
                          f"dropout expects num_layers greater than 1, got dropout={dropout} and "
                          "num_layers=1", stacklevel=2)
        factory = {"device": device, "dtype": dtype}
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.single_bias = check_single_bias(single_bias, bias)
        self.binarizer = check_binarizer(binarizer)
        self.threshold = check_threshold(threshold)
        self.backend = dispatch.check_backend(backend)
        self.learn_init = learn_init
        self.bidirectional = bidirectional
        self.max_skip = check_layer_max_skip(type(self).__name__, max_skip, self.binarizer,
                                             self.threshold, self.gate_mode)
        G = cell_spec(self.mode).gates * hidden_size
        for k in range(num_layers):
            shapes = ((G, input_size if k == 0 else hidden_size), (G, hidden_size), (G,), (G,))
            for sfx in self._suffixes():
                for name, shape, on in zip(_PARAM_NAMES, shapes,
                                           (True, True, bias, bias and not single_bias)):
                    self.register_parameter(f"{name}_l{k}{sfx}", nn.Parameter(
                        torch.empty(shape, **factory)) if on else None)
        # single_bias: the backends get a constant zero b_hh (not a parameter, not in state_dict)
        self.register_buffer("_zero_bias", torch.zeros(G, **factory) if single_bias else None,
                             persistent=False)
        for name in ("update_gate", "update_gate_reverse")[:self.num_directions]:
            setattr(self, name, nn.Linear(hidden_size, 1, **factory)
                    if self.gate_mode == "learned" else None)  # (reverse: its own gate)
        self.register_parameter("init_state", nn.Parameter(torch.empty(
            self._n_hc, num_layers * self.num_directions, 1, hidden_size, **factory))
            if learn_init else None)
        self.reset_parameters()

    # ------------------------------------------------------------------ initialisation
    def reset_parameters(self) -> None:
        """nn.LSTM's initialisation (U(-1/√H, 1/√H)); update-gate bias 1.0; learned s_0 ~ N(0, 1)."""
        k = 1.0 / math.sqrt(self.hidden_size)
        for name, p in self.named_parameters():
            if name.startswith(("weight_", "bias_")):
                nn.init.uniform_(p, -k, k)
        for gate in self._update_gates():
            gate.reset_parameters()
            nn.init.constant_(gate.bias, 1.0)
        if self.init_state is not None:
            nn.init.normal_(self.init_state, 0.0, 1.0)

    def paper_init_(self, joint: bool = False) -> "SkipRNNBase":
        """The paper's code initialisation (§1.4): Glorot-uniform weights, zero biases, LSTM forget
        bias +1 (TF's ``forget_bias``), GRU reset/update gate biases 1, update-gate bias 1;
        ``joint``: as :func:`paper_init_weights`."""
        with torch.no_grad():
            for d in range(self.num_directions):
                for layer in self.layer_weights(d):
                    paper_init_weights(self.mode, *layer[:3],
                                       None if self.single_bias else layer[3], joint=joint)
            for gate in self._update_gates():
                nn.init.xavier_uniform_(gate.weight)
                gate.bias.fill_(1.0)
        return self

    # ------------------------------------------------------------------ nn.LSTM surface
    bidirectional = False
    proj_size = 0

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _suffixes(self) -> tuple:
        """Parameter-name suffix per direction, as nn.LSTM's: '' and '_reverse'."""
        return ("", "_reverse") if self.bidirectional else ("",)

    def _gate(self, direction: int = 0):
        """Direction ``direction``'s update-gate projection (W_p, b_p), None without a learned gate."""
        return self.update_gate_reverse if direction else self.update_gate

    def _update_gates(self) -> list:
        """The update gates' projections, one per direction (none without a learned gate)."""
        return [g for g in map(self._gate, range(self.num_directions)) if g is not None]

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """Per layer and direction ``[weight_ih, weight_hh, bias_ih, bias_hh]`` as nn.LSTM's
        ``all_weights`` (without the biases under ``bias=False``; without ``bias_hh`` under
        ``single_bias``). The update gates' W_p, b_p are ``self.update_gate``'s (and
        ``self.update_gate_reverse``'s)."""
        return [[p for p in (getattr(self, f"{n}_l{k}{sfx}") for n in _PARAM_NAMES) if p is not None]
                for k in range(self.num_layers) for sfx in self._suffixes()]

    def flatten_parameters(self) -> None:
        """Does nothing, as code written for nn.LSTM expects to be able to call it: the weights are
        ordinary parameters, never a cuDNN flat buffer, so there is nothing to compact."""

    # ------------------------------------------------------------------ helpers
    def __prepare_scriptable__(self):   # torch.jit.script calls this first
        raise unsupported_export(self, "compiled with torch.jit.script")

    def layer_weights(self, direction: int = 0):
        """Per layer ``(w_ih, w_hh, b_ih, b_hh)`` of one direction (0: forward, 1: reverse); with
        ``single_bias`` b_hh is a constant zero."""
        sfx = self._suffixes()[direction]
        return [(getattr(self, f"weight_ih_l{k}{sfx}"), getattr(self, f"weight_hh_l{k}{sfx}"),
                 getattr(self, f"bias_ih_l{k}{sfx}"),
                 self._zero_bias if self.single_bias else getattr(self, f"bias_hh_l{k}{sfx}"))
                for k in range(self.num_layers)]

    def cell_options(self) -> dict:
        """The cell variant's fields of :class:`~skiprnn.ops.contract.GateOptions`, also the
        inference engines' keywords (GRU: ``reset_after``; ``max_skip`` when set, which only the
        reference, CPU and skipping paths take, so that dispatch never routes such a call
        elsewhere)."""
        opts = {"reset_after": self.reset_after} if self.mode == "gru" else {}
        if self.max_skip is not None:
            opts["max_skip"] = self.max_skip
        return opts

    @property
    def state_type(self):
        return SkipLSTMState if self.mode == "lstm" else SkipGRUState

    @property
    def _n_hc(self) -> int:
        """The hidden-state tensors of the cell description: 2 (h, c) / 1 (h)."""
        return len(cell_spec(self.mode).state_names)

    def initial_state(self, batch_size: int, like: Tensor | None = None):
        """A fresh state for ``batch_size`` sequences (zeros, or the learned s_0 broadcast)."""
        p = next(self.parameters())
        dev, dt = (like.device, like.dtype) if like is not None else (p.device, p.dtype)
        L, B, H = self.num_layers * self.num_directions, batch_size, self.hidden_size
        if self.init_state is not None:
            hc = self.init_state.to(dt).expand(-1, L, B, H).unbind(0)
        else:
            hc = [torch.zeros(L, B, H, device=dev, dtype=dt) for _ in range(self._n_hc)]
        gs = self._gate_shape(B)
        return self.state_type(*hc, torch.ones(gs, device=dev, dtype=dt),
                               torch.zeros(gs, device=dev, dtype=dt))

    def _gate_shape(self, B: int) -> tuple:
        """Shape of the state's update_prob / cum_update_prob: ``(B,)``, or ``(2, B)`` (one row per
        direction) for a bidirectional layer."""
        return (B,) if not self.bidirectional else (2, B)

    def _fresh_state(self, B: int, x: Tensor):
        """The zero state for the fused kernels, made once per (B, device, dtype) and reused: the
        kernels only read it and return new tensors, so sharing it saves four launches a call.
        (Other backends may hand a state tensor back as it came, so they get fresh ones.)"""
        cache = self.__dict__.setdefault("_fresh_states", {})
        key = (B, x.device, x.dtype)
        st = cache.get(key)
        if st is None:
            if len(cache) >= 8:
                cache.clear()
            st = cache[key] = self.initial_state(B, x)
        return st

    def parse_state(self, hx, B: int, x: Tensor, unbatched: bool, shared_fresh: bool = False):
        """The full state (:class:`SkipLSTMState` / :class:`SkipGRUState`, batched) that ``hx``
        stands for in a call on time-major ``x`` ``(T, B, I)``: None (fresh, or the learned
        s_0), nn-style ``(h0, c0)`` / ``h0`` (a fresh gate), a returned hidden or a full state
        (the gate carried). Checks every shape against the layer; ``unbatched``: ``hx`` has no
        batch dimension. ``shared_fresh``: the fresh state may be a cached, read-only one."""
        L, H = self.num_layers * self.num_directions, self.hidden_size
        if hx is None:
            if shared_fresh and self.init_state is None:
                return self._fresh_state(B, x)
            return self.initial_state(B, x)
        n_hc, gate = self._n_hc, None
        if not isinstance(hx, self.state_type) and hasattr(hx, "cum_update_prob"):
            # the nn-style hidden a layer returned (SkipOutput[1]): its gate's state rides along
            gate = (hx.update_prob, hx.cum_update_prob)
        if isinstance(hx, Tensor):
            if self.mode == "lstm":
                raise TypeError("hx for a Skip LSTM must be a tuple (h0, c0) or a SkipLSTMState, "
                                "got a single tensor")
            hx = (hx,)
        if not isinstance(hx, (tuple, list)):
            raise TypeError(f"hx must be None, a tuple of tensors or a {self.state_type.__name__}, "
                            f"got {type(hx).__name__}")
        if len(hx) not in (n_hc, n_hc + 2):
            raise ValueError(f"hx must hold {n_hc} tensors (nn.{self.mode.upper()} style) or "
                             f"{n_hc + 2} (a {self.state_type.__name__}), got {len(hx)}")
        hx = list(hx) + (list(gate) if gate is not None and len(hx) == n_hc else [])
        full = len(hx) == n_hc + 2
        hshape = (L, H) if unbatched else (L, B, H)
        for i in range(n_hc):
            hx[i] = check_state_tensor(("h0", "c0")[i], hx[i], hshape, x)
            if unbatched:
                hx[i] = hx[i].unsqueeze(1)
        if full:
            sshape = self._gate_shape(B)
            for i, name in ((n_hc, "update_prob"), (n_hc + 1, "cum_update_prob")):
                hx[i] = check_state_tensor(name, hx[i], sshape[:-1] if unbatched else sshape, x)
                if unbatched:
                    hx[i] = hx[i].reshape(sshape)
            return self.state_type(*hx)
        # nn.LSTM-style (h0, c0): a fresh gate (Δũ = 1, accumulator 0)
        return self.state_type(*hx, x.new_ones(self._gate_shape(B)),
                               x.new_zeros(self._gate_shape(B)))

    def _gate_args(self, T: int, B: int, x: Tensor):
        """Threshold / forced updates / constant Δũ for this call, per gate mode and binarizer."""
        threshold, forced, const = self.threshold, None, None
        if self.gate_mode == "learned":
            if self.binarizer == "bernoulli" and self.training:
                threshold = bernoulli_thresholds((T, B), x)
        elif self.gate_mode == "random":
            forced = (torch.rand(T, B, device=x.device) >= self.p_skip).to(x.dtype)
            const = 0.0  # no learned gate: ũ is 1 at a fresh start (forced update), then 0
        else:  # periodic: Δũ = 1/period and τ = 1 - 1/(2·period) give an update every `period` steps
            const = 1.0 / self.period
            threshold = 1.0 - 0.5 / self.period
        return threshold, forced, const

    # ------------------------------------------------------------------ backend choice
    def _decide_backend(self, x: Tensor) -> dispatch.BackendChoice:
        """Ask dispatch which backend runs this call on time-major ``x`` (the only place the
        layer states what its call needs)."""
        why = dispatch.reference_only_reason(
            self.gate_mode,
            sampled=self.gate_mode == "learned" and self.binarizer == "bernoulli" and self.training,
            dropout=self.training and self.dropout > 0 and self.num_layers > 1)
        grad = torch.is_grad_enabled() and (x.requires_grad
                                            or any(p.requires_grad for p in self.parameters()))
        no_triton = ("max_skip (the Triton kernels have no floor on Δũ)"
                     if self.max_skip is not None else "")
        choice = dispatch.decide(self.mode, self.backend, device_type=x.device.type,
                                 num_layers=self.num_layers, fast_ok=not why, grad=grad,
                                 skip_ok=self.gate_mode == "learned" and not why,
                                 why_not_fast=why, why_not_triton=no_triton)
        if torch.compiler.is_exporting() and choice.name not in dispatch.TRACEABLE:
            return dispatch.BackendChoice(
                "reference", f"torch.export traces the layer and {choice.name!r} is not a "
                "custom op: the reference (plain tensor maths, unrolled over T)")
        return choice

    def backend_for(self, input) -> dispatch.BackendChoice:
        """Which backend ``self(input)`` would run on now (training mode, autograd, device and
        ``SKIPRNN_BACKEND`` included) and why: ``BackendChoice(name, reason)``. Runs nothing
        (Bernoulli thresholds are not drawn)."""
        if isinstance(input, PackedSequence):
            x = input.data.unsqueeze(1)
        else:
            x, _ = check_input(input, self.input_size, self.batch_first)
        return self._decide_backend(x)

    def _recurrence(self, x: Tensor, hx, mask, unbatched: bool):
        """Pick the backend and run the recurrence on time-major ``x``; the backend's result tuple.

        Under ``torch.compile`` a backend that is a ``torch.library`` custom op (the CPU and
        Triton paths, ``dispatch.TRACEABLE``) is traced as one node of the graph (``fullgraph=True`` works);
        any other runs eagerly between the compiled graphs (:meth:`_recurrence_untraced`, a
        graph break): they are hand-written autograd functions and Python time loops with
        data-dependent skips, which dynamo would unroll over every step (minutes of
        compilation) or fail on.
        """
        if torch.compiler.is_compiling() and not torch.compiler.is_exporting():
            if self._decide_backend(x).name not in dispatch.TRACEABLE:
                return self._recurrence_untraced(x, hx, mask, unbatched)
        return self._run_recurrence(x, hx, mask, unbatched)

    @torch.compiler.disable
    def _recurrence_untraced(self, x: Tensor, hx, mask, unbatched: bool):
        """:meth:`_run_recurrence` kept out of ``torch.compile``'s tracing (a graph break)."""
        return self._run_recurrence(x, hx, mask, unbatched)

    def _run_recurrence(self, x: Tensor, hx, mask, unbatched: bool) -> RecurrenceResult:
        """The recurrence on the backend dispatch picks (both directions concatenated as
        nn.LSTM's: output ``(T, B, 2H)``, state ``(2L, B, H)``, gate tensors stacked on a new
        direction axis)."""
        T, B = x.shape[0], x.shape[1]
        threshold, forced, const = self._gate_args(T, B, x)
        name = self._decide_backend(x).name
        self.last_backend = name
        fn = dispatch.select_named(name)
        state = self.parse_state(hx, B, x, unbatched,
                                 shared_fresh=name == "triton" and not self.bidirectional)
        if not self.bidirectional:
            return self._direction(fn, 0, x, state, mask, threshold, forced, const)
        # the reverse direction reads each sequence from its last valid step back to its first
        order = reversal_index(T, B, mask, x.device)
        sub = [tuple(t[d:d + 1] for t in state[:-2]) + (state[-2][d], state[-1][d])
               for d in (0, 1)]
        fwd = self._direction(fn, 0, x, sub[0], mask, threshold, forced, const)
        threshold, forced, const = self._gate_args(T, B, x)    # its own draws, if random
        rev = self._direction(fn, 1, reverse_time(x, order), sub[1], mask,
                              threshold if isinstance(threshold, float)
                              else reverse_time(threshold, order),
                              None if forced is None else reverse_time(forced, order), const)
        return RecurrenceResult(
            torch.cat([fwd.output, reverse_time(rev.output, order)], -1),
            tuple(torch.cat([a, b], 0) for a, b in zip(fwd.state, rev.state)),
            torch.stack([fwd.update_prob, rev.update_prob], 0),
            torch.stack([fwd.cum_prob, rev.cum_prob], 0),
            torch.stack([fwd.updates, reverse_time(rev.updates, order)], -1),
            torch.stack([fwd.update_probs, reverse_time(rev.update_probs, order)], -1))

    def _direction(self, fn, d: int, x: Tensor, state, mask, threshold, forced, const):
        """One direction's recurrence through backend ``fn`` from the full ``state`` record."""
        gate = self._gate(d)
        gw, gb = (gate.weight, gate.bias) if gate is not None else (None, None)
        opts = GateOptions(mask=mask, threshold=threshold, dropout=self.dropout,
                           training=self.training, forced=forced, constant_delta=const,
                           **self.cell_options())
        return fn(self.mode, x, tuple(state[:-2]), state[-2], state[-1], self.layer_weights(d),
                  gw, gb, opts)

    # ------------------------------------------------------------------ forward
    def forward(self, input, hx=None, lengths=None) -> SkipOutput:
        """Run the layer.

        Args:
            input: ``(T, B, input_size)`` (``(B, T, input_size)`` with batch_first), unbatched
                ``(T, input_size)``, or a PackedSequence.
            hx: None (fresh state, or the learned s_0), nn.LSTM-style ``(h0, c0)`` each
                ``(num_layers, B, H)`` (GRU: ``h0``) for a fresh gate, or what a previous call
                returned, its hidden (``result[1]``) or ``result.state``, to continue exactly.
            lengths: optional ``(B,)`` valid lengths of a padded batch (1 ≤ length ≤ T).

        Returns:
            SkipOutput: unpacks as nn.LSTM's ``output, (h_n, c_n)`` (GRU: ``output, h_n``);
            ``.updates``, ``.update_probs`` and the full ``.state`` are attributes.
        """
        if torch.jit.is_tracing():
            raise unsupported_export(self, "traced with torch.jit.trace or exported with the "
                                     "TorchScript-based torch.onnx.export(..., dynamo=False)")
        pk, packed = input, isinstance(input, PackedSequence)
        if packed and lengths is not None:
            raise ValueError("pass lengths only with a padded tensor, not with a PackedSequence")
        if packed:
            input, lengths = pad_packed_sequence(pk, batch_first=False)
        x, unbatched = check_input(input, self.input_size, self.batch_first and not packed)
        x = check_matches_weights(x, self.weight_ih_l0)
        T, B = x.shape[0], x.shape[1]
        mask = None if lengths is None else check_lengths(lengths, T, B, x.device)
        if mask is not None and bool(mask.all()):
            mask = None
        res = self._recurrence(x, hx, mask, unbatched)
        out, u, p = res.output, res.updates, res.update_probs
        new_state = self.state_type(*res.state, res.update_prob, res.cum_prob)
        if packed:
            out = pack_padded_sequence(out, lengths.cpu(), enforce_sorted=False)
            # pad_packed_sequence restored the caller's batch order; keep its permutation.
            out = PackedSequence(out.data, out.batch_sizes, pk.sorted_indices, pk.unsorted_indices) \
                if pk.sorted_indices is not None else out
        if unbatched:
            out, u, p = out.squeeze(1), u.squeeze(1), p.squeeze(1)
            new_state = self.state_type(*(t.squeeze(1) for t in res.state),
                                        res.update_prob.select(-1, 0), res.cum_prob.select(-1, 0))
        elif self.batch_first:
            out = out if packed else out.transpose(0, 1)
            u, p = u.transpose(0, 1), p.transpose(0, 1)
        return SkipOutput(out, new_state, u, p)

    def stream(self, batch_size: int = 1, state=None):
        """A step-by-step stream over this layer (``skiprnn.inference.SkipStream``).

        ``stream.step(x_t)`` runs one step, ``stream.skips_ahead`` says how many upcoming inputs
        will not be read (so the caller need not produce them), ``stream.skip(n)`` advances over
        them; results equal the whole-sequence forward.
        """
        if self.bidirectional:
            raise ValueError("a bidirectional layer cannot be streamed: its reverse direction "
                             "starts from the end of the sequence")
        from ..inference.stream import SkipStream

        return SkipStream(self, batch_size, state)

    def extra_repr(self) -> str:
        learned = self.gate_mode == "learned"
        shown = ((f"num_layers={self.num_layers}", self.num_layers != 1),
                 ("bias=False", not self.bias), ("batch_first=True", self.batch_first),
                 (f"dropout={self.dropout}", self.dropout),
                 (f"binarizer={self.binarizer!r}", learned and self.binarizer != "round"),
                 (f"threshold={self.threshold}", learned and self.threshold != 0.5),
                 ("learn_init=True", self.learn_init), ("single_bias=True", self.single_bias),
                 ("reset_after=False", not self.reset_after),
                 ("bidirectional=True", self.bidirectional),
                 (f"max_skip={self.max_skip}", self.max_skip is not None))
        return ", ".join([f"{self.input_size}, {self.hidden_size}"] + [s for s, on in shown if on])

    # ------------------------------------------------------------------ conversion
    @classmethod
    def _from_plain(cls, rnn: nn.RNNBase, plain: type, **kwargs):
        if not isinstance(rnn, plain):
            raise TypeError(f"from_{cls.mode} expects an nn.{plain.__name__}, "
                            f"got {type(rnn).__name__}")
        check_nn_only_options(cls.__name__, rnn.bidirectional, getattr(rnn, "proj_size", 0),
                              rnn.num_layers)
        if kwargs.get("single_bias") or kwargs.get("reset_after") is False:
            raise ValueError(f"{type(rnn).__name__} weights define nn.{cls.mode.upper()}'s cell "
                             "(two biases, reset after the product); they cannot be loaded into a "
                             "layer with single_bias=True or reset_after=False")
        p = next(rnn.parameters())
        kw = dict(input_size=rnn.input_size, hidden_size=rnn.hidden_size, num_layers=rnn.num_layers,
                  bias=rnn.bias, batch_first=rnn.batch_first, dropout=rnn.dropout,
                  bidirectional=rnn.bidirectional, device=p.device, dtype=p.dtype)
        kw.update(kwargs)
        new = cls(**kw)
        _, unexpected = new.load_state_dict(rnn.state_dict(), strict=False)
        if unexpected:
            raise ValueError(f"unexpected parameters from {type(rnn).__name__}: {unexpected}")
        return new


class SkipLSTM(SkipRNNBase):
    """Skip LSTM (paper Eqs. 2-5): an nn.LSTM whose state update is gated by a learned binary u_t.

    One gate u_t is shared by the whole stack; Δũ comes from the top layer's new cell state c.

    Args (as nn.LSTM, plus):
        binarizer: 'round' (paper) or 'bernoulli' (stochastic in training, thresholded in eval);
            both use the straight-through gradient.
        threshold: τ in [0, 1): u_t = 1[ũ_t > τ]. 0.5 is the paper's round(); raise it at
            inference to use fewer updates without retraining.
        learn_init: learn the initial state s_0 (h and c, broadcast to any batch size), as the paper.
        single_bias: one bias vector per gate (``bias_ih_l{k}``, no ``bias_hh_l{k}``), as TF's.
        backend: 'auto' | 'reference' | 'cpu' | 'triton' (env ``SKIPRNN_BACKEND`` overrides).
        bidirectional: one layer only: a reverse direction with its own weights (``*_reverse``,
            as nn.LSTM's) and gate (``update_gate_reverse``); output ``(T, B, 2H)``, h_n
            ``(2, B, H)``, updates ``(T, B, 2)`` (direction last).
        proj_size: accepted for nn.LSTM's signature; > 0 is refused with the reason.
        max_skip: None (the paper's gate) or K ≥ 1: at most K consecutive skipped steps, in
            training and in every inference path (Δũ floored at 1/(2K+1), gradient 0 where the
            floor acts; so at least 1/(K+1) of the steps are read). Needs binarizer='round' and
            threshold ≤ 0.5; runs on the reference / CPU / skipping paths (never Triton).

    Shapes: input ``(T, B, I)`` → ``output, (h_n, c_n)`` as nn.LSTM: output ``(T, B, H)``, h_n and
    c_n ``(num_layers, B, H)``; ``result.updates`` ``(T, B)`` (see SkipOutput).
    """

    mode = "lstm"

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM, **kwargs) -> "SkipLSTM":
        """A Skip LSTM with ``lstm``'s weights (the update gate starts fresh, bias 1)."""
        return cls._from_plain(lstm, nn.LSTM, **kwargs)


class _GRUCandidate:
    """The ``reset_after`` option of the GRU layers (Keras' name; the module docstring): True
    (default) is nn.GRU's candidate ``tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))`` (loads nn.GRU
    weights), False the paper code's (TF's GRUCell). A stack feeds each layer the previous
    layer's h (the official ``MultiSkipGRUCell`` feeds the raw input to every layer's candidate,
    a bug we do not copy)."""

    def __init__(self, *args, reset_after: bool = True, **kwargs):
        if not isinstance(reset_after, bool):
            raise TypeError(f"reset_after must be a bool, got {type(reset_after).__name__}")
        self.reset_after = reset_after
        super().__init__(*args, **kwargs)


class SkipGRU(_GRUCandidate, SkipRNNBase):
    """Skip GRU (paper Eqs. 2-5) over nn.GRU's cell; Δũ comes from the top layer's new h.

    Arguments and shapes as :class:`SkipLSTM`; ``hx`` may be ``h0`` ``(L, B, H)``.
    ``reset_after``: True (default) is nn.GRU's candidate, False the paper's (reset gate applied
    before the matrix product, see :class:`_GRUCandidate`).
    """

    mode = "gru"

    @classmethod
    def from_gru(cls, gru: nn.GRU, **kwargs) -> "SkipGRU":
        """A Skip GRU with ``gru``'s weights (the update gate starts fresh, bias 1)."""
        return cls._from_plain(gru, nn.GRU, **kwargs)
