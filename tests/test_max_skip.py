"""``max_skip=K``: at most K consecutive skipped steps, in training and in every inference path.

The floor Δũ ≥ c = 1/(2K+1) gives K·c < 0.5 < (K+1)·c: a gate that would skip longer runs skips
exactly K steps after each update (closed form: updates at t ≡ 0 mod K+1), and a gate that
already reads that often is not changed at all. At a threshold τ > ½ the floor is 2τ/(2K+1).
"""

import math

import numpy as np
import pytest
import torch

from skiprnn import SkipGRU, SkipLSTM
from skiprnn.inference.export import SkipStepModule
from skiprnn.inference.lazy import lazy_forward
from skiprnn.inference.stream import SkipStream
from skiprnn.metrics import n_skip
from skiprnn.modules.baselines import PeriodicSkipGRU, RandomSkipLSTM
from skiprnn.modules.cells import SkipGRUCell, SkipLSTMCell, SkipRNN
from skiprnn.ops import dispatch
from skiprnn.ops.naive import floor_update_prob, update_prob_floor
from skiprnn.ops.skipping import simulate_skips

LAYERS = {"lstm": SkipLSTM, "gru": SkipGRU}


def _layer(kind, K, bias=-6.0, num_layers=1, seed=0, dtype=torch.float32, **kw):
    """A layer whose gate, unfloored, would skip long runs (σ(-6) ≈ 0.0025 ≪ 1/(2K+1))."""
    torch.manual_seed(seed)
    m = LAYERS[kind](3, 6, num_layers=num_layers, max_skip=K, dtype=dtype, **kw)
    with torch.no_grad():
        m.update_gate.bias.fill_(bias)
    return m


def _runs(u) -> list:
    """Lengths of the runs of skipped steps after each update in one sequence's updates (1-D,
    0/1); the last one may be cut short by the end of the sequence."""
    runs, n = [], None
    for v in torch.as_tensor(u).detach().tolist():
        if v:
            if n is not None:
                runs.append(n)
            n = 0
        elif n is not None:
            n += 1
    return runs + ([n] if n is not None else [])


def _closed_form(T, K, lengths=None, B=1):
    """(T, B) updates of a gate held at the floor from a fresh state: t ≡ 0 (mod K + 1)."""
    t = torch.arange(T).unsqueeze(1)
    u = (t % (K + 1) == 0).float().expand(T, B).clone()
    if lengths is not None:
        u[t.expand(T, B) >= torch.as_tensor(lengths)] = 0
    return u


def _backends(m, x, lengths=None):
    """``{name: (updates (T, B), update_probs (T, B), output (T, B, H))}`` of every path that runs
    ``m`` on time-major ``x``; stream, lazy and the exported step do not take ``lengths``."""
    res = {}
    names = ["reference"] + (["cpu"] if m.num_layers == 1 else [])
    for name in names:
        m.backend = name
        o = m(x, lengths=lengths)
        res[name] = (o.updates.detach(), o.update_probs.detach(), o.output.detach())
    m.backend = "auto"
    with torch.no_grad():
        o = m(x, lengths=lengths)
    assert m.last_backend == "skipping"
    res["skipping"] = (o.updates, o.update_probs, o.output)
    if lengths is not None:
        return res
    T, B = x.shape[:2]
    st = SkipStream(m, B)
    us, ps, outs = [], [], []
    with torch.no_grad():
        for t in range(T):
            out, u = st.step(x[t])
            us.append(u)
            ps.append(st.last_update_prob)
            outs.append(out)
    res["stream"] = (torch.stack(us), torch.stack(ps), torch.stack(outs))
    lz = lazy_forward(m, x[:, 0] if B == 1 else x, batch_size=B).output
    res["lazy"] = (lz.updates, lz.update_probs, lz.output)
    step = SkipStepModule(m)
    s = m.initial_state(B)
    us, ps, outs = [], [], []
    with torch.no_grad():
        for t in range(T):
            o = step(x[t], *s)
            out, s, u, p = o[0], o[1:-2], o[-2], o[-1]
            us.append(u)
            ps.append(p)
            outs.append(out)
    res["export"] = (torch.stack(us), torch.stack(ps), torch.stack(outs))
    return res


