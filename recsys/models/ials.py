"""Implicit alternating least squares (iALS): Hu, Koren & Volinsky (2008) with the refinements of Rendle et al.
(2022, "Revisiting the Performance of iALS on Item Recommendation Benchmarks").

With user vectors w_u, item vectors h_i, observed pairs S with confidences c_ui, the model minimises

    sum_{(u,i) in S} c_ui (w_u.h_i - 1)^2  +  alpha0 sum_{all u,i} (w_u.h_i)^2
        + sum_u lambda_u |w_u|^2 + sum_i lambda_i |h_i|^2,
    lambda_u = reg * (|I_u| + alpha0 * n_items) ** nu,    lambda_i = reg * (|U_i| + alpha0 * n_users) ** nu.

alpha0 (`unobserved_weight`) pulls every score towards 0; its term over all pairs is alpha0 * H^T H in each
user's normal equations (the Gramian trick), computed once per half-step, so a sweep costs
O(nnz k^2 + (n_users + n_items) k^3) rather than O(n_users n_items k). nu (`reg_exponent`) scales the
regularisation with how much data a row has (0: plain L2).

Each epoch updates all items given the users, then all users given the items (see `solve_rows`): exactly with
solver='cholesky', or by a few conjugate-gradient steps from the current vectors with solver='cg' (the default,
faster, equally good). The export ends with the user solve given the final items (the last half-step with 'cholesky';
with 'cg', CG continued from the trained vectors to a relative residual of 1e-5): the solve that
`recsys.engine.Engine.fold_in` repeats exactly in numpy at serving time, so folding in a training user's own
history reproduces their trained vector.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Iterable, Iterator
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
import torch

from .. import distributed
from ..data import Interactions
from ..exceptions import DataValidationError
from ..foldin import CONFIDENCES, FoldIn, confidence, penalty
from ..params import BOOL, Choice, Float, Int, Interval, Options
from .base import Exported, Recommender
from .loop import fit_loop, ndcg_validator, resolve_device, seed_everything

__all__ = ["CONFIDENCES", "IALS", "confidence", "objective", "solve_rows"]

log = logging.getLogger("recsys")

# Bytes of float32 work per chunk of a half-step: the (batch, k, k) systems, and separately the gathered
# (batch, history, k) vectors. Small chunks stay in cache on a CPU (measured fastest at a few MiB); a GPU wants
# big batches. 256 MiB of systems is 1,024 users at k=256.
CPU_CHUNK_BYTES = 8 * 2**20
PAD_GROWTH = 2  # a chunk's longest row is at most this many times its shortest (see padded_chunks)
GPU_CHUNK_BYTES = 256 * 2**20
# The exported user solve with solver='cg': CG from the trained vectors until every row's relative residual is
# at most EXPORT_TOL, capped at 2 x factors steps (exact arithmetic needs <= factors). Measured against the
# exact Cholesky solve on logs of several shapes (benchmarks/ials_export.py, benchmarks/README.md).
EXPORT_TOL = 1e-5


def solve_rows(fixed: torch.Tensor, indptr: np.ndarray, indices: np.ndarray, conf: np.ndarray, *, reg: float,
               reg_exponent: float, unobserved_weight: float, solver: str = "cholesky", cg_steps: int = 3,
               current: torch.Tensor | None = None, chunk_bytes: int | None = None,
               cg_kernel: str = "auto", tol: float | None = None) -> torch.Tensor:
    """One half-step: for every row r of a CSR matrix (indptr, indices, conf >= 0) over the rows f_j of `fixed`
    (n_cols, k), solve

        (sum_j c_rj f_j f_j^T + alpha0 F^T F + lambda_r I) x_r = sum_j c_rj f_j,
        lambda_r = reg * (nnz_r + alpha0 * n_cols) ** reg_exponent.

    solver 'cholesky' solves exactly: a row with k or more entries by a batched Cholesky of its k x k system;
    a shorter row (most items, in a long-tailed catalogue) by the push-through identity
    x = M^-1 X^T (C^-1 + X M^-1 X^T)^-1 1 with M = alpha0 F^T F + lambda_r I diagonal in the Gramian's eigenbasis,
    an nnz_r x nnz_r system instead. 'cg' takes `cg_steps` conjugate-gradient steps from `current` (the rows'
    present vectors, as implicit does), which never increases the loss and costs O(nnz k + n_rows k^2) per step:
    for all rows at once as sparse products (`_conjugate_gradient_sparse`; cg_kernel 'sparse', the default
    but on Apple MPS), or in padded batches of rows (cg_kernel 'batched'). With `tol`, CG stops early once every
    row's residual |b_r - A_r x_r| is at most tol |b_r| (cg_steps is then a cap): a solve to convergence.
    Batched solves sort rows by length and solve batches of similar length; a chunk holds at most `chunk_bytes`
    of systems and, separately, of gathered (batch, length, k) vectors (a long row is gathered in slices). Empty
    rows get their exact solution, the zero vector. Returns (n_rows, k) on the device of `fixed`.
    """
    device, dtype = fixed.device, fixed.dtype
    if chunk_bytes is None:
        chunk_bytes = CPU_CHUNK_BYTES if device.type == "cpu" else GPU_CHUNK_BYTES
    n_rows, k = len(indptr) - 1, fixed.shape[1]
    counts = np.diff(indptr)
    lam = penalty(reg, reg_exponent, unobserved_weight, counts, len(fixed))
    gram = unobserved_weight * (fixed.T @ fixed)
    out = torch.zeros((n_rows, k), device=device, dtype=dtype)
    if current is None:  # CG starts from zero
        current = out
    if cg_kernel == "auto":  # MPS has no sparse CSR products: the padded batches there
        cg_kernel = "batched" if device.type == "mps" else "sparse"
    if solver == "cg" and cg_kernel == "sparse":
        return _conjugate_gradient_sparse(fixed, indptr, indices, conf, lam, gram, current, cg_steps, tol)
    order = np.argsort(counts, kind="stable")
    order = order[counts[order] > 0]
    short = order[counts[order] < k] if solver == "cholesky" else order[:0]
    if len(short):
        eigenvalues, basis = torch.linalg.eigh(gram.cpu().double())  # k x k, once (MPS has no float64)
        eigenvalues, basis = eigenvalues.clamp_min(0).to(device, dtype), basis.to(device, dtype)
        rotated = fixed @ basis
    for rows, idx, c in padded_chunks(indptr, indices, conf, short, k, chunk_bytes, k_by_k=False):
        mask = torch.as_tensor(c, device=device) > 0
        c = torch.as_tensor(c, device=device, dtype=dtype)
        Y = rotated[torch.as_tensor(idx, device=device)] * mask[:, :, None]  # (batch, length, k), padding 0
        Yd = Y / (eigenvalues + torch.as_tensor(lam[rows], device=device, dtype=dtype)[:, None])[:, None, :]
        S = Yd @ Y.mT
        S.diagonal(dim1=1, dim2=2).add_(torch.where(mask, 1 / torch.where(mask, c, 1), 1))
        a = _cholesky_solve(S, torch.ones((len(rows), S.shape[1], 1), device=device, dtype=dtype))
        out[torch.as_tensor(rows, device=device)] = (a.mT @ Yd)[:, 0, :] @ basis.T
    for rows, idx, c in padded_chunks(indptr, indices, conf, order[len(short):], k, chunk_bytes,
                                k_by_k=solver == "cholesky"):
        step = max(1, chunk_bytes // (4 * k) // len(rows))
        slices = [(torch.as_tensor(idx[:, s:s + step], device=device),
                   torch.as_tensor(c[:, s:s + step], device=device, dtype=dtype)) for s in range(0, idx.shape[1], step)]
        lam_rows = torch.as_tensor(lam[rows], device=device, dtype=dtype)
        rows_t = torch.as_tensor(rows, device=device)
        if solver == "cholesky":
            A = gram.expand(len(rows), k, k).clone()
            A.diagonal(dim1=1, dim2=2).add_(lam_rows[:, None])
            b = torch.zeros((len(rows), k, 1), device=device, dtype=dtype)
            for i, ci in slices:
                X = fixed[i]  # (batch, slice, k)
                cX = X * ci[:, :, None]  # padding: c = 0
                A.baddbmm_(cX.mT, X)
                b += (ci[:, None, :] @ X).mT  # (a row vector times X: far faster than X^T c in torch on CPU)
            out[rows_t] = _cholesky_solve(A, b)[:, :, 0]
        else:
            out[rows_t] = _conjugate_gradient(current[rows_t].clone(), gram, lam_rows, fixed, slices, cg_steps, tol)
    return out


class _RowBlock:
    """The rows of a CSR matrix that this process solves in a half-step: all of them, or under
    torch.distributed its contiguous block (`recsys.distributed.shards`), the solved blocks then gathered
    so every rank holds every row."""

    def __init__(self, matrix: sp.csr_matrix, bounds: np.ndarray | None):
        self.bounds = bounds
        self.start, self.stop = (0, matrix.shape[0]) if bounds is None else \
            (int(bounds[distributed.rank()]), int(bounds[distributed.rank() + 1]))
        self.rows = matrix if bounds is None else matrix[self.start:self.stop]

    @classmethod
    def of(cls, matrix: sp.csr_matrix) -> _RowBlock:
        active = distributed.active()
        return cls(matrix, distributed.shards(matrix.indptr, distributed.world_size()) if active else None)

    def solve(self, fixed: torch.Tensor, current: torch.Tensor | None = None, **solve) -> torch.Tensor:
        mine = None if current is None else current[self.start:self.stop]
        out = solve_rows(fixed, self.rows.indptr, self.rows.indices, self.rows.data, current=mine, **solve)
        return out if self.bounds is None else distributed.all_gather_rows(out, self.bounds)


def padded_chunks(indptr: np.ndarray, indices: np.ndarray, conf: np.ndarray, rows: np.ndarray, k: int,
            chunk_bytes: int, k_by_k: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Consecutive runs of `rows` (sorted by length) as (rows, column indices, confidences), the last two padded
    to (batch, longest) with index 0 and c = 0; at most chunk_bytes of batch x longest x k vectors and, with
    `k_by_k`, of k x k systems (rows shorter than k have smaller systems, bounded by their vectors). A run
    stops before a row more than `PAD_GROWTH` times as long as its first, so padding stays under that factor
    (a long-tailed catalogue would otherwise pad thousands of short rows to its longest)."""
    counts = indptr[rows + 1] - indptr[rows]
    max_vectors = max(1, chunk_bytes // (4 * k))  # batch x longest
    max_systems = max(1, chunk_bytes // (4 * k * k)) if k_by_k else max_vectors
    start = 0
    while start < len(rows):
        window = counts[start:start + max_systems]
        window = window[:max(1, int(np.searchsorted(window, PAD_GROWTH * window[0], side="right")))]
        batch = max(1, int(np.searchsorted(np.arange(1, len(window) + 1) * window, max_vectors, side="right")))
        chunk = rows[start:start + batch]
        start += batch
        yield chunk, *_padded(indptr, indices, conf, chunk)


def _cholesky_solve(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve the batch of positive definite systems A x = b (two triangular solves: faster than cholesky_solve)."""
    chol, info = torch.linalg.cholesky_ex(A)
    if int(info.max()) > 0:  # reg > 0 makes every system positive definite unless the inputs are not finite
        raise DataValidationError("iALS normal equations are not positive definite: the vectors have diverged. "
                                  "Check that weights are finite and reg > 0.")
    y = torch.linalg.solve_triangular(chol, b, upper=False)
    return torch.linalg.solve_triangular(chol.mT, y, upper=True)


def _conjugate_gradient(x: torch.Tensor, gram: torch.Tensor, lam: torch.Tensor, fixed: torch.Tensor,
                        slices: list[tuple[torch.Tensor, torch.Tensor]], steps: int,
                        tol: float | None = None) -> torch.Tensor:
    """`steps` batched CG steps from x on A_r x_r = b_r = X_r^T c_r, A_r p = gram p + lam_r p + X_r^T (c_r * X_r p).

    A chunk gathered in one slice keeps its (batch, length, k) vectors for all steps; longer ones regather."""
    cache = [(fixed[i], ci) for i, ci in slices] if len(slices) == 1 else None

    def gathered() -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        return cache if cache is not None else ((fixed[i], ci) for i, ci in slices)

    def matvec(p: torch.Tensor) -> torch.Tensor:
        out = p @ gram + lam[:, None] * p
        for X, ci in gathered():  # row vectors times X (or X^T): far faster than X @ column vectors on CPU
            out += ((ci * (p[:, None, :] @ X.mT)[:, 0, :])[:, None, :] @ X)[:, 0, :]
        return out

    b = sum((ci[:, None, :] @ X)[:, 0, :] for X, ci in gathered())
    return _cg_steps(x, b - matvec(x), matvec, steps, _stop_at(b, tol))


def _stop_at(b: torch.Tensor, tol: float | None) -> torch.Tensor | None:
    """The squared residual norms per row below which CG has converged to `tol` (None: no early stop)."""
    return None if tol is None else tol**2 * torch.linalg.vecdot(b, b)


def _cg_steps(x: torch.Tensor, r: torch.Tensor, matvec, steps: int, stop: torch.Tensor | None = None
              ) -> torch.Tensor:
    """`steps` conjugate-gradient steps on A x_r = b_r for a batch of rows from x, whose residual b - A x is `r`;
    fewer once every row's squared residual norm is <= `stop`. Updates x and r in place (a half-step over all
    rows of a large log is bound by memory traffic)."""
    p = r.clone()
    rs = torch.linalg.vecdot(r, r)
    for step in range(steps):
        if stop is not None and bool((rs <= stop).all()):
            log.debug("CG converged after %d of at most %d steps", step, steps)
            break
        Ap = matvec(p)
        denom = torch.linalg.vecdot(p, Ap)
        a = torch.where(denom > 0, rs / torch.where(denom > 0, denom, 1), 0)[:, None]
        x.addcmul_(a, p)
        r.addcmul_(a, Ap, value=-1)
        rs_new = torch.linalg.vecdot(r, r)
        p.mul_(torch.where(rs > 0, rs_new / torch.where(rs > 0, rs, 1), 0)[:, None]).add_(r)
        rs = rs_new
    return x


def _conjugate_gradient_sparse(fixed: torch.Tensor, indptr: np.ndarray, indices: np.ndarray, conf: np.ndarray,
                               lam: np.ndarray, gram: torch.Tensor, current: torch.Tensor, steps: int,
                               tol: float | None = None) -> torch.Tensor:
    """`steps` CG steps from `current` for every row at once, A_r p = gram p + lam_r p + X_r^T (c_r * X_r p), as
    sparse products over the CSR pattern: X p is a sampled dense-dense product (one dot product per stored
    pair), X^T (w * ...) a weighted sum of gathered rows per CSR row (`embedding_bag`, FBGEMM's kernel on CPU:
    measured 3x faster than torch's CSR-dense product). O(nnz k) per step with no padding and no loop over
    chunks. Empty rows get their exact solution, 0."""
    device, dtype = fixed.device, fixed.dtype
    shape = (len(indptr) - 1, len(fixed))
    ip, ix = _csr_index(indptr, indices, device)
    c = torch.as_tensor(conf, device=device, dtype=dtype)
    lam_t = torch.as_tensor(lam, device=device, dtype=dtype)[:, None]
    fixed_t = fixed.T
    offsets = ip[:-1]

    def weighted_rows(w: torch.Tensor) -> torch.Tensor:  # sum_j w_rj f_j for every row r
        return torch.nn.functional.embedding_bag(ix, fixed, offsets, mode="sum", per_sample_weights=w)

    with _quiet_sparse():
        pattern = _csr(ip, ix, c, shape)

        def scores(p: torch.Tensor) -> torch.Tensor:  # f_j . p_r per stored pair (r, j)
            return torch.sparse.sampled_addmm(pattern, p, fixed_t, beta=0.0).values()

        def matvec(p: torch.Tensor) -> torch.Tensor:
            return torch.addmm(weighted_rows(scores(p).mul_(c)), p, gram).addcmul_(lam_t, p)

        x = current.clone()  # residual b - A x = X^T (c * (1 - X x)) - gram x - lam x: one product pass fewer
        residual = torch.addmm(weighted_rows(scores(x).sub_(1).mul_(c)), x, gram).addcmul_(lam_t, x).neg_()
        stop = None if tol is None else _stop_at(weighted_rows(c), tol)  # |b| costs one pass more
        x = _cg_steps(x, residual, matvec, steps, stop)
    x[torch.as_tensor(np.diff(indptr) == 0, device=device)] = 0
    return x


def _csr_index(indptr: np.ndarray, indices: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A CSR pattern as torch index tensors: int32 where they fit (the products measured ~15% faster)."""
    index = torch.int32 if len(indices) < 2**31 else torch.int64
    return (torch.as_tensor(indptr, device=device, dtype=index),
            torch.as_tensor(indices, device=device, dtype=index))


def _csr(ip: torch.Tensor, ix: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    return torch.sparse_csr_tensor(ip, ix, values, size=shape, check_invariants=False)


@contextlib.contextmanager
def _quiet_sparse() -> Iterator[None]:
    """Silence torch's once-per-process notice that sparse CSR support is in beta."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        yield


def _padded(indptr: np.ndarray, indices: np.ndarray, conf: np.ndarray, rows: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """The rows' column indices and confidences as (len(rows), longest) arrays, padded with index 0 and c = 0."""
    lens = indptr[rows + 1] - indptr[rows]
    mask = np.arange(lens.max()) < lens[:, None]
    flat = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(indptr[rows], lens)
    idx = np.zeros(mask.shape, np.int64)
    c = np.zeros(mask.shape, np.float32)
    idx[mask], c[mask] = indices[flat], conf[flat]
    return idx, c


def objective(W: torch.Tensor, H: torch.Tensor, user_index: np.ndarray, item_index: np.ndarray, conf: np.ndarray,
              *, reg: float, reg_exponent: float, unobserved_weight: float, chunk_bytes: int = CPU_CHUNK_BYTES,
              indptr: np.ndarray | None = None) -> float:
    """The iALS loss (module docstring) of user vectors W and item vectors H, in O(nnz k + (n_users + n_items) k^2).

    indptr: the CSR row pointer of the pairs when they are in CSR order (sorted by user): the observed term is
    then one sampled dense-dense product (as fast as a CG step; the chunked gathers cost as much as a
    half-step)."""
    device, k = W.device, W.shape[1]
    observed = 0.0
    if indptr is not None and device.type != "mps":
        c = torch.as_tensor(conf, device=device, dtype=W.dtype)
        with _quiet_sparse():  # beta=0: only the pattern of `c` counts
            scores = torch.sparse.sampled_addmm(_csr(*_csr_index(indptr, item_index, device), c, (len(W), len(H))),
                                                W, H.T, beta=0.0).values().sub_(1)
        observed = float((c * scores).mul_(scores).sum(dtype=torch.float64))  # no float64 copy of nnz values
    else:
        step = max(1, chunk_bytes // (8 * k))
        for s in range(0, len(user_index), step):
            u = torch.as_tensor(user_index[s:s + step], device=device, dtype=torch.long)
            i = torch.as_tensor(item_index[s:s + step], device=device, dtype=torch.long)
            c = torch.as_tensor(conf[s:s + step], device=device, dtype=W.dtype)
            observed += float((c * ((W[u] * H[i]).sum(1) - 1) ** 2).sum(dtype=torch.float64))
    everything = unobserved_weight * float(((W.T @ W) * (H.T @ H)).sum(dtype=torch.float64))
    n_u = np.diff(indptr) if indptr is not None else np.bincount(user_index, minlength=len(W))
    n_i = np.bincount(item_index, minlength=len(H))
    lam_u = torch.as_tensor(reg * (n_u + unobserved_weight * len(H)) ** reg_exponent, device=device)
    lam_i = torch.as_tensor(reg * (n_i + unobserved_weight * len(W)) ** reg_exponent, device=device)
    penalty = float((lam_u * torch.linalg.vecdot(W, W).double()).sum()
                    + (lam_i * torch.linalg.vecdot(H, H).double()).sum())
    return observed + everything + penalty


class IALS(Recommender):
    """Implicit ALS with an unobserved weight and frequency-scaled regularisation (see the module docstring).

    factors: embedding size. epochs: maximum ALS sweeps (each solves items, then users; early stopping on
    validation NDCG@10 when `fit` gets a validation set, after `patience` sweeps without improvement).
    reg: lambda; reg_exponent: nu (0: plain L2, 1: scaled by each row's data, Rendle et al.'s choice).
    unobserved_weight: alpha0, the weight of every (user, item) pair pushing its score towards 0.
    confidence: how an observed pair's weight becomes its confidence: 'binary' (1), 'weight' (1 + alpha * w),
    'log' (1 + alpha * log1p(w / epsilon)), 'power' ((w / epsilon) ** alpha); weights must be >= 0 for all but
    'binary'.
    solver: 'cg' (`cg_steps` conjugate-gradient steps per half-step from the current vectors, as implicit does;
    measured 1.6x faster than 'cholesky' on MovieLens at equal quality, 4x on long histories) or 'cholesky'
    (exact half-steps). Either way the exported user vectors are the solve that fold-in repeats (to 1e-5).
    init_std: standard deviation of the initial user vectors (None: 0.1 / sqrt(factors)).
    max_seconds: no epoch starts after this many seconds of training (None: no bound; the tuner bounds trials
    this way).

    Defaults are Rendle et al.'s published MovieLens-20M settings (reg 0.003, nu 1, alpha0 0.1, 16 epochs), a
    starting point: good values of alpha0 and reg depend on the data, so tune them per dataset.
    """

    name: ClassVar[str] = "ials"
    _parameter_constraints: ClassVar[dict] = {
        "factors": Interval(int, 1), "epochs": Interval(int, 1),
        "reg": Interval(float, 0, closed_low=False), "reg_exponent": Interval(float, 0, 1),
        "unobserved_weight": Interval(float, 0), "confidence": Options(CONFIDENCES),
        "solver": Options(("cholesky", "cg")), "cg_steps": Interval(int, 1),
        "alpha": Interval(float, 0), "epsilon": Interval(float, 0, closed_low=False),
        "init_std": Interval(float, 0, closed_low=False, none_ok=True), "patience": Interval(int, 1),
        "seed": Interval(int, 0), "device": Options(("auto", "cpu", "cuda", "mps")), "progress": BOOL,
        "max_val_users": Interval(int, 1, none_ok=True), "max_seconds": Interval(float, 0, none_ok=True),
    }
    # More than 512 factors is never widened into: such trials cost more than a default budget buys. Ranges are
    # wide on purpose (a new dataset is not MovieLens); the quality benchmark checks that no best sits on an edge.
    search_space: ClassVar[dict] = {
        "factors": Int(16, 512, log=True, limits=("high",)), "reg": Float(1e-4, 100.0, log=True),
        "unobserved_weight": Float(1e-3, 100.0, log=True), "reg_exponent": Float(0.0, 1.0, limits=("low", "high")),
        "confidence": Choice(("binary", "power")), "alpha": Float(0.1, 4.0, log=True)}
    # Early stopping picks the epochs, so the cap is high (with a small unobserved weight ALS climbs slowly: its
    # best epoch was 57-138 on the 50k-item suite log, with exact Cholesky sweeps as with conjugate gradients).
    # Early stopping and pruning judge each epoch on a fixed sample of 2,000 validation users (scoring them is
    # most of a trial's time on a wide catalogue); a trial's value is still measured on every validation user.
    trial_defaults: ClassVar[dict] = {"epochs": 128, "max_val_users": 2000}
    # The cheap 32-factor regimes first (without --tune, the leading starts the work bound affords run): Hu et
    # al.'s regime as implicit's ALS finds it when tuned on the suite's logs (alpha ~ 10-60 is an unobserved
    # weight of ~0.02-0.1; a plain L2 penalty; few factors: 16-56 on six of eight logs), here first with the
    # weights as confidences and a strong penalty (the other regime tuned implicit finds: a small alpha, 0.08-2.2
    # on four of the eight logs, weights on, i.e. an unobserved weight of 0.5-12 against c = w and a penalty per
    # unit of confidence of 33-65); then without frequency scaling, reg 1, 32 factors (the cheapest trial); then
    # that with c = w and a ten times stronger penalty (tuned implicit's penalty per unit of confidence,
    # regularization / alpha, is 5-34 on six of the eight suite logs; on a log whose weights are all equal the
    # confidence parameters are not searched and this is the same regime with reg 10). Last, the unobserved
    # weight alpha0, which spans orders of magnitude across logs (Rendle et al. 2022 tune it per dataset; sparse
    # logs with short histories want it small), swept on a log scale.
    start_points: ClassVar[tuple] = (
        {"unobserved_weight": 3.0, "reg_exponent": 0.0, "reg": 30.0, "factors": 32, "confidence": "power",
         "alpha": 1.0},
        {"unobserved_weight": 0.03, "reg_exponent": 0.0, "reg": 1.0, "factors": 32},
        {"unobserved_weight": 0.03, "reg_exponent": 0.0, "reg": 10.0, "factors": 32, "confidence": "power",
         "alpha": 1.0},
        {"unobserved_weight": 0.01}, {"unobserved_weight": 0.001})
    weight_parameters: ClassVar[tuple] = ("confidence", "alpha")
    inactive_when: ClassVar[dict] = {"alpha": ("confidence", ("binary",))}  # binary confidences ignore alpha

    def __init__(self, *, factors: int = 128, epochs: int = 16, reg: float = 0.003, reg_exponent: float = 1.0,
                 unobserved_weight: float = 0.1, confidence: str = "binary", alpha: float = 1.0,
                 epsilon: float = 1.0, solver: str = "cg", cg_steps: int = 3, init_std: float | None = None,
                 patience: int = 3, seed: int = 0, device: str = "auto", progress: bool = True,
                 max_val_users: int | None = 5000,
                 max_seconds: float | None = None):
        self.factors = factors
        self.epochs = epochs
        self.reg = reg
        self.reg_exponent = reg_exponent
        self.unobserved_weight = unobserved_weight
        self.confidence = confidence
        self.alpha = alpha
        self.epsilon = epsilon
        self.solver = solver
        self.cg_steps = cg_steps
        self.init_std = init_std
        self.patience = patience
        self.seed = seed
        self.device = device
        self.progress = progress
        self.max_val_users = max_val_users
        self.max_seconds = max_seconds

    def _fit(self, train: Interactions, validation: Interactions | None) -> Exported:
        if self.confidence != "binary" and np.any(train.weight < 0):
            raise DataValidationError(f"confidence={self.confidence!r} needs weights >= 0; the interactions hold "
                                      f"{int((train.weight < 0).sum())} negative weight(s). Use "
                                      "confidence='binary' or drop them.")
        gen = seed_everything(self.seed)
        device = distributed.device_for(resolve_device(self.device))
        by_user = train.matrix()  # duplicates summed, as fold-in does
        conf_data = confidence(by_user.data, self.confidence, self.alpha, self.epsilon)
        by_user = sp.csr_matrix((conf_data, by_user.indices, by_user.indptr), shape=by_user.shape)
        by_item = by_user.T.tocsr()
        coo = by_user.tocoo()
        item_rows, user_rows = _RowBlock.of(by_item), _RowBlock.of(by_user)  # this rank's rows (all, alone)
        hyper = {"reg": self.reg, "reg_exponent": self.reg_exponent, "unobserved_weight": self.unobserved_weight}
        solve = {**hyper, "solver": self.solver, "cg_steps": self.cg_steps}
        std = self.init_std if self.init_std is not None else 0.1 / math.sqrt(self.factors)
        W = (torch.randn((train.n_users, self.factors), generator=gen) * std).to(device)
        H = torch.zeros((train.n_items, self.factors), device=device)
        log.info("IALS: %d users x %d items, %d pairs, %d factors, device %s", train.n_users, train.n_items,
                 by_user.nnz, self.factors, device)

        def run_epoch(epoch: int) -> float:
            nonlocal W, H
            H = item_rows.solve(W, current=H, **solve)
            W = user_rows.solve(H, current=W, **solve)
            return objective(W, H, coo.row, coo.col, coo.data, indptr=by_user.indptr, **hyper) / by_user.nnz

        def snapshot() -> Exported:
            return Exported(H.cpu().numpy().copy(), W.cpu().numpy().copy(), foldin=self._foldin())

        result = fit_loop(epochs=self.epochs, run_epoch=run_epoch, snapshot=snapshot,
                          validate=distributed.on_main(ndcg_validator(train, validation, self.max_val_users,
                                                                      self.seed)),
                          patience=self.patience, progress=self.progress, desc="IALS", max_seconds=self.max_seconds)
        exported = result.best_state
        start = time.perf_counter()
        if self.solver == "cg":  # export what fold-in computes: the user solve given the final items, converged
            items = torch.as_tensor(exported.item_vectors, device=device)
            users = torch.as_tensor(exported.user_vectors, device=device)
            exported.user_vectors = user_rows.solve(items, current=users, **hyper, solver="cg", tol=EXPORT_TOL,
                                                    cg_steps=2 * self.factors).cpu().numpy()
        result.seconds += time.perf_counter() - start
        share = (item_rows.stop - item_rows.start + user_rows.stop - user_rows.start) / (train.n_items + train.n_users)
        exported.extra = result.facts(device=str(device), world_size=distributed.world_size(),
                                      rows_share=round(share, 4))  # of the rows this process solved
        return exported

    def _foldin(self) -> FoldIn:
        """The fold-in that repeats the training user solve (`recsys.foldin`)."""
        return FoldIn("ridge", reg=self.reg, reg_exponent=self.reg_exponent, unobserved_weight=self.unobserved_weight,
                      confidence=self.confidence, alpha=self.alpha, epsilon=self.epsilon)
