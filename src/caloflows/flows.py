"""Masked autoregressive (MAF) and inverse autoregressive (IAF) flows built on ``zuko``.

CaloFlow (``caloflow_dataset1.txt``, sec. 3.1) uses MAFs [Papamakarios et al. 2017] and
IAFs [Kingma et al. 2016] whose univariate transformations are rational-quadratic splines
(RQS, [Durkan et al. 2019]) with parameters from MADE blocks [Germain et al. 2015].

Convention (zuko's): a flow's ``transform`` maps data ``x`` to latent ``z``;
``log p(x) = log N(z) + log|det dz/dx|`` and sampling applies the inverse.

* :func:`build_maf` -- the *teacher*: every MADE block ``T_k`` maps ``h_k -> h_{k+1}`` in one
  pass (density estimation is cheap); sampling inverts each block with ``D`` sequential passes.
* :func:`build_iaf` -- the *student*: MADE blocks whose conditioner reads the *latent* side.
  Block ``k`` maps ``g_k -> g_{k+1}`` with ``g_{k+1,i} = RQS_{phi(g_{k+1,<i})}(g_{k,i})``, so
  sampling ``g_{k,i} = RQS^{-1}_{phi(g_{k+1,<i})}(g_{k+1,i})`` is one pass per block and
  density estimation needs ``D`` passes (IAF, Kingma et al. 2016; CaloFlow II, Krause & Shih
  2110.11377).  The spline acts in the same sense as the teacher's, only the conditioner input
  differs (teacher: ``h_{k,<i}``, student: ``g_{k+1,<i}``), so the student's MADEs can start
  from the teacher's weights (:func:`init_student_from_teacher`) and its spline parameters are
  comparable with the teacher's.

Block ``k`` of a student built with the same arguments has the same feature ordering as
block ``k`` of the teacher, so intermediate coordinates ``h_k`` (teacher, data -> latent) and
``g_k`` (student, latent -> data) are comparable; :func:`forward_path` and
:func:`inverse_path` return them for probability density distillation.

Splines act on ``[-bound, bound]`` and are the identity outside (linear tails); standardise
the inputs (see :mod:`caloflows.preprocessing`).

>>> import torch
>>> f = build_maf(4, context=1, transforms=2, hidden_features=(16,))
>>> x, c = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 1, dtype=torch.float64)
>>> with double_precision(f):
...     err = (inverse_path(f, forward_path(f, x, c)[-1], c)[0] - x).abs().max().item()
>>> err < 1e-10
True
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from functools import partial
from typing import cast

import torch
from torch import Tensor, nn
from torch.distributions import Transform, constraints
from zuko.distributions import DiagNormal
from zuko.flows.autoregressive import MaskedAutoregressiveTransform
from zuko.lazy import Flow, LazyComposedTransform, UnconditionalDistribution
from zuko.nn import MaskedLinear
from zuko.transforms import MonotonicRQSTransform

from . import lean as _lean

__all__ = [
    "build_maf",
    "build_iaf",
    "init_student_from_teacher",
    "InverseAutoregressiveTransform",
    "flow_blocks",
    "forward_path",
    "inverse_path",
    "flow_log_prob",
    "maf_log_prob",
    "supports_maf_log_prob",
    "mark_plain_mafs",
    "flow_sample",
    "flow_decode",
    "count_parameters",
    "count_effective_parameters",
    "double_precision",
    "rqs_inverse_column",
    "CachedMaskedLinear",
    "lean_sampling",
    "made_masks",
    "MADE_DEGREES",
]

#: how a MADE assigns its hidden units' degrees (the set of inputs each may read), see :func:`made_masks`
MADE_DEGREES = ("cyclic", "spread")


class InverseAutoregressiveTransform(Transform):
    r"""``z_i = f(x_i | z_{<i})``: the conditioner reads the output (IAF).

    The inverse (sampling) ``x = f^{-1}(z | z)`` is one pass; the forward direction
    iterates ``passes`` times, like zuko's :class:`~zuko.transforms.AutoregressiveTransform`
    does for its inverse.  Jacobian: triangular with diagonal ``f'(x_i | z_{<i})``.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, meta, passes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.meta = meta
        self.passes = passes

    def _call(self, x: Tensor) -> Tensor:
        z = torch.zeros_like(x)
        for _ in range(self.passes):
            z = self.meta(z)(x)
        return z

    def _inverse(self, z: Tensor) -> Tensor:
        return self.meta(z).inv(z)

    def log_abs_det_jacobian(self, x: Tensor, z: Tensor) -> Tensor:
        return self.meta(z).log_abs_det_jacobian(x, z)

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self._call(x)
        return z, self.meta(z).log_abs_det_jacobian(x, z)


