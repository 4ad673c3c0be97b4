"""Cooperative Triton kernels (skiprnn/ops/coop_kernels.py) with several column blocks, on a GPU.

The multi-column path spins at a barrier, which only works with every program resident: it cannot
run in the interpreter (programs run one after the other). Each GPU case runs in a subprocess with
a timeout (a hung kernel must not take the GPU session with it), with one configuration forced
(``SKIPRNN_COOP=force``, ``SKIPRNN_COOP_CONFIG``) and the deadlock flag checked after every launch
(``SKIPRNN_COOP_CHECK=1``); the child fails if the cooperative kernel was not the one that ran.
Compared with the naive reference in fp32 ('ieee' products): outputs, final state, every gradient,
and the forward-only ``*_triton_infer``. Run directly: ``SKIPRNN_COOP=force
SKIPRNN_COOP_CONFIG=16,16,4 python tests/ops/test_triton_coop.py CELL B T I H CFG MASKED FRESH``.
"""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

CUDA = torch.cuda.is_available()
HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "..", "..", "src")

# (cell, B, T, I, H, "BLOCK_B,BLOCK_N,num_warps[,KSPLIT]", masked, fresh[, sync])
# sync: whole row blocks skip together (update-gate weight 0, alternate phases, see
# skiprnn_testutil.synchronise_gates): the forward-only kernel then skips a block's matrix
# product and barrier on those steps, and its h ping-pong must follow the block's own updates
CASES = [
    ("lstm", 37, 23, 3, 110, "16,16,4", True, False),    # B % BLOCK_B != 0, 3x7 programs
    ("gru", 37, 23, 3, 110, "16,16,4,4", True, False),   # K split in 4 chunks
    ("lstm", 256, 50, 2, 110, "32,32,8", True, True),    # adding task shape
    ("gru", 256, 50, 2, 110, "16,32,8", False, True),
    ("lstm", 64, 40, 64, 512, "16,16,8,8", True, False),  # 4x32 programs
    ("gru", 64, 40, 64, 512, "32,16,8", False, False),
    ("lstm", 37, 23, 3, 110, "16,16,4,4", True, True, True),
    ("gru", 37, 23, 3, 110, "16,16,4", True, True, True),
    ("lstm", 64, 40, 64, 512, "16,16,8,8", True, True, True),
    # the forward projects its inputs itself (I <= 4, '+x'), several column blocks
    ("lstm", 37, 23, 3, 110, "16,16,4,4+x", True, False),
    ("gru", 256, 50, 2, 110, "16,16,4+x", True, True),
    ("lstm", 37, 23, 3, 110, "16,16,4+x", True, True, True),
]