# ---------------------------------------------------------------------------------------------
# the floor itself
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [0.55, 0.6, 0.75, 0.9])
def test_floor_follows_the_threshold(tau):
    """At τ > ½ the floor is 2τ/(2K+1): exactly K skipped steps at τ (evaluating a capped model
    at another threshold keeps its cap); at τ ≤ ½ it is 1/(2K+1)."""
    for K in (1, 2, 4, 9, 30):
        c = update_prob_floor(K, tau)
        assert c == pytest.approx(2 * tau / (2 * K + 1))
        assert simulate_skips(np.float32(c), np.float32(0), tau, dtype=np.float32)[0] == K
        assert simulate_skips(np.float32(1e-4), np.float32(0), tau, dtype=np.float32,
                              max_skip=K)[0] == K
        assert update_prob_floor(K, 0.3) == update_prob_floor(K, 0.0) == 1 / (2 * K + 1)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("tau", [0.6, 0.8])
def test_every_path_caps_at_a_raised_threshold(kind, tau):
    K, T = 3, 23
    m = _layer(kind, K)
    m.threshold = tau
    x = torch.randn(T, 1, 3)
    res = _backends(m, x)
    want = _closed_form(T, K)
    for name, (u, p, out) in res.items():
        assert torch.equal(u.reshape(T, 1).float(), want), name
        assert torch.equal(p.reshape(T, 1), res["reference"][1]), name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_floor_skips_exactly_k_steps(dtype):
    for K in range(1, 60):
        c = update_prob_floor(K)
        assert c == 1 / (2 * K + 1)
        n, probs, _ = simulate_skips(dtype(c), dtype(0), dtype=dtype)
        assert n == K, K
        # a smaller Δũ is floored to c; a larger one skips no more
        assert simulate_skips(dtype(c / 10), dtype(0), dtype=dtype, max_skip=K)[0] == K
        assert simulate_skips(dtype(c / 10), dtype(0), dtype=dtype)[0] > K
        assert simulate_skips(dtype(2 * c), dtype(0), dtype=dtype, max_skip=K)[0] == K // 2


def test_floor_gradient_flows_only_above_the_floor():
    d = torch.tensor([0.01, 1 / 7, 0.2, 0.9], dtype=torch.float64, requires_grad=True)
    f = floor_update_prob(d, 3)
    assert f.tolist() == [1 / 7, 1 / 7, 0.2, 0.9]
    f.sum().backward()
    assert d.grad.tolist() == [0.0, 0.0, 1.0, 1.0]
    assert floor_update_prob(d, None) is d
    assert floor_update_prob(np.float32(0.01), 3) == np.float32(1 / 7)
    assert floor_update_prob(np.float32(0.01), 3).dtype == np.float32


# ---------------------------------------------------------------------------------------------
# every path caps runs exactly (closed form where the unfloored gate would skip more)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("K,B", [(1, 1), (4, 1), (4, 3), (7, 2)])
def test_every_backend_caps_runs_at_exactly_k(kind, K, B):
    m = _layer(kind, K)
    T = 37
    x = torch.randn(T, B, 3)
    want = _closed_form(T, K, B=B)
    res = _backends(m, x)
    assert set(res) == {"reference", "cpu", "skipping", "stream", "lazy", "export"}
    ref_u, ref_p, ref_o = res["reference"]
    for name, (u, p, o) in res.items():
        assert torch.equal(u, want), name
        assert torch.equal(p, ref_p), name      # Δũ is exactly c everywhere: ũ bitwise equal
        torch.testing.assert_close(o, ref_o, rtol=1e-5, atol=1e-6, msg=name)
        for b in range(B):
            runs = _runs(u[:, b])
            assert max(runs) == K and all(r == K for r in runs[:-1]), name
    # without the cap the same gate skips far longer
    m.max_skip = None
    assert m(x).updates.sum() < want.sum() / 3


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cap_with_padding(kind):
    K, T = 3, 23
    m = _layer(kind, K)
    x = torch.randn(T, 3, 3)
    lengths = torch.tensor([23, 10, 5])
    want = _closed_form(T, K, lengths, B=3)
    res = _backends(m, x, lengths)
    for name, (u, p, o) in res.items():
        assert torch.equal(u, want), name
        assert torch.equal(p, res["reference"][1]), name
        assert (p[10:, 1] == 0).all() and (o[5:, 2] == 0).all(), name


