"""Fused Triton Skip LSTM and Skip GRU vs the naive references (THE definitions): gates, outputs,
final state and every gradient. Every test runs for both cells (the ``cell`` fixture) unless it
is about one cell's own option (the GRU's paper candidate, ``reset_after=False``).

Without a GPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set below before
triton is imported) in float64 at tiny, awkward shapes. With a GPU the same small cases run
compiled in float32 ('ieee' products), and the ``gpu`` tests run the paper's shapes.
Fresh kernel buffers are NaN-poisoned (``SKIPRNN_TRITON_POISON=1``) so an unwritten output fails.
"""

import math
import os
from typing import Callable, NamedTuple

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("SKIPRNN_TRITON_POISON", "1")
# the cooperative path without the timing-based selection: its first candidate runs (on a GPU the
# paper shapes below exercise it; other configs: tests/ops/test_triton_coop.py)
os.environ.setdefault("SKIPRNN_COOP", "force")

triton = pytest.importorskip("triton")

from skiprnn.ops import rowblock, triton_rnn  # noqa: E402
from skiprnn.ops.contract import GateOptions  # noqa: E402
from skiprnn.ops.naive import skip_rnn_naive  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"
DTYPE = torch.float32 if CUDA else torch.float64
# fp64 in the interpreter agrees to rounding; fp32 on a GPU to a few ulps of the gradients' scale
TOL = dict(atol=1e-5, rtol=1e-4) if CUDA else dict(atol=1e-10, rtol=1e-8)


def _interpreted() -> bool:
    from triton.runtime.interpreter import InterpretedFunction
    return isinstance(rowblock.rowblock_fwd_kernel, InterpretedFunction)


if not CUDA and not _interpreted():  # triton was imported before TRITON_INTERPRET was set
    pytest.skip("no GPU and the kernels were not built for the Triton interpreter "
                "(run with TRITON_INTERPRET=1)", allow_module_level=True)


class Cell(NamedTuple):
    """What the tests need to know of a cell: its state and its output names (the backends are
    the same functions for both cells)."""

    kind: str                  # "lstm" | "gru"
    gates: int                 # gate blocks of W_ih / W_hh (4H or 3H rows)
    states: tuple              # the initial state tensors, in order
    h0_scale: float            # make_problem's spread of h0
    layer: str                 # the skiprnn layer class
    naive: Callable = skip_rnn_naive
    fast: Callable = triton_rnn.skip_rnn_triton
    infer: Callable = triton_rnn.skip_rnn_triton_infer

    @property
    def names(self) -> list:
        """The differentiable arguments, in call order."""
        return ["x", *self.states, "update_prob0", "cum_prob0", "w_ih", "w_hh", "b_ih", "b_hh",
                "gate_weight", "gate_bias"]

    @property
    def out_names(self) -> list:
        return ["output", *("h_n", "c_n")[:len(self.states)], "update_prob", "cum_prob",
                "updates", "update_probs"]


CELLS = {
    "lstm": Cell("lstm", 4, ("h0", "c0"), 0.5, "SkipLSTM"),
    "gru": Cell("gru", 3, ("h0",), 0.8, "SkipGRU"),
}
GRU = CELLS["gru"]


@pytest.fixture(params=list(CELLS))
def cell(request) -> Cell:
    return CELLS[request.param]


def _cell_kw(cell, reset_after):
    """``reset_after`` for the GRU (its candidate variant); the LSTM has none."""
    return {"reset_after": reset_after} if cell.kind == "gru" else {}


