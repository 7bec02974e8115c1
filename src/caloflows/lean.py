"""Lean, fused sampling path for the MAF/IAF flows of :mod:`caloflows.flows` (issue 13).

The training path keeps zuko (autograd, ``log_prob``; a compiled run uses
:func:`rqs_forward_log_det` through :func:`caloflows.flows.maf_log_prob`).  For sampling, zuko rebuilds a
transform object per block and call, multiplies every MADE mask into its weight, broadcasts
the spline knots and evaluates the rational-quadratic spline (RQS, Durkan et al. 2019,
arXiv:1906.04032, eq. 4 and its inverse, appendix A.3) with dozens of small tensor ops.
:class:`LeanFlow` is a snapshot of a trained flow that

* keeps the masked weights ``mask * W`` (computed once per snapshot), the first layer split
  into its feature and its context columns (the context term is computed once per block),
  and the output rows reordered so that widths and heights, and derivatives, of all ``D``
  features are contiguous ``(B, D, 2, K)`` / ``(B, D, K - 1)`` views (one knot pass for both);
* evaluates the spline of all ``D`` features of a block as one vectorised function
  (:func:`rqs_inverse`, :func:`rqs_forward`), the spline parameters computed once per block;
  the bin is found on unnormalised cumulative bin sizes and only its two knots are normalised and
  its two derivatives transformed, not all ``K + 1`` of them as zuko does (stop 20; timed against
  that in ``benchmarks/bench_lean.py --reference-spline``);
* skips the masked half of large MADE output layers: hidden units sorted by the first feature rank
  that reads them, one matmul per group of features over the prefix it reads
  (:meth:`LeanBlock._triangular_chunks`, stop 22: the full CaloFlow student 1.5x faster at batch
  10000, ``benchmarks/bench_output_groups.py``);
* inverts a MAF block (teacher, flow-I) exactly in ``D`` sequential steps whose cost is only
  the rows of the current feature (first-layer pre-activation updated by one rank-1 term);
* runs in :func:`torch.inference_mode` and in row chunks whose working set stays in cache
  (:func:`auto_chunk`), so per-shower time does not grow with the batch.

Same formulas and parametrisation as :class:`zuko.transforms.MonotonicRQSTransform`, so
the same latent noise gives the same sample (to float round-off) as the zuko path
(``tests/test_lean.py``).  The graph has no data-dependent shapes, so it also exports to
ONNX (:mod:`caloflows.export`).

>>> import torch
>>> from caloflows.flows import build_iaf
>>> f = build_iaf(6, context=2, transforms=2, hidden_features=(16,))
>>> lean = LeanFlow.from_flow(f)
>>> z, c = torch.randn(4, 6), torch.randn(4, 2)
>>> x = lean.sample(z, c)
>>> bool(torch.allclose(lean.transform(x, c), z, atol=1e-4))
True
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from bisect import bisect_left
from collections.abc import Callable
from itertools import accumulate
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as Fn
from zuko.flows.autoregressive import MaskedAutoregressiveTransform
from zuko.lazy import Flow

__all__ = ["LeanFlow", "LeanBlock", "rqs_inverse", "rqs_forward", "rqs_forward_log_det", "auto_chunk", "lean_flow", "supports_lean",
           "set_sampling_weights", "int8_supported", "SAMPLING_WEIGHTS",
           "CHUNK_BYTES", "CHUNK_MIN_ROWS", "SEQUENTIAL_CHUNK_BYTES", "SEQUENTIAL_CHUNK_MIN_ROWS"]

#: bytes of spline parameters per chunk (B x D x (3K - 1) values) that :func:`auto_chunk` aims at;
#: measured with ``benchmarks/bench_lean.py`` and ``benchmarks/bench_chunk.py`` (issue 13), see
#: :func:`auto_chunk`.
CHUNK_BYTES = int(os.environ.get("CALOFLOWS_CHUNK_BYTES", 4 << 20))

#: fewest rows per chunk (:func:`auto_chunk`'s ``lo``): below it the per-call overhead of the ~20
#: tensor operations per block dominates.
CHUNK_MIN_ROWS = int(os.environ.get("CALOFLOWS_CHUNK_MIN_ROWS", 256))

#: the byte target and floor for a block inverted in D sequential steps (a MAF teacher's or flow-I's
#: sampling), whose per-step overhead wants larger chunks: on the ParaFlow teacher (128 crystals,
#: float64) 256-row chunks are 34 % slower at batch 10000 than these 512 (bench_chunk.py).
SEQUENTIAL_CHUNK_BYTES = int(os.environ.get("CALOFLOWS_SEQUENTIAL_CHUNK_BYTES", 16 << 20))
SEQUENTIAL_CHUNK_MIN_ROWS = 64

#: feature groups of the block-triangular MADE output layer (:meth:`LeanBlock._triangular_chunks`)
#: for chunks of at least :data:`OUTPUT_GROUPS_ROWS` rows (fewer rows: the dense layer); 1 keeps the
#: dense layer.  The full CaloFlow student (648 voxels, 1296 hidden units, cyclic degrees), one thread,
#: quiet machine (``benchmarks/bench_output_groups.py``): at batch 2560 4 / 8 / 16 groups take 0.72 /
#: 0.65 / 0.60 of the dense layer's time per shower; at batch 1 0.93 / 0.97 / 1.17, where a control
#: without masked zeros to skip moved by as much (0.94-0.96), so small batches keep the dense layer.
OUTPUT_GROUPS = int(os.environ.get("CALOFLOWS_OUTPUT_GROUPS", 16))
OUTPUT_GROUPS_ROWS = 32

#: output layers with fewer weights than this stay dense: they stay in cache, where the extra matmul
#: calls cost more than the masked zeros (SUPERCALO: 10 features x 128 units).
OUTPUT_GROUPS_MIN_WEIGHTS = 1 << 20

#: at most this many rows on the CPU, sampling runs its splines in numpy: a MAF's sequential inverse all
#: its steps (:meth:`LeanBlock._sequential_numpy`; measured with ``benchmarks/bench_lean.py --flow1``), an
#: IAF block the spline of its one pass (:func:`_rqs_inverse_numpy`, 0.088 against 0.19 ms for the 648
#: voxels of a CaloFlow student block at batch 1, stop 23).
NUMPY_ROWS = int(os.environ.get("CALOFLOWS_NUMPY_ROWS", 16))

#: what the IAF students' MADE output layers (most of their weights) are stored as for sampling
#: (generation setting ``student_weights``, :meth:`LeanBlock.quantize_output`).
SAMPLING_WEIGHTS = ("float32", "int8")


def auto_chunk(features: int, params_per_feature: int, itemsize: int = 4, lo: int | None = None, hi: int = 4096,
               sequential: bool = False) -> int:
    """Rows per chunk so that one block's spline parameters take about :data:`CHUNK_BYTES`
    (``sequential``: a block inverted in D steps, :data:`SEQUENTIAL_CHUNK_BYTES`).

    A power of two in ``[lo, hi]`` (``lo``: :data:`CHUNK_MIN_ROWS`, sequential
    :data:`SEQUENTIAL_CHUNK_MIN_ROWS`).  One-pass (IAF student) blocks: 256 rows for ds2-coarse (648
    voxels, 23 parameters each, float32; fastest of 64-4096 at batch 1000 in bench_lean.py), ParaFlow
    (128 crystals) and one ds2 layer (144 voxels).  Until stop 16 they had the sequential rule (16 MiB,
    ``lo`` = 64), which gave the ParaFlow student chunks of 1024 rows, 30 % slower at batch 10000 than
    256 and slower per shower than at batch 100 (bench_chunk.py).  Sequential: 4096 rows for flow-I
    (9 layers, float64), 512 for the ParaFlow teacher.

    >>> auto_chunk(128, 23), auto_chunk(128, 23, 8, sequential=True)
    (256, 512)
    """
    target, floor = (SEQUENTIAL_CHUNK_BYTES, SEQUENTIAL_CHUNK_MIN_ROWS) if sequential else (CHUNK_BYTES, CHUNK_MIN_ROWS)
    lo = floor if lo is None else lo
    per_row = max(1, features * params_per_feature * itemsize)
    n = max(1, target // per_row)
    n = 1 << int(math.floor(math.log2(n)))
    return int(min(hi, max(lo, n)))


# ---------------------------------------------------------------------------- the spline
def _knots(u: Tensor, bound: float, ls: float) -> Tensor:
    """Unconstrained bin sizes (..., K) -> knot positions (..., K + 1) from -bound to bound (zuko's)."""
    u = u / (1 + (2 * u / ls).abs())
    return bound * (2 * Fn.pad(torch.softmax(u, dim=-1).cumsum(-1), (1, 0)) - 1)


def _derivatives(u: Tensor, ls: float) -> Tensor:
    """Unconstrained inner-knot derivatives (..., K - 1) -> knot derivatives (..., K + 1), ends 1."""
    return torch.exp(Fn.pad(u / (1 + (u / ls).abs()), (1, 1)))


def _bin(kn: Tensor, dv: Tensor, k: Tensor) -> tuple[Tensor, ...]:
    """Bin ``k`` (..., 1) of knots ``kn`` (..., 2, K + 1) = (x, y) and derivatives ``dv`` (..., K + 1)."""
    bins = dv.shape[-1] - 1
    inside = ((k >= 0) & (k < bins)).squeeze(-1)
    k = k.clamp(0, bins - 1)
    k1 = k + 1
    k2 = k.unsqueeze(-2).expand(*kn.shape[:-1], 1)
    lo, hi = kn.gather(-1, k2).squeeze(-1), kn.gather(-1, k2 + 1).squeeze(-1)
    d0, d1 = dv.gather(-1, k).squeeze(-1), dv.gather(-1, k1).squeeze(-1)
    return inside, lo[..., 0], hi[..., 0], lo[..., 1], hi[..., 1], d0, d1


def _cumulative(wh: Tensor, ls: float) -> tuple[Tensor, Tensor]:
    """Unnormalised cumulative bin sizes of widths and heights ``wh`` (..., 2, K): ``C`` (..., 2, K + 1)
    with ``C[..., 0] = 0``, and their totals ``C[..., K]`` (..., 2).

    Knot ``j`` is ``bound (2 C_j / C_K - 1)``, zuko's softmax-cumsum knots (:func:`_knots`), but the
    sampling path normalises only the two knots of the bin it uses.  The bounded logits
    ``u / (1 + |2u / ls|)`` lie within ``|ls| / 2`` (3.45 for slope 1e-3), so ``exp`` needs no max
    subtraction.
    """
    e = torch.exp(wh / (1 + (2 * wh / ls).abs()))
    c = Fn.pad(e.cumsum(-1), (1, 0))
    return c, c[..., -1]


def _lookup(c: Tensor, tot: Tensor, d: Tensor, k: Tensor, bound: float,
            ls: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Knots and derivatives of bin ``k`` (...) from :func:`_cumulative`'s ``c`` (..., 2, K + 1), ``tot``
    (..., 2) and the unconstrained inner derivatives ``d`` (..., K - 1): x0, x1, y0, y1, d0, d1 (...).

    Only the bin's two knots are normalised and only its two derivatives transformed (zuko pads the
    derivatives with 0 at both ends: ``exp(0) = 1``)."""
    kk = torch.stack([k, k + 1], -1)  # (..., 2)
    edges = c.gather(-1, kk.unsqueeze(-2).expand(*c.shape[:-1], 2))  # (..., 2 [x, y], 2 [lo, hi])
    edges = bound * (2 * edges / tot.unsqueeze(-1) - 1)
    dv = Fn.pad(d, (1, 1)).gather(-1, kk)
    dv = torch.exp(dv / (1 + (dv / ls).abs()))
    return edges[..., 0, 0], edges[..., 0, 1], edges[..., 1, 0], edges[..., 1, 1], dv[..., 0], dv[..., 1]


def _search(c: Tensor, tot: Tensor, v: Tensor, bound: float) -> tuple[Tensor, Tensor]:
    """Bin of ``v`` (...) among the knots of one row of ``c`` (..., K + 1) (total ``tot`` (...)), and
    whether ``v`` lies inside ``(-bound, bound]`` (outside, the spline is the identity).

    ``knot_j < v`` is ``C_j < (v / bound + 1) C_K / 2``: the inner knots are compared without being
    normalised."""
    t = (v / bound + 1) * (0.5 * tot)
    k = (c[..., 1:-1] < t.unsqueeze(-1)).sum(-1)
    return k, (v > -bound) & (v <= bound)


def _inverse_wh(wh: Tensor, d: Tensor, y: Tensor, bound: float, slope: float) -> Tensor:
    """:func:`rqs_inverse` with widths and heights stacked as ``wh`` (..., 2, K): one knot pass."""
    ls = math.log(slope)
    c, tot = _cumulative(wh, ls)
    k, inside = _search(c[..., 1, :], tot[..., 1], y, bound)
    return _inverse_in_bin(inside, *_lookup(c, tot, d, k, bound, ls), y)


def _inverse_in_bin(inside: Tensor, x0: Tensor, x1: Tensor, y0: Tensor, y1: Tensor, d0: Tensor, d1: Tensor,
                   y: Tensor) -> Tensor:
    """Inverse of the rational-quadratic segment with knots (x0, y0), (x1, y1) and derivatives d0, d1
    at ``y`` (Durkan et al. 2019, arXiv:1906.04032, appendix A.3: the quadratic in its stable form);
    ``y`` itself where not ``inside``."""
    dy = y1 - y0
    s = dy / (x1 - x0)
    yy = torch.where(inside, y - y0, torch.zeros_like(y))
    q = d0 + d1 - 2 * s
    qa = dy * (s - d0) + yy * q
    qb = dy * d0 - yy * q
    qc = -s * yy
    z = 2 * qc / (-qb - (qb * qb - 4 * qa * qc).sqrt())
    return torch.where(inside, x0 + z * (x1 - x0), y)


def _forward_wh(wh: Tensor, d: Tensor, x: Tensor, bound: float, slope: float) -> Tensor:
    """:func:`rqs_forward` with widths and heights stacked as ``wh`` (..., 2, K)."""
    ls = math.log(slope)
    c, tot = _cumulative(wh, ls)
    k, inside = _search(c[..., 0, :], tot[..., 0], x, bound)
    x0, x1, y0, y1, d0, d1 = _lookup(c, tot, d, k, bound, ls)
    s = (y1 - y0) / (x1 - x0)
    z = torch.where(inside, (x - x0) / (x1 - x0), torch.zeros_like(x))
    zz = z * (1 - z)
    y = y0 + (y1 - y0) * (s * z * z + d0 * zz) / (s + (d0 + d1 - 2 * s) * zz)
    return torch.where(inside, y, x)


def rqs_forward_log_det(w: Tensor, h: Tensor, d: Tensor, x: Tensor, bound: float = 5.0,
                        slope: float = 1e-3) -> tuple[Tensor, Tensor]:
    """Forward RQS and ``log |dy/dx|`` per element (Durkan et al. 2019, arXiv:1906.04032, eqs. 4-5),
    zuko's parametrisation, differentiable: the density of :func:`caloflows.flows.maf_log_prob`.

    Identity (log-derivative 0) outside ``[-bound, bound]``.  Written without data-dependent
    shapes or Python objects per call, so that ``torch.compile`` traces a whole MAF density into
    one graph (``TrainConfig.compile``).

    >>> import torch
    >>> from zuko.transforms import MonotonicRQSTransform
    >>> phi, x = torch.randn(4, 3, 23, dtype=torch.float64), 3 * torch.randn(4, 3, dtype=torch.float64)
    >>> t = MonotonicRQSTransform(phi[..., :8], phi[..., 8:16], phi[..., 16:])
    >>> y, ladj = rqs_forward_log_det(phi[..., :8], phi[..., 8:16], phi[..., 16:], x)
    >>> y0, ladj0 = t.call_and_ladj(x)
    >>> bool(torch.allclose(y, y0, atol=1e-12) and torch.allclose(ladj, ladj0, atol=1e-10))
    True
    """
    ls = math.log(slope)
    kn, dv = _knots(torch.stack([w, h], -2), bound, ls), _derivatives(d, ls)
    k = (kn[..., 0, :] < x.unsqueeze(-1)).sum(-1, keepdim=True) - 1
    inside, x0, x1, y0, y1, d0, d1 = _bin(kn, dv, k)
    dx, dy = x1 - x0, y1 - y0
    s = dy / dx
    z = torch.where(inside, (x - x0) / dx, torch.zeros_like(x))
    zz = z * (1 - z)
    den = s + (d0 + d1 - 2 * s) * zz
    y = y0 + dy * (s * z * z + d0 * zz) / den
    jac = s * s * (2 * s * zz + d0 * (1 - z) * (1 - z) + d1 * z * z) / (den * den)
    zero = torch.zeros_like(x)
    return torch.where(inside, y, x), torch.where(inside, jac.log(), zero)


def rqs_inverse(w: Tensor, h: Tensor, d: Tensor, y: Tensor, bound: float = 5.0, slope: float = 1e-3) -> Tensor:
    """Inverse RQS of zuko's parametrisation, vectorised over all leading dimensions.

    ``w``, ``h`` (..., K) unconstrained widths and heights, ``d`` (..., K - 1) unconstrained
    inner derivatives, ``y`` (...) the spline outputs; identity outside ``[-bound, bound]``.
    Durkan et al. 2019 (arXiv:1906.04032) appendix A.3: the quadratic solved in its stable form.

    >>> import torch
    >>> from zuko.transforms import MonotonicRQSTransform
    >>> phi, y = torch.randn(5, 3, 23, dtype=torch.float64), 3 * torch.randn(5, 3, dtype=torch.float64)
    >>> t = MonotonicRQSTransform(phi[..., :8], phi[..., 8:16], phi[..., 16:])
    >>> bool(torch.allclose(rqs_inverse(phi[..., :8], phi[..., 8:16], phi[..., 16:], y), t.inv(y), atol=1e-12))
    True
    """
    return _inverse_wh(torch.stack([w, h], -2), d, y, bound, slope)


def rqs_forward(w: Tensor, h: Tensor, d: Tensor, x: Tensor, bound: float = 5.0, slope: float = 1e-3) -> Tensor:
    """Forward RQS (Durkan et al. 2019 eq. 4) of zuko's parametrisation, vectorised (see :func:`rqs_inverse`).

    >>> import torch
    >>> phi, x = torch.randn(4, 23, dtype=torch.float64), 3 * torch.randn(4, dtype=torch.float64)
    >>> y = rqs_forward(phi[..., :8], phi[..., 8:16], phi[..., 16:], x)
    >>> bool(torch.allclose(rqs_inverse(phi[..., :8], phi[..., 8:16], phi[..., 16:], y), x, atol=1e-10))
    True
    """
    return _forward_wh(torch.stack([w, h], -2), d, x, bound, slope)


@functools.cache
def _spline_scale(K: int, ls: float) -> np.ndarray:
    """Per-parameter scale of zuko's soft clamp ``u / (1 + |u * scale|)`` (widths, heights: 2 / log
    slope; derivatives: 1 / log slope) in the layout ``[widths K | heights K | derivatives K - 1]``."""
    return np.concatenate([np.full(2 * K, 2.0 / ls), np.full(K - 1, 1.0 / ls)])


@functools.cache
def _cumsum_matrix(K: int, dtype: np.dtype) -> np.ndarray:
    """(K, K + 1) 0/1 matrix: ``e @ M`` is ``[0, e_0, e_0 + e_1, ..., sum e]``."""
    return np.triu(np.ones((K, K + 1), dtype=dtype), 1)


def _rqs_inverse_numpy(wh: np.ndarray, d: np.ndarray, y: np.ndarray, bound: float, slope: float) -> np.ndarray:
    """:func:`_inverse_wh` in numpy, the same formulas (two-knot lookup), for a few rows on the CPU:
    ``wh`` (N, 2, K) unconstrained widths and heights, ``d`` (N, K - 1) inner derivatives, ``y`` (N,).

    A numpy op on a few hundred elements costs about a microsecond, a torch op several (dispatch):
    at batch 1 the vectorised torch spline of one CaloFlow student block (648 voxels) is ~30 ops.
    The soft clamp bounds the exponents by ``|log slope|``, so the exponentials need no max subtraction.
    """
    ls = math.log(slope)
    N, _, K = wh.shape
    # cumulative sums C_0 = 0 .. C_K as one small matmul (numpy's cumsum over a short last axis is
    # ~5x slower at N = 648); rows (N, [x, y]) of C flattened, so that a bin's knots are flat takes
    c = (np.exp(wh / (1.0 + np.abs(wh * (2.0 / ls)))).reshape(-1, K) @ _cumsum_matrix(K, wh.dtype)).reshape(-1)
    W = K + 1
    start = np.arange(0, 2 * N * W, 2 * W)  # flat index of C_0 of the widths of each row
    tot_x, tot_y = c[start + K], c[start + W + K]
    t = (y / bound + 1.0) * (0.5 * tot_y)
    ch = c.reshape(N, 2 * W)
    k = np.zeros(N, dtype=np.intp)  # the search: one comparison per inner knot (k: knots below y)
    for j in range(1, K):
        k += ch[:, W + j] < t
    inside = (y > -bound) & (y <= bound)
    i = start + k
    fx, fy = (2.0 * bound) / tot_x, (2.0 * bound) / tot_y
    x0, x1 = c[i] * fx - bound, c[i + 1] * fx - bound
    y0, y1 = c[i + W] * fy - bound, c[i + W + 1] * fy - bound
    dp = np.zeros((N, W), dtype=d.dtype)
    dp[:, 1:K] = d
    jd = np.arange(0, N * W, W) + k
    dpf = dp.reshape(-1)
    d0, d1 = dpf[jd], dpf[jd + 1]
    d0 = np.exp(d0 / (1.0 + np.abs(d0 / ls)))
    d1 = np.exp(d1 / (1.0 + np.abs(d1 / ls)))
    dx, dy = x1 - x0, y1 - y0
    s = dy / dx
    yy = np.where(inside, y - y0, 0.0).astype(y.dtype, copy=False)
    q = d0 + d1 - 2 * s
    qa = dy * (s - d0) + yy * q
    qb = dy * d0 - yy * q
    qc = -s * yy
    with np.errstate(invalid="ignore", divide="ignore"):
        z = 2 * qc / (-qb - np.sqrt(qb * qb - 4 * qa * qc))
    return np.where(inside, x0 + z * dx, y)


def _rqs_inverse_scalar(e: list, y: float, K: int, bound: float) -> float:
    """:func:`_rqs_inverse_numpy` for one row in plain Python floats: ``e`` the exponentiated
    soft-clamped parameters (3K - 1), ``y`` the spline output (a numpy op costs ~1 us, a float op ~50 ns)."""
    cw, ch = list(accumulate(e[:K])), list(accumulate(e[K:2 * K]))
    fw, fh = 2.0 * bound / cw[-1], 2.0 * bound / ch[-1]
    ys = [-bound] + [c * fh - bound for c in ch]
    k = bisect_left(ys, y) - 1  # number of knots below y, minus one (as the vectorised search)
    if k < 0 or k >= K:
        return y
    x0 = -bound if k == 0 else cw[k - 1] * fw - bound
    x1 = cw[k] * fw - bound
    y0, y1 = ys[k], ys[k + 1]
    d0 = 1.0 if k == 0 else e[2 * K + k - 1]
    d1 = 1.0 if k == K - 1 else e[2 * K + k]
    dx, dy = x1 - x0, y1 - y0
    s = dy / dx
    yy = y - y0
    q = d0 + d1 - 2 * s
    qa = dy * (s - d0) + yy * q
    qb = dy * d0 - yy * q
    qc = -s * yy
    r = qb * qb - 4 * qa * qc
    den = -qb - math.sqrt(r) if r >= 0 else math.nan
    z = 2 * qc / den if den != 0 else math.nan
    return x0 + z * dx


_COMPILED: dict[str, Callable] = {}


def _spline_fn(name: str, compiled: bool) -> Callable:
    """The eager spline function, or its ``torch.compile`` version (built once, on first use)."""
    fn = _inverse_wh if name == "inverse" else _forward_wh
    if not compiled:
        return fn
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(fn, dynamic=True)
    return _COMPILED[name]


# ---------------------------------------------------------------------------- one MADE block
class LeanBlock(nn.Module):
    """Masked weights of one zuko MADE block with an RQS univariate transformation.

    ``iaf``: the conditioner reads the latent side (:class:`caloflows.flows.MaskedIAFTransform`),
    so :meth:`inverse` is one pass and :meth:`forward` ``D`` steps; for a MAF the reverse.
    Rows of the output layer are reordered to ``[(widths, heights) (D, 2, K) | derivs (D, K-1)]``.
    """

    # buffers registered in __init__ (declared so that attribute access is typed as Tensor)
    w_in_t: Tensor
    w_ctx_t: Tensor
    b_in: Tensor
    w_out_t: Tensor
    b_out: Tensor
    w_step: Tensor
    b_step: Tensor

    def __init__(self, block: MaskedAutoregressiveTransform, iaf: bool) -> None:
        super().__init__()
        from .flows import _spline_bounds

        self._q_out: Any = None  # packed int8 output layer (quantize_output), None: float

        bound, slope = _spline_bounds(block.univariate)
        if bound is None:
            raise TypeError("the lean path needs zuko's MonotonicRQSTransform splines")
        shapes = [tuple(s) for s in block.shapes]
        if len(shapes) != 3 or len(shapes[0]) != 1 or shapes[1] != shapes[0] or shapes[2] != (shapes[0][0] - 1,):
            raise TypeError("unexpected spline parameter shapes")
        layers = list(block.hyper)
        lin = [m for m in layers if isinstance(m, nn.Linear)]
        acts = [m for m in layers if not isinstance(m, nn.Linear)]
        if len(lin) < 2 or not all(type(a) is nn.ReLU for a in acts) or len(acts) != len(lin) - 1:
            raise TypeError("the lean path needs a MADE of masked linear layers with ReLU")
        self.iaf = bool(iaf)
        assert slope is not None  # set together with bound (flows._spline_bounds)
        self.bound, self.slope = bound, float(slope)
        K = shapes[0][0]
        self.bins = K
        T = block.total
        # zuko's MaskedLinear registers ``mask`` as a buffer: nn.Module.__getattr__ is typed Tensor | Module
        w = [(cast(Tensor, m.mask) * m.weight).detach() for m in lin]
        b = [m.bias.detach() for m in lin]
        D = w[-1].shape[0] // T
        self.features = D
        self.context = w[0].shape[1] - D
        used = self._sort_hidden_units(block, cast(Tensor, lin[-1].mask), w, b, D, K)
        self._out_chunks = self._triangular_chunks(used, D, K, OUTPUT_GROUPS)
        # weights stored (in, out) contiguous: x @ w is 3-5x faster than x @ W.T at batch 1 (MKL sgemm)
        self.register_buffer("w_in_t", w[0][:, :D].T.contiguous())  # (D, H); row d: rank-1 update
        self.register_buffer("w_ctx_t", w[0][:, D:].T.contiguous())  # (C, H)
        self.register_buffer("b_in", b[0].clone())
        self._hid = len(lin) - 2
        for i in range(1, len(lin) - 1):
            self.register_buffer(f"w_h{i}", w[i].T.contiguous())
            self.register_buffer(f"b_h{i}", b[i].clone())
        rows = torch.arange(D * T).reshape(D, T)
        perm = torch.cat([rows[:, :2 * K].reshape(-1), rows[:, 2 * K:].reshape(-1)])  # [(D, 2, K) | (D, K-1)]
        self.register_buffer("w_out_t", w[-1][perm].T.contiguous())  # (H, D T)
        self.register_buffer("b_out", b[-1][perm].clone())
        # per-feature output rows (D, T, H) in the original layout for sequential steps
        self.register_buffer("w_step", w[-1].reshape(D, T, -1).transpose(1, 2).contiguous())  # (D, H, T)
        self.register_buffer("b_step", b[-1].reshape(D, T).contiguous())
        self.steps = [int(i) for i in torch.argsort(block.order).tolist()]

    @staticmethod
    def _sort_hidden_units(block: MaskedAutoregressiveTransform, mask: Tensor, w: list[Tensor], b: list[Tensor],
                           D: int, K: int) -> tuple[Tensor, bool] | None:
        """Sort the last hidden layer's units by the first feature rank that reads them (in place on
        ``w`` and ``b``: the same function); return the sorted output mask and whether the block's
        order is descending, or None for orders that are not monotone (random permutations) and for
        output layers below :data:`OUTPUT_GROUPS_MIN_WEIGHTS`, which keep the dense layer."""
        if mask.numel() < OUTPUT_GROUPS_MIN_WEIGHTS:
            return None
        order = cast(Tensor, block.order)
        ar = torch.arange(D)
        if torch.equal(order, ar):
            flip = False
        elif torch.equal(order, ar.flip(0)):
            flip = True
        else:
            return None
        rank = order.repeat_interleave(3 * K - 1)  # rank of the feature of each output row
        used = mask.bool()  # (D T, H)
        first = torch.where(used, rank[:, None], torch.full_like(used, D, dtype=torch.long)).min(0).values
        perm = torch.argsort(first, stable=True)
        w[-2], b[-2], w[-1] = w[-2][perm], b[-2][perm], w[-1][:, perm]
        return used[:, perm], flip

    @staticmethod
    def _triangular_chunks(sorted_mask: tuple[Tensor, bool] | None, D: int, K: int,
                           groups: int) -> list[tuple[int, int, int, int, int]] | None:
        """Block-triangular form of the MADE output layer: ``[(hidden units, wh columns a:e, derivative
        columns c:f)]`` per group of features, or None where it would not save a fifth of the layer.

        The output of the feature of rank ``r`` reads only the hidden units whose degree is at most
        ``r`` (Germain et al. 2015, arXiv:1502.03509): with the last hidden layer's units sorted by the
        first rank that reads them (:meth:`_sort_hidden_units`), the features of ranks ``[r_a, r_b)``
        read a prefix of them.  With equally spaced degrees (``H >= D``, or ``made_degrees=spread``)
        about half of the layer's weights are masked zeros, and ``groups`` matmuls over the prefixes
        skip ``(1 - 1 / groups) / 2`` of them.
        """
        if sorted_mask is None or groups < 2:
            return None
        used, flip = sorted_mask
        T = 3 * K - 1
        edges = [round(D * g / groups) for g in range(groups + 1)]
        chunks, cost = [], 0
        for ra, rb in zip(edges[:-1], edges[1:]):
            if rb <= ra:
                continue
            fa, fb = (D - rb, D - ra) if flip else (ra, rb)  # features of these ranks (index range)
            need = used[fa * T:fb * T].any(0).nonzero()
            n = int(need.max()) + 1 if len(need) else 1
            chunks.append((n, fa * 2 * K, fb * 2 * K, D * 2 * K + fa * (K - 1), D * 2 * K + fb * (K - 1)))
            cost += n * (fb - fa)
        return chunks if cost < 0.8 * used.shape[1] * D else None

    def quantize_output(self) -> None:
        """Store the MADE output layer as int8 for sampling (dynamic quantisation, Jacob et al. 2017,
        arXiv:1712.05877): one scale per output row (spline parameter), the hidden activations
        quantised to 8 bits per call, int8 products accumulated in int32 (fbgemm ``linear_dynamic``).

        At batch 1 the output layer's float32 weights stream from DRAM once per shower (46 MB for
        the quick CaloFlow student, 589 MB for the full one); int8 reads a quarter of that.  The
        spline parameters change by about 1 % of their largest value per row, so the showers are
        not the float32 student's: a sampling option for users who validate it (README "int8
        output layers").  The activation scale is one per call, i.e. per chunk of rows: at batch 1
        every shower has its own, in a chunk they share one (results depend on the batch size
        within the quantisation error, and are reproducible for the same seed and batch size).
        Only IAF blocks (one pass per sample); the density direction and export stay float.
        """
        if not self.iaf:
            return
        w = self.w_out_t.detach().T.float().contiguous()  # (D T, H)
        scale = (w.abs().amax(1) / 127.0).clamp_min(1e-12).double()
        with warnings.catch_warnings():  # torch 2.13 announces the quantized tensor API's removal (int8_supported)
            warnings.simplefilter("ignore", UserWarning)
            qw = torch.quantize_per_channel(w, scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
        self._q_out = torch.ops.quantized.linear_prepack(qw, self.b_out.detach().float().contiguous())

    # -------------------------------------------------------------- pieces
    def _ctx(self, c: Tensor | None, rows: int) -> Tensor:
        if c is None or self.context == 0:
            return self.b_in.expand(rows, -1)
        return torch.addmm(self.b_in, c, self.w_ctx_t)

    def _hidden(self, a: Tensor) -> Tensor:
        h = torch.relu(a)
        for i in range(1, self._hid + 1):
            h = torch.relu(torch.addmm(getattr(self, f"b_h{i}"), h, getattr(self, f"w_h{i}")))
        return h

    def _params(self, v: Tensor, ctx: Tensor) -> tuple[Tensor, Tensor]:
        """Spline parameters of all features from the conditioner input ``v`` (one MADE pass)."""
        D, K = self.features, self.bins
        h = self._hidden(torch.addmm(ctx, v, self.w_in_t))
        dense = h.requires_grad or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()  # one float matmul
        if self._q_out is not None and not dense:  # int8 weights (quantize_output); reduce_range: fbgemm's 7-bit inputs
            phi = torch.ops.quantized.linear_dynamic(h.float(), self._q_out, True).to(h.dtype)
        elif dense or h.shape[0] < OUTPUT_GROUPS_ROWS or self._out_chunks is None:
            phi = torch.addmm(self.b_out, h, self.w_out_t)
        else:  # the block-triangular output layer (:meth:`_triangular_chunks`)
            phi = h.new_empty(h.shape[0], self.w_out_t.shape[1])
            w, bo = self.w_out_t, self.b_out  # prefix blocks are strided views of the dense weights
            for n, a, e, c, f in self._out_chunks:
                hn = h[:, :n]
                torch.addmm(bo[a:e], hn, w[:n, a:e], out=phi[:, a:e])
                torch.addmm(bo[c:f], hn, w[:n, c:f], out=phi[:, c:f])
        B = phi.shape[0]
        return phi[:, :2 * D * K].view(B, D, 2, K), phi[:, 2 * D * K:].view(B, D, K - 1)

    def _sequential(self, src: Tensor, ctx: Tensor, fn: Callable) -> Tensor:
        """``out_d = fn(phi(out_{<d}), src_d)`` in the block's order, ``D`` steps (exact)."""
        K = self.bins
        out = torch.zeros_like(src)
        a = ctx
        for d in self.steps:
            phi = torch.addmm(self.b_step[d], self._hidden(a), self.w_step[d])
            od = fn(phi[:, :2 * K].view(-1, 2, K), phi[:, 2 * K:], src[:, d], self.bound, self.slope)
            out[:, d] = od
            if torch.onnx.is_in_onnx_export():  # no ONNX symbolic for addr
                a = a + od.unsqueeze(1) * self.w_in_t[d]
            else:
                a = torch.addr(a, od, self.w_in_t[d])
        return out

    def _numpy_weights(self) -> tuple:
        """numpy views of the buffers the sequential steps use (rebuilt after ``.to()``/``.double()``)."""
        key = (self.w_step.data_ptr(), self.w_step.dtype)
        cached = self.__dict__.get("_np")
        if cached is None or cached[0] != key:
            mids = tuple((getattr(self, f"w_h{i}").numpy(), getattr(self, f"b_h{i}").numpy())
                         for i in range(1, self._hid + 1))
            cached = (key, (self.w_in_t.numpy(), mids, self.w_step.numpy(), self.b_step.numpy()))
            self.__dict__["_np"] = cached
        return cached[1]

    def _sequential_numpy(self, src: Tensor, ctx: Tensor) -> Tensor:
        """:meth:`_sequential` for the inverse spline in numpy, for a few rows on the CPU.

        Same arithmetic as the torch steps (to float round-off); at batch 1 a torch op costs
        several microseconds of dispatch, a numpy op on a (1, 64) array about one, and flow-I's
        ``D x blocks`` steps (54 for ds2-coarse) are nothing but such tiny ops (issue 13
        profile).  One row: the spline in Python floats (:func:`_rqs_inverse_scalar`).
        """
        w_in, mids, w_step, b_step = self._numpy_weights()
        y = src.numpy()
        a = ctx.numpy().copy()
        K, bound = self.bins, self.bound
        if y.shape[0] == 1:  # one row: 1-D vectors, in-place updates, the spline in Python floats
            return torch.from_numpy(self._one_row_numpy(y[0], a[0], w_in, mids, w_step, b_step)[None])
        out = np.zeros_like(y)
        for d in self.steps:
            h = np.maximum(a, 0.0)
            for w, b in mids:
                h = np.maximum(h @ w + b, 0.0)
            phi = h @ w_step[d] + b_step[d]
            odv = _rqs_inverse_numpy(phi[:, :2 * K].reshape(-1, 2, K), phi[:, 2 * K:], y[:, d], bound, self.slope)
            out[:, d] = odv
            a += odv[:, None] * w_in[d]
        return torch.from_numpy(out)

    def _one_row_numpy(self, y: np.ndarray, a: np.ndarray, w_in: np.ndarray, mids: tuple, w_step: np.ndarray,
                       b_step: np.ndarray) -> np.ndarray:
        """The sequential steps of one row (``y`` (D,), first-layer pre-activation ``a`` (H,), updated
        in place): 1-D matrix-vector products, and each step's spline in Python floats."""
        K, bound = self.bins, self.bound
        scale = _spline_scale(K, math.log(self.slope)).astype(y.dtype)
        yl = y.tolist()
        out = np.zeros_like(y)
        for d in self.steps:
            h = np.maximum(a, 0.0)
            for w, b in mids:
                h = np.dot(h, w)
                h += b
                np.maximum(h, 0.0, out=h)
            phi = np.dot(h, w_step[d])
            phi += b_step[d]
            e = np.exp(phi / (1.0 + np.abs(phi * scale)))
            od = _rqs_inverse_scalar(e.tolist(), yl[d], K, bound)
            out[d] = od
            a += od * w_in[d]
        return out

    # -------------------------------------------------------------- directions
    @staticmethod
    def _few_rows(v: Tensor, compiled: bool) -> bool:
        """Whether ``v`` is small enough for the numpy spline (at most :data:`NUMPY_ROWS` rows on the
        CPU, eager, not traced or exported, no autograd)."""
        return (v.shape[0] <= NUMPY_ROWS and v.device.type == "cpu" and not compiled and not v.requires_grad
                and not torch.onnx.is_in_onnx_export() and not torch.jit.is_tracing())

    def inverse(self, y: Tensor, c: Tensor | None = None, compiled: bool = False) -> Tensor:
        """latent side -> data side of this block (sampling direction)."""
        ctx = self._ctx(c, y.shape[0])
        few = self._few_rows(y, compiled)
        if self.iaf:
            wh, d = self._params(y, ctx)
            if few:  # one pass: MADE in torch, the spline of all features in numpy
                K = self.bins
                x = _rqs_inverse_numpy(wh.numpy().reshape(-1, 2, K), d.numpy().reshape(-1, K - 1),
                                       y.numpy().reshape(-1), self.bound, self.slope)
                return torch.from_numpy(x.reshape(y.shape))
            return _spline_fn("inverse", compiled)(wh, d, y, self.bound, self.slope)
        if few:
            return self._sequential_numpy(y, ctx)
        return self._sequential(y, ctx, _spline_fn("inverse", compiled))

    def forward(self, x: Tensor, c: Tensor | None = None, compiled: bool = False) -> Tensor:
        """data side -> latent side of this block (density direction)."""
        ctx = self._ctx(c, x.shape[0])
        fn = _spline_fn("forward", compiled)
        if self.iaf:
            return self._sequential(x, ctx, fn)
        return fn(*self._params(x, ctx), x, self.bound, self.slope)


