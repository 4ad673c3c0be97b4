"""Shared helpers for the tests."""

import gzip
import math
import struct

import torch


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def set_constant_gate(layer, delta: float) -> None:
    """Make Δũ = ``delta`` at every update (update_gate weight 0, bias logit(delta))."""
    with torch.no_grad():
        layer.update_gate.weight.zero_()
        layer.update_gate.bias.fill_(logit(delta))


def open_gate(layer) -> None:
    """Force every step to update (Δũ ≈ 1)."""
    with torch.no_grad():
        layer.update_gate.weight.zero_()
        layer.update_gate.bias.fill_(30.0)


def synchronise_gates(p: dict, T: int, block: int = 16):
    """Turn kernel-test parameters ``p`` (functional layout: ``gate_weight`` (1, H), ``gate_bias``,
    ``update_prob0``, ``cum_prob0`` of B rows) into a case where whole blocks of ``block`` rows skip
    together: Δũ = 0.4 everywhere (n_skip = 1); the first block starts fresh (updates on even
    steps), the other rows half-way (odd steps) and end three steps early. Returns the (T, B)
    mask. Used by the forward-only kernels' block-skip tests (a block whose rows all skip a step
    does no work on it)."""
    B = p["update_prob0"].shape[0]
    like = p["update_prob0"]
    with torch.no_grad():
        p["gate_weight"] = torch.zeros_like(p["gate_weight"])
        p["gate_bias"] = torch.full_like(p["gate_bias"], logit(0.4))
        p["update_prob0"] = torch.full_like(like, 0.4)
        p["update_prob0"][:block] = 1.0
        p["cum_prob0"] = torch.zeros_like(like)
    lengths = torch.full((B,), T)
    lengths[block:] = max(1, T - 3)
    lengths[1] = 2  # a short row inside the first block
    return (torch.arange(T)[:, None] < lengths[None, :]).to(like)


def blocks_skip_together(updates, block: int = 16) -> bool:
    """True when some step has a whole block of rows skipping while another row updates (the
    case the block skip exists for)."""
    u = updates.reshape(updates.shape[0], -1)
    B = u.shape[1]
    for t in range(u.shape[0]):
        for b0 in range(0, B, block):
            if u[t, b0:b0 + block].sum() == 0 and u[t].sum() > 0:
                return True
    return False


# ---------------------------------------------------------------- MNIST idx fixtures
N_TRAIN, N_TEST = 20, 6  # images in the tiny MNIST fixture
NAMES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


def idx_bytes(t: torch.Tensor) -> bytes:
    head = struct.pack(">BBBB", 0, 0, 0x08, t.dim()) + b"".join(struct.pack(">I", s) for s in t.shape)
    return head + bytes(t.flatten().tolist())


def make_arrays(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "train_images": torch.randint(0, 256, (N_TRAIN, 28, 28), generator=g, dtype=torch.uint8),
        "train_labels": torch.arange(N_TRAIN, dtype=torch.uint8) % 10,
        "test_images": torch.randint(0, 256, (N_TEST, 28, 28), generator=g, dtype=torch.uint8),
        "test_labels": (torch.arange(N_TEST, dtype=torch.uint8) * 3) % 10,
    }


def write_fixture(d, gz: bool, arrays=None):
    arrays = arrays or make_arrays()
    d.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, base in NAMES.items():
        data = idx_bytes(arrays[key])
        p = d / (base + (".gz" if gz else ""))
        p.write_bytes(gzip.compress(data) if gz else data)
        paths[key] = p
    return arrays, paths