class MaskedIAFTransform(MaskedAutoregressiveTransform):
    """zuko's masked autoregressive transform with the conditioner moved to the latent side."""

    def forward(self, c: Tensor | None = None) -> Transform:
        return InverseAutoregressiveTransform(partial(self.meta, c), self.passes)


class CachedMaskedLinear(MaskedLinear):
    """zuko's MADE layer that keeps ``mask * weight`` between no-grad calls.

    zuko multiplies the mask into the weight on every call, which dominates small-batch
    sampling (issue 4/5 profiles: 60 % of an iCaloFlow student's batch-1 time, whose shared
    flow runs once per layer).  Without autograd the product is cached and rebuilt when the
    weight changes (optimizer step or ``load_state_dict``: the tensor version counter; ``.to()``
    or ``.double()``: a new tensor).  With autograd enabled (training) it behaves as zuko's.
    """

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() or torch.compiler.is_compiling():  # (compiled: no cache, one graph)
            return nn.functional.linear(x, self.mask * self.weight, self.bias)
        w = self.weight
        key = (w.data_ptr(), w._version, w.dtype, w.device, self.mask.data_ptr(), self.mask._version)
        if self.__dict__.get("_masked_key") != key:
            self.__dict__["_masked"] = self.mask * w.detach()
            self.__dict__["_masked_key"] = key
        return nn.functional.linear(x, self.__dict__["_masked"], self.bias)


def _cache_masks(module: nn.Module) -> nn.Module:
    for m in module.modules():
        if type(m) is MaskedLinear:
            m.__class__ = CachedMaskedLinear
    return module


def made_masks(adjacency: Tensor, hidden_features: Sequence[int], degrees: str = "cyclic") -> list[Tensor]:
    """Masks of the MADE layers (Germain et al. 2015, arXiv:1502.03509, sec. 4) for an output
    ``adjacency`` (outputs x inputs): zuko's :class:`zuko.nn.MaskedMLP` construction, with a choice of
    how the hidden units get their degrees when a layer has fewer units than there are distinct
    dependency sets.

    A fully autoregressive block over ``D`` features has ``D`` nested dependency sets (feature of rank
    ``r`` reads the features of rank ``< r``).  zuko (and nflows) give hidden unit ``j`` the set
    ``j mod D``: with ``H >= D`` units every set is present, but with ``H < D`` only the first ``H``
    are, so a feature of rank ``r >= H`` reads nothing but the first ``H`` features of the order
    (``H - 1`` with context inputs, which make the empty set a set of its own): ``cyclic``.
    ``spread`` gives unit ``j`` the set ``floor(j D / H)`` instead (equally spaced degrees; MADE
    itself draws them at random), so every feature reads, through fewer units, all the features
    before it.  For ``H >= D`` both rules are the same.  On the medium CaloFlow flow-II (128 units,
    648 voxels) ``spread`` was worse (README "CaloFlow: which inputs a MADE unit reads").

    >>> import torch
    >>> order = torch.arange(6)
    >>> adj = (order[:, None] > order).repeat_interleave(2, 0)   # 6 features x 2 parameters
    >>> int(made_masks(adj, (3,), "cyclic")[0].sum(1).max())  # most inputs a hidden unit reads
    3
    >>> int(made_masks(adj, (3,), "spread")[0].sum(1).max())
    4
    """
    if degrees not in MADE_DEGREES:
        raise ValueError(f"degrees must be one of {MADE_DEGREES}, not {degrees!r}")
    adjacency, inverse = torch.unique(adjacency, dim=0, return_inverse=True)
    # P_ij = 1 if A_ik = 1 for all k such that A_jk = 1 (zuko's precedence)
    precedence = adjacency.double() @ adjacency.double().t() == adjacency.sum(dim=-1)
    masks, indices = [], None
    for i, width in enumerate((*hidden_features, None)):
        mask = adjacency if i == 0 else precedence[:, indices]
        if (~mask).all():
            raise ValueError("The adjacency matrix leads to a null Jacobian.")
        if width is None:
            masks.append(mask[inverse])
            break
        reachable = mask.sum(dim=-1).nonzero().squeeze(dim=-1)
        n = len(reachable)
        pick = (torch.arange(width) * n) // width if degrees == "spread" and width < n else torch.arange(width) % n
        indices = reachable[pick]
        masks.append(mask[indices])
    return masks


