"""Batch size 1 on the CPU (``skipping.run_single``): blocked input projections (contiguous chunks
for dense reads, strided blocks for sparse ones), GEMVs in alternating row blocks, runs of skipped
steps written in bulk. Everything equals the training-path reference."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from skiprnn.ops import skipping

from inference_testutil import (GATE_PATTERNS, assert_no_ties, assert_same, make_layer,
                                pattern_layer, random_state, run)

T = 60
CHUNK = 7


class RecordingProjection(skipping.LazyInputProjection):
    """Logs every block it makes as ``(start, last, stride)``."""

    made: list = []

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.log = []
        RecordingProjection.made.append(self)

    def get(self, t):
        before = self.block
        j = super().get(t)
        if self.block is not before:
            self.log.append((self.start, self.last, self.stride))
        return j


@pytest.fixture
def small_blocks(monkeypatch):
    """Chunks of CHUNK steps and GEMV blocks of 16 rows, so that tiny layers cross boundaries."""
    monkeypatch.setattr(skipping, "PROJECTION_CHUNK", CHUNK)
    monkeypatch.setattr(skipping, "MV_BLOCK_BYTES", 700)  # H = 12: 48 or 36 rows → 16-row blocks
    monkeypatch.setattr(skipping, "EAGER_PROJECTION_MACS", 0)  # blocks even for tiny layers
    monkeypatch.setattr(skipping, "LazyInputProjection", RecordingProjection)
    RecordingProjection.made = []
    return RecordingProjection.made


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=lambda v: f"L{v}")
@pytest.mark.parametrize("pattern", list(GATE_PATTERNS))
@pytest.mark.parametrize("length", [None, 45], ids=["full", "length45"])
def test_equals_reference(small_blocks, kind, num_layers, pattern, length):
    layer = pattern_layer(kind, num_layers, pattern)
    torch.manual_seed(0)
    x = torch.randn(T, 1, 5)
    kw = {} if length is None else {"lengths": torch.tensor([length])}
    if pattern == "dense-irregular":
        kw["hx"] = random_state(layer, 1)
    ref = run(layer, x, "reference", **kw)
    assert_no_ties(ref.update_probs[ref.update_probs > 0])
    got = run(layer, x, "skipping", **kw)
    assert layer.last_backend == "skipping"
    assert_same(ref, got)
    n = T if length is None else length
    if length is not None:
        assert (got.output[n:] == 0).all() and (got.updates[n:] == 0).all()
    # the regime this pattern is meant to exercise
    (proj,) = small_blocks
    reads = torch.nonzero(got.updates[:, 0]).flatten().tolist()
    assert proj.used == len(reads)
    gaps = set(np.diff(reads).tolist())
    if pattern.endswith("regular") and not pattern.endswith("irregular"):
        assert len(gaps) == 1
    else:
        assert len(gaps) > 1, "the learned gate should give an irregular pattern"
    strides = {s for _, _, s in proj.log}
    if pattern == "dense-regular":
        assert proj.n_contiguous >= 3 and 1 in strides
        # a chunk cut short by the end of the sequence (the length)
        assert any(s == 1 and last == n - 1 and last - start + 1 < CHUNK
                   for start, last, s in proj.log)
    assert all(last < n for _, last, _ in proj.log)
    if pattern == "sparse-regular":
        assert proj.n_contiguous == 0 and strides == {1, 10}  # first read: one step
        assert proj.wasted <= 2 * 10


def test_projection_rows_and_block_kinds():
    torch.manual_seed(0)
    n, I, G = 200, 5, 24
    x, w, b = torch.randn(n, I), torch.randn(G, I), torch.randn(G)
    want = F.linear(x, w, b)
    rng = np.random.default_rng(0)
    patterns = {
        "every step": np.arange(n),
        "every 2nd": np.arange(3, n, 2),
        "every 9th": np.arange(0, n, 9),
        "irregular dense": np.cumsum(rng.integers(1, 5, 80)),
        "irregular sparse": np.cumsum(rng.integers(1, 40, 20)),
    }
    for name, steps in patterns.items():
        steps = steps[steps < n]
        p = skipping.LazyInputProjection(x, w, b, chunk=16, eager_macs=0)
        for t in steps.tolist():
            j = p.get(t)
            torch.testing.assert_close(p.block[j], want[t], atol=1e-5, rtol=0, msg=name)
        assert p.used == len(steps) and p.projected >= p.used
        assert p.projected <= n + p.used, name
        if name in ("every step", "every 2nd"):
            assert p.n_contiguous > 0 and p.wasted < n // 2 + 16, name
        if name == "every 9th":
            assert p.n_contiguous == 0 and p.wasted <= 9 * 2, name


@pytest.mark.parametrize("period", [3, 12])
def test_counted_reads_keep_the_interval_of_one_by_one_counting(period):
    """``note_hits`` (reads counted at once) leaves the projection's bookkeeping as ``get``'s
    one-by-one counting does: the reads, the last read, and the running mean of the intervals —
    exactly on a regular pattern (a period on the dense / irregular block thresholds, 3 and 12,
    must stay on them), to rounding on an irregular one, in one call or several."""
    x, w = torch.randn(2000, 3), torch.randn(8, 3)
    one, many = (skipping.LazyInputProjection(x, w, None, eager_macs=0) for _ in range(2))
    regular = np.arange(period, 1800, period)
    # blocks of 100 reads (the closed form; a sum over 100 intervals of 3.0 rounds off 3.0 in the
    # form 0.75^k I + sum w d) and of 7 (counted one by one), from the first read on
    starts = list(range(0, len(regular) // 2, 100)) + list(range(len(regular) // 2, len(regular), 7))
    assert 100 > skipping.NOTE_LOOP_READS >= 7
    for i, j in zip(starts, starts[1:] + [len(regular)]):
        block = regular[i:j]
        for t in block:
            one._note(int(t))
        many.note_hits(block)
        assert (many.used, many.prev) == (one.used, one.prev) == (j, int(block[-1]))
        assert many.interval == one.interval == period, i
    rng = np.random.default_rng(period)
    steps = np.cumsum(rng.integers(1, 30, 200)) + int(regular[-1])
    for t in steps:
        one._note(int(t))
    many.note_hits(steps[:77])
    many.note_hits(steps[77:90])
    many.note_hits(steps[90:])
    assert (many.used, many.prev) == (one.used, one.prev)
    assert many.interval == pytest.approx(one.interval, rel=1e-12)


def test_small_projection_is_made_at_once():
    """A sequence whose whole projection is cheap (here 200 × 5 × 24 multiply-adds) is one block
    made up front: every read is a hit, however irregular."""
    torch.manual_seed(0)
    x, w, b = torch.randn(200, 5), torch.randn(24, 5), torch.randn(24)
    p = skipping.LazyInputProjection(x, w, b)
    assert p.projected == 200 and p.n_contiguous == 1 and p.n_strided == 0
    block = p.block
    for t in (3, 4, 50, 51, 199):
        j = p.get(t)
        assert p.block is block
        torch.testing.assert_close(p.block[j], F.linear(x[t], w, b), atol=1e-5, rtol=0)
    assert p.used == 5
    assert skipping.LazyInputProjection(x, w, b, eager_macs=200 * 5 * 24 - 1).block is None


@pytest.mark.parametrize("rows,cols", [(48, 12), (36, 12), (1028, 64), (2048, 512)])
def test_alternating_mv(rows, cols):
    torch.manual_seed(0)
    w, v = torch.randn(rows, cols), torch.randn(cols)
    out = torch.empty(rows)
    mv = skipping.AlternatingMV(w, out, block_bytes=max(1, rows * cols * 4 // 5), threads=1)
    assert len(mv.blocks) > 1
    assert all(b.shape[0] % 16 == 0 for b, _ in mv.blocks[:-1])
    first = mv(v).clone()
    second = mv(v).clone()  # the blocks in the other order
    assert torch.equal(first, second)
    torch.testing.assert_close(first, torch.mv(w, v), atol=1e-4, rtol=1e-5)


def test_alternating_mv_is_one_block_with_threads():
    # several threads: one torch.mv, its rows split across the threads by MKL
    w, v = torch.randn(2048, 512), torch.randn(512)
    out = torch.empty(2048)
    mv = skipping.AlternatingMV(w, out, threads=2)
    assert len(mv.blocks) == 1 and mv.blocks[0][0].shape == (2048, 512)
    assert torch.equal(mv(v), torch.mv(w, v))
    assert len(skipping.AlternatingMV(w, out, threads=1).blocks) == 4  # 4 MB in 1 MB blocks


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_gate_that_never_opens_again_single_row(kind):
    # Δũ underflows to 0 after the first update: ũ stays at 0 for the rest of the sequence
    layer = make_layer(kind)
    with torch.no_grad():
        layer.update_gate.weight.zero_()
        layer.update_gate.bias.fill_(-200.0)
    x = torch.randn(25, 1, 5)
    ref, got = run(layer, x, "reference"), run(layer, x, "skipping")
    assert_same(ref, got, exact_probs=True)
    assert got.updates.sum().item() == 1


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_accumulator_climbs_then_sticks(kind):
    # a carried Δũ below an ulp of ũ: ũ climbs by one ulp per step to 0.25, where the ulp
    # doubles, and stays there (ũ + Δũ rounds back to ũ); nothing is ever read
    layer = make_layer(kind)
    x = torch.randn(20, 1, 5)
    hx = random_state(layer, 1)
    ulp = 2.0 ** -26  # of floats in [0.125, 0.25)
    hx = hx._replace(update_prob=torch.tensor([1e-8]),
                     cum_update_prob=torch.tensor([0.25 - 3 * ulp]))
    ref, got = run(layer, x, "reference", hx=hx), run(layer, x, "skipping", hx=hx)
    assert_same(ref, got, exact_probs=True)
    assert got.updates.sum().item() == 0
    probs = got.update_probs[:, 0].tolist()
    assert probs[:3] == [0.25 - 2 * ulp, 0.25 - ulp, 0.25] and set(probs[3:]) == {0.25}
