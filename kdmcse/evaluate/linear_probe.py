"""SentEval's logistic-regression probe (`nhid 0`), trained many models at a time.

SentEval's `PyTorchClassifier` trains one `nn.Linear` with Adam (lr 1e-3, L2 as Adam `weight_decay`), minibatches
of 64 drawn from a fresh `np.random.permutation` per pass, `epoch_size` passes between two scores on the
validation data, and stops after `tenacity` non-improvements (counted cumulatively, never reset), keeping the
first best model. Every classifier is re-seeded with the same seed when it is built, so all models of a task
start from the same weights and draw the same permutation stream.

The protocols (inner k-fold, k-fold, dev split) train hundreds of such models on tiny minibatches, which is
dominated by per-step overhead when done one by one. `fit_batched` trains them all at once with the same
algorithm: one weight tensor `[S, d, R*C]` for S training "streams" (one per distinct training set: the R
L2 values of a stream see identical minibatches, because they share data and seed) and a hand-written,
batched copy of `torch.optim.Adam`'s update. `fit_reference` is a literal one-model-at-a-time copy of SentEval's
loops, kept to check the batched engine against.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

L2_GRID: tuple[float, ...] = tuple(10.0**t for t in range(-5, -1))  # SentEval: [10**t for t in range(-5, -1)]


@dataclass(frozen=True)
class ProbeConfig:
    """SentEval test-mode classifier settings (`nhid 0`, adam, bs 64, tenacity 5, epoch_size 4, kfold 10)."""

    batch_size: int = 64
    tenacity: int = 5
    epoch_size: int = 4
    max_epoch: int = 200
    lr: float = 1e-3  # torch.optim.Adam's default, which SentEval's "adam" keeps
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    kfold: int = 10
    validation_split: float = 0.05
    l2_grid: tuple[float, ...] = L2_GRID
    seed: int = 1111


@dataclass
class Job:
    """One training set (a stream) and the L2 values to train on it.

    `train_idx`/`dev_idx` index rows of the feature pool passed to the engine. With `validation_split`
    instead of `dev_idx`, the dev rows are carved out of `train_idx` by the model's own seeded permutation,
    as SentEval's `prepare_split` does.
    """

    train_idx: np.ndarray
    regs: tuple[float, ...]
    dev_idx: np.ndarray | None = None
    validation_split: float | None = None


@dataclass
class FitResult:
    """The kept (best-on-dev) model of one (job, L2) pair."""

    l2: float
    dev_acc: float  # fraction, as SentEval's `fit` returns it
    weight: np.ndarray  # [d, C] float32
    bias: np.ndarray  # [C] float32
    n_epochs: int = 0  # passes over the training data until the model stopped

    def predict(self, X: np.ndarray) -> np.ndarray:
        return predict_linear(X, self.weight, self.bias)

    def accuracy(self, X: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean(self.predict(X) == np.asarray(y)))


def predict_linear(X: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Argmax class (first index on ties, as torch's `max(1)`), computed in float32."""
    with torch.no_grad():
        logits = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)) @ torch.from_numpy(weight)
        return (logits + torch.from_numpy(bias)).argmax(1).numpy()


def initial_linear(dim: int, nclasses: int, seed: int) -> nn.Linear:
    """The `nn.Linear` SentEval builds right after `torch.manual_seed(seed)`, without touching global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Linear(dim, nclasses)


def _split_job(job: Job, rs: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    """Train/dev rows of a job; a validation split consumes the first permutation of the model's RNG."""
    if job.dev_idx is not None:
        if len(job.dev_idx) == 0:
            raise ValueError("a job's dev_idx is empty")
        return np.asarray(job.train_idx), np.asarray(job.dev_idx)
    if not job.validation_split:
        raise ValueError("a job needs dev_idx or validation_split")
    train_idx = np.asarray(job.train_idx)
    perm = rs.permutation(len(train_idx))
    cut = int(job.validation_split * len(train_idx))
    if cut == 0:
        raise ValueError(f"{len(train_idx)} training rows leave no validation rows at split {job.validation_split}")
    return train_idx[perm[cut:]], train_idx[perm[:cut]]


# ---------------------------------------------------------------------------------------------- reference engine
def fit_reference(
    X: np.ndarray, y: np.ndarray, jobs: list[Job], nclasses: int, cfg: ProbeConfig = ProbeConfig()
) -> list[list[FitResult]]:
    """Train every (job, L2) model one at a time, exactly as SentEval's `MLP(nhid=0).fit` does."""
    with tqdm(total=sum(len(j.regs) for j in jobs), desc="reference probe", leave=False, unit="model") as bar:
        out = []
        for job in jobs:
            out.append([])
            for l2 in job.regs:
                out[-1].append(_fit_one_reference(X, y, job, l2, nclasses, cfg))
                bar.update(1)
    return out