def _set_made_degrees(block: MaskedAutoregressiveTransform, degrees: str) -> None:
    """Rebuild the masks of a zuko MADE block with :func:`made_masks`' rule ``degrees``."""
    if degrees == "cyclic":
        return  # zuko's own construction
    layers = [m for m in block.hyper if isinstance(m, MaskedLinear)]
    # the output adjacency of the block, as zuko built it: order and context (all ones)
    order = cast(Tensor, block.order)
    adj = order[:, None] > order
    ctx = layers[0].in_features - adj.shape[1]
    if ctx > 0:
        adj = torch.cat((adj, torch.ones(adj.shape[0], ctx, dtype=torch.bool)), 1)
    adj = torch.repeat_interleave(adj, repeats=block.total, dim=0)
    assert adj.shape == (layers[-1].out_features, layers[0].in_features)
    masks = made_masks(adj, [m.out_features for m in layers[:-1]], degrees)
    for m, mask in zip(layers, masks):
        cast(Tensor, m.mask).copy_(mask)


def _made_blocks(
    features: int,
    context: int,
    transforms: int,
    hidden_features: Sequence[int],
    bins: int,
    bound: float,
    slope: float,
    randperm_seed: int | None,
    cls: type = MaskedAutoregressiveTransform,
    degrees: str = "cyclic",
) -> list[MaskedAutoregressiveTransform]:
    if features < 2:
        raise ValueError("autoregressive flows need at least 2 features")
    if randperm_seed is not None:
        g = torch.Generator().manual_seed(randperm_seed)
        orders = [torch.randperm(features, generator=g) for _ in range(transforms)]
    else:
        # ascending / descending alternately, as zuko's MAF and nflows' reversed permutations
        orders = [torch.arange(features) if k % 2 == 0 else torch.arange(features).flip(0) for k in range(transforms)]
    blocks = [
        _cache_masks(cls(
            features=features,
            context=context,
            passes=None,  # fully autoregressive
            order=orders[k],
            univariate=partial(MonotonicRQSTransform, bound=bound, slope=slope),
            shapes=[(bins,), (bins,), (bins - 1,)],
            hidden_features=tuple(hidden_features),
        ))
        for k in range(transforms)
    ]
    for b in blocks:
        _set_made_degrees(b, degrees)
    return blocks


def _base(features: int) -> UnconditionalDistribution:
    return UnconditionalDistribution(
        DiagNormal, loc=torch.zeros(features), scale=torch.ones(features), buffer=True
    )


def build_maf(
    features: int,
    context: int = 0,
    transforms: int = 8,
    hidden_features: Sequence[int] = (64,),
    bins: int = 8,
    bound: float = 5.0,
    slope: float = 1e-3,
    randperm_seed: int | None = None,
    degrees: str = "cyclic",
) -> Flow:
    """A conditional MAF with RQS transforms (the CaloFlow teacher / flow-I).

    Args:
        features: data dimension D.
        context: number of conditional inputs.
        transforms: number of MADE blocks (CaloFlow: 6 for flow-I, 8 for flow-II).
        hidden_features: hidden layer widths of each MADE (flow-I: (64, 64); flow-II: one layer).
        bins: spline bins K; each feature gets 3K-1 parameters (CaloFlow: K=8, 23 per voxel).
        bound: the spline acts on [-bound, bound], identity outside.
        slope: minimum spline slope.
        randperm_seed: if given, random feature orders per block; else alternating orders.
        degrees: how MADE hidden units narrower than ``features`` pick their inputs
            (:func:`made_masks`: ``cyclic``, zuko's, or ``spread``).
    """
    blocks = _made_blocks(features, context, transforms, hidden_features, bins, bound, slope, randperm_seed,
                          degrees=degrees)
    return Flow(LazyComposedTransform(*blocks), _base(features))


def build_iaf(
    features: int,
    context: int = 0,
    transforms: int = 8,
    hidden_features: Sequence[int] = (64,),
    bins: int = 8,
    bound: float = 5.0,
    slope: float = 1e-3,
    randperm_seed: int | None = None,
    degrees: str = "cyclic",
) -> Flow:
    """A conditional IAF with RQS transforms (the CaloFlow student), see the module docstring.

    Sampling (latent -> data) is one network pass per block; ``log_prob`` needs D passes.
    Arguments as :func:`build_maf`; block ``k`` has the same feature order as the teacher's.
    """
    blocks = _made_blocks(features, context, transforms, hidden_features, bins, bound, slope, randperm_seed,
                          cls=MaskedIAFTransform, degrees=degrees)
    return Flow(LazyComposedTransform(*blocks), _base(features))