def test_stacked_layers_and_skips_ahead():
    K = 5
    m = _layer("lstm", K, num_layers=2)
    x = torch.randn(30, 2, 3)
    for name, (u, _, _) in _backends(m, x).items():
        assert torch.equal(u, _closed_form(30, K, B=2)), name
    st = SkipStream(m, 1)
    with torch.no_grad():
        st.step(x[0, :1])
    assert st.skips_ahead == K


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cap_holds_for_a_gate_near_the_floor_and_backends_agree(kind):
    """Δũ on both sides of c: runs ≤ K everywhere (some exactly K, some shorter), and every path
    makes the same decisions."""
    K = 3
    c = update_prob_floor(K)
    m = _layer(kind, K, bias=math.log(c / (1 - c)), seed=3)
    with torch.no_grad():
        m.update_gate.weight.mul_(6)
    x = torch.randn(60, 4, 3)
    res = _backends(m, x)
    ref_u, ref_p, _ = res["reference"]
    runs = [r for b in range(4) for r in _runs(ref_u[:, b])[:-1]]
    assert max(runs) == K and min(runs) < K
    for name, (u, p, _) in res.items():
        assert torch.equal(u, ref_u), name
        torch.testing.assert_close(p, ref_p, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cap_holds_from_a_given_state(kind):
    """A state carrying a tiny Δũ (from an uncapped layer, or by hand) is floored too."""
    K = 2
    m = _layer(kind, K)
    x = torch.randn(12, 2, 3)
    st = m.initial_state(2)
    st = st._replace(update_prob=torch.tensor([1e-4, 1e-4]), cum_update_prob=torch.tensor([0.0, 0.3]))
    want = torch.tensor([[0., 0., 1.], [0., 1., 0.]]).t()
    for name in ("reference", "cpu"):
        m.backend = name
        assert torch.equal(m(x, st).updates[:3], want), name
    m.backend = "auto"
    with torch.no_grad():
        assert torch.equal(m(x, st).updates[:3], want)
    s = SkipStream(m, 2, st)
    assert s.skips_ahead == 1
    one = m.initial_state(1)._replace(update_prob=torch.tensor([1e-4]))
    lz = lazy_forward(m, x[:, 0], hx=one)
    with torch.no_grad():                    # the skipping engine at batch size 1
        assert m(x[:, :1], one).updates[:3, 0].tolist() == [0, 0, 1]
    step, s, us = SkipStepModule(m), tuple(st), []
    with torch.no_grad():
        for t in range(3):
            o = step(x[t], *s)
            s = o[1:-2]
            us.append(o[-2])
    assert torch.equal(torch.stack(us), want)
    assert lz.output.updates[:3, 0].tolist() == [0, 0, 1]


def test_cells_and_generic_skip_rnn_cap_runs():
    K, T = 3, 20
    torch.manual_seed(0)
    for cell in (SkipLSTMCell(3, 5, max_skip=K), SkipGRUCell(3, 5, max_skip=K)):
        with torch.no_grad():
            cell.update_gate.bias.fill_(-6)
        state, us = None, []
        for t in range(T):
            o = cell(torch.randn(2, 3), state)
            state = o.state
            us.append(o.update)
        assert torch.equal(torch.stack(us), _closed_form(T, K, B=2))
    rnn = SkipRNN(torch.nn.GRUCell(3, 5), max_skip=K)
    with torch.no_grad():
        rnn.update_gate.bias.fill_(-6)
    assert torch.equal(rnn(torch.randn(T, 2, 3)).updates, _closed_form(T, K, B=2))


# ---------------------------------------------------------------------------------------------
# gradients: the CPU path's hand-written backward against the reference's autograd
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("masked", [False, True])
def test_cpu_gradients_equal_the_reference_with_the_floor_active_on_some_steps(kind, masked):
    K = 3
    c = update_prob_floor(K)
    m = _layer(kind, K, bias=math.log(c / (1 - c)), seed=1, dtype=torch.float64)
    with torch.no_grad():
        m.update_gate.weight.mul_(6)
    T, B = 40, 3
    x = torch.randn(T, B, 3, dtype=torch.float64)
    lengths = torch.tensor([40, 31, 17]) if masked else None
    st = m.initial_state(B)
    up0 = torch.tensor([0.01, 0.6, 0.2], dtype=torch.float64)   # below, above, above the floor
    cum0 = torch.tensor([0.0, 0.0, 0.1], dtype=torch.float64)
    w = [torch.randn(T, B, 6, dtype=torch.float64), torch.randn(T, B, dtype=torch.float64),
         torch.randn(T, B, dtype=torch.float64)]
    grads, floor_steps = {}, None
    for name in ("reference", "cpu"):
        m.backend = name
        m.zero_grad()
        xi, u0, c0 = (t.clone().requires_grad_() for t in (x, up0, cum0))
        hc = [t.clone().requires_grad_() for t in st[:-2]]
        o = m(xi, (*hc, u0, c0), lengths=lengths)
        assert m.last_backend == name
        s = o.state
        loss = ((o.output * w[0]).sum() + (o.updates * w[1]).sum() + (o.update_probs * w[2]).sum()
                + s[0].sum() + s.update_prob.sum() * 2 + s.cum_update_prob.sum() * 3)
        if kind == "lstm":
            loss = loss + s[1].sum()
        loss.backward()
        grads[name] = [xi.grad, u0.grad, c0.grad, *(t.grad for t in hc)] + \
            [p.grad for p in m.parameters()]
        if name == "reference":
            # ũ the step after an update is that update's Δũ: the floor acted where it equals c
            u, p = o.updates.detach(), o.update_probs.detach()
            after = (u[:-1] == 1) & (p[1:] > 0)
            floor_steps = (p[1:][after] == c).sum().item(), after.sum().item()
    assert 0 < floor_steps[0] < floor_steps[1]     # active for some updates, not for others
    for k, (a, b) in enumerate(zip(grads["reference"], grads["cpu"])):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11, msg=f"gradient {k}")
    assert grads["reference"][1][0] == 0    # the given Δũ 0.01 was floored: no gradient to it


