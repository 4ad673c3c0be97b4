"""The CPU fast path (``skip_rnn_cpu``, both cells) vs the naive reference (THE definition).

Every case compares, in this order: the binary gates (must be identical), then every output and
final state, then the gradient of every input (``torch.autograd.grad`` with random upstream
gradients on ALL outputs). float64 must agree to rounding; float32 to a loose relative tolerance.
Inputs are redrawn until the reference's ũ stays ``margin`` away from the threshold on every valid
step, so a gate cannot flip on rounding. Fresh starts (Δũ=1, cum=0) exercise the gradient of the
min at the tie of step 1 (all of it to Δũ, as TensorFlow's); continued starts have Δũ<1 and cum>0.
Uninitialised memory is NaN-filled (``torch.utils.deterministic.fill_uninitialized_memory``) so a
buffer the fast path forgets to write fails at once.
"""

import math
import os

import pytest
import torch

from skiprnn.ops.contract import GateOptions
from skiprnn.ops.cpu_rnn import skip_rnn_cpu
from skiprnn.ops.naive import skip_rnn_naive
from skiprnn.ops.skipping import skip_rnn_skipping

GATES = {"lstm": 4, "gru": 3, "gru_paper": 3}
# "gru_paper": the paper's GRU candidate (reset_after=False: the reset gate acts before W_hn)
CELLS = ["lstm", "gru", "gru_paper"]
TOL = {torch.float64: (1e-12, 1e-9), torch.float32: (1e-5, 2e-4)}  # (atol, rtol of the scale)


@pytest.fixture(autouse=True)
def _poison_empty_one_thread():
    """NaN-fill fresh allocations; one intra-op thread (tiny GEMMs on a shared, busy machine
    otherwise wait milliseconds for a second thread, and the results do not depend on it)."""
    old_det = torch.are_deterministic_algorithms_enabled()
    old_fill = torch.utils.deterministic.fill_uninitialized_memory
    old_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old_threads)
    torch.use_deterministic_algorithms(old_det)
    torch.utils.deterministic.fill_uninitialized_memory = old_fill


def names(cell):
    state = ["h0", "c0"] if cell == "lstm" else ["h0"]
    return ["x", *state, "update_prob0", "cum_prob0", "w_ih", "w_hh", "b_ih", "b_hh",
            "gate_weight", "gate_bias"]