def make_problem(cell, T, B, I, H, *, seed, masked, fresh, bias=True, dtype=DTYPE, device=DEVICE,
                 margin=1e-3, threshold=0.5, reset_after=True):
    """Random inputs whose reference gates stay at least ``margin`` away from the ``threshold``
    tie."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)

    G = cell.gates
    for _ in range(100):
        p = dict(x=rnd(T, B, I), h0=rnd(1, B, H, scale=cell.h0_scale))
        if "c0" in cell.states:
            p["c0"] = rnd(1, B, H)
        p.update(
            w_ih=rnd(G * H, I, scale=0.6), w_hh=rnd(G * H, H, scale=0.6 / math.sqrt(H)),
            b_ih=rnd(G * H, scale=0.2) if bias else None,
            b_hh=rnd(G * H, scale=0.2) if bias else None,
            gate_weight=rnd(1, H, scale=1.0), gate_bias=rnd(1, scale=0.5),
        )
        if fresh:  # a fresh start: the min() in ũ ties at step 1 (gradient all to Δũ)
            p["update_prob0"] = torch.ones(B, dtype=dtype)
            p["cum_prob0"] = torch.zeros(B, dtype=dtype)
        else:
            p["update_prob0"] = (0.05 + 0.95 * torch.rand(B, generator=gen,
                                                          dtype=torch.float64)).to(dtype)
            p["cum_prob0"] = (0.45 * torch.rand(B, generator=gen, dtype=torch.float64)).to(dtype)
        mask = None
        if masked:
            lengths = torch.randint(1, T + 1, (B,), generator=gen)
            lengths[0] = T
            mask = (torch.arange(T)[:, None] < lengths[None, :]).to(dtype)
        p = {k: (None if v is None else v.to(device)) for k, v in p.items()}
        mask = None if mask is None else mask.to(device)
        with torch.no_grad():
            ref = run(cell, cell.naive, p, mask, threshold=threshold,
                      **_cell_kw(cell, reset_after))
        probs = ref.update_probs
        valid = torch.ones_like(probs, dtype=torch.bool) if mask is None else mask > 0
        if ((probs - threshold).abs()[valid] > margin).all():
            return p, mask
    raise RuntimeError("could not draw a problem away from gate ties")


def run(cell, fn, p, mask, **kw):
    """Backend ``fn`` on the problem ``p``; ``kw``: fields of GateOptions."""
    return fn(cell.kind, p["x"], tuple(p[s] for s in cell.states), p["update_prob0"],
              p["cum_prob0"], [(p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"])], p["gate_weight"],
              p["gate_bias"], GateOptions(mask=mask, **kw))


def check_against_reference(cell, p, mask, tol=TOL, grad_tol=None, threshold=0.5,
                            reset_after=True, **kw):
    grad_tol = grad_tol or tol
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in p.items() if v is not None}
    p_ref = {k: leaves.get(k) for k in p}
    p_fast = {k: (None if v is None else v.detach().clone().requires_grad_(True))
              for k, v in p.items()}
    ck = _cell_kw(cell, reset_after)
    ref = run(cell, cell.naive, p_ref, mask, threshold=threshold, **ck)
    out = run(cell, cell.fast, p_fast, mask, threshold=threshold, **ck, **kw)
    assert len(out.state) == len(ref.state)
    # binary gates first: a flipped gate changes the whole trajectory
    torch.testing.assert_close(out.updates, ref.updates, atol=0, rtol=0, msg="updates differ")
    for name, a, b in zip(cell.out_names, out.tensors(), ref.tensors(), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{name}: {m}")
    gen = torch.Generator().manual_seed(1234)
    g_outs = [torch.randn(r.shape, generator=gen, dtype=torch.float64).to(r)
              for r in ref.tensors()]
    names = [k for k in cell.names if p[k] is not None]
    g_ref = torch.autograd.grad(ref.tensors(), [p_ref[k] for k in names], g_outs)
    g_fast = torch.autograd.grad(out.tensors(), [p_fast[k] for k in names], g_outs)
    for name, a, b in zip(names, g_fast, g_ref):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, **grad_tol, msg=lambda m: f"grad {name}: {m}")


# (T, B, I, H, masked, fresh)
CASES = [
    (1, 1, 1, 1, False, True),
    (1, 3, 3, 7, True, False),
    (5, 3, 2, 7, True, False),
    (5, 17, 2, 20, False, False),
    (9, 3, 1, 1, True, True),
    (9, 1, 2, 7, False, True),
    (9, 17, 3, 20, True, False),
]


def _id(c):
    T, B, I, H, masked, fresh = c
    return f"T{T}-B{B}-I{I}-H{H}" + ("-mask" if masked else "") + ("-fresh" if fresh else "")


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_matches_reference(cell, case):
    T, B, I, H, masked, fresh = case
    p, mask = make_problem(cell, T, B, I, H, seed=hash(case) % 10_000, masked=masked, fresh=fresh)
    check_against_reference(cell, p, mask, precision="ieee")


@pytest.mark.parametrize("case", CASES[1:4] + CASES[6:], ids=_id)
def test_paper_candidate_matches_reference(case):
    """reset_after=False (the paper's GRU: W_hn acts on r ⊙ h) on the per-row-block kernels."""
    T, B, I, H, masked, fresh = case
    p, mask = make_problem(GRU, T, B, I, H, seed=hash(case) % 10_000 + 1, masked=masked,
                           fresh=fresh, reset_after=False)
    check_against_reference(GRU, p, mask, precision="ieee", reset_after=False)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_paper_candidate_tiled_loops(monkeypatch, bias):
    """Several column tiles: r ⊙ h of every column before the candidate's product (forward),
    W_hnᵀ dn over every column before dr (backward); two programs."""
    monkeypatch.setenv("SKIPRNN_TRITON_TILES", "16,16,16,4")
    p, mask = make_problem(GRU, 7, 19, 2, 20, seed=8, masked=True, fresh=False, bias=bias,
                           reset_after=False)
    check_against_reference(GRU, p, mask, precision="ieee", reset_after=False)


def test_tiled_loops_and_no_bias(monkeypatch, cell):
    """Several BLOCK_N / BLOCK_K tiles per row (H=20 with 16-wide tiles), two programs."""
    monkeypatch.setenv("SKIPRNN_TRITON_TILES", "16,16,16,4")
    p, mask = make_problem(cell, 7, 19, 2, 20, seed=7, masked=True, fresh=False, bias=False)
    check_against_reference(cell, p, mask, precision="ieee")


def test_float32(cell):
    p, mask = make_problem(cell, 6, 5, 2, 9, seed=3, masked=True, fresh=True, dtype=torch.float32)
    check_against_reference(cell, p, mask, tol=dict(atol=2e-5, rtol=1e-4), precision="ieee")


def test_bfloat16_computes_in_float32(cell):
    """bf16 inputs run the fp32 kernels and return bf16 outputs and gradients."""
    p, mask = make_problem(cell, 4, 3, 2, 5, seed=11, masked=False, fresh=True, dtype=torch.float32)
    pb = {k: (None if v is None else v.to(torch.bfloat16).requires_grad_(True))
          for k, v in p.items()}
    pf = {k: (None if v is None else v.detach().float().requires_grad_(True))
          for k, v in pb.items()}
    out_b = run(cell, cell.fast, pb, mask, precision="ieee")
    out_f = run(cell, cell.fast, pf, mask, precision="ieee")
    for a, b in zip(out_b.tensors(), out_f.tensors()):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a, b.to(torch.bfloat16), atol=0, rtol=0)
    names = [k for k in cell.names if p[k] is not None]
    gb = torch.autograd.grad(out_b.output.float().sum(), [pb[k] for k in names])
    gf = torch.autograd.grad(out_f.output.sum(), [pf[k] for k in names])
    for name, a, b in zip(names, gb, gf):
        assert a.dtype == torch.bfloat16, name
        torch.testing.assert_close(a, b.to(torch.bfloat16), atol=0, rtol=0)


