"""Cooperative ("hidden units split across programs") Triton path: shared device helpers, config
candidates and the run-time selection of the fastest kernel per shape.

The cooperative kernels (``coop_kernels.py``, one pair for both cells) run on a 2-D grid: program
``(pr, pc)`` owns ``BLOCK_B`` batch rows and ``BLOCK_N`` hidden units (all the gates of those
units). Its slice of ``W_hh`` (``HP x gates*BLOCK_N``, ``HP = next_pow2(H)``) is loaded once, before
the time loop, and stays on chip for the whole sequence; per step only ``h`` (forward) or the gate
gradients (backward) travel through L2. The ``ncol = cdiv(H, BLOCK_N)`` programs of one row block
exchange data every step and meet at a spin barrier (``grid_sync``, an atomic counter per row
block, release/acquire at GPU scope). A spin barrier needs every program resident at once, so the
cooperative path is only used when the whole grid fits in one wave (``grid <= #SMs``) and never with
several column blocks in the interpreter (its programs run one after the other). A spin limit turns
a would-be hang into a raised flag: the kernel finishes (with garbage), the host sees the flag and
recomputes with the row-block kernels (one program per block of rows).

Environment knobs (read at call time):

* ``SKIPRNN_COOP=0`` disables the cooperative path (the one-program-per-row-block kernels only);
  ``SKIPRNN_COOP=force`` skips the timing and uses the first valid cooperative candidate.
* ``SKIPRNN_COOP_CONFIG=BLOCK_B,BLOCK_N,num_warps[,KSPLIT][+x]`` forces one cooperative
  configuration (``+x``: the forward projects inputs of I <= 4 itself; ``rowblock``, or its
  earlier name ``old``, forces the row-block kernels).
* ``SKIPRNN_COOP_MAXCAND=n``: time only the first n candidates (the benchmark uses 2).
* ``SKIPRNN_COOP_FUSE_INPUT=0``: the forward reads a precomputed input projection even for
  small inputs (default: it projects ``I <= 4`` inputs itself, see ``fuse_input``).
* ``SKIPRNN_COOP_CHECK=1`` reads the deadlock flag after every launch (default: during the
  selection and the first two launches per shape only, to avoid a host sync per call).

``selection_log()`` returns the choices made so far (the benchmark prints it).
"""

from __future__ import annotations

import functools
import math

import torch

from .._env import env as _env
from .triton_utils import HAS_TRITON, interpreting, next_pow2

COOP_ENV = "SKIPRNN_COOP"
CONFIG_ENV = "SKIPRNN_COOP_CONFIG"
CHECK_ENV = "SKIPRNN_COOP_CHECK"
MAXCAND_ENV = "SKIPRNN_COOP_MAXCAND"
SPIN_LIMIT = 1 << 20  # atomic polls (~0.5-1 us each) before a barrier is declared dead

#: the choice of the row-block kernels (one program per block of rows), beside cooperative configs
ROWBLOCK = "rowblock"
_choice: dict = {}     # key -> cfg dict or ROWBLOCK
_uses: dict = {}       # key -> launches so far
_log: list = []        # (key, choice, {candidate: ms or error})