# ---------------------------------------------------------------------------------------------
# off by default, and no change where the gate already reads often enough
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_floor_changes_nothing_for_a_gate_that_reads_often(kind, backend):
    x = torch.randn(25, 3, 3)
    outs = []
    for K in (None, 20):
        torch.manual_seed(0)
        m = LAYERS[kind](3, 6, max_skip=K, backend=backend)   # gate bias 1: Δũ ≈ 0.7 ≫ 1/41
        o = m(x)
        (o.output.sum() + o.update_probs.sum()).backward()
        outs.append([o.output, o.updates, o.update_probs] + [p.grad for p in m.parameters()])
    for a, b in zip(*outs):
        assert torch.equal(a, b)
    assert "max_skip" not in SkipLSTM(3, 4).cell_options()
    assert SkipGRU(3, 4).cell_options() == {"reset_after": True}
    assert SkipGRU(3, 4, max_skip=2).cell_options() == {"reset_after": True, "max_skip": 2}


# ---------------------------------------------------------------------------------------------
# Eq. 6
# ---------------------------------------------------------------------------------------------
def test_n_skip_honours_the_cap():
    assert n_skip(0.01) == 49 and n_skip(0.01, max_skip=4) == 4
    assert n_skip(0.3, max_skip=4) == 1 == n_skip(0.3)
    d = torch.tensor([0.001, 0.05, 0.3, 1.0])
    assert n_skip(d, max_skip=5).tolist() == [5, 5, 1, 0]
    assert n_skip(d).tolist() == [499, 9, 1, 0]
    with pytest.raises(ValueError, match="max_skip"):
        n_skip(0.1, max_skip=0)


@pytest.mark.parametrize("bias", [-6.0, -3.0, -1.0, 1.0])
@pytest.mark.parametrize("K", [1, 3, 20])
def test_layer_skips_what_n_skip_says(bias, K):
    """With a constant gate (W_p = 0) every run between updates is n_skip(σ(b), K) long."""
    m = _layer("lstm", K, bias=bias)
    with torch.no_grad():
        m.update_gate.weight.zero_()
    delta = float(torch.sigmoid(torch.tensor(bias)))
    runs = _runs(m(torch.randn(80, 1, 3)).updates[:, 0])[:-1]
    assert runs and set(runs) == {n_skip(delta, max_skip=K)}


# ---------------------------------------------------------------------------------------------
# bad values and combinations the cap cannot hold under
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -2, True, 2.5, "3"])
def test_bad_max_skip_is_refused(bad):
    for make in (lambda: SkipLSTM(3, 4, max_skip=bad), lambda: SkipGRU(3, 4, max_skip=bad),
                 lambda: SkipLSTMCell(3, 4, max_skip=bad),
                 lambda: SkipRNN(torch.nn.GRUCell(3, 4), max_skip=bad)):
        with pytest.raises(ValueError, match=r"max_skip must be None or an integer >= 1.*got"):
            make()