def test_threshold_other_than_half(cell):
    """τ = 0.75 reaches the kernels: outputs, final state and every gradient match the reference
    at τ = 0.75, and the gates differ from those at τ = 0.5 (so the test sees τ)."""
    p, mask = make_problem(cell, 6, 4, 2, 6, seed=5, masked=True, fresh=False, threshold=0.75)
    with torch.no_grad():
        ref = run(cell, cell.naive, p, mask, threshold=0.75)
        at_half = run(cell, cell.naive, p, mask)
    valid = mask > 0
    assert ((ref.update_probs - 0.75).abs()[valid] > 1e-3).all()  # no gate near the tie
    u = ref.updates[valid]
    assert (u == 1).any() and (u == 0).any()
    assert not torch.equal(ref.updates, at_half.updates)
    check_against_reference(cell, p, mask, threshold=0.75, precision="ieee")


def test_unsupported_arguments_raise(cell):
    p, mask = make_problem(cell, 2, 2, 1, 3, seed=1, masked=False, fresh=True)
    layer = (p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"])
    args = (cell.kind, p["x"], tuple(p[s] for s in cell.states), p["update_prob0"],
            p["cum_prob0"])
    g = (p["gate_weight"], p["gate_bias"])
    with pytest.raises(ValueError, match="supports one layer, got 2"):
        cell.fast(*args, [layer, layer], *g)
    with pytest.raises(ValueError, match="forced gates or constant_delta"):
        cell.fast(*args, [layer], *g, GateOptions(forced=torch.ones(2, 2, device=DEVICE)))
    with pytest.raises(ValueError, match="forced gates or constant_delta"):
        cell.fast(*args, [layer], *g, GateOptions(constant_delta=0.3))
    with pytest.raises(ValueError, match="does not support max_skip"):
        cell.fast(*args, [layer], *g, GateOptions(max_skip=3))
    with pytest.raises(ValueError, match="precision must be one of"):
        cell.fast(*args, [layer], *g, GateOptions(precision="fp8"))
    with pytest.raises(ValueError, match="needs a float threshold"):  # per-step τ: the reference
        cell.fast(*args, [layer], *g,
                  GateOptions(threshold=torch.full((2, 2), 0.5, device=DEVICE)))


def test_layer_reuses_its_fresh_state_without_touching_it(cell):
    """A SkipLSTM / SkipGRU on the Triton backend with no ``hx`` shares one zero state per (B, device, dtype)
    between calls (no launches to make it): results match the reference layer call after call,
    the shared state stays zeros (Δũ ones) and the returned state is never the shared one."""
    import skiprnn
    layer = getattr(skiprnn, cell.layer)
    torch.manual_seed(5)
    fast = layer(3, 9, backend="triton", dtype=DTYPE, device=DEVICE)
    ref = layer(3, 9, backend="reference", dtype=DTYPE, device=DEVICE)
    ref.load_state_dict(fast.state_dict())
    for step in range(3):
        x = torch.randn(7, 4, 3, dtype=DTYPE, device=DEVICE)
        a, b = fast(x), ref(x)
        assert fast.last_backend == "triton"
        torch.testing.assert_close(a.output, b.output, **TOL)
        torch.testing.assert_close(a.updates, b.updates, atol=0, rtol=0)
        ga = torch.autograd.grad(a.output.sin().sum() + a.state[0].sum(), list(fast.parameters()))
        gb = torch.autograd.grad(b.output.sin().sum() + b.state[0].sum(), list(ref.parameters()))
        for u, v in zip(ga, gb):
            torch.testing.assert_close(u, v, **TOL)
        shared = fast._fresh_states[(4, a.output.device, DTYPE)]
        assert all(t.data_ptr() != s.data_ptr() for t in a.state for s in shared)
        for t in shared[:-2] + (shared[-1],):
            assert (t == 0).all()
        assert (shared[-2] == 1).all()
    assert len(fast._fresh_states) == 1


def test_dispatch_routes_here(cell):
    from skiprnn.ops import dispatch
    name, fn = dispatch.select(cell.kind, "triton", device_type=DEVICE, num_layers=1, fast_ok=True)
    assert name == "triton" and fn is cell.fast


# ------------------------------------------------------------------------------------------------
# GPU: the paper's shapes (adding: T=50, I=2; sequential MNIST: T=784, I=1; H=110) and a big H.
# ------------------------------------------------------------------------------------------------

GPU_SHAPES = [(256, 784, 1, 110), (256, 50, 2, 110), (64, 1000, 64, 512)]
PAPER_GPU_SHAPES = GPU_SHAPES[:2]  # reset_after=False at the paper's shapes


def gpu_problem(cell, B, T, I, H, seed=0, masked=True):
    """nn.LSTM / nn.GRU-like init; the gate is kept well away from ties (Δũ ≈ 0.3 ± 0.03) so that ieee and
    tf32 runs take the same skip decisions as the fp32 reference."""
    gen = torch.Generator().manual_seed(seed)
    k = 1 / math.sqrt(H)

    def uni(*shape, scale=k):
        return ((torch.rand(*shape, generator=gen) * 2 - 1) * scale).cuda()

    G = cell.gates
    p = dict(x=torch.randn(T, B, I, generator=gen).cuda())
    for s in cell.states:
        p[s] = uni(1, B, H, scale=0.5)
    p.update(update_prob0=torch.ones(B, device="cuda"), cum_prob0=torch.zeros(B, device="cuda"),
             w_ih=uni(G * H, I), w_hh=uni(G * H, H), b_ih=uni(G * H), b_hh=uni(G * H),
             gate_weight=uni(1, H, scale=0.05 / math.sqrt(H)),
             gate_bias=torch.full((1,), math.log(0.3 / 0.7), device="cuda"))
    mask = None
    if masked:
        lengths = torch.randint(T // 2, T + 1, (B,), generator=gen)
        lengths[0] = T
        mask = (torch.arange(T)[:, None] < lengths[None, :]).float().cuda()
    return p, mask


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["ieee", "tf32"])
@pytest.mark.parametrize("kind,shape,reset_after",
                         [(k, s, True) for k in CELLS for s in GPU_SHAPES]
                         + [("gru", s, False) for s in PAPER_GPU_SHAPES],
                         ids=lambda v: "B{}-T{}-I{}-H{}".format(*v) if isinstance(v, tuple)
                         else v if isinstance(v, str) else ("nn" if v else "paper"))
def test_gpu_paper_shapes(kind, shape, precision, reset_after):
    torch.backends.cuda.matmul.allow_tf32 = False
    cell = CELLS[kind]
    p, mask = gpu_problem(cell, *shape)
    leaves_r = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    leaves_f = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    ck = _cell_kw(cell, reset_after)
    ref = run(cell, cell.naive, leaves_r, mask, **ck)
    out = run(cell, cell.fast, leaves_f, mask, precision=precision, **ck)
    torch.cuda.synchronize()
    flips = (out.updates != ref.updates).sum().item()
    assert flips == 0, f"{flips} gate decisions differ"
    tol = 1e-4 if precision == "ieee" else 3e-2
    for name, a, b in zip(cell.out_names, out.tensors(), ref.tensors()):
        assert torch.isfinite(a).all(), name
        assert _rel(a, b) < tol, (name, _rel(a, b))
    g_outs = [torch.randn_like(r) for r in ref.tensors()]
    names = cell.names
    g_ref = torch.autograd.grad(ref.tensors(), [leaves_r[k] for k in names], g_outs)
    g_fast = torch.autograd.grad(out.tensors(), [leaves_f[k] for k in names], g_outs)
    gtol = 1e-3 if precision == "ieee" else 5e-2
    for name, a, b in zip(names, g_fast, g_ref):
        assert torch.isfinite(a).all(), name
        assert _rel(a, b) < gtol, (name, _rel(a, b))


# ------------------------------------------------------------------------------------------------
# cooperative path (skiprnn/ops/coop.py): in the interpreter one column block (no spinning);
# the old kernels stay tested with SKIPRNN_COOP=0. Multi-column runs: tests/ops/test_triton_coop.py.
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("coop_on", ["0", "1"])
@pytest.mark.parametrize("case", [(6, 19, 2, 20, True, False), (5, 3, 1, 7, False, True)], ids=_id)
def test_old_and_coop_paths(monkeypatch, cell, coop_on, case):
    from skiprnn.ops import coop
    monkeypatch.setenv("SKIPRNN_COOP", coop_on)
    T, B, I, H, masked, fresh = case
    p, mask = make_problem(cell, T, B, I, H, seed=17, masked=masked, fresh=fresh)
    coop.reset()
    check_against_reference(cell, p, mask, precision="ieee")
    chosen = coop.choices()
    if coop_on == "0":
        assert chosen == {}
    elif _interpreted():
        assert len(chosen) == 2 and all(v != "old" for v in chosen.values()), chosen


@pytest.mark.parametrize("coop_on", ["0", "1"])
@pytest.mark.parametrize("which", ["b_ih", "b_hh"])
def test_one_bias_only(monkeypatch, cell, coop_on, which):
    """Only one of the two biases: the cooperative kernels add the biases of their units
    themselves (HAS_BIH / HAS_BHH), the old kernels get them folded into the projection; the
    gradient of the present bias comes from the backward's per-row-block sums."""
    from skiprnn.ops import coop
    monkeypatch.setenv("SKIPRNN_COOP", coop_on)
    coop.reset()
    p, mask = make_problem(cell, 6, 19, 2, 20, seed=29, masked=True, fresh=False)
    p[which] = None
    check_against_reference(cell, p, mask, precision="ieee")
    coop.reset()


@pytest.mark.parametrize("I, env, fused", [(1, None, True), (4, None, True), (5, None, False),
                                           (3, "0", False)])
def test_input_projection_in_kernel_or_as_a_gemm(monkeypatch, cell, I, env, fused):
    """Inputs of up to 4 features are projected inside the cooperative forward (no GEMM launch);
    wider ones, or SKIPRNN_COOP_FUSE_INPUT=0, read a precomputed x W_ih^T. Same results.
    (The GEMMs are counted at ``torch.mm``: inside the custom op a dispatch mode sees one call.)"""
    from skiprnn.ops import coop

    if env is not None:
        monkeypatch.setenv("SKIPRNN_COOP_FUSE_INPUT", env)
    coop.reset()
    assert coop.fuse_input(I) is fused
    p, mask = make_problem(cell, 4, 17, I, 20, seed=31 + I, masked=True, fresh=False)
    check_against_reference(cell, p, mask, precision="ieee")
    mm, gemms = torch.mm, []
    monkeypatch.setattr(torch, "mm", lambda *a, **k: gemms.append(1) or mm(*a, **k))
    with torch.no_grad():
        run(cell, cell.fast, p, mask, precision="ieee")
    monkeypatch.setattr(torch, "mm", mm)
    if _interpreted():
        assert coop.choices() and coop.ROWBLOCK not in coop.choices().values()
        assert bool(gemms) is not fused, gemms
    coop.reset()


@pytest.mark.parametrize("cfg", ["16,32,4", "16,32,4,2", "16,32,4+x"])
def test_coop_forced_config_interpreter(monkeypatch, cell, cfg):
    """A forced config with one column block (BLOCK_N >= H) and two row blocks; with and without
    the K split (batched dots over K chunks)."""
    if not _interpreted():
        pytest.skip("interpreter only")
    from skiprnn.ops import coop
    monkeypatch.setenv("SKIPRNN_COOP_CONFIG", cfg)
    coop.reset()
    p, mask = make_problem(cell, 5, 21, 2, 20, seed=23, masked=True, fresh=False, bias=False)
    check_against_reference(cell, p, mask, precision="ieee")
    chosen = coop.choices()
    assert {v.removesuffix("+x") for v in chosen.values()} == {cfg.removesuffix("+x")}
    assert all(v.endswith("+x") == (cfg.endswith("+x") and "-bwd" not in k)
               for k, v in chosen.items()), chosen  # a forced config is the only candidate
    coop.reset()


@pytest.mark.parametrize("coop_on", ["0", "1"])
def test_infer_matches_reference(monkeypatch, cell, coop_on):
    monkeypatch.setenv("SKIPRNN_COOP", coop_on)
    p, mask = make_problem(cell, 7, 5, 2, 9, seed=31, masked=True, fresh=False)
    with torch.no_grad():
        ref = run(cell, cell.naive, p, mask)
    out = run(cell, cell.infer, p, mask, precision="ieee")
    for name, a, b in zip(cell.out_names, out.tensors(), ref.tensors()):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, **TOL, msg=lambda m: f"{name}: {m}")