def _id(c):
    return "{}-B{}-T{}-I{}-H{}-cfg{}".format(*c[:6]).replace(",", "_").replace("+", "p") + \
        ("-mask" if c[6] else "") + ("-fresh" if c[7] else "") + \
        ("-sync" if len(c) > 8 and c[8] else "")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_coop_multi_column_gpu(case):
    nsm = torch.cuda.get_device_properties(0).multi_processor_count
    cell, B, T, I, H, cfg = case[:6]
    bb, bn = (int(v) for v in cfg.split(",")[:2])
    if -(-B // bb) * -(-H // bn) > nsm:
        pytest.skip("grid larger than the GPU")
    env = dict(os.environ, SKIPRNN_COOP="force", SKIPRNN_COOP_CONFIG=cfg,
               SKIPRNN_COOP_CHECK="1",
               PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TRITON_INTERPRET", None)
    try:
        r = subprocess.run([sys.executable, os.path.abspath(__file__), *map(str, case)], env=env,
                           capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("cooperative kernel timed out (hung barrier?)")
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "CHILD OK" in r.stdout, r.stdout[-2000:]


# ------------------------------------------------------------------------------------------------
# child
# ------------------------------------------------------------------------------------------------

def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _child(cell, B, T, I, H, masked, fresh, sync=False, block=16):
    from skiprnn.ops import coop
    from skiprnn.ops.contract import GateOptions
    from skiprnn.ops.naive import skip_rnn_naive as ref_fn
    from skiprnn.ops.triton_rnn import skip_rnn_triton as fast
    from skiprnn.ops.triton_rnn import skip_rnn_triton_infer as infer
    G = 4 if cell == "lstm" else 3
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: interpreter dry run
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    gen = torch.Generator().manual_seed(B * 1000 + H)
    k = 1 / math.sqrt(H)

    def uni(*shape, scale=k):
        return ((torch.rand(*shape, generator=gen) * 2 - 1) * scale).to(dev)

    p = dict(x=torch.randn(T, B, I, generator=gen).to(dev), h0=uni(1, B, H, scale=0.5))
    if cell == "lstm":
        p["c0"] = uni(1, B, H, scale=0.5)
    if fresh:
        p["update_prob0"] = torch.ones(B, device=dev)
        p["cum_prob0"] = torch.zeros(B, device=dev)
    else:
        p["update_prob0"] = (0.05 + 0.9 * torch.rand(B, generator=gen)).to(dev)
        p["cum_prob0"] = (0.3 * torch.rand(B, generator=gen)).to(dev)
    p.update(w_ih=uni(G * H, I), w_hh=uni(G * H, H), b_ih=uni(G * H), b_hh=uni(G * H),
             gate_weight=uni(1, H, scale=0.05 / math.sqrt(H)),
             gate_bias=torch.full((1,), math.log(0.3 / 0.7), device=dev))
    mask = None
    if masked:
        lengths = torch.randint(max(1, T // 2), T + 1, (B,), generator=gen)
        lengths[0] = T
        mask = (torch.arange(T)[:, None] < lengths[None, :]).float().to(dev)
    if sync:
        sys.path.insert(0, os.path.join(HERE, ".."))
        from skiprnn_testutil import blocks_skip_together, synchronise_gates
        mask = synchronise_gates(p, T, block).to(dev)
    names = list(p)
    state = ["h0", "c0"] if cell == "lstm" else ["h0"]

    def call(fn, q, **kw):
        """Backend ``fn`` on ``q``, its result's tensors flat (``RecurrenceResult.tensors``)."""
        return fn(cell, q["x"], tuple(q[s] for s in state), q["update_prob0"], q["cum_prob0"],
                  [(q["w_ih"], q["w_hh"], q["b_ih"], q["b_hh"])], q["gate_weight"],
                  q["gate_bias"], GateOptions(mask=mask, **kw))

    leaves_r = {n: v.clone().requires_grad_(True) for n, v in p.items()}
    leaves_f = {n: v.clone().requires_grad_(True) for n, v in p.items()}
    ref_res = call(ref_fn, leaves_r)
    out_res = call(fast, leaves_f, precision="ieee")
    if sync:
        assert blocks_skip_together(ref_res.updates.detach().cpu(), block)
    if dev == "cuda":
        torch.cuda.synchronize()
    flips = (out_res.updates != ref_res.updates).sum().item()
    assert flips == 0, f"{flips} gate decisions differ"
    ref, out = ref_res.tensors(), out_res.tensors()
    report = {}
    for i, (a, b) in enumerate(zip(out, ref)):
        assert torch.isfinite(a).all(), i
        report[f"out{i}"] = _rel(a, b)
        assert _rel(a, b) < 1e-4, (i, _rel(a, b))
    g_outs = [torch.randn_like(r) for r in ref]
    g_ref = torch.autograd.grad(ref, [leaves_r[n] for n in names], g_outs)
    g_fast = torch.autograd.grad(out, [leaves_f[n] for n in names], g_outs)
    for n, a, b in zip(names, g_fast, g_ref):
        assert torch.isfinite(a).all(), n
        report[f"grad_{n}"] = _rel(a, b)
        assert _rel(a, b) < 1e-3, (n, _rel(a, b))
    with torch.no_grad():
        out_i = call(infer, p, precision="ieee")
    for i, (a, b) in enumerate(zip(out_i.tensors(), ref)):
        report[f"infer{i}"] = _rel(a, b)
        assert _rel(a, b) < 1e-4, ("infer", i, _rel(a, b))
    chosen = coop.choices()
    assert len(chosen) == 3 and all(v != coop.ROWBLOCK for v in chosen.values()), chosen
    # tf32 runs too (the default on CUDA): finite, close
    out_t = call(fast, leaves_f, precision="tf32")
    for i, (a, b) in enumerate(zip(out_t.tensors(), ref)):
        report[f"tf32_out{i}"] = _rel(a, b)
        assert torch.isfinite(a).all(), ("tf32", i)
        assert _rel(a, b) < 3e-2, ("tf32", i, _rel(a, b))  # test_gpu_paper_shapes' tf32 tolerance
    print(json.dumps({"chosen": chosen, "rel": report}))
    print("CHILD OK")


if __name__ == "__main__":
    a = sys.argv[1:]
    _child(a[0], int(a[1]), int(a[2]), int(a[3]), int(a[4]), a[6] == "True", a[7] == "True",
           len(a) > 8 and a[8] == "True", int(a[5].split(",")[0]))
