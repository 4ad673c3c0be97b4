"""Compile the recurrence kernels for an H100 (sm_90a) without a GPU and count, per kernel variant,
what the machine code does: registers, stack bytes (spills), and SASS instructions by kind (mma,
global / shared loads and stores, atomics, barriers, spill loads / stores, total). A kernel change
that fails to compile for the GPU, spills, or adds work per step shows here before any device time
is spent; the interpreter tests cannot see either.

Variants: the cooperative kernels (``ops/coop.py``) by precision, mask, training/inference loop,
biases, tile configuration, fp32/fp64 and in-kernel input projection (XI); the
one-program-per-row-block kernels (``ops/rowblock.py``) by precision, mask, dtype and, for the
GRU, the candidate (``reset_after``).

Triton compiles sm_90 with its bundled ``ptxas-blackwell`` (the other bundled ``ptxas`` is too old
for the PTX 9.4 that Triton 3.9 emits); the counts are read from the cubin Triton returns, with
the bundled ``cuobjdump`` (``-sass`` and ``-res-usage``). The counts are static (instructions in
the code, not executed): loop bodies count once.

    PYTHONPATH=src TRITON_CACHE_DIR=$(mktemp -d) python benchmarks/ptxas_report.py [--only WORD]
"""
import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

BIN = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin")
KINDS = ("mma", "ldg", "lds", "stg", "sts", "atom", "bar", "ldl", "stl", "total")


def _kind(op: str) -> str | None:
    """The column an SASS opcode counts in (None: only in ``total``)."""
    base = op.split(".")[0]
    if base in ("HMMA", "HGMMA", "DMMA", "IMMA", "WGMMA"):
        return "mma"
    return {"LDG": "ldg", "LDGSTS": "ldg", "LDS": "lds", "LDSM": "lds", "STG": "stg",
            "STS": "sts", "ATOM": "atom", "ATOMG": "atom", "RED": "atom", "REDG": "atom",
            "BAR": "bar", "LDL": "ldl", "STL": "stl"}.get(base)


def sass_counts(cubin: bytes) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        sass = subprocess.run([os.path.join(BIN, "cuobjdump"), "-sass", f.name],
                              capture_output=True, text=True, check=True).stdout
        res = subprocess.run([os.path.join(BIN, "cuobjdump"), "-res-usage", f.name],
                             capture_output=True, text=True, check=True).stdout
    finally:
        os.remove(f.name)
    n = collections.Counter()
    for line in sass.splitlines():
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if m and not m.group(1).startswith("NOP"):
            n["total"] += 1
            k = _kind(m.group(1))
            if k:
                n[k] += 1
    r = re.search(r"REG:(\d+)", res)
    st = re.search(r"STACK:(\d+)", res)
    return dict(regs=int(r.group(1)) if r else -1, stack=int(st.group(1)) if st else -1,
                **{k: n[k] for k in KINDS})


def kernels():
    """``(row name, jit function, extra constexprs)``: one row per (cell, direction)."""
    from skiprnn.ops import coop_kernels as ck, rowblock as rb
    for cell in ("lstm", "gru"):
        yield f"{cell}_fwd", ck.coop_fwd_kernel, dict(CELL=cell)
        yield f"{cell}_bwd", ck.coop_bwd_kernel, dict(CELL=cell)
    for cell in ("lstm", "gru"):
        yield f"{cell}_rb_fwd", rb.rowblock_fwd_kernel, dict(CELL=cell)
        yield f"{cell}_rb_bwd", rb.rowblock_bwd_kernel, dict(CELL=cell)


