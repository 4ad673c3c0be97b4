"""Host-side helpers of the Triton paths (no kernels): the zero buffer for missing output
gradients, the barrier-counter scratch carved from it, and the once-only hand-over."""

import os

import pytest
import torch

from skiprnn.ops import coop
from skiprnn.ops.triton_utils import grads_or_zeros


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scratch_is_zeroed_int32_and_disjoint(dtype):
    given = torch.randn(3, 4, dtype=dtype)
    grads, spare = grads_or_zeros((None, given, None), ((2, 5), (3, 4), (7,)), dtype, "cpu",
                                  scratch=17)
    assert spare is not None and spare.dtype == torch.int32 and spare.numel() >= 17
    assert (spare == 0).all()
    assert grads[1] is given or torch.equal(grads[1], given)
    assert grads[0].shape == (2, 5) and grads[2].shape == (7,)
    assert (grads[0] == 0).all() and (grads[2] == 0).all()
    # writing the counters must not touch the zero gradients (disjoint memory), and the
    # gradients' views start 128 bytes apart from the buffer start
    spare.fill_(-1)
    assert (grads[0] == 0).all() and (grads[2] == 0).all()
    base = spare.data_ptr()
    assert (grads[0].data_ptr() - base) % 128 == 0 and grads[0].data_ptr() - base >= 17 * 4


def test_no_scratch_without_missing_gradients():
    g = [torch.ones(2), torch.ones(3)]
    grads, spare = grads_or_zeros(g, ((2,), (3,)), torch.float32, "cpu", scratch=5)
    assert spare is None and all(torch.equal(a, b) for a, b in zip(grads, g))
    grads, spare = grads_or_zeros((None,), ((4,),), torch.float32, "cpu")
    assert spare is None and torch.equal(grads[0], torch.zeros(4))


def test_counter_scratch_and_once():
    cands = [dict(BLOCK_B=16, BLOCK_N=16, num_warps=4), dict(BLOCK_B=32, BLOCK_N=32, num_warps=8)]
    assert coop.counter_scratch(cands, 37) == 3 + 1   # ceil(37/16) row blocks + the flag
    assert coop.counter_scratch([], 37) == 0
    z = torch.zeros(4, dtype=torch.int32)
    take = coop.once(z)
    assert take() is z and take() is None and take() is None


def test_launch_meta_uses_scratch_only_when_large_enough():
    cfg = dict(BLOCK_B=16, BLOCK_N=16, num_warps=4)
    z = torch.zeros(8, dtype=torch.int32)
    HP, nr, nc, cnt, flag = coop.launch_meta(cfg, 37, 20, "cpu", z)
    assert (HP, nr, nc) == (32, 3, 2)
    assert cnt.data_ptr() == z.data_ptr() and flag.data_ptr() == z[3:].data_ptr()
    small = torch.zeros(2, dtype=torch.int32)
    _, _, _, cnt, flag = coop.launch_meta(cfg, 37, 20, "cpu", small)
    assert cnt.data_ptr() != small.data_ptr() and cnt.numel() == 3 and (cnt == 0).all()
    assert flag.numel() == 1 and int(flag) == 0


def test_env_reads_like_os_environ_get(monkeypatch):
    from skiprnn._env import env

    monkeypatch.delenv("SKIPRNN_TEST_KNOB", raising=False)
    assert env("SKIPRNN_TEST_KNOB") is None and env("SKIPRNN_TEST_KNOB", "d") == "d"
    monkeypatch.setenv("SKIPRNN_TEST_KNOB", "forcé")
    assert env("SKIPRNN_TEST_KNOB", "d") == "forcé"
    monkeypatch.setenv("SKIPRNN_TEST_KNOB", "")
    assert env("SKIPRNN_TEST_KNOB", "d") == ""


def test_git_commit_override_and_checkout(monkeypatch):
    import subprocess

    import skiprnn
    from skiprnn._env import git_commit
    from skiprnn.training.fit import environment_info

    monkeypatch.setenv("SKIPRNN_GIT_COMMIT", "abc1234")
    assert git_commit() == "abc1234" and environment_info()["git_commit"] == "abc1234"
    monkeypatch.delenv("SKIPRNN_GIT_COMMIT")
    pkg = os.path.dirname(os.path.abspath(skiprnn.__file__))
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=pkg, capture_output=True, text=True)
    if head.returncode != 0:
        assert git_commit() is None
        return
    got = git_commit()
    assert got.split("-")[0] == head.stdout.strip()
    assert git_commit(dirty_suffix=False) == head.stdout.strip()
