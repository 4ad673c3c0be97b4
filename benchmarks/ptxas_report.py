"""Compile the cooperative kernels for an H100 (sm_90) without a GPU, and report ptxas registers
and spills per variant (precision, mask, training/inference loop, biases, tile configuration,
fp32/fp64). A kernel change that fails to compile for the GPU, or makes the default tiles spill,
shows here before any device time is spent; the interpreter tests cannot see either.

Needs a Triton wheel whose bundled ptxas accepts the PTX it emits (Triton 3.6 does; the 3.9 wheel
here emits PTX 9.4 for a ptxas 8.8, so only the compile step is checked and regs read "None"):

    PYTHONPATH=src TRITON_CACHE_DIR=/tmp/tc python benchmarks/ptxas_report.py

Numbers from the third session are in ``benchmarks/GPU_NOTES.md``.
"""
import sys, os, re, subprocess, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from skiprnn.ops import lstm_coop as L, gru_coop as G
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/ptxas")
fns = dict(lstm_fwd=L._lstm_coop_fwd_kernel, lstm_bwd=L._lstm_coop_bwd_kernel,
           gru_fwd=G._gru_coop_fwd_kernel, gru_bwd=G._gru_coop_bwd_kernel)
bad = 0
for w, fn in fns.items():
    for prec, mask, save, bias, (bb, bn, nw, kc, hp), fp, xi in [
            ("tf32", True, True, (True, True), (16, 16, 4, 4, 128), "fp32", 1),
            ("tf32", True, True, (True, True), (16, 16, 4, 4, 128), "fp32", 2),
            ("tf32", True, True, (True, True), (16, 16, 4, 4, 128), "fp32", 0),
            ("tf32", False, False, (True, False), (16, 16, 4, 4, 128), "fp32", 2),
            ("ieee", True, True, (False, True), (16, 16, 4, 1, 128), "fp32", 2),
            ("ieee", False, False, (False, False), (16, 32, 8, 1, 128), "fp32", 0),
            ("tf32", True, False, (True, True), (16, 16, 8, 8, 512), "fp32", 0),
            ("tf32", True, True, (True, True), (16, 16, 8, 8, 512), "fp32", 2),
            ("ieee", True, True, (True, True), (16, 16, 4, 1, 16), "fp64", 3)]:
        consts = dict(HAS_MASK=mask, BLOCK_B=bb, BLOCK_N=bn, HP=hp, KC=kc, NCP=8 if hp <= 128 else 32,
                      PRECISION=prec, SPIN=1 << 20)
        if "fwd" in w:
            consts.update(SAVE=save, HAS_BIH=bias[0], HAS_BHH=bias[1], XI=xi)
        elif not save or xi:
            continue  # backward has no SAVE/infer variant
        s = {}
        for a in fn.arg_names:
            if a in consts: s[a] = "constexpr"
            elif a in ("T", "B", "H", "I", "NCOL"): s[a] = "i32"
            elif a == "threshold": s[a] = "fp32"
            elif a in ("CNT", "FLAG"): s[a] = "*i32"
            else: s[a] = "*" + fp
        try:
            k = triton.compile(ASTSource(fn, s, consts), target=GPUTarget("cuda", 90, 32),
                               options=dict(num_warps=nw, num_stages=1))
            with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
                f.write(k.asm["ptx"])
            r = subprocess.run([PTXAS, "-v", "--gpu-name=sm_90a", f.name, "-o", "/dev/null"], capture_output=True, text=True)
            if r.returncode != 0:
                print("   ptxas:", r.stderr.strip().splitlines()[0] if r.stderr.strip() else r.returncode)
            m = re.search(r"Used (\d+) registers", r.stderr)
            sp = re.search(r"(\d+) bytes spill stores", r.stderr)
            print("OK  ", w, prec, "mask" if mask else "-", "save" if save else "infer", bias, (bb, bn, nw, kc, hp), fp,
                  f"XI={xi}" if "fwd" in w else "",
                  "regs", m and m.group(1), "spill", sp and sp.group(1), flush=True)
        except Exception as e:
            bad += 1
            msg = str(e); i = msg.find("error")
            print("FAIL", w, prec, mask, save, bias, (bb, bn, nw, kc, hp), fp, msg[i:i+400] if i >= 0 else msg[-400:], flush=True)
sys.exit(1 if bad else 0)
