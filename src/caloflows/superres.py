"""SuperCalo data preparation: (shower, coarse voxel) rows, preprocessing B1-B9, upsampling
post-processing (Pang, Raine, Shih, arXiv:2308.11700, sec. III and appendix B).

SUPERCALO learns, for one coarse voxel ``i`` of one shower, the relative fine energies
``e_hat_i = e_fine,i / E_coarse,i`` (10 values for choice A, 12 for B) conditioned on

    [ E_inc | E_coarse,i | fine layer energies spanned by i (f_z) | 6 neighbour coarse
      energies | one-hot coarse layer (n_z) | one-hot coarse radial bin (n_r) ]

(table I: 1 + 1 + 5 + 6 + 9 + 9 = 31 for A, 1 + 1 + 1 + 6 + 45 + 3 = 57 for B on ds2).
Preprocessing (appendix B), all energies in MeV:

* B1  ``E_inc -> log10(E_inc / 10^4.5 MeV)``;
* B2/B3 (no noise, as the paper says for SUPERCALO's conditions) fine layer energies
  ``E -> logit(alpha + (1 - 2 alpha) E / 65 GeV)``;
* B6/B7 the coarse voxel's own energy ``E -> logit(alpha + (1-2alpha) (E + U(0, 1 keV)) / E_coarse,max)``;
  the neighbours the same without noise (absent neighbours are 0);
* B8/B9 the target: ``e_ij -> logit(alpha + (1-2alpha) (e_ij + U(0, 0.1 keV)) / E'_coarse,i)``
  where ``E'_coarse,i`` is the sum of the *noisy* fine voxels, so the relative energies sum to
  one exactly (as the authors' data loader does);
* ``alpha = 1e-6``.  Fractions outside [0, 1] (a generated coarse energy above the training
  maximum) are clipped before the logit; inside, every step is inverted exactly.

Noise is added only when a ``numpy.random.Generator`` is passed (training); without it the
rows are deterministic and :meth:`SuperCaloPreprocessing.target_inverse` followed by
:func:`assemble_fine` gives back the fine showers to float64 round-off.

Upsampling post-processing (appendix B, "15 keV cut"): fine energies ``e_hat * E_coarse``
below the readout threshold (15.15 keV for Par04) are zeroed and the survivors rescaled so
that they sum exactly to ``E_coarse`` -- :func:`caloflows.postprocess.threshold_renormalise`
per coarse voxel (dimmest voxels dropped until every renormalised survivor is above the
threshold).  For a grouping with ``f_z = 1`` (choice B) this keeps every layer energy.

>>> import numpy as np
>>> from caloflows.coarsegraining import CoarseGraining
>>> from caloflows.geometry import load_geometry
>>> from caloflows.toy_showers import toy_showers
>>> cmap = CoarseGraining.choice("A").bind(load_geometry("ds2"))
>>> einc, fine = toy_showers(cmap.fine, 4, seed=0)
>>> prep = SuperCaloPreprocessing.fit(einc, fine, cmap)
>>> rows = build_rows(einc, fine, cmap, prep)
>>> rows.target.shape, rows.cond.shape
((2592, 10), (2592, 31))
>>> back = assemble_fine(prep.target_inverse(rows.target), rows.e_coarse, cmap, threshold=0.0)
>>> bool(np.allclose(back, fine, rtol=1e-9, atol=1e-12))
True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from .coarsegraining import CoarseMap
from .errors import ConditionsError, ConfigError
from .geometry import PAR04_THRESHOLD_MEV
from .postprocess import threshold_renormalise

__all__ = [
    "SuperCaloPreprocessing",
    "SuperCaloRows",
    "build_rows",
    "build_conditions",
    "split_conditions",
    "assemble_fine",
    "upsample_postprocess",
    "fit_fine_layers",
    "EINC_SCALE_MEV",
    "LAYER_SCALE_MEV",
    "FINE_NOISE_MEV",
    "COARSE_NOISE_MEV",
    "CUT_MEV",
    "CHAIN_NOISE_MEV",
    "flow1_forward",
    "flow1_inverse",
    "flow2_forward",
    "flow2_inverse",
    "flow2_conditions",
    "apply_cut",
]

#: B1: E_inc scale 10^4.5 MeV (log10 E_inc/scale in [-1.5, 1.5] for 1 GeV - 1 TeV)
EINC_SCALE_MEV = 10.0**4.5
#: B2: layer-energy normalisation, 65 GeV
LAYER_SCALE_MEV = 65e3
#: B8: noise on fine voxels, U(0, 0.1 keV)
FINE_NOISE_MEV = 1e-4
#: B6: noise on the coarse voxel's own energy, U(0, 1 keV)
COARSE_NOISE_MEV = 1e-3
#: B2/B4: noise on FLOW-1 layer energies and FLOW-2 coarse voxels, U(0, 5 keV)
CHAIN_NOISE_MEV = 5e-3
#: appendix B cut on generated energies: the Par04 readout threshold, 15.15 keV
CUT_MEV = PAR04_THRESHOLD_MEV


def _logit(x: np.ndarray, alpha: float) -> np.ndarray:
    u = alpha + (1.0 - 2.0 * alpha) * np.clip(x, 0.0, 1.0)
    return np.log(u) - np.log1p(-u)


def _inv_logit(y: np.ndarray, alpha: float) -> np.ndarray:
    s = 1.0 / (1.0 + np.exp(-np.asarray(y, dtype=np.float64)))
    return (s - alpha) / (1.0 - 2.0 * alpha)


@dataclass
class SuperCaloPreprocessing:
    """Constants of appendix B (all energies in MeV); JSON-serialisable via :meth:`to_dict`.

    Attributes:
        e_coarse_max: B4/B6 normalisation, the largest coarse voxel energy of the training
            set (with noise); fitted by :meth:`fit` / :meth:`fit_from_file`.
        layer_scale_mev: B2 normalisation, 65 GeV (raised to the training maximum if larger).
        einc_scale_mev: B1 scale, 10^4.5 MeV.
        fine_noise_mev, coarse_noise_mev: B8 and B6 noise widths.
        alpha: logit offset (B3, B7, B9).
        chain_noise_mev: B2 / B4 noise width (FLOW-1 layer energies, FLOW-2 coarse voxels).
    """

    e_coarse_max: float
    layer_scale_mev: float = LAYER_SCALE_MEV
    einc_scale_mev: float = EINC_SCALE_MEV
    fine_noise_mev: float = FINE_NOISE_MEV
    coarse_noise_mev: float = COARSE_NOISE_MEV
    alpha: float = 1e-6
    chain_noise_mev: float = CHAIN_NOISE_MEV

    def __post_init__(self) -> None:
        for k in ("e_coarse_max", "layer_scale_mev", "einc_scale_mev"):
            v = float(getattr(self, k))
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"SuperCalo preprocessing: {k} must be a positive number, got {v}")
        if not 0 < self.alpha < 0.5:
            raise ConfigError(f"SuperCalo preprocessing: alpha must be in (0, 0.5), got {self.alpha}")

    # ---------------------------------------------------------------- fitting
    @classmethod
    def _from_maxima(cls, coarse_max: float, layer_max: float, cmap: CoarseMap, **kw: Any) -> "SuperCaloPreprocessing":
        fine_noise = kw.get("fine_noise_mev", FINE_NOISE_MEV)
        coarse_noise = kw.get("coarse_noise_mev", COARSE_NOISE_MEV)
        # largest value the noisy training rows can take, so training fractions stay <= 1
        e_max = coarse_max + cmap.group_size * fine_noise + coarse_noise
        kw.setdefault("layer_scale_mev", max(LAYER_SCALE_MEV, layer_max))
        return cls(e_coarse_max=float(e_max), **kw)

    @classmethod
    def fit(cls, einc: np.ndarray, fine: np.ndarray, cmap: CoarseMap, **kw: Any) -> "SuperCaloPreprocessing":
        """Constants from in-memory training showers (fine (N, V) MeV)."""
        fine = cmap.fine.check_showers(fine)
        coarse_max = float(cmap.coarse_grain(fine).max(initial=0.0))
        layer_max = float(cmap.fine.layer_energies(fine).max(initial=0.0))
        return cls._from_maxima(coarse_max, layer_max, cmap, **kw)

    @classmethod
    def fit_from_file(cls, path: str, cmap: CoarseMap, chunk_showers: int = 1024,
                      showers: np.ndarray | None = None, **kw: Any) -> "SuperCaloPreprocessing":
        """Constants from a training file in one streaming pass (values validated on the way).

        ``showers``: optional indices of the training showers (e.g. the 70 % training split).
        """
        from .io import iter_showers

        idx = None if showers is None else np.unique(np.asarray(showers, dtype=np.int64))
        coarse_max = layer_max = 0.0
        start = 0
        for blk in iter_showers(path, chunk_showers, cmap.fine):
            n, x = len(blk), blk.showers
            if idx is not None:
                x = x[idx[(idx >= start) & (idx < start + n)] - start]
            start += n
            if len(x) == 0:
                continue
            coarse_max = max(coarse_max, float(cmap.coarse_grain(x).max(initial=0.0)))
            layer_max = max(layer_max, float(cmap.fine.layer_energies(x).max(initial=0.0)))
        return cls._from_maxima(coarse_max, layer_max, cmap, **kw)

    # ---------------------------------------------------------------- B1-B9
    def einc_forward(self, einc):
        """B1: ``log10(E_inc / 10^4.5 MeV)``."""
        return np.log10(np.asarray(einc, dtype=np.float64) / self.einc_scale_mev)

    def einc_inverse(self, c):
        return self.einc_scale_mev * 10.0 ** np.asarray(c, dtype=np.float64)

    def layer_forward(self, e):
        """B2 + B3 without noise: ``logit(E / layer_scale)``."""
        return _logit(np.asarray(e, dtype=np.float64) / self.layer_scale_mev, self.alpha)

    def layer_inverse(self, y):
        return _inv_logit(y, self.alpha) * self.layer_scale_mev

    def coarse_forward(self, e):
        """B6 + B7 (noise, if any, added by the caller): ``logit(E / E_coarse,max)``."""
        return _logit(np.asarray(e, dtype=np.float64) / self.e_coarse_max, self.alpha)

    def coarse_inverse(self, y):
        return _inv_logit(y, self.alpha) * self.e_coarse_max

    def target_forward(self, grouped: np.ndarray, rng: np.random.Generator | None = None):
        """B8 + B9: grouped fine energies (..., k) -> ``(y (..., k), E'_coarse (...))``.

        ``E'_coarse`` is the sum of the (noisy) fine energies; the relative energies
        ``x_hat = e' / E'_coarse`` sum to 1.  A coarse voxel with zero energy (only without
        noise) gets ``x_hat = 1/k``.
        """
        e = np.asarray(grouped, dtype=np.float64)
        if rng is not None and self.fine_noise_mev > 0:
            e = e + self.fine_noise_mev * rng.random(e.shape)
        s = e.sum(-1)
        k = e.shape[-1]
        x = np.where(s[..., None] > 0, e / np.where(s > 0, s, 1.0)[..., None], 1.0 / k)
        return _logit(x, self.alpha), s

    def target_inverse(self, y) -> np.ndarray:
        """Inverse of B9: flow output (..., k) -> relative fine energies (clipped at 0)."""
        if isinstance(y, torch.Tensor):
            y = y.detach().cpu().double().numpy()
        return np.clip(_inv_logit(y, self.alpha), 0.0, None)

    # ---------------------------------------------------------------- serialise
    def to_dict(self) -> dict:
        return {"type": "SuperCaloPreprocessing", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "SuperCaloPreprocessing":
        d = {k: v for k, v in d.items() if k != "type"}
        return cls(**d)

    def condition_dim(self, cmap: CoarseMap) -> int:
        """1 + 1 + f_z + 6 + n_coarse_layers + n_coarse_rbins (31 for A, 57 for B on ds2)."""
        return 8 + cmap.grouping.f_z + cmap.nc_z + cmap.nc_r


def build_conditions(
    einc: np.ndarray,
    coarse: np.ndarray,
    layer_energies: np.ndarray,
    cmap: CoarseMap,
    prep: SuperCaloPreprocessing,
    rng: np.random.Generator | None = None,
    coarse_self: np.ndarray | None = None,
    rows: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Preprocessed SUPERCALO conditions for every coarse voxel: (N, n_coarse, C) float64.

    Args:
        einc: (N,) incident energies (MeV).
        coarse: (N, n_coarse) coarse showers (MeV), used for the neighbours (no noise).
        layer_energies: (N, n_fine_layers) fine layer energies (true ones or FLOW-1's).
        rng: adds the B6 noise U(0, 1 keV) to the voxel's own energy if given (training).
        coarse_self: the voxel's own energy if not ``coarse`` (training: sum of noisy fine voxels).
        rows: ``(shower index, coarse voxel index)`` arrays of the pairs wanted: then only those
            rows are built, (R, C), in that order (generation: the coarse voxels above the cut,
            about 10 % of them on ds2).  The values equal the matching rows of the full result.
    """
    einc = np.asarray(einc, dtype=np.float64).reshape(-1)
    coarse = np.asarray(coarse, dtype=np.float64)
    layer_energies = np.asarray(layer_energies, dtype=np.float64)
    n = len(einc)
    if coarse.shape != (n, cmap.n_coarse):
        raise ConditionsError(f"coarse showers: expected shape ({n}, {cmap.n_coarse}), got {coarse.shape}")
    if layer_energies.shape != (n, cmap.n_z):
        raise ConditionsError(f"fine layer energies: expected shape ({n}, {cmap.n_z}), got {layer_energies.shape}")
    own = coarse if coarse_self is None else np.asarray(coarse_self, dtype=np.float64)
    if rng is not None and prep.coarse_noise_mev > 0:
        own = own + prep.coarse_noise_mev * rng.random(own.shape)
    Vc = cmap.n_coarse
    if rows is None:
        si, vi = np.repeat(np.arange(n), Vc), np.tile(np.arange(Vc), n)
    else:
        si, vi = (np.asarray(r, dtype=np.int64).reshape(-1) for r in rows)
    parts = [
        prep.einc_forward(einc)[si, None],
        prep.coarse_forward(own[si, vi])[:, None],
        prep.layer_forward(layer_energies[si[:, None], cmap.fine_layers[vi]]),
        prep.coarse_forward(np.where(cmap.neighbour_mask[vi], coarse[si[:, None], cmap.neighbours[vi]], 0.0)),
        np.eye(cmap.nc_z)[cmap.coarse_layer[vi]],
        np.eye(cmap.nc_r)[cmap.coarse_rbin[vi]],
    ]
    out = np.concatenate(parts, axis=-1)
    return out.reshape(n, Vc, -1) if rows is None else out


def split_conditions(cond: np.ndarray, cmap: CoarseMap, prep: SuperCaloPreprocessing) -> dict[str, np.ndarray]:
    """Exact inverse of :func:`build_conditions` (values inside the logit range):
    ``einc``, ``e_coarse``, ``layer_energies`` (f_z), ``neighbours`` (6), ``coarse_layer``, ``coarse_rbin``."""
    cond = np.asarray(cond, dtype=np.float64)
    f_z = cmap.grouping.f_z
    o = np.cumsum([0, 1, 1, f_z, 6, cmap.nc_z, cmap.nc_r])
    if cond.shape[-1] != o[-1]:
        raise ConditionsError(f"expected {o[-1]} SuperCalo conditions, got {cond.shape[-1]}")
    return {
        "einc": prep.einc_inverse(cond[..., 0]),
        "e_coarse": prep.coarse_inverse(cond[..., 1]),
        "layer_energies": prep.layer_inverse(cond[..., o[2]:o[3]]),
        "neighbours": prep.coarse_inverse(cond[..., o[3]:o[4]]),
        "coarse_layer": np.argmax(cond[..., o[4]:o[5]], -1),
        "coarse_rbin": np.argmax(cond[..., o[5]:o[6]], -1),
    }


@dataclass
class SuperCaloRows:
    """(shower, coarse voxel) rows, shower-major: row ``n * n_coarse + i``.

    Attributes:
        target: (R, k) preprocessed relative fine energies (B8-B9).
        cond: (R, C) preprocessed conditions.
        e_coarse: (R,) the energy the target was normalised by (sum of the noisy fine voxels).
        shower: (R,) shower index inside the block; ``voxel``: (R,) coarse voxel index.
    """

    target: np.ndarray
    cond: np.ndarray
    e_coarse: np.ndarray
    shower: np.ndarray
    voxel: np.ndarray

    def __len__(self) -> int:
        return len(self.target)


def build_rows(
    einc: np.ndarray,
    fine: np.ndarray,
    cmap: CoarseMap,
    prep: SuperCaloPreprocessing,
    rng: np.random.Generator | None = None,
) -> SuperCaloRows:
    """All SUPERCALO training rows of fine showers (N, V): N x n_coarse rows (float64).

    With ``rng`` the paper's noise (B6, B8) is drawn from it: fine noise first, then the
    coarse noise, so the rows depend only on the data and the generator state.
    """
    fine = cmap.fine.check_showers(fine)
    einc = np.asarray(einc, dtype=np.float64).reshape(-1)
    if len(einc) != len(fine):
        raise ConditionsError(f"{len(einc)} incident energies for {len(fine)} showers")
    n, Vc = len(fine), cmap.n_coarse
    fine64 = np.asarray(fine, dtype=np.float64)
    target, own = prep.target_forward(cmap.gather(fine64), rng)
    coarse = cmap.coarse_grain(fine64)
    cond = build_conditions(einc, coarse, cmap.fine.layer_energies(fine64), cmap, prep, rng, coarse_self=own)
    return SuperCaloRows(
        target=target.reshape(n * Vc, -1),
        cond=cond.reshape(n * Vc, -1),
        e_coarse=own.reshape(-1),
        shower=np.repeat(np.arange(n), Vc),
        voxel=np.tile(np.arange(Vc), n),
    )


def upsample_postprocess(rel: np.ndarray, coarse: np.ndarray, threshold: float = CUT_MEV) -> np.ndarray:
    """Relative fine energies (N, n_coarse, k) and coarse energies (N, n_coarse) -> fine
    energies (N, n_coarse, k) float64: the 15.15 keV cut and exact renormalisation per coarse
    voxel (see module docstring).  Every coarse voxel with ``E >= threshold`` sums to ``E``
    (float64 round-off); one below the threshold comes out empty."""
    rel = np.asarray(rel, dtype=np.float64)
    coarse = np.asarray(coarse, dtype=np.float64)
    if rel.shape[:-1] != coarse.shape:
        raise ConditionsError(f"relative energies {rel.shape} do not match coarse showers {coarse.shape}")
    k = rel.shape[-1]
    e = np.clip(rel, 0.0, None) * coarse[..., None]
    out = threshold_renormalise(e.reshape(-1, k), coarse.reshape(-1), threshold)
    return out.reshape(rel.shape)


def assemble_fine(rel: np.ndarray, coarse: np.ndarray, cmap: CoarseMap, threshold: float = CUT_MEV,
                  rows: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Relative fine energies per coarse voxel -> fine showers (N, V) float64.

    ``rel``: (N, n_coarse, k) or (N * n_coarse, k) (rows of :func:`build_rows`);
    ``coarse``: (N, n_coarse) or (N * n_coarse,).  With ``rows`` = ``(shower index, coarse voxel
    index)``, ``rel`` holds only those (R, k) pairs, ``coarse`` is (N, n_coarse), and every coarse
    voxel not listed comes out empty (generation: the ones below the cut, which the cut and
    renormalisation empty anyway).
    """
    rel = np.asarray(rel, dtype=np.float64)
    coarse = np.asarray(coarse, dtype=np.float64)
    k, Vc = cmap.group_size, cmap.n_coarse
    if rows is None:
        if rel.shape[-1] != k or rel.size % (Vc * k):
            raise ConditionsError(f"relative fine energies: expected (N, {Vc}, {k}), got {rel.shape}")
        n = rel.size // (Vc * k)
        return cmap.scatter(upsample_postprocess(rel.reshape(n, Vc, k), coarse.reshape(n, Vc), threshold))
    si, vi = (np.asarray(r, dtype=np.int64).reshape(-1) for r in rows)
    if rel.shape != (len(si), k) or coarse.ndim != 2 or coarse.shape[1] != Vc:
        raise ConditionsError(f"relative fine energies: expected ({len(si)}, {k}) rows of (N, {Vc}) coarse "
                              f"showers, got {rel.shape} and {coarse.shape}")
    out = np.zeros((len(coarse), cmap.fine.n_voxels))
    out[si[:, None], cmap.members[vi]] = upsample_postprocess(rel, coarse[si, vi], threshold)
    return out


def fit_fine_layers(fine: np.ndarray, coarse: np.ndarray, layer_energies: np.ndarray, cmap: CoarseMap,
                    iterations: int, threshold: float = CUT_MEV) -> np.ndarray:
    """Rescale upsampled fine showers so that their fine layers carry ``layer_energies`` while every
    coarse voxel keeps its energy (beyond the paper; stop 17 of caloflows).

    When a coarse voxel spans several fine layers (choice A: 5), SUPERCALO is *conditioned* on the
    fine layer energies of FLOW-1 (paper sec. III A) but nothing makes the upsampled voxels add up to
    them.  Iterative proportional fitting (Deming and Stephan, Ann. Math. Stat. 11 (1940) 427)
    alternates two exact rescalings, ``iterations`` times: every fine layer to its target energy,
    then every coarse voxel's fine voxels to the coarse energy.  Zeros stay zero and the last step
    keeps the coarse voxels exact; the layer sums approach their targets where the coarse voxels
    allow it (a layer whose voxels all came out empty cannot).  The threshold-aware cut of
    :func:`upsample_postprocess` is applied again at the end, so no voxel lies in (0, ``threshold``).

    ``fine`` (N, V), ``coarse`` (N, n_coarse), ``layer_energies`` (N, L) MeV -> (N, V) float64.

    >>> from caloflows.coarsegraining import CoarseGraining
    >>> from caloflows.geometry import load_geometry
    >>> cmap = CoarseGraining.parse("1x2x3").bind(load_geometry("ds2-coarse"))
    >>> f = np.random.default_rng(0).uniform(1, 2, (2, cmap.fine.n_voxels))
    >>> c, E = cmap.coarse_grain(f), cmap.fine.layer_energies(f) * np.linspace(0.8, 1.2, 9)
    >>> E *= np.repeat(cmap.coarse.layer_energies(c) / E.reshape(2, 3, 3).sum(2), 3, axis=1)  # consistent sums
    >>> g = fit_fine_layers(f, c, E, cmap, 50)
    >>> bool(np.allclose(cmap.coarse_grain(g), c)), bool(np.allclose(cmap.fine.layer_energies(g), E, rtol=1e-4))
    (True, True)
    """
    f = np.array(fine, dtype=np.float64)
    c = np.asarray(coarse, dtype=np.float64)
    E = np.asarray(layer_energies, dtype=np.float64)
    g = cmap.fine
    if f.shape != (len(c), g.n_voxels) or c.shape[1:] != (cmap.n_coarse,) or E.shape != (len(c), g.n_layers):
        raise ConditionsError(f"fit_fine_layers: fine {f.shape}, coarse {c.shape} and layer energies {E.shape} "
                              f"do not match {cmap}")
    layer_of, coarse_of = g.layer_index, cmap.fine_to_coarse

    def ratio(target: np.ndarray, now: np.ndarray) -> np.ndarray:
        return np.where(now > 0, target / np.where(now > 0, now, 1.0), 1.0)

    for _ in range(int(iterations)):
        f *= ratio(E, g.layer_energies(f))[:, layer_of]
        f *= ratio(c, cmap.coarse_grain(f))[:, coarse_of]
    rel = cmap.gather(f) / np.where(c > 0, c, 1.0)[:, :, None]
    return cmap.scatter(upsample_postprocess(rel, c, threshold))


# ------------------------------------------------------------------ FLOW-1 / FLOW-2 (sec. IV)
def flow1_forward(layer_energies: np.ndarray, prep: SuperCaloPreprocessing,
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """FLOW-1 data (B2 + B3): ``logit((E_layer + U(0, 5 keV)) / 65 GeV)``, noise only with ``rng``."""
    e = np.asarray(layer_energies, dtype=np.float64)
    if rng is not None and prep.chain_noise_mev > 0:
        e = e + prep.chain_noise_mev * rng.random(e.shape)
    return prep.layer_forward(e)


def flow1_inverse(y: np.ndarray, prep: SuperCaloPreprocessing, threshold: float = CUT_MEV) -> np.ndarray:
    """Inverse of :func:`flow1_forward` followed by the appendix B cut (energies below it -> 0)."""
    return apply_cut(prep.layer_inverse(y), threshold)


def flow2_forward(coarse: np.ndarray, prep: SuperCaloPreprocessing,
                  rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """FLOW-2 data (B4): ``log10((E_coarse + U(0, 5 keV)) / E_coarse,max) + 6``.

    Returns ``(y, noisy coarse energies)``; the latter give the B5 conditions.  A coarse voxel
    that is exactly 0 without noise maps to ``log10(1e-12) + 6 = -6`` (floor at 1e-12 E_max).
    """
    e = np.asarray(coarse, dtype=np.float64)
    if rng is not None and prep.chain_noise_mev > 0:
        e = e + prep.chain_noise_mev * rng.random(e.shape)
    return np.log10(np.maximum(e / prep.e_coarse_max, 1e-12)) + 6.0, e


def flow2_inverse(y: np.ndarray, prep: SuperCaloPreprocessing, threshold: float = CUT_MEV) -> np.ndarray:
    """Inverse of B4 followed by the appendix B cut."""
    e = prep.e_coarse_max * 10.0 ** (np.asarray(y, dtype=np.float64) - 6.0)
    return apply_cut(e, threshold)


def flow2_conditions(einc: np.ndarray, coarse_layer_energies: np.ndarray, prep: SuperCaloPreprocessing) -> np.ndarray:
    """FLOW-2 conditions: [B1 E_inc, B5 ``log10(E_layer^coarse) / 4``] (10 dims for choice A).

    Training: coarse layer energies are sums of the *noisy* coarse voxels (:func:`flow2_forward`);
    generation: sums of FLOW-1's fine layer energies per coarse layer.  Energies are floored at
    the B4 noise width (5 keV) so an empty layer gives a finite value.
    """
    einc = np.asarray(einc, dtype=np.float64).reshape(-1)
    e = np.maximum(np.asarray(coarse_layer_energies, dtype=np.float64), max(prep.chain_noise_mev, 1e-12))
    return np.concatenate([prep.einc_forward(einc)[:, None], 0.25 * np.log10(e)], axis=1)


def apply_cut(x, threshold: float = CUT_MEV):
    """Appendix B: generated energies below ``threshold`` (15.15 keV) set to zero."""
    if isinstance(x, torch.Tensor):
        return torch.where(x < threshold, torch.zeros_like(x), x)
    x = np.asarray(x)
    return np.where(x < threshold, 0.0, x).astype(x.dtype, copy=False)