@torch.no_grad()
def init_student_from_teacher(student: Flow, teacher: Flow) -> bool:
    """Start the IAF student's MADEs from the teacher's weights (any number of hidden layers).

    A student whose MADE layers are at least as wide as the teacher's gets the teacher's weights
    in its first units and zeros elsewhere (extra hidden units stay at ReLU(0) = 0, extra output
    weights are zero), so each student MADE initially computes the teacher's spline parameters --
    only fed with latent-side instead of data-side coordinates.  The masks agree because zuko
    assigns hidden-unit degrees cyclically.  Returns False (student unchanged) if the
    architectures do not allow it (other depth, a narrower layer, other feature orders).
    """
    sb, tb = flow_blocks(student), flow_blocks(teacher)
    if len(sb) != len(tb):
        return False
    pairs = []
    for s, t in zip(sb, tb):
        if not (isinstance(s, MaskedAutoregressiveTransform) and isinstance(t, MaskedAutoregressiveTransform)):
            return False
        sl = [m for m in s.hyper if isinstance(m, nn.Linear)]
        tl = [m for m in t.hyper if isinstance(m, nn.Linear)]
        if len(sl) != len(tl) or len(sl) < 2 or not torch.equal(s.order, t.order):
            return False
        if sl[0].in_features != tl[0].in_features or sl[-1].out_features != tl[-1].out_features:
            return False
        if any(a.out_features < b.out_features for a, b in zip(sl[:-1], tl[:-1])):
            return False
        for a, b in zip(sl, tl):
            # zuko's MaskedLinear registers ``mask`` as a buffer: nn.Module.__getattr__ is typed Tensor | Module
            ma, mb = cast(Tensor, a.mask), cast(Tensor, b.mask)
            if not torch.equal(ma[:b.out_features, :b.in_features], mb):
                return False
        pairs.append((sl, tl))
    for sl, tl in pairs:
        for a, b in zip(sl, tl):
            a.weight.zero_()
            a.weight[:b.out_features, :b.in_features] = b.weight
            a.bias.zero_()
            a.bias[:b.out_features] = b.bias
    return True


def flow_blocks(flow: Flow) -> list[nn.Module]:
    """The lazy transforms of a flow in data -> latent order."""
    t = flow.transform
    if isinstance(t, LazyComposedTransform):
        return list(t.transforms)
    return [t]


def forward_path(flow: Flow, x: Tensor, context: Tensor | None = None) -> list[Tensor]:
    """Coordinates ``[h_0 = x, h_1, ..., h_K = z]`` after each block, data -> latent.

    One pass per block for a MAF, D passes per block for an IAF.
    """
    out = [x]
    for t in flow_blocks(flow):
        x = t(context)(x)
        out.append(x)
    return out


def _fast_made_inverse(block: MaskedAutoregressiveTransform, y: Tensor, context: Tensor | None) -> Tensor | None:
    """Exact sequential inverse of one MAF block with a ReLU MADE, or None if not applicable.

    zuko's generic inverse re-evaluates the whole MADE and rebuilds every feature's spline D
    times.  Here the first layer's pre-activation ``a = W1 [x, c] + b1`` is updated by
    ``x_d W1[:, d]`` when feature ``d`` is fixed, and only feature ``d``'s ``3K-1`` output rows
    and spline are evaluated.  With one hidden layer step ``d`` costs ``O(H (3K-1))`` instead of a
    full MADE pass (the teacher's sampling then does the multiply-adds of one density pass); with
    more hidden layers (SuperCalo's 2 x 128) the hidden-to-hidden layers are still evaluated every
    step, but the first and the (widest) output layer are not.
    """
    layers = list(block.hyper)
    lin, acts = layers[0::2], layers[1::2]
    if (len(layers) < 3 or len(layers) % 2 == 0 or not all(isinstance(l, nn.Linear) for l in lin)
            or not all(isinstance(a, nn.ReLU) for a in acts) or block.order is None or block.passes != y.shape[-1]):
        return None
    D = y.shape[-1]
    w1 = lin[0].mask * lin[0].weight  # (H, D + C)
    mids = [(l.mask * l.weight, l.bias) for l in lin[1:-1]]
    w2 = lin[-1].mask * lin[-1].weight  # (D * T, H)
    b2 = lin[-1].bias
    T = block.total
    a = lin[0].bias.expand(y.shape[0], -1)
    if context is not None and context.shape[-1] > 0:
        a = a + context.expand(y.shape[0], -1) @ w1[:, D:].T
    x = torch.zeros_like(y)
    spline = block.univariate
    bound, slope = _spline_bounds(spline)
    sizes = [int(torch.Size(shp).numel()) for shp in block.shapes]
    for d in torch.argsort(block.order).tolist():
        h = torch.relu(a)
        for w, b in mids:
            h = torch.relu(torch.addmm(b, h, w.T))
        phi = torch.addmm(b2[d * T:(d + 1) * T], h, w2[d * T:(d + 1) * T].T)
        if bound is None or slope is None:  # not zuko's RQS: its own (slower) inverse
            parts, k = [], 0
            for shp, n in zip(block.shapes, sizes):
                parts.append(phi[:, k:k + n].reshape(-1, 1, *shp))
                k += n
            xd = spline(*parts).inv(y[:, d:d + 1])[:, 0]
        else:
            xd = rqs_inverse_column(phi, y[:, d], sizes[0], bound, slope)
        x[:, d] = xd
        a = torch.addr(a, xd, w1[:, d])
    return x