def test_infer_block_skip_matches_reference(monkeypatch, cell):
    """The forward-only kernel skips the matrix product and the barrier of a row block on steps
    where none of its rows updates: two row blocks that update on alternate steps (and end at
    different times) still give the reference's outputs, final state and gates."""
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from skiprnn_testutil import blocks_skip_together, synchronise_gates

    from skiprnn.ops import coop
    monkeypatch.setenv("SKIPRNN_COOP_CONFIG", "16,32,4")  # 2 row blocks, 1 column block
    coop.reset()
    T = 9
    p, _ = make_problem(cell, T, 21, 2, 20, seed=41, masked=False, fresh=True)
    mask = synchronise_gates(p, T).to(p["x"].device)
    with torch.no_grad():
        ref = run(cell, cell.naive, p, mask)
    assert blocks_skip_together(ref.updates.cpu())
    out = run(cell, cell.infer, p, mask, precision="ieee")
    torch.testing.assert_close(out.updates, ref.updates, atol=0, rtol=0, msg="updates differ")
    for name, a, b in zip(cell.out_names, out.tensors(), ref.tensors()):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m: f"{name}: {m}")
    assert {v.removesuffix("+x") for v in coop.choices().values()} == {"16,32,4"}
    coop.reset()


@pytest.mark.parametrize("used", [("output",), ("h_n", "updates")], ids="+".join)
def test_gradients_when_only_some_outputs_are_used(cell, used):
    """Outputs without a gradient reach the backward as None (no zero tensors materialised):
    only the output sequence, or only the final h and the binary updates (a budget loss)."""
    p, mask = make_problem(cell, 6, 5, 2, 9, seed=43, masked=True, fresh=False)
    names = [k for k in cell.names if p[k] is not None]
    idx = [cell.out_names.index(n) for n in used]
    grads = {}
    for fn in (cell.naive, cell.fast):
        q = {k: (None if v is None else v.detach().clone().requires_grad_(True))
             for k, v in p.items()}
        outs = run(cell, fn, q, mask)
        loss = sum((outs.tensors()[i] * (i + 1.5)).sin().sum() for i in idx)
        grads[fn] = torch.autograd.grad(loss, [q[k] for k in names])
    for name, a, b in zip(names, grads[cell.fast], grads[cell.naive]):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("reset_after", [True, False], ids=["nn", "paper"])
