"""Histogram metrics: separation power (review eq. 39) and chi2/NDF of E_dep/E_inc per
incident energy with mean and RMS ratios (CaloFlow paper sec. 4, figs 7-10, table 4).

Binning follows the official CaloChallenge evaluation (``shared/calochallenge/CONVENTIONS.md``):

* ``E_ratio`` (E_dep/E_inc): 100 bins on [0.5, 1.5];
* ``E_layer``: 39 log bins from the threshold to the reference maximum;
* voxel energies: 49 log bins from the threshold to the reference maximum;
* centres of energy in eta/phi: 100 bins on [-100, 100] mm for dataset-1 layers (layers 12 and
  13: [-500, 500]), [-30, 30] mm for Par04 geometries (datasets 2, 3); widths on [0, 100]
  (layers 12, 13: [0, 400]) resp. [0, 30];
* ``EC_r``/``width_r``: 100 bins on [0, 42] mm resp. [0, 20] mm for Par04 geometries (datasets 2, 3),
  [0, 500] mm for dataset 1 ([0, 1500] mm for layers 12-14), as the official helpers;
* sparsity: 20 bins on [0, 1] (``linspace(0, 1, 21)``, official);
* E_tot/E_inc per incident energy (dataset 1, discrete energies; :func:`eratio_separation_per_energy`):
  20 bins on [0.4, 1.4], or [0.9, 1.1] for photons from 4.096 GeV up (official helper).

Histograms are normalised over their in-range entries before the separation power.  Empty
histograms: if either histogram has no entry in range, S is NaN (what the official code's
density-normalised 0/0 gives); the out-of-range fractions reported next to every S (1.0 for the
empty sample) then flag the feature (beyond the official code, :func:`out_of_range_flag`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..geometry import DS1_THRESHOLD_MEV, Geometry
from .features import HighLevelFeatures

__all__ = [
    "separation_power",
    "hist_counts",
    "out_of_range_flag",
    "eratio_separation_per_energy",
    "feature_bins",
    "voxel_bins",
    "compare_histograms",
    "chi2_homogeneity",
    "energy_groups",
    "eratio_per_energy",
    "HistogramResult",
    "voxel_result",
]

SP_EPS = 1e-16
#: a feature is flagged when the generated out-of-range fraction exceeds the reference's by more
#: than this many standard errors (one-sided two-proportion z-test, pooled proportion; 4 keeps the chance of
#: a false flag among the ~400 histograms of ds3 near 1 % for identical samples)
OUT_OF_RANGE_Z = 4.0


def separation_power(h1: np.ndarray, h2: np.ndarray) -> float:
    """Separation power S = 1/2 sum_i (h1_i - h2_i)^2 / (h1_i + h2_i) (review eq. 39).

    ``h1`` and ``h2`` are bin counts over the same bins; each is normalised to unit sum over its
    in-range entries first.  S = 0 for identical shapes, 1 for no overlap.  If either histogram
    has no entry in range, S is NaN, as in the official code (its density normalisation divides 0 by
    0); the out-of-range fractions of :class:`HistogramResult` show such a sample.

    >>> round(separation_power([1, 1], [1, 0]), 6)
    0.333333
    """
    h1 = np.asarray(h1, dtype=np.float64)
    h2 = np.asarray(h2, dtype=np.float64)
    s1, s2 = h1.sum(), h2.sum()
    if s1 <= 0 or s2 <= 0:
        return float("nan")
    h1, h2 = h1 / s1, h2 / s2
    return float(0.5 * np.sum((h1 - h2) ** 2 / (h1 + h2 + SP_EPS)))


def _is_ds1_style(geometry: Geometry) -> bool:
    return geometry.threshold_mev == DS1_THRESHOLD_MEV


def _log_edges(lo: float, hi: float, n_edges: int) -> np.ndarray:
    hi = hi if hi > lo else lo * 10.0
    return np.geomspace(lo, hi, n_edges)


#: lower end of the log bins of a geometry without threshold (ParaFlow: no noise, no digitisation)
NO_THRESHOLD_FLOOR_MEV = 1e-3


def _floor(geometry: Geometry) -> float:
    return geometry.threshold_mev if geometry.threshold_mev > 0 else NO_THRESHOLD_FLOOR_MEV


def voxel_bins(ref_voxels: np.ndarray, geometry: Geometry) -> np.ndarray:
    """49 log bins from the threshold (1 keV without one) to the largest reference voxel (CONVENTIONS)."""
    t = _floor(geometry)
    return _log_edges(t, float(np.max(ref_voxels)) if np.size(ref_voxels) else t, 50)


def feature_bins(name: str, ref_values: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, bool]:
    """Bin edges for a feature of :meth:`HighLevelFeatures.table`, and whether the x axis is log."""
    kind, _, lid = name.partition("/")
    layer_id = int(lid) if lid else None
    ref_values = np.asarray(ref_values, dtype=np.float64)
    ds1 = _is_ds1_style(geometry)
    big = layer_id in (12, 13) and ds1
    if kind == "E_ratio":
        return np.linspace(0.5, 1.5, 101), False
    if kind == "E_layer":
        return _log_edges(_floor(geometry), float(ref_values.max(initial=0.0)), 40), True
    if geometry.is_grid and kind in ("EC_eta", "EC_phi", "width_eta", "width_phi"):
        # crystal grid: positions in crystal widths, up to the window's half extent
        lim = float(max(np.abs(geometry.eta_centers).max(), np.abs(geometry.phi_centers).max())) + 0.5
        return (np.linspace(-lim, lim, 101) if kind.startswith("EC") else np.linspace(0.0, lim, 101)), False
    if kind in ("EC_eta", "EC_phi"):
        lim = 500.0 if big else (100.0 if ds1 else 30.0)
        return np.linspace(-lim, lim, 101), False
    if kind in ("width_eta", "width_phi"):
        lim = 400.0 if big else (100.0 if ds1 else 30.0)
        return np.linspace(0.0, lim, 101), False
    if kind in ("EC_r", "width_r"):
        if ds1:
            hi = 1500.0 if layer_id in (12, 13, 14) else 500.0
        else:
            hi = 42.0 if kind == "EC_r" else 20.0
        return np.linspace(0.0, hi, 101), False
    if kind == "sparsity":
        return np.linspace(0.0, 1.0, 21), False
    raise KeyError(f"unknown feature {name!r}")


def hist_counts(values: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, int, int, int]:
    """(in-range counts as ``np.histogram``, underflow, overflow, total entries) of ``values``.

    Underflow counts entries < edges[0], overflow entries > edges[-1] (``np.histogram`` includes
    the right edge in the last bin); NaN entries count as neither but are in the total.
    """
    v = np.ravel(values)
    h = np.histogram(v, edges)[0].astype(np.float64)
    return h, int(np.count_nonzero(v < edges[0])), int(np.count_nonzero(v > edges[-1])), int(v.size)


def out_of_range_flag(k_gen: int, n_gen: int, k_ref: int, n_ref: int, z: float = OUT_OF_RANGE_Z) -> bool:
    """True if the generated out-of-range fraction k_gen/n_gen exceeds the reference's k_ref/n_ref by
    more than ``z`` standard errors sqrt(p (1 - p) (1/n_gen + 1/n_ref)), p the pooled fraction.

    >>> out_of_range_flag(30, 1000, 0, 1000), out_of_range_flag(1, 1000, 0, 1000)
    (True, False)
    """
    if n_gen <= 0 or n_ref <= 0:
        return False
    pg, pr = k_gen / n_gen, k_ref / n_ref
    p = (k_gen + k_ref) / (n_gen + n_ref)
    se = np.sqrt(p * (1 - p) * (1 / n_gen + 1 / n_ref))
    return bool(pg - pr > z * se) if se > 0 else bool(pg > pr)


@dataclass
class HistogramResult:
    """One feature histogrammed for both samples (and the reference halves).

    ``gen_out``/``ref_out`` are (underflow, overflow, total entries): what ``np.histogram`` drops.
    """

    name: str
    edges: np.ndarray
    log_x: bool
    gen: np.ndarray
    ref: np.ndarray
    separation_power: float
    ref_band: float | None = None  # separation power between the two reference halves
    gen_out: tuple[int, int, int] = (0, 0, 0)
    ref_out: tuple[int, int, int] = (0, 0, 0)

    @property
    def gen_out_of_range(self) -> float:
        """Fraction of generated entries outside the histogram range."""
        return (self.gen_out[0] + self.gen_out[1]) / self.gen_out[2] if self.gen_out[2] else float("nan")

    @property
    def ref_out_of_range(self) -> float:
        """Fraction of reference entries outside the histogram range."""
        return (self.ref_out[0] + self.ref_out[1]) / self.ref_out[2] if self.ref_out[2] else float("nan")

    @property
    def out_of_range_flag(self) -> bool:
        """Generated sample has significantly more entries outside the range than the reference."""
        return out_of_range_flag(self.gen_out[0] + self.gen_out[1], self.gen_out[2],
                                 self.ref_out[0] + self.ref_out[1], self.ref_out[2])

    def to_json(self) -> dict:
        g, r = self.gen_out, self.ref_out
        return {
            "separation_power": self.separation_power,
            "reference_halves": self.ref_band,
            "out_of_range_generated": self.gen_out_of_range,
            "out_of_range_reference": self.ref_out_of_range,
            "underflow_generated": g[0] / g[2] if g[2] else None,
            "overflow_generated": g[1] / g[2] if g[2] else None,
            "underflow_reference": r[0] / r[2] if r[2] else None,
            "overflow_reference": r[1] / r[2] if r[2] else None,
            "out_of_range_flag": self.out_of_range_flag,
        }


def compare_histograms(
    gen: HighLevelFeatures,
    ref: HighLevelFeatures,
    ref_halves: tuple[HighLevelFeatures, HighLevelFeatures] | None = None,
    voxel: "HistogramResult | None" = None,
) -> dict[str, HistogramResult]:
    """Histogram every high-level feature and the voxel energies; separation powers against the
    reference and, if given, between the two reference halves (the Geant4-vs-Geant4 floor).

    ``voxel``: the voxel-energy result computed chunk by chunk (:func:`voxel_result`); default: from
    the voxels of the features (which must then be present).  Voxel entries are the non-zero voxels.
    """
    g_tab, r_tab = gen.table(), ref.table()
    h_tabs = (ref_halves[0].table(), ref_halves[1].table()) if ref_halves else None
    out: dict[str, HistogramResult] = {}
    for name, rv in r_tab.items():
        edges, log_x = feature_bins(name, rv, ref.geometry)
        out[name] = _compare(name, edges, log_x, g_tab[name], rv, h_tabs and (h_tabs[0][name], h_tabs[1][name]))
    if voxel is None:
        if ref.voxels is None or gen.voxels is None:
            raise ValueError("the voxel histogram needs the voxels, but these features were computed without them")
        edges = voxel_bins(ref.voxels, ref.geometry)
        nz = lambda v: v[v > 0]  # noqa: E731  zeros are below the threshold: described by sparsity
        halves = (nz(ref_halves[0].voxels), nz(ref_halves[1].voxels)) if ref_halves else None
        voxel = _compare("voxel", edges, True, nz(gen.voxels), nz(ref.voxels), halves)
    out["voxel"] = voxel
    return out


def voxel_result(edges: np.ndarray, gen_counts, gen_out: tuple[int, int, int], ref_counts,
                 ref_out: tuple[int, int, int], halves_counts=None) -> HistogramResult:
    """:class:`HistogramResult` of the voxel energies from accumulated counts (chunked evaluation)."""
    band = None if halves_counts is None else separation_power(*halves_counts)
    gen_counts = np.asarray(gen_counts, dtype=np.float64)
    ref_counts = np.asarray(ref_counts, dtype=np.float64)
    return HistogramResult("voxel", np.asarray(edges), True, gen_counts, ref_counts,
                           separation_power(gen_counts, ref_counts), band, _int3(gen_out), _int3(ref_out))


def _int3(t) -> tuple[int, int, int]:
    return int(t[0]), int(t[1]), int(t[2])


def _hist(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.histogram(np.ravel(values), edges)[0].astype(np.float64)


def _compare(name, edges, log_x, gv, rv, halves) -> HistogramResult:
    hg, *og = hist_counts(gv, edges)
    hr, *orf = hist_counts(rv, edges)
    band = None
    if halves is not None:
        band = separation_power(_hist(halves[0], edges), _hist(halves[1], edges))
    return HistogramResult(name, edges, log_x, hg, hr, separation_power(hg, hr), band, _int3(og), _int3(orf))


# ------------------------------------------------------------------ chi2 per E_inc
def chi2_homogeneity(n1: np.ndarray, n2: np.ndarray) -> tuple[float, int]:
    """chi2 homogeneity test of two unweighted histograms with different totals.

    chi2 = sum_i (sqrt(N2/N1) n1_i - sqrt(N1/N2) n2_i)^2 / (n1_i + n2_i) over bins with entries,
    NDF = (number of such bins) - 1 (the ROOT ``Chi2Test`` "UU" statistic; CaloFlow paper table 4
    quotes sum chi2 / sum NDF over the incident energies).
    """
    n1 = np.asarray(n1, dtype=np.float64)
    n2 = np.asarray(n2, dtype=np.float64)
    s1, s2 = n1.sum(), n2.sum()
    if s1 <= 0 or s2 <= 0:
        return float("nan"), 0
    m = (n1 + n2) > 0
    a, b = n1[m], n2[m]
    chi2 = np.sum((np.sqrt(s2 / s1) * a - np.sqrt(s1 / s2) * b) ** 2 / (a + b))
    return float(chi2), int(m.sum()) - 1


def energy_groups(ref_inc: np.ndarray, max_discrete: int = 20, n_groups: int = 10) -> list[tuple[float, float]]:
    """Incident-energy groups: the discrete energies of the reference (dataset 1) as (E, E)
    intervals, or ``n_groups`` log-spaced quantile intervals for continuous spectra (datasets 2, 3)."""
    u = np.unique(ref_inc)
    if len(u) <= max_discrete:
        return [(float(e), float(e)) for e in u]
    q = np.quantile(ref_inc, np.linspace(0, 1, n_groups + 1))
    return [(float(a), float(b)) for a, b in zip(q[:-1], q[1:])]


def _select(inc: np.ndarray, lo: float, hi: float, last: bool) -> np.ndarray:
    if lo == hi:
        return np.isclose(inc, lo, rtol=1e-6, atol=0.0)
    return (inc >= lo) & ((inc <= hi) if last else (inc < hi))


def eratio_per_energy(
    gen: HighLevelFeatures,
    ref: HighLevelFeatures,
    n_bins: int = 30,
    ref_halves: tuple[HighLevelFeatures, HighLevelFeatures] | None = None,
) -> dict:
    """E_dep/E_inc per incident energy: histograms, chi2/NDF, and mean and RMS ratios gen/ref
    (CaloFlow paper figs 7-10 and table 4).

    The histogram range of each energy is the reference's [0.5 %, 99.5 %] quantile range widened
    by 20 % on each side; entries outside it (outliers) are excluded from histograms, mean and RMS
    ("calculated from the histograms which have excluded outliers", CaloFlow sec. 4.1).
    """
    groups = energy_groups(ref.incident_energies)
    rows = []
    tot_chi2, tot_ndf, band_chi2, band_ndf = 0.0, 0, 0.0, 0
    for k, (lo, hi) in enumerate(groups):
        last = k == len(groups) - 1
        rv = ref.e_ratio[_select(ref.incident_energies, lo, hi, last)]
        gv = gen.e_ratio[_select(gen.incident_energies, lo, hi, last)]
        if len(rv) == 0:
            continue
        a, b = np.quantile(rv, [0.005, 0.995])
        pad = 0.2 * max(b - a, 1e-3)
        edges = np.linspace(a - pad, b + pad, n_bins + 1)
        hg, hr = _hist(gv, edges), _hist(rv, edges)
        chi2, ndf = chi2_homogeneity(hg, hr)
        gin = gv[(gv >= edges[0]) & (gv <= edges[-1])]
        rin = rv[(rv >= edges[0]) & (rv <= edges[-1])]
        row: dict[str, Any] = {
            "e_inc_min_mev": lo,
            "e_inc_max_mev": hi,
            "n_gen": int(len(gv)),
            "n_ref": int(len(rv)),
            "chi2": chi2,
            "ndf": ndf,
            "mean_gen": float(gin.mean()) if len(gin) else float("nan"),
            "mean_ref": float(rin.mean()),
            "rms_gen": float(gin.std()) if len(gin) else float("nan"),
            "rms_ref": float(rin.std()),
            "edges": edges,
            "hist_gen": hg,
            "hist_ref": hr,
        }
        row["mean_ratio"] = row["mean_gen"] / row["mean_ref"] if row["mean_ref"] else float("nan")
        row["rms_ratio"] = row["rms_gen"] / row["rms_ref"] if row["rms_ref"] else float("nan")
        if np.isfinite(chi2):
            tot_chi2 += chi2
            tot_ndf += ndf
        if ref_halves is not None:
            h0 = ref_halves[0].e_ratio[_select(ref_halves[0].incident_energies, lo, hi, last)]
            h1 = ref_halves[1].e_ratio[_select(ref_halves[1].incident_energies, lo, hi, last)]
            c, d = chi2_homogeneity(_hist(h0, edges), _hist(h1, edges))
            row["chi2_reference_halves"], row["ndf_reference_halves"] = c, d
            if np.isfinite(c):
                band_chi2 += c
                band_ndf += d
        rows.append(row)
    out = {
        "groups": rows,
        "chi2": tot_chi2,
        "ndf": tot_ndf,
        "chi2_per_ndf": tot_chi2 / tot_ndf if tot_ndf else float("nan"),
    }
    if ref_halves is not None:
        out["reference_halves"] = {
            "chi2": band_chi2,
            "ndf": band_ndf,
            "chi2_per_ndf": band_chi2 / band_ndf if band_ndf else float("nan"),
        }
    return out


# ------------------------------------------------------------------ S of E_tot/E_inc per E_inc
def eratio_bins_per_energy(e_inc_mev: float, geometry: Geometry) -> np.ndarray:
    """Official binning of E_tot/E_inc at one dataset-1 incident energy: 20 bins on [0.4, 1.4], or on
    [0.9, 1.1] for photons from 2^12 MeV = 4.096 GeV up (``plot_Etot_Einc_discrete``)."""
    photons = (geometry.particle or "").lower().startswith("photon") or "photon" in geometry.name
    if photons and e_inc_mev >= 2.0**12 * (1 - 1e-9):
        return np.linspace(0.9, 1.1, 21)
    return np.linspace(0.4, 1.4, 21)


def eratio_separation_per_energy(
    gen: HighLevelFeatures,
    ref: HighLevelFeatures,
    ref_halves: tuple[HighLevelFeatures, HighLevelFeatures] | None = None,
    max_discrete: int = 20,
) -> list[dict] | None:
    """Separation power of E_tot/E_inc at every discrete incident energy of the reference (the
    official code writes it for dataset 1), with the out-of-range fractions; None for continuous
    spectra (datasets 2, 3), where the official code has no such output.

    Showers are selected as the official helper does, E in [E_k, 2 E_k) around each reference energy
    (the dataset-1 energies are powers of two; for other discrete spectra: equal to E_k).
    An energy without generated showers, or with none in range, gets S = NaN (see
    :func:`separation_power`), and its out-of-range fraction is 1 resp. undefined.
    """
    u = np.unique(ref.incident_energies)
    if len(u) > max_discrete:
        return None
    pow2 = np.allclose(np.log2(u), np.round(np.log2(u)), atol=1e-9)

    def sel(inc, e):
        return (inc >= e) & (inc < 2 * e) if pow2 else np.isclose(inc, e, rtol=1e-6, atol=0.0)

    rows = []
    for e in u:
        edges = eratio_bins_per_energy(float(e), ref.geometry)
        r = _compare("E_ratio", edges, False, gen.e_ratio[sel(gen.incident_energies, e)],
                     ref.e_ratio[sel(ref.incident_energies, e)],
                     None if ref_halves is None else tuple(h.e_ratio[sel(h.incident_energies, e)] for h in ref_halves))
        rows.append({"e_inc_mev": float(e), "edges": edges, "n_gen": r.gen_out[2], "n_ref": r.ref_out[2],
                     **r.to_json()})
    return rows