def _spline_bounds(univariate) -> tuple[float | None, float | None]:
    """``(bound, slope)`` if ``univariate`` builds zuko's :class:`MonotonicRQSTransform`."""
    if isinstance(univariate, partial) and univariate.func is MonotonicRQSTransform and not univariate.args:
        kw = univariate.keywords
        return float(kw.get("bound", 5.0)), float(kw.get("slope", 1e-3))
    return None, None


def rqs_inverse_column(phi: Tensor, y: Tensor, bins: int, bound: float = 5.0, slope: float = 1e-3) -> Tensor:
    """Inverse of zuko's :class:`~zuko.transforms.MonotonicRQSTransform` for one feature.

    ``phi`` holds the unconstrained ``(widths[K], heights[K], derivatives[K-1])`` per row and
    ``y`` the outputs (one per row).  Same parametrisation and formulas as zuko (Durkan et al.
    2019, eq. 4 solved as a quadratic, appendix A.3); written out so that the ``D`` sequential
    steps of a MAF inverse do not build a transform object and broadcast its knots each step.

    >>> import torch
    >>> phi, y = torch.randn(5, 23, dtype=torch.float64), 3 * torch.randn(5, dtype=torch.float64)
    >>> t = MonotonicRQSTransform(phi[:, None, :8], phi[:, None, 8:16], phi[:, None, 16:])
    >>> bool(torch.allclose(rqs_inverse_column(phi, y, 8), t.inv(y[:, None])[:, 0], atol=1e-12))
    True
    """
    ls = math.log(slope)
    w, h, dv = phi[:, :bins], phi[:, bins:2 * bins], phi[:, 2 * bins:3 * bins - 1]
    w = torch.softmax(w / (1 + (2 * w / ls).abs()), dim=-1)
    h = torch.softmax(h / (1 + (2 * h / ls).abs()), dim=-1)
    dv = torch.exp(nn.functional.pad(dv / (1 + (dv / ls).abs()), (1, 1)))
    xs = bound * (2 * nn.functional.pad(torch.cumsum(w, -1), (1, 0)) - 1)
    ys = bound * (2 * nn.functional.pad(torch.cumsum(h, -1), (1, 0)) - 1)
    k = (ys < y[:, None]).sum(-1, keepdim=True) - 1
    inside = ((k >= 0) & (k < bins)).squeeze(-1)
    k = k.clamp(0, bins - 1)
    x0, x1 = xs.gather(-1, k).squeeze(-1), xs.gather(-1, k + 1).squeeze(-1)
    y0, y1 = ys.gather(-1, k).squeeze(-1), ys.gather(-1, k + 1).squeeze(-1)
    d0, d1 = dv.gather(-1, k).squeeze(-1), dv.gather(-1, k + 1).squeeze(-1)
    s = (y1 - y0) / (x1 - x0)
    yy = inside * (y - y0)
    q = d0 + d1 - 2 * s
    qa = (y1 - y0) * (s - d0) + yy * q
    qb = (y1 - y0) * d0 - yy * q
    qc = -s * yy
    z = 2 * qc / (-qb - (qb**2 - 4 * qa * qc).sqrt())
    return torch.where(inside, x0 + z * (x1 - x0), y)