def test_opcheck_forward_and_backward_ops(cell, reset_after):
    """torch.library.opcheck of skiprnn::triton_rnn_forward / triton_rnn_backward at a tiny
    shape: schema (no hidden mutation or aliasing), fake kernels, autograd registration and AOT
    dispatch with dynamic shapes (forward and backward traced, results equal eager)."""
    if cell.kind == "lstm" and not reset_after:
        pytest.skip("reset_after is the GRU's option")
    p, mask = make_problem(cell, 3, 2, 2, 4, seed=5, masked=True, fresh=False)
    p = {k: None if v is None else v.requires_grad_() for k, v in p.items()}
    c0 = p["c0"][0] if "c0" in cell.states else None
    args = (cell.kind, p["x"], p["h0"][0], c0, p["update_prob0"], p["cum_prob0"], p["w_ih"],
            p["w_hh"], p["b_ih"], p["b_hh"], p["gate_weight"], p["gate_bias"], mask, 0.5, "ieee",
            reset_after)
    ops = torch.ops.skiprnn
    torch.library.opcheck(ops.triton_rnn_forward.default, args)
    out = ops.triton_rnn_forward(*args)
    g = [torch.randn_like(t).detach() for t in out[:7]]
    if c0 is None:
        g[2] = None
    need = [True, True, c0 is not None] + [True] * 8
    bwd = (cell.kind, *(a.detach() for a in args[1:2]), p["w_ih"].detach(), p["w_hh"].detach(),
           p["gate_weight"].detach(), mask, *out[7:], *g, "ieee", reset_after, need)
    torch.library.opcheck(ops.triton_rnn_backward.default, bwd,
                          test_utils=("test_schema", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))


def test_fullgraph_compile_holds_the_triton_op(cell):
    """torch.compile(fullgraph=True) of a layer on the Triton backend: the op is one node of the
    graph (no graph break); forward and gradients equal eager's."""
    import copy

    import skiprnn
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = getattr(skiprnn, cell.layer)(2, 4, backend="triton").to(DEVICE, DTYPE)
    with torch.no_grad():
        layer.update_gate.bias.fill_(-0.3)
    twin = copy.deepcopy(layer)

    def loss(rnn, x):
        res = rnn(x)
        return res.output.pow(2).sum() + res.updates.sum()

    x = torch.randn(5, 3, 2, dtype=DTYPE, device=DEVICE)
    got = torch.compile(lambda x: loss(twin, x), fullgraph=True)(x)
    want = loss(layer, x)
    got.backward()
    want.backward()
    assert twin.last_backend == "triton"
    torch.testing.assert_close(got, want, **TOL)
    for (name, a), b in zip(layer.named_parameters(), twin.parameters()):
        torch.testing.assert_close(b.grad, a.grad, **TOL, msg=name)