def test_incompatible_options_are_refused():
    with pytest.raises(ValueError, match="bernoulli"):
        SkipLSTM(3, 4, binarizer="bernoulli", max_skip=2)
    with pytest.raises(ValueError, match=r"threshold must lie in \[0, 1\), got 1.0"):
        SkipGRU(3, 4, threshold=1.0, max_skip=2)
    with pytest.raises(ValueError, match="random gate"):
        RandomSkipLSTM(3, 4, max_skip=2)
    with pytest.raises(ValueError, match="periodic gate"):
        PeriodicSkipGRU(3, 4, max_skip=2)
    m = _layer("lstm", 2)
    x = torch.randn(9, 1, 3)
    m.threshold = 1.0                    # raised after construction: every path refuses it
    for backend in ("reference", "cpu"):
        m.backend = backend
        with pytest.raises(ValueError, match="threshold"):
            m(x)
    with pytest.raises(ValueError, match="threshold"):
        SkipStream(m)
    with pytest.raises(ValueError, match="threshold"):
        SkipStepModule(m)
    m.threshold = 0.0                    # below 0.5 the cap holds (a gate held open reads always)
    m.backend = "auto"
    assert m(x).updates.all()
    m.threshold, m.binarizer = 0.5, "bernoulli"
    m.train()
    with pytest.raises(ValueError, match="Bernoulli"):
        m(x)


def test_dispatch_never_picks_triton_under_max_skip():
    m = _layer("lstm", 2, backend="triton")
    with pytest.raises(ValueError, match="max_skip"):
        m(torch.randn(4, 1, 3))
    ch = dispatch.decide("lstm", "auto", device_type="cuda", num_layers=1, fast_ok=True,
                         why_not_triton="max_skip (the Triton kernels have no floor on Δũ)")
    assert ch.name == "reference" and "max_skip" in ch.reason
    ch = dispatch.decide("lstm", "auto", device_type="cpu", num_layers=1, fast_ok=True,
                         why_not_triton="max_skip")
    assert ch.name == "cpu"


# ---------------------------------------------------------------------------------------------
# training: RunConfig / CLI, checkpoints and --resume
# ---------------------------------------------------------------------------------------------
def test_run_config_and_cli_reach_the_layer_and_a_resume_keeps_it(tmp_path):
    pytest.importorskip("lightning")
    from skiprnn.cli import build_parser, build_train_config
    from skiprnn.training.config import ConfigError, RunConfig
    from skiprnn.training.fit import fit, load_module
    from skiprnn.training.module import SkipRNNModule

    def cfg_of(*args):
        return build_train_config(build_parser().parse_args(["train", *args]))[0]

    run = tmp_path / "run"
    tiny = ["--quick", "--max-steps", "4", "--val-every", "2", "--hidden-size", "8",
            "--no-progress", "--out", str(run)]
    cfg = cfg_of("--max-skip", "3", *tiny)
    assert cfg.max_skip == 3
    assert SkipRNNModule(cfg.to_dict()).rnn.max_skip == 3
    # recipe fast caps the adding task at 4; 'none' lifts it; the other tasks have no cap
    assert cfg_of(*tiny).max_skip == 4
    assert cfg_of("--max-skip", "none", *tiny).max_skip is None
    assert cfg_of("frequency", *tiny).max_skip is None
    assert cfg_of("--recipe", "paper", *tiny).max_skip is None
    for args, msg in ((["--max-skip", "0"], "--max-skip must be an integer >= 1"),
                      (["--max-skip", "2", "--model", "lstm"], "--max-skip act"),
                      (["--max-skip", "2", "--backend", "triton"], "cannot run max_skip=2"),
                      (["--backend", "triton"], r"recipe 'fast' for adding\): pass --max-skip none")):
        with pytest.raises(ConfigError, match=msg):
            cfg_of(*args, *tiny)
    # a config written before the field existed loads with no cap
    old = {k: v for k, v in cfg.to_dict().items() if k != "max_skip"}
    assert RunConfig.from_dict(old).max_skip is None
    assert SkipRNNModule(old).rnn.max_skip is None

    fit(cfg, verbose=False)
    resumed = build_train_config(build_parser().parse_args(
        ["train", "--resume", str(run), "--max-steps", "6"]))
    assert resumed[0].max_skip == 3
    fit(resumed[0], resume=resumed[1], verbose=False)
    module = load_module(run, "last")[0]
    assert module.rnn.max_skip == 3
    ck = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ck["global_step"] == 6 and ck["hyper_parameters"]["config"]["max_skip"] == 3