def inverse_path(flow: Flow, z: Tensor, context: Tensor | None = None, fast: bool = True) -> list[Tensor]:
    """Coordinates ``[g_0 = x, g_1, ..., g_K = z]`` computed latent -> data.

    ``g_k = block_k^{-1}(g_{k+1})``: one pass per block for an IAF (student sampling),
    D sequential steps per block for a MAF (teacher sampling); with ``fast`` a MAF block with
    a ReLU MADE is inverted by :func:`_fast_made_inverse` (same result as zuko's inverse).
    """
    blocks = flow_blocks(flow)
    out = [z]
    for t in reversed(blocks):
        r = None
        if fast and type(t) is MaskedAutoregressiveTransform and z.dim() == 2:
            r = _fast_made_inverse(t, z, context)
        z = t(context).inv(z) if r is None else r
        out.append(z)
    return out[::-1]


def flow_log_prob(flow: Flow, x: Tensor, context: Tensor | None = None) -> Tensor:
    """log p(x | context) per row: zuko's ``log_prob``, or :func:`maf_log_prob` while
    ``torch.compile`` traces it and the flow is a plain MAF (marked by :func:`mark_plain_mafs`
    before compiling), so that a compiled training step is one graph (``TrainConfig.compile``)."""
    if torch.compiler.is_compiling() and flow.__dict__.get("_plain_maf"):
        return maf_log_prob(flow, x, context)
    return flow(context).log_prob(x)


def mark_plain_mafs(module: nn.Module) -> None:
    """Mark every zuko flow inside ``module`` for which :func:`supports_maf_log_prob` holds, so that
    :func:`flow_log_prob` traces it as :func:`maf_log_prob` (decided eagerly: the check reads
    buffers, which a traced graph cannot branch on).  Called by ``fit_flow`` before it compiles."""
    for m in module.modules():
        if isinstance(m, Flow):
            m.__dict__["_plain_maf"] = supports_maf_log_prob(m)


_LOG_2PI = math.log(2 * math.pi)


def supports_maf_log_prob(flow: nn.Module) -> bool:
    """Whether :func:`maf_log_prob` applies: a :func:`build_maf` flow (MADE blocks of zuko's masked
    autoregressive transform with RQS splines, data -> latent in one pass each) over a standard
    normal base."""
    if not isinstance(flow, Flow) or not isinstance(flow.transform, LazyComposedTransform):
        return False
    base = flow.base
    if getattr(base, "f", None) is not DiagNormal:
        return False
    loc, scale = (getattr(base, n, None) for n in ("loc", "scale"))
    if not (isinstance(loc, Tensor) and isinstance(scale, Tensor)
            and bool((loc == 0).all()) and bool((scale == 1).all())):
        return False
    for t in flow.transform.transforms:
        if type(t) is not MaskedAutoregressiveTransform or _spline_bounds(t.univariate)[0] is None:
            return False
        if [tuple(sh) for sh in t.shapes][1:] != [tuple(t.shapes[0]), (t.shapes[0][0] - 1,)]:
            return False
    return True


def maf_log_prob(flow: Flow, x: Tensor, context: Tensor | None = None) -> Tensor:
    r"""``log p(x | context)`` per row of a :func:`build_maf` flow, written as plain tensor algebra.

    The same density as zuko's ``flow(context).log_prob(x)`` (Papamakarios et al. 2017,
    arXiv:1705.07057, eq. 5 with RQS blocks, Durkan et al. 2019, arXiv:1906.04032):
    ``log p = log N(z; 0, 1) + sum_k sum_i log |dh_{k+1,i} / dh_{k,i}|`` with the spline
    parameters of block ``k`` from one MADE pass over ``h_k`` (and the context), and the same
    parameters (the flow's own modules, so gradients reach them).  Unlike zuko's lazy
    transforms it builds no Python objects per call, so ``torch.compile`` traces it as one graph
    (:func:`flow_log_prob` uses it when compiled: ``TrainConfig.compile``).  Only for flows where
    :func:`supports_maf_log_prob` holds.

    >>> import torch
    >>> f = build_maf(5, context=2, transforms=3, hidden_features=(16,)).double()
    >>> x, c = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 2, dtype=torch.float64)
    >>> bool(torch.allclose(maf_log_prob(f, x, c), f(c).log_prob(x), atol=1e-10))
    True
    """
    ladj = x.new_zeros(x.shape[:-1])
    for block in flow_blocks(flow):
        t = cast(MaskedAutoregressiveTransform, block)
        K = int(t.shapes[0][0])
        bound, slope = _spline_bounds(t.univariate)
        inp = x if context is None else torch.cat([x, context.expand(*x.shape[:-1], context.shape[-1])], -1)
        phi = t.hyper(inp).unflatten(-1, (-1, t.total))
        x, l = _lean.rqs_forward_log_det(phi[..., :K], phi[..., K:2 * K], phi[..., 2 * K:], x,
                                         cast(float, bound), cast(float, slope))
        ladj = ladj + l.sum(-1)
    return ladj - 0.5 * (x * x).sum(-1) - 0.5 * x.shape[-1] * _LOG_2PI


