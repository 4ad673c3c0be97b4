import argparse, time, math, json, sys
import torch, torch.nn as nn, torch.nn.functional as F
import skiprnn
from skiprnn.tasks.mnist import load_mnist
p = argparse.ArgumentParser()
p.add_argument("--model", default="skip")
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--gate-lr-mult", type=float, default=1.0)
p.add_argument("--lam", type=float, default=1e-4)
p.add_argument("--warmup", type=int, default=0)
p.add_argument("--ramp", type=int, default=0)
p.add_argument("--chrono", action="store_true")
p.add_argument("--norm", action="store_true")
p.add_argument("--batch", type=int, default=256)
p.add_argument("--steps", type=int, default=1000)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--down", type=int, default=1)
p.add_argument("--gate-warmup", type=int, default=0)
p.add_argument("--detach", action="store_true")
p.add_argument("--out", required=True)
a = p.parse_args()
torch.set_num_threads(1); torch.set_flush_denormal(True); torch.manual_seed(a.seed)
arr = load_mnist()
X = arr.train_images.float().div(255).reshape(-1, 784, 1)
Y = arr.train_labels.long()
if a.down > 1:
    X = X.reshape(-1, 28, 28)[:, ::a.down, ::a.down].reshape(X.shape[0], -1, 1)
T = X.shape[1]
if a.norm:
    X = (X - 0.1307) / 0.3081
Xtr, Ytr, Xva, Yva = X[:55000], Y[:55000], X[55000:56000], Y[55000:56000]
H = 110
rnn = skiprnn.SkipLSTM(1, H, batch_first=True, learn_init=True, backend="cpu").paper_init_()
if a.chrono:
    with torch.no_grad():
        b = torch.log(torch.empty(H).uniform_(1, T - 1))
        rnn.bias_ih_l0[H:2*H] = b; rnn.bias_hh_l0[H:2*H] = 0
        rnn.bias_ih_l0[:H] = -b; rnn.bias_hh_l0[:H] = 0
head = nn.Linear(H, 10); nn.init.xavier_uniform_(head.weight); nn.init.zeros_(head.bias)
if a.model == "lstm":
    with torch.no_grad():
        rnn.update_gate.weight.zero_(); rnn.update_gate.bias.fill_(20.)
    rnn.update_gate.requires_grad_(False)
gate = list(rnn.update_gate.parameters())
others = [p for n, p in list(rnn.named_parameters()) + list(head.named_parameters()) if not n.startswith("update_gate")]
opt = torch.optim.Adam([{"params": others}, {"params": gate, "lr": a.lr * a.gate_lr_mult}], lr=a.lr)
g = torch.Generator().manual_seed(a.seed)
def lam_at(s):
    if s < a.warmup: return 0.0
    if a.ramp and s < a.warmup + a.ramp: return a.lam * (s - a.warmup) / a.ramp
    return a.lam
log = open(a.out, "w")
t0 = time.time(); perm = torch.randperm(55000, generator=g); pi = 0
for step in range(a.steps + 1):
    if step % 50 == 0:
        rnn.eval(); rnn.threshold = 0.5
        with torch.no_grad():
            o = rnn(Xva); pr = head(o.output[:, -1])
            acc = (pr.argmax(1) == Yva).float().mean().item(); upd = o.updates.sum(1).mean().item()
        rnn.train()
        rec = dict(step=step, t=round(time.time()-t0,1), val_acc=acc, val_upd=upd, bias=rnn.update_gate.bias.item(),
                   wnorm=rnn.update_gate.weight.norm().item(), lam=lam_at(step))
        print(json.dumps(rec), file=log, flush=True)
    if step == a.steps: break
    if pi + a.batch > 55000: perm = torch.randperm(55000, generator=g); pi = 0
    idx = perm[pi:pi+a.batch]; pi += a.batch
    rnn.threshold = 0.0 if step < a.gate_warmup else 0.5
    o = rnn(Xtr[idx]); pr = head(o.output[:, -1])
    loss = F.cross_entropy(pr, Ytr[idx])
    lam = lam_at(step)
    if lam > 0 and a.model != "lstm":
        loss = loss + skiprnn.budget_loss(o.updates, lam, batch_first=True)
    opt.zero_grad(); loss.backward()
    if step < a.gate_warmup:
        for q in gate: q.grad = None
    torch.nn.utils.clip_grad_norm_([q for q in list(rnn.parameters()) + list(head.parameters()) if q.grad is not None], 1.0)
    opt.step()