def call(fn, cell, p, **kw):
    """``fn`` (a backend) on the problem ``p``; ``kw``: fields of GateOptions."""
    layers = [(p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"])]
    state = (p["h0"], p["c0"]) if cell == "lstm" else (p["h0"],)
    opts = GateOptions(reset_after=cell != "gru_paper", **kw)
    kind = "lstm" if cell == "lstm" else "gru"
    return fn(kind, p["x"], state, p["update_prob0"], p["cum_prob0"], layers, p["gate_weight"],
              p["gate_bias"], opts)


def _safe_delta(rnd_uniform, threshold, gap=0.07):
    """A Δũ level d whose accumulated values k·d (k = 1, 2, ...; capped at 1) stay ``gap`` away
    from the threshold, so the gates of a whole sequence keep clear of the tie."""
    for _ in range(1000):
        d = 0.15 + 0.8 * rnd_uniform()
        levels = [min(k * d, 1.0) for k in range(1, int(1 / d) + 2)]
        if min(abs(v - threshold) for v in levels) > gap:
            return d
    raise RuntimeError(f"no safe Δũ for threshold {threshold}")


def make_problem(cell, T, B, I, H, *, seed, masked, fresh, threshold=0.5, bias=True,
                 dtype=torch.float64, margin=1e-4):
    """Random inputs whose reference ũ stays ``margin`` away from ``threshold`` (redrawn else).

    The update-gate bias sits at the logit of a "safe" Δũ level and ``W_p`` is small (it moves
    Δũ by about ±0.01), so ũ = k·Δũ keeps away from the threshold; the reference is then run and
    the draw is repeated if any valid step still comes within ``margin``.
    """
    gen = torch.Generator().manual_seed(seed)
    G = GATES[cell]

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)

    def uniform():
        return torch.rand((), generator=gen, dtype=torch.float64).item()

    for _ in range(50):
        d = _safe_delta(uniform, threshold)
        p = dict(
            x=rnd(T, B, I), h0=rnd(1, B, H, scale=0.5),
            w_ih=rnd(G * H, I, scale=0.6), w_hh=rnd(G * H, H, scale=0.6 / math.sqrt(H)),
            b_ih=rnd(G * H, scale=0.2) if bias else None,
            b_hh=rnd(G * H, scale=0.2) if bias else None,
            gate_weight=rnd(1, H, scale=0.03 / math.sqrt(H)),
            gate_bias=torch.full((1,), math.log(d / (1 - d)), dtype=dtype),
        )
        if cell == "lstm":
            p["c0"] = rnd(1, B, H)
        if fresh:
            p["update_prob0"] = torch.ones(B, dtype=dtype)
            p["cum_prob0"] = torch.zeros(B, dtype=dtype)
        else:  # continuing mid-sequence: Δũ < 1, cum > 0
            p["update_prob0"] = (0.05 + 0.9 * torch.rand(B, generator=gen,
                                                         dtype=torch.float64)).to(dtype)
            p["cum_prob0"] = (0.02 + 0.4 * torch.rand(B, generator=gen,
                                                      dtype=torch.float64)).to(dtype)
        mask = None
        if masked:
            lengths = torch.randint(1, T + 1, (B,), generator=gen)
            lengths[0] = T
            mask = (torch.arange(T)[:, None] < lengths[None, :]).to(dtype)
        with torch.no_grad():
            ref = call(skip_rnn_naive, cell, p, mask=mask, threshold=threshold)
        probs = ref.update_probs
        valid = torch.ones_like(probs, dtype=torch.bool) if mask is None else mask.bool()
        if (probs[valid] - threshold).abs().min() > margin:
            return p, mask
    raise RuntimeError("could not draw a problem away from the gate threshold")


def assert_close(a, b, what, dtype):
    atol, rtol = TOL[dtype]
    assert a.shape == b.shape, f"{what}: shape {tuple(b.shape)} != {tuple(a.shape)}"
    assert torch.isfinite(b).all(), f"{what}: non-finite values in the fast path"
    err = (a - b).abs().max().item() if a.numel() else 0.0
    scale = a.abs().max().item() if a.numel() else 0.0
    assert err <= atol + rtol * scale, f"{what}: max error {err:.3g} (scale {scale:.3g})"


def assert_skips_copy_exactly(cell, p, mask, out, what):
    """Eq. 3 with u = 0 is a copy: on every valid skipped step the output (the held h) equals the
    previous step's output (h0 before step 0) bit for bit; h_n is the last valid output bit for
    bit; rows that never update keep h0 (c0), Δũ and nothing else. Returns the number of skipped
    valid steps checked."""
    output, h_n, u = out.output, out.state[0], out.updates
    valid = torch.ones_like(u, dtype=torch.bool) if mask is None else mask.bool()
    prev = torch.cat([p["h0"][-1:].to(output), output[:-1]])
    skipped = (u == 0) & valid
    assert torch.equal(output[skipped], prev[skipped]), f"{what}: a skipped step changed h"
    last = valid.sum(0) - 1  # lengths are prefixes: the last valid step of each row
    assert torch.equal(h_n[-1], output[last, torch.arange(u.shape[1])]), f"{what}: h_n"
    never = ~(u.bool() & valid).any(0)
    if never.any():
        assert torch.equal(h_n[-1][never], p["h0"][-1][never]), f"{what}: h of a row never updated"
        if cell == "lstm":
            assert torch.equal(out.state[1][-1][never], p["c0"][-1][never]), \
                f"{what}: c of a row never updated"
        up = out.update_prob
        assert torch.equal(up[never], p["update_prob0"][never]), f"{what}: Δũ of a row never updated"
    return int(skipped.sum())


def check(cell, p, mask, dtype, threshold=0.5):
    inputs = {k: v.clone().requires_grad_() for k, v in p.items() if v is not None}
    q = {k: inputs.get(k) for k in p}
    ref = call(skip_rnn_naive, cell, q, mask=mask, threshold=threshold)
    fast = call(skip_rnn_cpu, cell, q, mask=mask, threshold=threshold)
    out_names = (["output", "h_n", "c_n"] if cell == "lstm" else ["output", "h_n"]) + \
        ["update_prob", "cum_prob", "updates", "update_probs"]
    assert len(fast.tensors()) == len(ref.tensors()) == len(out_names)
    # binary gates first: a flipped gate changes the whole trajectory
    assert torch.equal(ref.updates, fast.updates), "binary gates differ"
    assert set(fast.updates.unique().tolist()) <= {0.0, 1.0}
    for name, a, b in zip(out_names, ref.tensors(), fast.tensors()):
        assert b.dtype == a.dtype, name
        assert_close(a, b, name, dtype)
    n_ref = assert_skips_copy_exactly(cell, p, mask, ref, "reference")
    assert assert_skips_copy_exactly(cell, p, mask, fast, "cpu") == n_ref
    with torch.no_grad():  # the skipping inference backend: same gates, same exact copies
        skipping = call(skip_rnn_skipping, cell, p, mask=mask, threshold=threshold)
    assert torch.equal(ref.updates, skipping.updates), "skipping: binary gates differ"
    for name, a, b in zip(out_names, ref.tensors(), skipping.tensors()):
        assert_close(a.detach(), b, f"skipping {name}", dtype)
    assert assert_skips_copy_exactly(cell, p, mask, skipping, "skipping") == n_ref
    gen = torch.Generator().manual_seed(1234)
    ups = [torch.randn(a.shape, generator=gen, dtype=torch.float64).to(dtype)
           for a in ref.tensors()]
    wrt = [n for n in names(cell) if n in inputs]
    g_ref = torch.autograd.grad(ref.tensors(), [inputs[n] for n in wrt], ups)
    g_fast = torch.autograd.grad(fast.tensors(), [inputs[n] for n in wrt], ups)
    for n, a, b in zip(wrt, g_ref, g_fast):
        assert_close(a, b, f"grad {n}", dtype)


# (T, B, I, H, masked, fresh, threshold, bias)
CASES = [
    (1, 1, 1, 1, False, True, 0.5, True),
    (1, 3, 2, 110, True, False, 0.5, True),
    (63, 1, 1, 110, False, False, 0.5, True),
    (63, 3, 5, 1, True, True, 0.3, True),
    (63, 64, 1, 110, True, False, 0.5, True),
    (200, 3, 2, 110, True, False, 0.7, False),
    (200, 64, 3, 1, False, True, 0.5, True),
    (200, 64, 1, 110, True, True, 0.5, True),
]


def case_id(c):
    T, B, I, H, masked, fresh, thr, bias = c
    return (f"T{T}-B{B}-I{I}-H{H}" + ("-masked" if masked else "") +
            ("-fresh" if fresh else "-continued") + f"-thr{thr}" + ("" if bias else "-nobias"))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_reference_float64(cell, case):
    T, B, I, H, masked, fresh, thr, bias = case
    p, mask = make_problem(cell, T, B, I, H, seed=T * 1000 + B * 10 + H, masked=masked,
                           fresh=fresh, threshold=thr, bias=bias)
    check(cell, p, mask, torch.float64, threshold=thr)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("masked", [False, True], ids=["full", "masked"])
def test_matches_reference_float32(cell, masked):
    p, mask = make_problem(cell, 200, 16, 2, 110, seed=7, masked=masked, fresh=not masked,
                           dtype=torch.float32, margin=1e-3)
    check(cell, p, mask, torch.float32)


@pytest.mark.parametrize("cell", CELLS)
def test_gates_both_update_and_skip(cell):
    """The problems above must exercise skipped steps, not only updates."""
    p, mask = make_problem(cell, 63, 64, 1, 110, seed=3, masked=False, fresh=True)
    with torch.no_grad():
        out = call(skip_rnn_cpu, cell, p)
    frac = out.updates.mean().item()
    assert 0.05 < frac < 0.95, frac


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("masked", [False, True], ids=["full", "masked"])
def test_steps_no_column_updates(cell, masked):
    """Steps where no column of the batch updates take the backward's shortcut (no cell work):
    a problem with such steps and with mixed ones, both chunk-aligned and not, matches the
    reference on every output and gradient."""
    p, mask = make_problem(cell, 70, 3, 2, 20, seed=1, masked=masked, fresh=False)
    with torch.no_grad():
        u = call(skip_rnn_cpu, cell, p, mask=mask).updates
    per_step = u.sum(1)
    assert (per_step == 0).sum() >= 3 and ((per_step > 0) & (per_step < 3)).any(), per_step
    check(cell, p, mask, torch.float64)


@pytest.mark.parametrize("cell", CELLS)
def test_threshold_tensor(cell):
    """A (T, B) threshold tensor (e.g. uniform noise = Bernoulli sampling) matches the reference."""
    T, B = 40, 5
    gen = torch.Generator().manual_seed(5)
    for seed in range(50):
        p, mask = make_problem(cell, T, B, 2, 8, seed=100 + seed, masked=True, fresh=True,
                               margin=0.0)
        thr = torch.rand(T, B, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            ref = call(skip_rnn_naive, cell, p, mask=mask, threshold=thr)
        if ((ref.update_probs - thr).abs()[mask.bool()] > 1e-4).all():
            break
    else:
        pytest.fail("no seed in 50 gave a draw whose ũ stays 1e-4 away from the random thresholds")
    check(cell, p, mask, torch.float64, threshold=thr)


@pytest.mark.parametrize("cell", CELLS)
def test_two_chunks_equal_one_call(cell):
    """Feeding the returned state back continues exactly; gradients flow across the chunks."""
    T, k = 60, 23
    p, mask = make_problem(cell, T, 4, 2, 16, seed=11, masked=False, fresh=True)
    leaves = {n: p[n].clone().requires_grad_() for n in ("x", "w_hh", "gate_weight")}

    def run(q):
        return call(skip_rnn_cpu, cell, q)

    whole = run({**p, **leaves})
    q1 = {**p, **leaves, "x": leaves["x"][:k]}
    first = run(q1)
    q2 = {**p, **leaves, "x": leaves["x"][k:], **dict(zip(("h0", "c0"), first.state)),
          "update_prob0": first.update_prob, "cum_prob0": first.cum_prob}
    second = run(q2)
    assert torch.equal(torch.cat([first.updates, second.updates]), whole.updates)
    torch.testing.assert_close(torch.cat([first.output, second.output]), whole.output,
                               atol=1e-12, rtol=0)
    loss_whole = whole.output.pow(2).sum() + whole.update_probs.sum()
    loss_chunks = torch.cat([first.output, second.output]).pow(2).sum() + \
        first.update_probs.sum() + second.update_probs.sum()
    g1 = torch.autograd.grad(loss_whole, list(leaves.values()))
    g2 = torch.autograd.grad(loss_chunks, list(leaves.values()))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_unsupported_raise(cell):
    p, _ = make_problem(cell, 5, 2, 1, 3, seed=0, masked=False, fresh=True, margin=0.0)
    with pytest.raises(ValueError, match="forced"):
        call(skip_rnn_cpu, cell, p, forced=torch.ones(5, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="constant_delta"):
        call(skip_rnn_cpu, cell, p, constant_delta=0.3)
    layers = [(p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"])] * 2
    state = (p["h0"].expand(2, -1, -1),) * (2 if cell == "lstm" else 1)
    with pytest.raises(ValueError, match="one layer"):
        skip_rnn_cpu(cell, p["x"], state, p["update_prob0"], p["cum_prob0"], layers,
                     p["gate_weight"], p["gate_bias"])


@pytest.mark.parametrize("backend", [skip_rnn_naive, skip_rnn_cpu, skip_rnn_skipping])
def test_contract_refuses_bad_calls(backend):
    """Every backend checks the cell, its state and the options record in one place."""
    p, _ = make_problem("lstm", 5, 2, 1, 3, seed=0, masked=False, fresh=True, margin=0.0)
    rest = (p["update_prob0"], p["cum_prob0"], [(p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"])],
            p["gate_weight"], p["gate_bias"])
    with pytest.raises(ValueError, match="cell must be one of"):
        backend("rnn", p["x"], (p["h0"], p["c0"]), *rest)
    with pytest.raises(ValueError, match=r"must be a tuple \(h0, c0\)"):
        backend("lstm", p["x"], (p["h0"],), *rest)
    with pytest.raises(TypeError, match="opts must be a GateOptions"):
        backend("lstm", p["x"], (p["h0"], p["c0"]), *rest, {"threshold": 0.5})
    with pytest.raises(ValueError, match="GRU only"):
        backend("lstm", p["x"], (p["h0"], p["c0"]), *rest, GateOptions(reset_after=False))
    with pytest.raises(TypeError, match="thresold"):
        GateOptions(thresold=0.5)  # a misspelt option is refused by name


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_dispatch_finds_cpu_backend(cell):
    from skiprnn.ops.dispatch import select
    name, fn = select(cell, "cpu", device_type="cpu", num_layers=1, fast_ok=True)
    assert name == "cpu" and fn is skip_rnn_cpu


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("masked", [False, True], ids=["full", "masked"])
def test_no_grad_forward_matches(cell, masked):
    """Inference (no graph: the backward bookkeeping is skipped) gives the same outputs."""
    p, mask = make_problem(cell, 40, 6, 2, 12, seed=21, masked=masked, fresh=False)
    q = {k: (None if v is None else v.clone().requires_grad_()) for k, v in p.items()}
    with torch.no_grad():
        ref = call(skip_rnn_naive, cell, p, mask=mask)
        fast = call(skip_rnn_cpu, cell, q, mask=mask)
    assert torch.equal(ref.updates, fast.updates)
    for a, b in zip(ref.tensors(), fast.tensors()):
        assert not b.requires_grad
        torch.testing.assert_close(b, a, atol=1e-12, rtol=0)


@pytest.mark.parametrize("cell", CELLS)
def test_two_live_calls_then_one_backward(cell):
    """Work buffers come from a pool: two calls alive at once must not share them."""
    p1, _ = make_problem(cell, 30, 4, 2, 8, seed=31, masked=False, fresh=True)
    p2, _ = make_problem(cell, 30, 4, 2, 8, seed=32, masked=False, fresh=True)
    grads = []
    for fn in (skip_rnn_naive, skip_rnn_cpu):
        leaves = [p1["w_hh"].clone().requires_grad_(), p2["w_hh"].clone().requires_grad_()]
        o1 = call(fn, cell, {**p1, "w_hh": leaves[0]})
        o2 = call(fn, cell, {**p2, "w_hh": leaves[1]})
        loss = o1.output.pow(2).sum() + o2.output.sum() + o1.update_probs.sum() + \
            o2.update_probs.sum()
        grads.append(torch.autograd.grad(loss, leaves))
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("cell", CELLS)
def test_second_backward_works_double_backward_and_inplace_output_raise(cell):
    """The backward op only reads what the forward saved (pool memory is taken back only once
    nothing uses it), so ``retain_graph=True`` and a second backward give the same gradient;
    double backward raises a clear error; so does modifying the saved output in place."""
    p, _ = make_problem(cell, 10, 3, 2, 5, seed=41, masked=True, fresh=True)
    w = p["w_hh"].clone().requires_grad_()
    out = call(skip_rnn_cpu, cell, {**p, "w_hh": w})
    loss = out.output.sum() + out.update_probs.sum()
    g1, = torch.autograd.grad(loss, w, retain_graph=True)
    call(skip_rnn_cpu, cell, {**p, "w_hh": w}).output.sum().backward()  # another call between
    g2, = torch.autograd.grad(loss, w, retain_graph=True)
    assert torch.equal(g1, g2)
    g, = torch.autograd.grad(loss, w, create_graph=True)
    with pytest.raises(RuntimeError, match="no autograd formula"):
        g.sum().backward()
    out = call(skip_rnn_cpu, cell, {**p, "w_hh": w})
    loss = out.output.sum()
    out.output.add_(1)  # the output is saved for backward: modifying it in place must be caught
    with pytest.raises(RuntimeError, match="inplace"):
        torch.autograd.grad(loss, w)


def test_buffer_pool_reuses_and_evicts():
    from skiprnn.ops.cpu_rnn import _BufferPool
    like = torch.empty(0)
    pool = _BufferPool(max_bytes=4 * 100)  # room for 100 floats
    a = pool.get((10, 5), like)
    pool.put([a])
    assert pool.get((10, 5), like) is a  # handed back, then reused
    assert pool.get((10, 5), like) is not a  # never handed out twice
    for shape in [(10, 5), (20, 2), (30,), (10, 5), (7, 7), (101,)]:
        t = pool.get(shape, like)
        pool.put([t, pool.get(shape, like)])
        assert pool._bytes <= pool.max_bytes
        assert all(lst for lst in pool._free.values())


@pytest.mark.parametrize("B", [1, 8])
@pytest.mark.parametrize("python_engine", [False, True])
def test_skipping_outputs_reuse_memory_only_once_dropped(monkeypatch, python_engine, B):
    """The skipping engine's (T, B, H) output comes from the pool (already paged in): a call's
    output is never the memory of an output still alive — its values stay as they were through
    later calls — and once dropped its memory serves the next call's output. Batches (waves) and
    batch size 1, with the C loops and with the Python / NumPy engines (C kernels off)."""
    from skiprnn import SkipLSTM
    from skiprnn.ops import cpu_rnn
    if python_engine:
        monkeypatch.setenv("SKIPRNN_CPU_KERNELS", "python")
    torch.manual_seed(0)
    layer = SkipLSTM(3, 16).eval()
    with torch.no_grad():
        layer.update_gate.bias.fill_(math.log(0.3 / 0.7))
        x = torch.randn(50, B, 3)
        first = layer(x)[0]
        assert layer.last_backend == "skipping"
        kept = first.clone()
        second = layer(2 * x)[0]
        assert second.data_ptr() != first.data_ptr()
        assert torch.equal(first, kept)          # the later call did not write over it
        ptr = first.data_ptr()
        assert any(t.data_ptr() == ptr for t in cpu_rnn._POOL._lent)  # the pool's memory
        del first
        third = layer(x)[0]
        assert third.data_ptr() == ptr           # the dropped output's memory, reused
        assert torch.equal(third, kept)


def test_buffer_pool_lends_memory_back_only_when_unused():
    """A lent buffer (an op output the backward reads) returns to the pool only once no tensor
    (views and saved tensors included) uses its storage."""
    from skiprnn.ops.cpu_rnn import _BufferPool
    like = torch.empty(0)
    pool = _BufferPool(max_bytes=4 * 1000)
    a = pool.lend((10, 5), like)
    ptr = a.data_ptr()
    view = a[2:]
    del a
    assert pool.get((10, 5), like).data_ptr() != ptr  # a view still uses it
    del view
    b = pool.get((10, 5), like)
    assert b.data_ptr() == ptr  # unused now: reused
    assert pool.lend((2000,), like).numel() == 2000  # over the cap: fresh memory, not pooled


def test_buffer_pool_without_torchs_storage_count_lends_fresh_memory(monkeypatch):
    """Without torch's (private) storage use count, lent buffers are never pooled."""
    from skiprnn.ops import cpu_rnn
    monkeypatch.setattr(cpu_rnn, "_USE_COUNT", None)
    like = torch.empty(0)
    pool = cpu_rnn._BufferPool(max_bytes=4 * 1000)
    a = pool.lend((10, 5), like)
    assert a.shape == (10, 5) and pool._lent == []   # nothing tracked: never written again
    del a
    assert pool._bytes == 0 and not pool._free


def _op_args(cell, masked, floor=None, steps=False, T=6, B=3, I=2, H=4):
    """Arguments of ``skiprnn::cpu_rnn_forward`` (float64, train=True) for ``cell``."""
    g = torch.Generator().manual_seed(7)
    G = 4 if cell == "lstm" else 3

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()

    mask = None
    if masked:
        mask = torch.ones(T, B, dtype=torch.bool)
        mask[T // 2:, 1] = False
    thr = torch.rand(T, B, generator=g, dtype=torch.float64) if steps else None
    up0 = torch.full((B,), 0.7, dtype=torch.float64).requires_grad_()
    cum0 = torch.full((B,), 0.1, dtype=torch.float64).requires_grad_()
    return (cell, r(T, B, I), r(1, B, H), r(1, B, H) if cell == "lstm" else None, up0, cum0,
            r(G * H, I), r(G * H, H), r(G * H), r(G * H), r(1, H), r(1), mask, 0.5, thr, floor,
            True)


@pytest.mark.parametrize("variant", ["plain", "masked", "max_skip", "step_thresholds"])
@pytest.mark.parametrize("cell", CELLS)
def test_opcheck_forward_and_backward_ops(cell, variant):
    """torch.library.opcheck of the CPU ops: schema (no hidden mutation or aliasing), fake
    kernels (shapes, dtypes, strides as the real ones), autograd registration and AOT dispatch
    with dynamic shapes (forward and backward traced, results equal eager)."""
    ops = torch.ops.skiprnn
    args = _op_args(cell, masked=variant == "masked", floor=0.2 if variant == "max_skip" else None,
                    steps=variant == "step_thresholds")
    torch.library.opcheck(ops.cpu_rnn_forward.default, args)
    out = ops.cpu_rnn_forward(*args)
    x, h0, c0, _, _, w_ih, w_hh, b_ih, b_hh, gw, _, mask = args[1:13]
    hh = out[0] if mask is None else out[7]
    grads = [torch.randn_like(t).detach() for t in out[:7]]
    bwd_args = (cell, x.detach(), h0.detach(), w_ih.detach(), w_hh.detach(), True, True,
                gw.detach(), mask, hh.detach(), out[8], out[9], out[10], grads[0], grads[1],
                grads[2] if c0 is not None else None, grads[3], grads[4], grads[5] + grads[6])
    torch.library.opcheck(ops.cpu_rnn_backward.default, bwd_args,
                          test_utils=("test_schema", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))


# ------------------------------------------------------------- the fused C kernels (LSTM)

KERNEL_MODES = ["C chunks", "C steps", "torch ops"]


def _set_kernel_mode(monkeypatch, mode):
    """Run the CPU path's LSTM with ``mode``: its chunk loops in C (GEMMs through torch's BLAS),
    its C steps called from Python around torch's addmm (where no BLAS address is found), or
    the per-step torch ops (``SKIPRNN_CPU_KERNELS=python``)."""
    from skiprnn.ops import cpu_kernels
    if mode == "torch ops":
        monkeypatch.setenv("SKIPRNN_CPU_KERNELS", "python")
        return
    monkeypatch.setenv("SKIPRNN_CPU_KERNELS", "auto")
    fns = cpu_kernels.load()
    if fns is None:
        pytest.skip(f"the C kernels are unavailable here: {cpu_kernels.kernel_status()}")
    if mode == "C steps":
        monkeypatch.setitem(cpu_kernels._state, "fns",
                            {d: k._replace(gemm=None) for d, k in fns.items()})
    else:
        assert all(k.gemm is not None for k in fns.values()), "no BLAS address from torch"


def test_c_kernels_build_where_there_is_a_compiler():
    """With a C compiler on the PATH the kernels build and load (a broken build would otherwise
    only show as the slower fallback)."""
    import shutil

    from skiprnn.ops import cpu_kernels
    if not shutil.which(os.environ.get("CC", "cc")):
        pytest.skip("no C compiler")
    if os.environ.get("SKIPRNN_CPU_KERNELS") == "python":
        pytest.skip("SKIPRNN_CPU_KERNELS=python")
    assert cpu_kernels.load() is not None, cpu_kernels.kernel_status()
    assert cpu_kernels.kernel_status() == "fused C kernels"


@pytest.mark.parametrize("variant", ["plain", "masked", "max_skip", "step_thresholds",
                                     "two threads", "saturated"])
@pytest.mark.parametrize("mode", KERNEL_MODES)
def test_lstm_kernel_modes_agree(monkeypatch, mode, variant):
    """The three ways of running the LSTM's steps give the same gates (exactly) and the same
    outputs and gradients (to float64 rounding), over several chunks, with no-column-update
    steps, padding, the max_skip floor and per-step thresholds, and with two threads (torch's
    BLAS, called from the C chunk loops, then runs its GEMMs on both); the one under test is
    compared with the torch ops run in the same test. "saturated": float32, weights and w_p, b_p
    x 100, so that σ and tanh see arguments of ±100s (a float sigmoid computed as
    1 / (1 + exp(-a)) with an approximate reciprocal, as -ffast-math compiles it, gives NaN)."""
    two = variant == "two threads"
    if two:
        torch.set_num_threads(2)  # the autouse fixture restores the count
    wide = variant in ("two threads", "saturated")  # B ≥ 16: the kernels' full vector loops
    args = _op_args("lstm", masked=variant in ("masked", "two threads"), T=40, B=40 if wide else 5,
                    I=2, H=8, floor=0.2 if variant == "max_skip" else None,
                    steps=variant in ("step_thresholds", "two threads"))
    dtype = torch.float64
    if variant == "saturated":
        dtype = torch.float32
        args = _op_args_as(args, torch.float32, weight_scale=100)
    _assert_kernel_mode_matches_torch_ops(monkeypatch, mode, args, dtype)


def _op_args_as(args, dtype, weight_scale=1):
    """``_op_args``'s arguments in ``dtype``, the weights and w_p, b_p times ``weight_scale``."""
    return tuple(a.detach().to(dtype).mul(weight_scale if 6 <= k <= 11 else 1)
                 .requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
                 for k, a in enumerate(args))


def _assert_kernel_mode_matches_torch_ops(monkeypatch, mode, args, dtype):
    """The op's forward and gradients with the LSTM's steps run in ``mode`` against the torch
    ops: binary gates exactly (and neither all 0 nor all 1), everything else to rounding."""
    inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]

    def run():
        out = torch.ops.skiprnn.cpu_rnn_forward(*args)
        g = torch.Generator().manual_seed(3)
        loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum()
                   for o in out[:7] if o.numel())
        return [o.detach() for o in out[:7]], torch.autograd.grad(loss, inputs)

    _set_kernel_mode(monkeypatch, "torch ops")
    ref_out, ref_grads = run()
    _set_kernel_mode(monkeypatch, mode)
    out, grads = run()
    assert torch.equal(ref_out[5], out[5]), "binary gates differ"
    assert 0 < ref_out[5].mean() < 1
    for k, (a, b) in enumerate(zip(ref_out + list(ref_grads), out + list(grads))):
        assert_close(a, b, f"result {k}", dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("H, B", [(42, 100), (64, 64)])
def test_lstm_chunks_split_steps_over_threads_by_units(monkeypatch, dtype, H, B):
    """With two threads and H ≥ 32 the C chunks split every step by hidden units (each thread
    its rows of W_hh h, of the cell and of W_hh^T dgates, and its rows of dW_hh; one barrier per
    step): the gates exactly and everything else to rounding as the torch ops, over three chunks
    (T = 40; at step 0 h_old is h0), with padding, per-step thresholds and the max_skip floor.
    H = 42: 20 and 22 units (blocks of 4 rows, then single rows), B = 100: the float32 kernel's
    masked column blocks; H = B = 64: whole blocks."""
    from skiprnn.ops import cpu_kernels
    _set_kernel_mode(monkeypatch, "C chunks")
    fns = cpu_kernels.load()[dtype]
    assert fns.chunk_threads(2, H, B) == 2 and fns.chunk_threads(1, H, B) == 1
    assert fns.chunk_threads(2, 8, 1024) == 1  # too few units to split
    assert fns.chunk_threads(2, 64, 16) == 1  # too little work a step for a barrier
    torch.set_num_threads(2)  # the autouse fixture restores the count
    # weights of scale 1 / sqrt(H) (those of N(0, 1) make 40 float32 steps amplify rounding to
    # 1e-3 in every implementation: the torch ops are that far from float64 too)
    args = _op_args_as(_op_args("lstm", masked=True, T=40, B=B, I=2, H=H, floor=0.2, steps=True),
                       dtype, weight_scale=H ** -0.5)
    _assert_kernel_mode_matches_torch_ops(monkeypatch, "C chunks", args, dtype)


def _reference_c_and_python(monkeypatch, module, c_loop, p, kw, turn_c_off):
    """The reference, the skipping engine with its C loop ``module.c_loop`` (checked to run once)
    and again after ``turn_c_off()`` (checked not to run it)."""
    ran = []
    fused = getattr(module, c_loop)
    monkeypatch.setattr(module, c_loop, lambda *a: ran.append(1) or fused(*a))
    with torch.no_grad():
        ref = call(skip_rnn_naive, "lstm", p, **kw)
        fast = call(skip_rnn_skipping, "lstm", p, **kw)
        assert len(ran) == 1, "the C loop did not run"
        turn_c_off()
        python = call(skip_rnn_skipping, "lstm", p, **kw)
    assert len(ran) == 1, "the C loop ran with the kernels off"
    return ref, fast, python


def _skip_cap_and_dtype(p, kw, variant):
    """The batch-size-1 and batched C tests' last settings: "max_skip": Δũ ≈ 0.05 under the cap
    K = 3 (floor 1/7: every run of skips is 3 long); "float32": the problem in float32."""
    if variant == "max_skip":
        p["gate_bias"] = torch.full((1,), math.log(0.05 / 0.95), dtype=torch.float64)
        kw["max_skip"] = 3
    dtype = torch.float32 if variant == "float32" else torch.float64
    p = {k: v.to(dtype) for k, v in p.items()}
    kw = {k: v.to(dtype) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    return p, kw, dtype


@pytest.mark.parametrize("variant", ["fresh", "continuing", "holes", "max_skip", "float32"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("H", [5, 64, 110, 256])
def test_batch_one_steps_in_c_match_reference(monkeypatch, threads, H, variant):
    """The skipping engine's batch-size-1 LSTM loop in C (``_run_fused``: ũ replayed, each read
    one update, the output rows indexed; the update's product with W_hh under 1 MB (H = 5, 64,
    110) on one core as AXPYs over its transposed, zero-padded copy, in blocks of 128 rows (H = 5:
    one block, 20 rows; H = 64: two whole blocks; H = 110: three and one of 56 rows), above
    (H = 256: 2 MB in float64, 1 MB in float32) as dot products of its rows split over the
    threads; each sum put in the cell's layout unit by unit) gives the reference's gates exactly and, to rounding, its
    outputs, ũ and state, as the NumPy loop does: from a fresh state and mid-sequence, with masked
    steps inside the sequence and a padded end ("holes"), under the max_skip floor (Δũ below it
    everywhere) and in float32 (the ũ replay in float); the input projected at once ("fresh")
    or in blocks (the others: one C call per block)."""
    from skiprnn.ops import cpu_kernels, skipping
    if cpu_kernels.load() is None:
        pytest.skip(f"the C kernels are unavailable here: {cpu_kernels.kernel_status()}")
    torch.set_num_threads(threads)  # the autouse fixture restores the count
    T = 300
    p, _ = make_problem("lstm", T, 1, 3, H, seed=11 + H, masked=False,
                        fresh=variant != "continuing")
    if H >= 110:  # (these draws' Δũ levels update at every step) Δũ ≈ 0.3: ũ 0.3, 0.6 ± 0.02
        p["gate_bias"] = torch.full((1,), math.log(0.3 / 0.7), dtype=torch.float64)
    kw = {}
    if variant == "holes":
        mask = torch.ones(T, 1, dtype=torch.float64)
        mask[40:47] = 0
        mask[100:101] = 0
        mask[250:] = 0
        kw["mask"] = mask
    p, kw, dtype = _skip_cap_and_dtype(p, kw, variant)
    if variant != "fresh":  # blocks of projections (the C loop returns for each new block)
        monkeypatch.setattr(skipping, "EAGER_PROJECTION_MACS", 0)
    ref, fast, numpy_path = _reference_c_and_python(
        monkeypatch, skipping, "_run_fused", p, kw,
        lambda: monkeypatch.setenv("SKIPRNN_CPU_KERNELS", "python"))
    assert 0.05 < ref.updates.mean() < 0.95
    if variant == "max_skip":
        assert torch.equal(ref.updates[:T].flatten()[::4], torch.ones(T // 4, dtype=dtype))
    for name, other in (("C", fast), ("NumPy", numpy_path)):
        assert torch.equal(ref.updates, other.updates), f"{name}: binary gates differ"
        for k, (a, b) in enumerate(zip(ref.tensors(), other.tensors())):
            assert_close(a, b, f"{name} result {k}", dtype)


@pytest.mark.parametrize("variant", ["fresh", "continuing", "irregular", "lengths", "holes",
                                     "max_skip", "float32"])
@pytest.mark.parametrize("threads", [1, 2])
def test_batched_waves_in_c_match_reference(monkeypatch, threads, variant):
    """The batched skipping engine of a one-layer LSTM in C (``waves._fused_waves``: waves of
    updates, the gate replay, the history and the output filled in blocks of steps over the
    threads) gives the reference's gates exactly and, to rounding, its outputs, ũ and state, as
    the Python waves engine does: rows in one gate state ("fresh"), from random accumulators
    ("continuing"), a gate that varies with the state ("irregular": rows update at different
    steps), rows of different lengths, masked steps inside the sequences ("holes"), under the
    max_skip floor, in float32. B·H = 40 · 110 ≥ 4096, so two threads split the rows."""
    from skiprnn.ops import cpu_kernels, waves
    fns = cpu_kernels.load()
    if fns is None or fns[torch.float64].gemm is None:
        pytest.skip(f"the C kernels are unavailable here: {cpu_kernels.kernel_status()}")
    torch.set_num_threads(threads)  # the autouse fixture restores the count
    T, B, H = 57, 40, 110
    p, _ = make_problem("lstm", T, B, 3, H, seed=5, masked=False, fresh=variant != "continuing")
    kw = {}
    gen = torch.Generator().manual_seed(9)
    p["gate_bias"] = torch.full((1,), math.log(0.3 / 0.7), dtype=torch.float64)  # ũ 0.3, 0.6
    if variant == "irregular":
        p["gate_weight"] = p["gate_weight"] * 150
    if variant in ("lengths", "holes"):
        lengths = torch.randint(1, T + 1, (B,), generator=gen)
        lengths[0] = T
        mask = (torch.arange(T)[:, None] < lengths[None, :]).double()
        if variant == "holes":
            mask[10:14, ::3] = 0
            mask[30, 1::2] = 0
        kw["mask"] = mask
    p, kw, dtype = _skip_cap_and_dtype(p, kw, variant)
    ref, fast, python_engine = _reference_c_and_python(
        monkeypatch, waves, "_fused_waves", p, kw,
        lambda: monkeypatch.setattr(waves, "_fused_waves", lambda *a: None))
    valid = torch.ones(T, B, dtype=torch.bool) if "mask" not in kw else kw["mask"].bool()
    probs = ref.update_probs[valid]
    assert (probs - 0.5).abs().min() > (1e-4 if dtype == torch.float32 else 1e-9), "a near tie"
    assert 0.05 < ref.updates[valid].mean() < 0.95
    if variant == "irregular":
        per_step = ref.updates.sum(1)
        assert ((per_step > 0) & (per_step < B)).sum() >= 10, "rows should update at different steps"
    if variant == "max_skip":
        assert torch.equal(ref.updates[::4], torch.ones(len(range(0, T, 4)), B, dtype=dtype))
    for name, other in (("C", fast), ("Python", python_engine)):
        assert torch.equal(ref.updates, other.updates), f"{name}: binary gates differ"
        for k, (a, b) in enumerate(zip(ref.tensors(), other.tensors())):
            assert_close(a, b, f"{name} result {k}", dtype)


def test_backend_reason_says_how_the_skipping_loop_runs(monkeypatch):
    """``layer.backend_for`` tells a one-layer Skip LSTM's no-grad CPU call whether its skipping
    loop runs in the C kernels, and why not when it does not."""
    from skiprnn import SkipLSTM
    from skiprnn.ops import cpu_kernels
    layer = SkipLSTM(3, 5).eval()
    x = torch.randn(4, 2, 3)
    with torch.no_grad():
        if cpu_kernels.load() is not None:
            assert layer.backend_for(x).reason.endswith("(its loop in the fused C kernels)")
        monkeypatch.setenv("SKIPRNN_CPU_KERNELS", "python")
        assert layer.backend_for(x).reason.endswith(
            "(its loop in NumPy and torch ops: SKIPRNN_CPU_KERNELS=python)")
        assert "its loop" not in SkipLSTM(3, 5, num_layers=2).eval().backend_for(x).reason