_LEAN = [True]


@contextlib.contextmanager
def lean_sampling(enabled: bool = True) -> Iterator[None]:
    """Switch :func:`flow_sample` between the lean path (default) and zuko's inverse inside the block.

    For benchmarks and cross-checks: ``with lean_sampling(False): model.sample(...)`` times the
    zuko path (the teacher still uses :func:`_fast_made_inverse`).
    """
    old = _LEAN[0]
    _LEAN[0] = bool(enabled)
    try:
        yield
    finally:
        _LEAN[0] = old


def flow_sample(
    flow: Flow,
    context: Tensor | None = None,
    n: int | None = None,
    generator: torch.Generator | None = None,
    fast: bool = True,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Draw one sample per context row (or ``n`` unconditional samples).

    Latent values are drawn in ``dtype`` (default: the flow's parameter dtype) from ``generator``
    if given.  With ``fast`` and autograd off, flows built here are sampled by the fused path of
    :mod:`caloflows.lean` (same result as zuko's inverse to float round-off), from a snapshot
    in ``dtype`` cached with the flow (so ``dtype=torch.float64`` costs no cast of the module
    per call, unlike :func:`double_precision`); otherwise by :func:`inverse_path` (inside
    :func:`double_precision` if ``dtype`` is float64 and the flow is not).
    """
    p = _lean._parameters(flow)[0] if isinstance(flow, Flow) else next(flow.parameters())
    dtype = p.dtype if dtype is None else dtype
    rows = n if context is None else context.shape[0]
    if rows is None:
        raise ValueError("give a context or n")
    dim = flow.base.loc.shape[-1] if hasattr(flow.base, "loc") else flow.base().event_shape[-1]
    z = torch.randn(rows, dim, dtype=dtype, device=p.device, generator=generator)
    return flow_decode(flow, z, context, fast=fast)


def flow_decode(flow: Flow, z: Tensor, context: Tensor | None = None, fast: bool = True) -> Tensor:
    """Latent ``z`` (B, D) -> data (B, D), computed in ``z``'s dtype: the sampling half of
    :func:`flow_sample` for a latent the caller drew (rejection loops, fixed-noise checks).

    With ``fast`` and autograd off a flow built here runs on its cached :mod:`caloflows.lean`
    snapshot in that dtype (chunked rows, no cast of the module); otherwise :func:`inverse_path`,
    inside :func:`double_precision` for a float64 latent and a float32 flow.

    Example:
        >>> f = build_iaf(4, context=2, transforms=2, hidden_features=(16,))
        >>> flow_decode(f, torch.randn(5, 4), torch.zeros(5, 2)).shape
        torch.Size([5, 4])
    """
    p = _lean._parameters(flow)[0] if isinstance(flow, Flow) else next(flow.parameters())
    c = None if context is None else context.to(z.dtype)
    if fast and _LEAN[0] and not torch.is_grad_enabled() and _lean.supports_lean(flow):
        lean = _lean.lean_flow(flow, z.dtype)
        with torch.inference_mode():
            x = lean.sample(z, c)
        return x.clone()  # a normal tensor again (callers may write into it)
    if z.dtype == p.dtype:
        return inverse_path(flow, z, c, fast=fast)[0]
    if z.dtype != torch.float64:
        raise ValueError(f"flow_decode: dtype {z.dtype} needs the lean path (float64 or the flow's own dtype)")
    with double_precision(flow):
        return inverse_path(flow, z, c, fast=fast)[0]


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters, counting masked MADE weights as dense."""
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only))


def count_effective_parameters(module: nn.Module) -> int:
    """Parameters that are not fixed to zero by a MADE mask (biases + unmasked weights)."""
    n = 0
    for m in module.modules():
        mask = getattr(m, "mask", None)
        if isinstance(m, nn.Linear) and isinstance(mask, Tensor):
            n += int(mask.sum().item()) + (m.bias.numel() if m.bias is not None else 0)
        elif not list(m.children()):
            n += sum(p.numel() for p in m.parameters(recurse=False))
    return n


@contextlib.contextmanager
def double_precision(*modules: nn.Module) -> Iterator[None]:
    """Run the modules in float64 inside the block, then cast them back.

    The RQS inverse solves a quadratic (``zuko.transforms.MonotonicRQSTransform._inverse``);
    after D sequential passes float32 round-off can push values across bin edges, so
    CaloFlow samples are drawn in float64 (issue 4: "inverse spline passes in float64").
    """
    dtypes, saved = [], []
    for m in modules:
        p = next(m.parameters(), None)
        dtypes.append(p.dtype if p is not None else torch.float32)
        params = list(m.parameters())
        orig = [q.data for q in params]
        key = tuple((q.data_ptr(), q._version, q.dtype, q.device) for q in params)
        m.double()
        # unchanged parameters get their original tensors back afterwards (the round trip is
        # exact), so caches keyed on them (caloflows.lean.lean_flow) survive repeated blocks
        saved.append([(q, o, q._version) for q, o in zip(params, orig)])  # versions after the cast
        m.__dict__["_caloflows_src_key"] = (key, torch.float64)
    try:
        yield
    finally:
        for m, d, sv in zip(modules, dtypes, saved):
            m.__dict__.pop("_caloflows_src_key", None)
            for q, o, v in sv:
                if q._version == v and o.dtype == d:  # not modified inside the block
                    q.data = o
            m.to(d)


def distillation_loss(
    teacher: Flow,
    student: Flow,
    x: Tensor,
    context: Tensor | None = None,
    z: Tensor | None = None,
    intermediate: bool = True,
    reduce: bool = True,
) -> Tensor:
    """Probability density distillation loss of a student IAF against a frozen teacher MAF.

    CaloFlow II (2110.11377) sec. 3 / review sec. 4.2: the x-loss maps data ``x`` through the
    teacher to ``z'`` and back through the student; the z-loss maps ``z ~ N(0, 1)`` through the
    student to ``x'`` and back through the teacher; both are mean squared errors at the flow
    endpoints and, with ``intermediate``, between the coordinates after every MADE block.
    ``reduce=False`` returns the loss per row (mean over features), whose mean is the loss.
    (Added for the layer-wise models; same terms as :meth:`CaloFlow.distill_loss`.)
    """

    def sq(a: Tensor, b: Tensor) -> Tensor:
        return ((a - b) ** 2).mean(1)

    with torch.no_grad():
        h = forward_path(teacher, x, context)
    g = inverse_path(student, h[-1], context)
    loss = sq(g[0], x)
    if intermediate:
        loss = loss + sum(sq(g[k], h[k]) for k in range(1, len(h) - 1))
    if z is None:
        z = torch.randn_like(x)
    gz = inverse_path(student, z, context)
    hz = forward_path(teacher, gz[0], context)
    loss = loss + sq(hz[-1], z)
    if intermediate:
        loss = loss + sum(sq(hz[k], gz[k]) for k in range(1, len(hz) - 1))
    return loss.mean() if reduce else loss


__all__.append("distillation_loss")


class LogProb(nn.Module):
    """``forward(x, context)`` = ``log p(x | context)`` per row of a zuko flow (the shape the
    training loop, :func:`caloflows.training.loop.fit_flow`, expects).

    Eager calls use zuko's ``log_prob``; while ``torch.compile`` traces it (``TrainConfig.compile``)
    a :func:`build_maf` flow goes through :func:`maf_log_prob` (:func:`flow_log_prob`), the same
    density without zuko's per-call transform objects, which dynamo cannot trace in one graph.
    """

    def __init__(self, flow: Flow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        return flow_log_prob(self.flow, x, context)


class DistillationObjective(nn.Module):
    """Teacher + student such that ``-forward(x, context, z)`` per row is the distillation loss
    (:func:`distillation_loss`; CaloFlow II, arXiv:2110.11377, sec. 3).  Only the student trains."""

    def __init__(self, teacher: Flow, student: Flow, intermediate: bool = True) -> None:
        super().__init__()
        self.teacher, self.student, self.intermediate = teacher, student, intermediate

    def forward(self, x: Tensor, context: Tensor, z: Tensor) -> Tensor:
        return -distillation_loss(self.teacher, self.student, x, context, z, self.intermediate, reduce=False)


__all__ += ["LogProb", "DistillationObjective"]
