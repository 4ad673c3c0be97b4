"""TFAdam against a NumPy transcription of TensorFlow 1.x's Adam update (``training_ops``'
ApplyAdam: lr_t = lr·√(1-β2^t)/(1-β1^t); m, v updated; θ -= lr_t·m/(√v + ε))."""

import math

import numpy as np
import pytest
import torch

from skiprnn.optim import TFAdam


def tf1_adam_numpy(theta, grads, lr, beta1, beta2, eps):
    """TF1's update rule, step by step, in float64 NumPy: the parameters after each step."""
    theta = np.array(theta, dtype=np.float64)
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    beta1_power, beta2_power = 1.0, 1.0
    out = []
    for g in grads:
        beta1_power *= beta1  # TF's beta1_power / beta2_power accumulators (updated each step)
        beta2_power *= beta2
        lr_t = lr * np.sqrt(1 - beta2_power) / (1 - beta1_power)
        m = m + (g - m) * (1 - beta1)
        v = v + (g * g - v) * (1 - beta2)
        theta = theta - lr_t * m / (np.sqrt(v) + eps)
        out.append(theta.copy())
    return out


@pytest.mark.parametrize("scale", [1.0, 1e-9], ids=["normal-grads", "tiny-grads"])
def test_matches_tf1_update_rule(scale):
    rng = np.random.default_rng(0)
    theta0 = rng.normal(size=(3, 4))
    grads = [rng.normal(size=(3, 4)) * scale for _ in range(6)]
    lr, betas, eps = 1e-3, (0.9, 0.999), 1e-8
    want = tf1_adam_numpy(theta0, grads, lr, *betas, eps)
    p = torch.nn.Parameter(torch.tensor(theta0))
    opt = TFAdam([p], lr=lr, betas=betas, eps=eps)
    for g, w in zip(grads, want):
        p.grad = torch.tensor(g)
        opt.step()
        np.testing.assert_allclose(p.detach().numpy(), w, rtol=0, atol=1e-14)


def test_differs_from_torch_adam_for_tiny_gradients_and_equals_it_with_the_decaying_eps():
    """TF's ε equals PyTorch's ε' = ε / √(1 - β2^t): with tiny gradients torch.optim.Adam (fixed
    ε) moves much further; with ε' reset every step it gives TF's trajectory."""
    torch.manual_seed(0)
    theta0 = torch.randn(5, dtype=torch.float64)
    grads = [torch.randn(5, dtype=torch.float64) * 1e-9 for _ in range(4)]
    tf_p = torch.nn.Parameter(theta0.clone())
    pt_p = torch.nn.Parameter(theta0.clone())
    eq_p = torch.nn.Parameter(theta0.clone())
    tf_opt = TFAdam([tf_p], lr=1e-3)
    pt_opt = torch.optim.Adam([pt_p], lr=1e-3, eps=1e-8)
    eq_opt = torch.optim.Adam([eq_p], lr=1e-3)
    for t, g in enumerate(grads, start=1):
        for p in (tf_p, pt_p, eq_p):
            p.grad = g.clone()
        eq_opt.param_groups[0]["eps"] = 1e-8 / math.sqrt(1 - 0.999 ** t)
        tf_opt.step()
        pt_opt.step()
        eq_opt.step()
    moved_tf = (tf_p - theta0).abs()
    moved_pt = (pt_p - theta0).abs()
    assert (moved_pt > 3 * moved_tf).all()
    torch.testing.assert_close(eq_p, tf_p, atol=1e-15, rtol=1e-10)


def test_param_groups_state_dict_and_closure():
    a = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    b = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    opt = TFAdam([{"params": [a]}, {"params": [b], "lr": 1e-2}], lr=1e-3)
    loss = opt.step(lambda: (a.sum() + b.sum()))
    assert loss is not None and a.grad is None  # the closure computed the loss, not grads
    (a.sum() + b.sum()).backward()
    opt.step()
    # first step, g = 1: Δθ = lr·√(1-β2)/(1-β1) · (1-β1) / (√(1-β2) + ε) = lr·√0.001/(√0.001 + ε)
    step = math.sqrt(1e-3) / (math.sqrt(1e-3) + 1e-8)
    torch.testing.assert_close((1 - a).detach(), torch.full((2,), 1e-3 * step, dtype=torch.float64))
    torch.testing.assert_close((1 - b).detach(), torch.full((2,), 1e-2 * step, dtype=torch.float64))
    sd = opt.state_dict()
    opt2 = TFAdam([{"params": [a]}, {"params": [b], "lr": 1e-2}], lr=1e-3)
    opt2.load_state_dict(sd)
    assert opt2.state[a]["step"] == 1


def test_bad_arguments():
    p = [torch.nn.Parameter(torch.ones(1))]
    with pytest.raises(ValueError, match="lr must be"):
        TFAdam(p, lr=-1)
    with pytest.raises(ValueError, match="betas must be"):
        TFAdam(p, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="eps must be"):
        TFAdam(p, eps=-1e-8)