def _fit_one_reference(X: np.ndarray, y: np.ndarray, job: Job, l2: float, nclasses: int, cfg: ProbeConfig) -> FitResult:
    rs = np.random.RandomState(cfg.seed)  # SentEval: np.random.seed(seed) in the classifier's constructor
    model = nn.Sequential(initial_linear(X.shape[1], nclasses, cfg.seed))
    loss_fn = nn.CrossEntropyLoss()  # SentEval sets `size_average = False` afterwards, a no-op since torch 0.4
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    optimizer.param_groups[0]["weight_decay"] = l2

    train_idx, dev_idx = _split_job(job, rs)
    trainX = torch.from_numpy(np.ascontiguousarray(X[train_idx], dtype=np.float32))
    trainy = torch.from_numpy(np.asarray(y[train_idx], dtype=np.int64))
    devX = torch.from_numpy(np.ascontiguousarray(X[dev_idx], dtype=np.float32))
    devy = torch.from_numpy(np.asarray(y[dev_idx], dtype=np.int64))

    def score() -> float:
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(devX), cfg.batch_size):
                pred = model(devX[i : i + cfg.batch_size]).max(1)[1]
                correct += pred.eq(devy[i : i + cfg.batch_size]).sum().item()
        return correct / len(devX)

    nepoch, best_acc, stop, count = 0, -1.0, False, 0
    best_model = model
    while not stop and nepoch <= cfg.max_epoch:
        model.train()
        for _ in range(cfg.epoch_size):
            perm = rs.permutation(len(trainX))
            for i in range(0, len(trainX), cfg.batch_size):
                idx = torch.from_numpy(perm[i : i + cfg.batch_size]).long()
                loss = loss_fn(model(trainX[idx]), trainy[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        nepoch += cfg.epoch_size
        acc = score()
        if acc > best_acc:
            best_acc, best_model = acc, copy.deepcopy(model)
        else:
            if count >= cfg.tenacity:
                stop = True
            count += 1
    lin = best_model[0]
    return FitResult(
        l2=l2,
        dev_acc=best_acc,
        weight=lin.weight.detach().T.contiguous().numpy().copy(),
        bias=lin.bias.detach().numpy().copy(),
        n_epochs=nepoch,
    )


# ---------------------------------------------------------------------------------------------- batched engine
_CHUNK_BYTES = 2 << 20  # gathered minibatch rows per chunk (bytes)
_STATE = ("W", "b", "m_W", "v_W", "m_b", "v_b", "wd", "best_correct", "count", "stopped", "n_epochs", "best_W",
          "best_b")


@dataclass
class _Streams:
    """State of the streams still training; every tensor's first dimension is the stream.

    Weights are stored like `nn.Linear.weight`, one row per (L2 value r, class c) at row r*C + c.
    """

    ids: np.ndarray  # [S] original job index
    train: list[np.ndarray]  # per stream: training rows in SentEval's order
    dev: list[np.ndarray]
    rngs: list[np.random.RandomState]
    steps: list[torch.Tensor]  # per stream: Adam step count (0-d float32, as torch.optim.Adam keeps it)
    W: torch.Tensor  # [S, R*C, d]
    b: torch.Tensor  # [S, R*C]
    m_W: torch.Tensor
    v_W: torch.Tensor
    m_b: torch.Tensor
    v_b: torch.Tensor
    wd: torch.Tensor  # [S, R*C] weight decay of each row
    best_correct: torch.Tensor  # [S, R] int64
    count: torch.Tensor  # [S, R] non-improvements so far
    stopped: torch.Tensor  # [S, R] bool
    n_epochs: torch.Tensor  # [S, R]
    best_W: torch.Tensor
    best_b: torch.Tensor

    def keep(self, mask: np.ndarray) -> "_Streams":
        pick = np.flatnonzero(mask)
        sel = torch.from_numpy(pick)
        tensors = {k: getattr(self, k).index_select(0, sel).contiguous() for k in _STATE}
        return _Streams(ids=self.ids[mask], train=[self.train[i] for i in pick], dev=[self.dev[i] for i in pick],
                        rngs=[self.rngs[i] for i in pick], steps=[self.steps[i] for i in pick], **tensors)


def fit_batched(
    X: np.ndarray, y: np.ndarray, jobs: list[Job], nclasses: int, cfg: ProbeConfig = ProbeConfig(),
    desc: str = "probe",
) -> list[list[FitResult]]:
    """Same models as `fit_reference`, trained together (results agree up to float summation order).

    All jobs must have the same number of L2 values. Stopped models keep being updated alongside the others
    of their stream (their kept best snapshot no longer changes); a stream leaves the batch once all its
    models have stopped.
    """
    if not jobs:
        return []
    R = len(jobs[0].regs)
    if any(len(j.regs) != R for j in jobs):
        raise ValueError("fit_batched needs the same number of L2 values in every job")
    C, d, B = nclasses, X.shape[1], cfg.batch_size
    Xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    S = len(jobs)

    rngs = [np.random.RandomState(cfg.seed) for _ in jobs]
    splits = [_split_job(job, rs) for job, rs in zip(jobs, rngs)]
    lin = initial_linear(d, C, cfg.seed)
    W = lin.weight.detach().repeat(S, R, 1).contiguous()  # [S, R*C, d]
    b = lin.bias.detach().repeat(S, R).contiguous()
    wd = torch.tensor([[l2 for l2 in j.regs for _ in range(C)] for j in jobs], dtype=torch.float32)
    st = _Streams(
        ids=np.arange(S), train=[s[0] for s in splits], dev=[s[1] for s in splits], rngs=rngs,
        steps=[torch.tensor(0.0) for _ in jobs],
        W=W, b=b, m_W=torch.zeros_like(W), v_W=torch.zeros_like(W), m_b=torch.zeros_like(b), v_b=torch.zeros_like(b),
        wd=wd, best_correct=torch.full((S, R), -1, dtype=torch.int64), count=torch.zeros(S, R, dtype=torch.int64),
        stopped=torch.zeros(S, R, dtype=torch.bool), n_epochs=torch.zeros(S, R, dtype=torch.int64),
        best_W=W.clone(), best_b=b.clone(),
    )
    out_best_W = torch.empty(S, R * C, d)
    out_best_b = torch.empty(S, R * C)
    out_correct = torch.empty(S, R, dtype=torch.int64)
    out_epochs = torch.empty(S, R, dtype=torch.int64)
    dev_sizes = np.array([len(s[1]) for s in splits])

    def retire(done: np.ndarray) -> None:
        sel = torch.from_numpy(np.flatnonzero(done))
        ids = torch.from_numpy(st.ids[done])
        out_best_W[ids] = st.best_W[sel]
        out_best_b[ids] = st.best_b[sel]
        out_correct[ids] = st.best_correct[sel]
        out_epochs[ids] = st.n_epochs[sel]

    nepoch = 0
    rounds = cfg.max_epoch // cfg.epoch_size + 1
    with torch.no_grad(), tqdm(total=rounds, desc=desc, leave=False, unit="round") as bar:
        while True:
            for _ in range(cfg.epoch_size):
                _train_pass(st, Xt, yt, C, R, B, cfg)
            nepoch += cfg.epoch_size
            _score_round(st, Xt, yt, C, R, cfg, nepoch)
            bar.update(1)
            # SentEval's loop runs while nepoch <= max_epoch
            done = st.stopped.all(1).numpy() if nepoch <= cfg.max_epoch else np.ones(len(st.ids), dtype=bool)
            if done.any():
                retire(done)
                if done.all():
                    break
                st = st.keep(~done)
    results = []
    for j, job in enumerate(jobs):
        row = []
        for r, l2 in enumerate(job.regs):
            rows = slice(r * C, (r + 1) * C)
            row.append(FitResult(
                l2=l2, dev_acc=int(out_correct[j, r]) / dev_sizes[j],
                weight=out_best_W[j, rows].T.contiguous().numpy(), bias=out_best_b[j, rows].contiguous().numpy(),
                n_epochs=int(out_epochs[j, r]),
            ))
        results.append(row)
    return results


def _train_pass(st: _Streams, Xt: torch.Tensor, yt: torch.Tensor, C: int, R: int, B: int, cfg: ProbeConfig) -> None:
    """One pass over every stream's training rows, minibatch by minibatch, like SentEval's `trainepoch`."""
    S, d = len(st.ids), Xt.shape[1]
    sizes = np.array([len(t) for t in st.train])
    n_steps = -(-sizes // B)  # ceil: the last minibatch of a pass is smaller
    T = int(n_steps.max())
    idx = np.zeros((S, T * B), dtype=np.int64)
    weight = np.zeros((S, T * B), dtype=np.float32)
    for s in range(S):
        idx[s, : sizes[s]] = st.train[s][st.rngs[s].permutation(sizes[s])]
        # mean cross-entropy over the rows of each minibatch; padding rows weigh 0
        rows = np.arange(sizes[s])
        weight[s, : sizes[s]] = 1.0 / np.minimum(B, sizes[s] - (rows // B) * B)
    idx_t = torch.from_numpy(idx.reshape(S, T, B).transpose(1, 0, 2).copy())  # [T, S, B]
    w_t = torch.from_numpy(weight.reshape(S, T, B).transpose(1, 0, 2).copy())
    y_t = yt[idx_t]  # [T, S, B]
    # streams go through gather -> forward -> backward in chunks small enough for the gathered minibatches to
    # stay in cache between the two matrix products (about 1.6x faster than one batch of all streams)
    chunk = max(1, min(S, _CHUNK_BYTES // (B * d * 4)))
    Xb = torch.empty(chunk * B, d)
    onehot = torch.empty(chunk, R, C, B)
    grad_W = torch.empty(S, R * C, d)
    grad_b = torch.empty(S, R * C)
    for t in range(T):
        for c0 in range(0, S, chunk):
            c1 = min(S, c0 + chunk)
            k = c1 - c0
            Xs = torch.index_select(Xt, 0, idx_t[t, c0:c1].reshape(-1), out=Xb[: k * B]).view(k, B, d)
            logits = torch.baddbmm(st.b[c0:c1].unsqueeze(2), st.W[c0:c1], Xs.transpose(1, 2)).view(k, R, C, B)
            # d(mean CE)/d logits, written as autograd's log_softmax backward computes it: g - softmax * sum(g)
            g = onehot[:k].zero_().scatter_(2, y_t[t, c0:c1].view(k, 1, 1, B).expand(k, R, 1, B), 1.0)
            g.mul_(-w_t[t, c0:c1].view(k, 1, 1, B))
            grad_logits = (g - torch.log_softmax(logits, dim=2).exp() * g.sum(2, keepdim=True)).view(k, R * C, B)
            torch.bmm(grad_logits, Xs, out=grad_W[c0:c1])
            torch.sum(grad_logits, 2, out=grad_b[c0:c1])
        active = t < n_steps  # streams whose pass still has a minibatch at step t
        _adam(st, grad_W, grad_b, None if active.all() else np.flatnonzero(active), cfg)


def _adam(st: _Streams, grad_W: torch.Tensor, grad_b: torch.Tensor, active: np.ndarray | None,
          cfg: ProbeConfig) -> None:
    """torch.optim.Adam's update with the L2 term added to the gradient; each stream keeps its own step count."""
    grad_W.addcmul_(st.wd.unsqueeze(2), st.W)
    grad_b.addcmul_(st.wd, st.b)
    pick = range(len(st.ids)) if active is None else active
    params, grads, ms, vs, steps = [], [], [], [], []
    for s in pick:
        params += [st.W[s], st.b[s]]
        grads += [grad_W[s], grad_b[s]]
        ms += [st.m_W[s], st.m_b[s]]
        vs += [st.v_W[s], st.v_b[s]]
        steps += [st.steps[s], st.steps[s]]
    for s in pick:
        st.steps[s] += 1
    beta1, beta2 = cfg.betas
    if hasattr(torch, "_fused_adam_"):  # one pass over memory instead of ~10 elementwise ops
        torch._fused_adam_(params, grads, ms, vs, [], steps, lr=cfg.lr, beta1=beta1, beta2=beta2,
                           weight_decay=0.0, eps=cfg.eps, amsgrad=False, maximize=False)
        return
    for p, g, m, v, step in zip(params, grads, ms, vs, steps):  # the single-tensor algorithm, spelled out
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        n = float(step)
        denom = (v.sqrt() / (1 - beta2**n) ** 0.5).add_(cfg.eps)
        p.addcdiv_(m, denom, value=-cfg.lr / (1 - beta1**n))


def _score_round(st: _Streams, Xt: torch.Tensor, yt: torch.Tensor, C: int, R: int, cfg: ProbeConfig,
                 nepoch: int) -> None:
    """Score every model on its dev rows; keep improvements; count non-improvements; stop at tenacity."""
    S = len(st.ids)
    correct = torch.empty(S, R, dtype=torch.int64)
    for s in range(S):
        dev = torch.from_numpy(st.dev[s])
        logits = torch.addmm(st.b[s], Xt[dev], st.W[s].T).view(-1, R, C)
        correct[s] = (logits.argmax(2) == yt[dev].unsqueeze(1)).sum(0)
    running = ~st.stopped
    better = (correct > st.best_correct) & running
    st.best_correct = torch.where(better, correct, st.best_correct)
    rowmask = better.repeat_interleave(C, dim=1)  # [S, R*C]
    st.best_W = torch.where(rowmask.unsqueeze(2), st.W, st.best_W)
    st.best_b = torch.where(rowmask, st.b, st.best_b)
    worse = running & ~better
    st.stopped = st.stopped | (worse & (st.count >= cfg.tenacity))
    st.count = st.count + worse.to(torch.int64)
    st.n_epochs = torch.where(running, torch.full_like(st.n_epochs, nepoch), st.n_epochs)