if HAS_TRITON:
    import triton
    import triton.language as tl

    from .triton_utils import sigmoid as _sigmoid

    @triton.jit
    def grid_sync(CNT, target, bad, SPIN: tl.constexpr):
        """Barrier among the programs that share the counter ``CNT``: every program adds 1, then
        waits until the counter reaches ``target`` (= programs x barriers so far). Returns the
        updated dead-barrier flag (after one timeout no barrier waits any more)."""
        tl.debug_barrier()  # this program's stores are issued before the release below
        tl.atomic_add(CNT, 1, sem="release")
        limit = tl.where(bad != 0, 0, SPIN)
        cnt = tl.atomic_add(CNT, 0, sem="acquire")
        it = 0
        while (cnt < target) & (it < limit):
            cnt = tl.atomic_add(CNT, 0, sem="acquire")
            it += 1
        bad = tl.where(cnt < target, 1, bad)
        tl.debug_barrier()
        return bad

    @triton.jit
    def decide(up, cum, m, threshold):
        """ũ_t = cum + min(Δũ, 1 - cum) per row, the binary update (rows with m = 0 never update)
        and u as a float (every program of a cooperative row block computes the same values).
        Used by every forward kernel."""
        ut = cum + tl.minimum(up, 1.0 - cum)
        upd = (ut > threshold) & (m != 0)
        zero = up * 0.0
        return ut, upd, tl.where(upd, zero + 1.0, zero)

    @triton.jit
    def save_step(STATS, UPD, PROB, r_t, smask, u, ut, up, cum, m, T, B):
        """A forward step's per-row outputs: the updates u and update probabilities ũ·m, and for
        the backward u, ũ, up_{t-1}, cum_{t-1} in STATS (5,T,B) (Δũ, row 2, comes later)."""
        srow = STATS + r_t
        tl.store(srow, u, mask=smask)
        tl.store(srow + T * B, ut, mask=smask)
        tl.store(srow + 3 * T * B, up, mask=smask)
        tl.store(srow + 4 * T * B, cum, mask=smask)
        tl.store(UPD + r_t, u, mask=smask)
        tl.store(PROB + r_t, ut * m, mask=smask)

    @triton.jit
    def store4(ptr, off, m2, H, v0, v1, v2, v3):
        """Four (rows, units) blocks to ``ptr + off + k·H``, k = 0..3 (a step's gate blocks in G
        or their gradients in DG, (T,B,4H), for both cells)."""
        tl.store(ptr + off, v0, mask=m2)
        tl.store(ptr + off + H, v1, mask=m2)
        tl.store(ptr + off + 2 * H, v2, mask=m2)
        tl.store(ptr + off + 3 * H, v3, mask=m2)

    @triton.jit
    def gate_update(up, cum, upd, ut, m, delta):
        """The gate's state after a step: Δũ replaces the carried update probability where the
        row updated; the accumulator restarts at 0 there, holds ũ where it skipped, and stays put
        on masked (padding) steps. Returns ``(up, cum)``."""
        return tl.where(upd, delta, up), tl.where(m != 0, tl.where(upd, 0.0, ut), cum)

    @triton.jit
    def decide_backward(m, u, gu, gup, gcum, gprob, up_p, cum_p):
        """The backward of a step's gate (``decide`` and the accumulator update after it): from
        the gradients of the next step's up / cum (``gup``, ``gcum``), of u (``gu``, straight
        through) and of the update probability ũ·m (``gprob``), those of this step's up / cum
        (``up_p``, ``cum_p`` their values). ũ = cum + min(up, 1 - cum): d/dup = d/dcum =
        a = 1[up <= 1 - cum] (TF's min at a tie). Used by every backward kernel."""
        g_ut = m * (gu + (1.0 - u) * gcum + gprob)
        one_m = 1.0 - cum_p
        a = tl.where(up_p <= one_m, 1.0, 0.0)
        gup = m * (1.0 - u) * gup + (1.0 - m) * gup + a * g_ut
        gcum = (1.0 - m) * gcum + a * g_ut
        return gup, gcum

    @triton.jit
    def step_stats(STATS, MASK, GUPD, GPROB, r_t, rmask, T, B, HAS_MASK: tl.constexpr):
        """A step's per-row inputs of a backward: u, ũ, Δũ, up_{t-1}, cum_{t-1} (saved in STATS
        (5,T,B) by the forward), the mask (ones without one) and the incoming gradients of the
        updates and update probabilities; ``r_t`` the step's (T, B) offsets."""
        srow = STATS + r_t
        u = tl.load(srow, mask=rmask, other=0.0)
        ut = tl.load(srow + T * B, mask=rmask, other=0.0)
        delta = tl.load(srow + 2 * T * B, mask=rmask, other=0.0)
        up_p = tl.load(srow + 3 * T * B, mask=rmask, other=0.0)
        cum_p = tl.load(srow + 4 * T * B, mask=rmask, other=0.0)
        m = tl.load(MASK + r_t, mask=rmask, other=0.0) if HAS_MASK else u * 0.0 + 1.0
        gupd = tl.load(GUPD + r_t, mask=rmask, other=0.0)
        gprob = tl.load(GPROB + r_t, mask=rmask, other=0.0)
        return u, ut, delta, up_p, cum_p, m, gupd, gprob

    @triton.jit
    def delta_from_partials(zslot, zoff, zm, bp):
        """After the barrier: Δũ = σ(Σ of the column blocks' partial w_p-sums + b_p)."""
        z = tl.sum(tl.load(zslot + zoff, mask=zm, other=0.0, cache_modifier=".cg"), axis=0)
        return _sigmoid(z + bp)

    @triton.jit
    def kdot(a, w, acc, KC: tl.constexpr, PRECISION: tl.constexpr):
        """acc + a @ w; with KC > 1, a (KC, M, K/KC) and w (KC, K/KC, N) are K chunks (batched
        dots, one chunk per warp group, summed): keeps the mma A operand off the full K."""
        if KC == 1:
            return tl.dot(a, w, acc, input_precision=PRECISION, out_dtype=acc.dtype)
        else:
            return acc + tl.sum(tl.dot(a, w, input_precision=PRECISION, out_dtype=acc.dtype),
                                axis=0)