# ---------------------------------------------------------------------------- the flow
class LeanFlow(nn.Module):
    """Inference snapshot of a :func:`~caloflows.flows.build_maf` / :func:`~caloflows.flows.build_iaf` flow.

    :meth:`sample` maps latent ``z`` to data (all blocks inverted), :meth:`transform` data to
    latent.  Rows are processed in chunks of ``chunk`` (default :func:`auto_chunk`).  The
    snapshot does not follow later changes of the flow's weights; :func:`lean_flow` rebuilds
    it when they change.
    """

    def __init__(self, blocks: list[LeanBlock], chunk: int | None = None, compiled: bool = False) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)  # data -> latent order
        b0 = blocks[0]
        self.features, self.context = b0.features, b0.context
        self.chunk = chunk
        self.compiled = compiled

    @classmethod
    @torch.no_grad()
    def from_flow(cls, flow: Flow, chunk: int | None = None, compiled: bool = False) -> "LeanFlow":
        """Snapshot ``flow`` (weights, dtype and device as they are now)."""
        from .flows import MaskedIAFTransform, flow_blocks

        blocks = []
        for t in flow_blocks(flow):
            if type(t) is MaskedIAFTransform:
                blocks.append(LeanBlock(t, iaf=True))
            elif type(t) is MaskedAutoregressiveTransform:
                blocks.append(LeanBlock(t, iaf=False))
            else:
                raise TypeError(f"the lean path does not support {type(t).__name__}")
        return cls(blocks, chunk, compiled)

    def chunk_rows(self, dtype: torch.dtype, sampling: bool = True) -> int:
        """Rows per chunk (``chunk``, else :func:`auto_chunk`); ``sampling``: latent -> data, where
        MAF blocks are inverted sequentially (data -> latent: IAF blocks)."""
        if self.chunk:
            return int(self.chunk)
        b = cast(LeanBlock, self.blocks[0])  # nn.ModuleList is not generic in the torch stubs
        return auto_chunk(self.features, 3 * b.bins - 1, torch.finfo(dtype).bits // 8,
                          sequential=b.iaf != sampling)

    def _run(self, v: Tensor, c: Tensor | None, sampling: bool) -> Tensor:
        fn = self._sample if sampling else self._transform
        n = v.shape[0]
        step = self.chunk_rows(v.dtype, sampling)
        if n <= step:
            return fn(v, c)
        out = torch.empty_like(v)
        for a in range(0, n, step):
            out[a:a + step] = fn(v[a:a + step], None if c is None else c[a:a + step])
        return out

    def _sample(self, z: Tensor, c: Tensor | None) -> Tensor:
        for blk in reversed(self.blocks):
            z = cast(LeanBlock, blk).inverse(z, c, self.compiled)
        return z

    def _transform(self, x: Tensor, c: Tensor | None) -> Tensor:
        for blk in self.blocks:
            x = blk.forward(x, c, self.compiled)
        return x

    def sample(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        """latent ``z`` (B, D) and context (B, C) -> data (B, D); dtype of the snapshot."""
        return self._run(z, self._cond(c, z), sampling=True)

    def transform(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """data ``x`` (B, D) and context (B, C) -> latent (B, D)."""
        return self._run(x, self._cond(c, x), sampling=False)

    def forward(self, z: Tensor, c: Tensor | None = None) -> Tensor:  # for tracing / ONNX
        return self._sample(z, self._cond(c, z))

    def _cond(self, c: Tensor | None, v: Tensor) -> Tensor | None:
        if self.context == 0 or c is None:
            return None
        return c.to(v.dtype).expand(v.shape[0], -1)


def _parameters(flow: Flow) -> list[nn.Parameter]:
    """``list(flow.parameters())``, kept with the flow: walking the module tree costs ~0.1 ms per
    call at batch 1.  Parameter objects survive ``.to()``, ``.double()`` and ``load_state_dict``
    (their ``.data`` changes, which the cache keys of :func:`lean_flow` see)."""
    params = flow.__dict__.get("_caloflows_params")
    if params is None:
        params = flow.__dict__["_caloflows_params"] = list(flow.parameters())
    return params


def _has_iaf_blocks(flow: Flow) -> bool:
    """Whether ``flow`` has IAF blocks (kept with the flow, as :func:`supports_lean`)."""
    ok = flow.__dict__.get("_caloflows_has_iaf")
    if ok is None:
        from .flows import MaskedIAFTransform, flow_blocks

        ok = flow.__dict__["_caloflows_has_iaf"] = any(type(t) is MaskedIAFTransform for t in flow_blocks(flow))
    return ok


def supports_lean(flow: Flow) -> bool:
    """True if every block of ``flow`` is a MADE with RQS splines built by :mod:`caloflows.flows`
    (the answer is kept with the flow: the structure of a built flow does not change)."""
    ok = flow.__dict__.get("_caloflows_supports_lean")
    if ok is None:
        ok = flow.__dict__["_caloflows_supports_lean"] = _supports_lean(flow)
    return ok


def _supports_lean(flow: Flow) -> bool:
    from .flows import MaskedIAFTransform, _spline_bounds, flow_blocks

    try:
        blocks = flow_blocks(flow)
    except AttributeError:
        return False
    return bool(blocks) and all(
        isinstance(t, MaskedAutoregressiveTransform)
        and type(t) in (MaskedIAFTransform, MaskedAutoregressiveTransform) and t.order is not None
        and _spline_bounds(t.univariate)[0] is not None
        and all(isinstance(m, (nn.Linear, nn.ReLU)) for m in t.hyper) for t in blocks)


def set_sampling_weights(module: nn.Module, weights: str) -> None:
    """Sample the flows in ``module`` with their IAF blocks' output layers as ``weights``
    (:data:`SAMPLING_WEIGHTS`; ``int8``: :meth:`LeanBlock.quantize_output`), from the next
    :func:`lean_flow` on.  MAF blocks (sampled in D sequential steps) are not affected."""
    if module.__dict__.get("_caloflows_weights_set") == weights:  # batch 1: no checks, no walk over the tree per call
        return
    if weights not in SAMPLING_WEIGHTS:
        raise ValueError(f"sampling weights must be one of {', '.join(SAMPLING_WEIGHTS)}, not {weights!r}")
    if weights == "int8" and not int8_supported():
        raise RuntimeError("int8 sampling weights need one of torch's quantized CPU engines (x86, fbgemm, "
                           "qnnpack); this torch build has none")
    for m in module.modules():
        if isinstance(m, Flow):
            m.__dict__["_caloflows_weights"] = weights
    module.__dict__["_caloflows_weights_set"] = weights


def int8_supported() -> bool:
    """Whether this torch build has a quantized CPU engine for :meth:`LeanBlock.quantize_output`."""
    return hasattr(torch.ops.quantized, "linear_dynamic") and any(
        e in torch.backends.quantized.supported_engines for e in ("x86", "fbgemm", "qnnpack"))


def lean_flow(flow: Flow, dtype: torch.dtype | None = None) -> LeanFlow:
    """The flow's cached :class:`LeanFlow` in ``dtype`` (default: the parameters' dtype), rebuilt
    when a weight changed (optimizer step, ``load_state_dict``, ``.to()``/``.double()``: tensor
    version counters and storages).  A float32 flow snapshotted in float64 gives exactly what
    :func:`caloflows.flows.double_precision` gives (the cast is exact), without casting the module.
    IAF output layers are int8 where :func:`set_sampling_weights` asked for it (CPU only)."""
    params = _parameters(flow)
    p = params[0]
    dtype = p.dtype if dtype is None else dtype
    # inside caloflows.flows.double_precision the key is that of the original parameters
    key = flow.__dict__.get("_caloflows_src_key") or (tuple(
        (q.data_ptr(), q._version, q.dtype, q.device) for q in params), dtype)
    cache = flow.__dict__.setdefault("_caloflows_lean", {})
    weights = flow.__dict__.get("_caloflows_weights", "float32")
    if weights != "float32" and (p.device.type != "cpu" or not _has_iaf_blocks(flow)):
        weights = "float32"
    cached = cache.get((dtype, p.device, weights))
    if cached is not None and cached[0] == key:
        return cached[1]
    lean = LeanFlow.from_flow(flow, compiled=os.environ.get("CALOFLOWS_COMPILE", "0") == "1")
    if lean.blocks[0].w_step.dtype != dtype:
        lean = lean.to(dtype)
    if weights == "int8":
        for blk in lean.blocks:
            cast(LeanBlock, blk).quantize_output()
    cache[(dtype, p.device, weights)] = (key, lean)
    return lean
