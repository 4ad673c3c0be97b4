"""torch.compile (inductor, CPU) of models holding Skip layers trains as eager does."""

import copy

import pytest
import torch

import skiprnn
from skiprnn import SkipGRU, SkipLSTM


class _Model(torch.nn.Module):
    """A Skip RNN, a head on the last output and the budget term: what a user compiles."""

    def __init__(self, cls, **kw):
        super().__init__()
        self.rnn = cls(2, 16, batch_first=True, **kw)
        self.head = torch.nn.Linear(16, 1)

    def forward(self, x, y):
        res = self.rnn(x)
        pred = torch.tanh(self.head(res.output[:, -1])).squeeze(-1)
        return ((pred - y) ** 2).mean() + skiprnn.budget_loss(res.updates, 1e-3, batch_first=True)


def _train(model, step_fn, batches):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses, grads = [], []
    for x, y in batches:
        opt.zero_grad()
        loss = step_fn(x, y)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        opt.step()
    return losses, grads


def _check_trains_as_eager(cls, fullgraph=False, **kw):
    """3 Adam steps of the eager model and of its compiled copy: equal losses and gradients."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = _Model(cls, **kw)
    with torch.no_grad():                       # a gate that skips: updates on some steps only
        eager.rnn.update_gate.bias.fill_(-0.3)
    compiled_model = copy.deepcopy(eager)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 20, 2, generator=g), torch.randn(8, generator=g)) for _ in range(3)]
    compiled = torch.compile(compiled_model, backend="inductor", fullgraph=fullgraph)
    l_e, g_e = _train(eager, eager, batches)
    l_c, g_c = _train(compiled_model, compiled, batches)
    for a, b in zip(l_e, l_c):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    for ge, gc in zip(g_e, g_c):
        assert ge.keys() == gc.keys()
        for n in ge:
            torch.testing.assert_close(gc[n], ge[n], rtol=1e-4, atol=1e-6, msg=n)
    # the gate skipped on these inputs, so the equality covers skipped steps too
    with torch.no_grad():
        u = eager.rnn(batches[0][0]).updates
    assert 0 < u.mean() < 1
    return compiled_model


@pytest.mark.parametrize("cls", [SkipLSTM, SkipGRU])
def test_compiled_model_trains_as_eager(cls):
    _check_trains_as_eager(cls)


@pytest.mark.parametrize("cls", [SkipLSTM, SkipGRU])
def test_fullgraph_compile_holds_the_cpu_op(cls):
    """The CPU backend is the custom op skiprnn::cpu_rnn_forward (its backward an op too), so
    the whole model compiles as one graph (fullgraph=True raises at any graph break)."""
    model = _check_trains_as_eager(cls, fullgraph=True)
    assert model.rnn.last_backend == "cpu"


def test_reference_only_layer_compiles_with_a_graph_break():
    """A call only the reference runs (two layers) stays out of the traced graph and runs
    eagerly between the compiled graphs, with eager's results."""
    model = _check_trains_as_eager(SkipGRU, num_layers=2)
    assert model.rnn.last_backend == "reference"


@pytest.mark.parametrize("cls", [SkipLSTM, SkipGRU])
def test_torch_export_of_a_layer_matches_eager(cls):
    """torch.export of a whole layer's forward (the CPU op, one node of the graph): the
    program's output, updates and state equal the eager layer's on a gate that skips."""
    torch.manual_seed(0)
    layer = cls(3, 8).eval()
    with torch.no_grad():
        layer.update_gate.bias.fill_(-0.3)
    x = torch.randn(12, 2, 3)
    program = torch.export.export(layer, (x,))
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert targets.count("skiprnn.cpu_rnn_forward.default") == 1, targets
    got, ref = program.module()(x), layer(x)
    assert isinstance(got, skiprnn.SkipOutput)
    torch.testing.assert_close(got.output, ref.output, rtol=0, atol=1e-6)
    assert torch.equal(got.updates, ref.updates) and 0 < ref.updates.mean() < 1
    torch.testing.assert_close(got.state.cum_update_prob, ref.state.cum_update_prob, rtol=0, atol=1e-6)
    torch.testing.assert_close(got[1][0] if cls is SkipLSTM else got[1], ref.state.h, rtol=0, atol=1e-6)