@functools.cache
def _sms(idx: int) -> int:
    return torch.cuda.get_device_properties(idx).multi_processor_count


def sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1 << 30
    return _sms(device.index if device.index is not None else torch.cuda.current_device())


def grid_of(cfg: dict, B: int, H: int) -> tuple[int, int]:
    return (-(-B // cfg["BLOCK_B"]), -(-H // cfg["BLOCK_N"]))


def launch_meta(cfg, B, H, device, zeros=None):
    """Constants of a launch and its barrier counters + deadlock flag (``nr + 1`` zeroed int32:
    a view of ``zeros`` when the caller has a zeroed int32 buffer that large, else one launch)."""
    HP = max(16, next_pow2(H))
    nr, nc = grid_of(cfg, B, H)
    if zeros is None or zeros.numel() < nr + 1:
        zeros = torch.zeros((nr + 1,), dtype=torch.int32, device=device)
    return HP, nr, nc, zeros[:nr], zeros[nr:nr + 1]


FUSE_INPUT_ENV = "SKIPRNN_COOP_FUSE_INPUT"
FUSE_INPUT_MAX = 4


def fuse_input(I: int) -> bool:
    """Whether the cooperative forward projects the inputs itself (``I <= 4``: I rank-one updates
    per step in fp32) instead of reading a precomputed ``x W_ih^T``: one GEMM launch and a
    (T, B, gates·H) round trip fewer. (A tf32 ``tl.dot`` with K padded to 16 instead made
    ptxas spill at the default 16,16,4,4 tiles.) ``SKIPRNN_COOP_FUSE_INPUT=0``
    turns it off (A/B timing)."""
    return 0 < I <= FUSE_INPUT_MAX and _env(FUSE_INPUT_ENV, "1") != "0"


def counter_scratch(cands: list[dict], B: int) -> int:
    """How many zeroed int32 a cooperative launch of any of ``cands`` needs for its barrier
    counters and deadlock flag (0 without candidates)."""
    return max((-(-B // c["BLOCK_B"]) for c in cands), default=-1) + 1


def once(value):
    """A callable that returns ``value`` the first time and None afterwards: scratch that is zeroed
    for one launch only (the selection may launch several times)."""
    box = [value]

    def take():
        v, box[0] = box[0], None
        return v
    return take


def _cfg(bb, bn, nw, kc=1):
    return dict(BLOCK_B=bb, BLOCK_N=bn, num_warps=nw, **({"KSPLIT": kc} if kc > 1 else {}))


def _parse(env: str) -> dict:
    """``BLOCK_B,BLOCK_N,num_warps[,KSPLIT][+x]`` (``+x``: the forward projects its inputs)."""
    env = env.strip()
    c = _cfg(*(int(v) for v in env.removesuffix("+x").split(",")))
    return dict(c, FUSE=1) if env.endswith("+x") else c


def cfg_name(c) -> str:
    if c == ROWBLOCK:
        return ROWBLOCK
    return f"{c['BLOCK_B']},{c['BLOCK_N']},{c['num_warps']}" + (
        f",{c['KSPLIT']}" if c.get("KSPLIT", 1) > 1 else "") + ("+x" if c.get("FUSE") else "")


def candidates(H: int, B: int, device: torch.device, *, precision: str = "tf32",
               fusable: bool = False) -> list[dict]:
    """Cooperative configurations worth timing for this shape, best guess first; each one's grid
    fits in one wave. Under the interpreter: one column block only (no spinning). With 'ieee'
    (FMA dots, no mma operand replication) the configurations without a K split come first (the
    K split spills at H=512 there). Cached per shape and environment (called on every launch).

    ``fusable`` (a forward whose inputs are few enough, ``fuse_input``): the best guess also comes
    with ``FUSE=1`` first, the forward projecting its inputs itself; the timing then decides
    between that (one GEMM launch fewer, ~55 more registers per thread) and reading ``x W_ih^T``.
    Under the interpreter only the fused variant is returned."""
    return list(_candidates(H, B, device, precision, _env(CONFIG_ENV), _env(MAXCAND_ENV),
                            interpreting(), fusable))


def _one_wave(cands: list[dict], B: int, H: int, device) -> list[dict]:
    """The configurations whose grid fits in one wave (a spin barrier needs every program
    resident)."""
    nsm = sm_count(device)
    return [c for c in cands if math.prod(grid_of(c, B, H)) <= nsm]


@functools.cache
def _candidates(H: int, B: int, device: torch.device, precision: str, env, maxc, interp: bool,
                fusable: bool) -> tuple[dict, ...]:
    HP = max(16, next_pow2(H))
    forced = _parse(env) if env and env.strip() not in (ROWBLOCK, "old") else None
    if interp:
        cands = [forced if forced is not None and forced["BLOCK_N"] >= H else _cfg(16, HP, 4)]
        if fusable and not env:
            cands = [dict(cands[0], FUSE=1)]
    elif env:  # a forced configuration is the only candidate (ROWBLOCK: none), if it fits
        cands = _one_wave([forced] if forced is not None else [], B, H, device)
    else:
        if HP <= 128:
            # W slice per program: gates x HP x BLOCK_N fp32 in shared memory (LSTM, H=110: 32 KB
            # at BLOCK_N=16); ptxas (sm_90, Triton 3.6, tf32): 16x16x4w 249 regs, 16x32x8w 228
            # regs, 32x32x8w 255 regs + 168 B spill, 64x16x4w 900 B spill
            # (K split in 4 chunks: the tf32 mma A operand is 16x32 per warp instead of 16x128)
            cands = [_cfg(16, 16, 4, 4), _cfg(16, 16, 4), _cfg(16, 32, 8), _cfg(32, 32, 8)]
        elif HP <= 256:
            cands = [_cfg(16, 16, 8, 8), _cfg(16, 16, 8), _cfg(32, 16, 8)]
        else:
            # H=512: 4 x 512 x 16 fp32 = 128 KB per program; without a K split the 16x512 A
            # operand of the tf32 mma is held by every warp (255 regs + spills); with 8 chunks:
            # 16x64 per warp
            cands = [_cfg(16, 16, 8, 8), _cfg(16, 16, 8), _cfg(32, 16, 8, 8), _cfg(32, 16, 8)]
        if precision == "ieee":
            cands = sorted(cands, key=lambda c: c.get("KSPLIT", 1) > 1)
        cands = _one_wave(cands, B, H, device)
        if fusable and cands:
            cands = [dict(cands[0], FUSE=1)] + cands
        if maxc and int(maxc) > 0:
            cands = cands[:int(maxc)]
    if not fusable:  # the backward (or wide inputs): FUSE has no meaning
        cands = [{k: v for k, v in c.items() if k != "FUSE"} for c in cands]
    return tuple(cands)


def _time(fn, reps=2):
    if not torch.cuda.is_available():
        return 0.0
    fn()  # compile + warm
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        res = fn()
    end.record()
    torch.cuda.synchronize()
    if res:
        raise RuntimeError("cooperative barrier timed out (programs not co-resident)")
    return start.elapsed_time(end) / reps


def _select(key, cands: list[dict], launch_coop, launch_rowblock):
    """Times every candidate and the row-block kernels (compile + 2 timed launches each); the
    fastest that ran wins (ROWBLOCK if none did)."""
    timings, best, best_ms = {}, ROWBLOCK, None
    for c in [*cands, ROWBLOCK]:
        try:
            ms = _time((lambda: (launch_rowblock(), 0)[1]) if c == ROWBLOCK
                       else (lambda c=c: int(launch_coop(c)[1])))
        except Exception as e:  # compile failure, out of resources, dead barrier
            timings[cfg_name(c)] = f"{type(e).__name__}: {str(e)[:200]}"
            continue
        timings[cfg_name(c)] = ms
        if best_ms is None or ms < best_ms:
            best, best_ms = c, ms
    _log.append((key, best, timings))
    return best


def run(key, cands: list[dict], launch_coop, launch_rowblock, hint=None):
    """Run the fastest valid path for ``key``.

    ``launch_coop(cfg)`` returns ``(result, flag)`` (flag: int32 device tensor, nonzero when a
    barrier timed out); ``launch_rowblock()`` (the kernels with one program per block of rows)
    returns the result. On the first call for a key with more than one option, every option is
    timed (``_select``) and the winner cached.
    ``hint``: another key whose choice is reused when this key has none yet (e.g. inference
    reuses the training forward's). Keys leave T out (the best configuration does not depend on
    the sequence length).
    """
    if not cands or _env(COOP_ENV, "1").lower() in ("0", "off", "false", "no"):
        return launch_rowblock()
    choice = _choice.get(key)
    if choice is None and _choice.get(hint) in (ROWBLOCK, *cands):
        choice = _choice[key] = _choice[hint]
    if choice is None:
        if _env(COOP_ENV, "").lower() == "force" or interpreting() \
                or not torch.cuda.is_available() or (len(cands) == 1 and _env(CONFIG_ENV)):
            choice = cands[0]
        else:
            choice = _select(key, cands, launch_coop, launch_rowblock)
        _choice[key] = choice
    if choice == ROWBLOCK:
        return launch_rowblock()
    n = _uses.get(key, 0)
    _uses[key] = n + 1
    try:
        res, flag = launch_coop(choice)
    except Exception:
        if n > 0 or interpreting():
            raise
        _choice[key] = ROWBLOCK
        return launch_rowblock()
    if (n < 2 or _env(CHECK_ENV, "0") not in ("", "0")) and int(flag):
        _choice[key] = ROWBLOCK
        _log.append((key, ROWBLOCK, {"reason": "barrier timed out"}))
        return launch_rowblock()
    return res


def selection_log() -> list:
    return list(_log)


def choices() -> dict:
    return {str(k): cfg_name(v) for k, v in _choice.items()}


def reset() -> None:
    _candidates.cache_clear()
    _choice.clear()
    _uses.clear()
    _log.clear()