COOP = [  # precision, mask, save, (b_ih, b_hh), (BLOCK_B, BLOCK_N, warps, KC, HP), dtype, XI
    ("tf32", True, True, (True, True), (16, 16, 4, 4, 128), "fp32", 1),
    ("tf32", True, True, (True, True), (16, 16, 4, 4, 128), "fp32", 2),
    ("tf32", True, True, (True, True), (16, 16, 4, 4, 128), "fp32", 0),
    ("tf32", False, False, (True, False), (16, 16, 4, 4, 128), "fp32", 2),
    ("ieee", True, True, (False, True), (16, 16, 4, 1, 128), "fp32", 2),
    ("ieee", False, False, (False, False), (16, 32, 8, 1, 128), "fp32", 0),
    ("tf32", True, False, (True, True), (16, 16, 8, 8, 512), "fp32", 0),
    ("tf32", True, True, (True, True), (16, 16, 8, 8, 512), "fp32", 2),
    ("ieee", True, True, (True, True), (16, 16, 4, 1, 16), "fp64", 3)]
ROWBLOCK = [  # precision, mask, dtype, reset_after (GRU only); tiles of tile_config(H=110)
    ("tf32", True, "fp32", True), ("ieee", False, "fp32", True), ("ieee", True, "fp64", True),
    ("tf32", True, "fp32", False), ("ieee", True, "fp64", False)]


def variants(name, extra):
    """``(label, constexprs, dtype, num_warps)`` of the rows compiled for kernel ``name``."""
    if "_rb_" in name:
        for prec, mask, fp, ra in ROWBLOCK:
            if name.startswith("lstm") and not ra:
                continue
            c = dict(extra, HAS_MASK=mask, BLOCK_B=16, BLOCK_N=64, BLOCK_K=32, PRECISION=prec,
                     RESET_AFTER=ra, N_HGATES=(3 if ra else 2) if name.startswith("gru") else 4)
            yield f"{prec} {'mask' if mask else '-'} {fp}" + ("" if ra else " paper"), c, fp, 4
        return
    for prec, mask, save, bias, (bb, bn, nw, kc, hp), fp, xi in COOP:
        c = dict(extra, HAS_MASK=mask, BLOCK_B=bb, BLOCK_N=bn, HP=hp, KC=kc,
                 NCP=8 if hp <= 128 else 32, PRECISION=prec, SPIN=1 << 20)
        if name.endswith("fwd"):
            c.update(SAVE=save, HAS_BIH=bias[0], HAS_BHH=bias[1], XI=xi)
        elif not save or xi:
            continue  # the backward has no SAVE / XI variant
        b = "".join("b" if v else "-" for v in bias)
        yield (f"{prec} {'mask' if mask else '-'} {'save' if save else 'infer'} {b} "
               f"{bb},{bn},{nw},{kc},{hp} {fp}" + (f" XI={xi}" if name.endswith("fwd") else ""),
               c, fp, nw)


def compile_one(fn, consts, fp, nw):
    consts = {k: v for k, v in consts.items() if k in fn.arg_names}  # a kernel's own switches
    sig = {}
    for a in fn.arg_names:
        if a in consts:
            sig[a] = "constexpr"
        elif a in ("T", "B", "H", "I", "NCOL"):
            sig[a] = "i32"
        elif a == "threshold":
            sig[a] = "fp32"
        elif a in ("CNT", "FLAG"):
            sig[a] = "*i32"
        else:
            sig[a] = "*" + fp
    k = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32),
                       options=dict(num_warps=nw, num_stages=1))
    return sass_counts(k.asm["cubin"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="compile only the rows whose name contains this")
    args = ap.parse_args()
    bad = 0
    print("| kernel | variant | " + " | ".join(("regs", "stack") + KINDS) + " |")
    print("|" + "---|" * (4 + len(KINDS)))
    for name, fn, extra in kernels():
        if args.only not in name:
            continue
        for label, consts, fp, nw in variants(name, extra):
            try:
                c = compile_one(fn, consts, fp, nw)
                print(f"| {name} | {label} | " + " | ".join(str(c[k]) for k in
                                                          ("regs", "stack") + KINDS) + " |",
                      flush=True)
            except Exception as e:  # report every variant, fail at the end
                bad += 1
                msg = str(e)
                i = msg.find("error")
                print(f"| {name} | {label} | FAIL {msg[i:i + 300] if i >= 0 else msg[-300:]!r}",
                      flush=True)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
