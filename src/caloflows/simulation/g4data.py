"""Geant4 data sets: find the official ones, or build approximate stand-ins once.

Geant4 11 with ``G4EmStandardPhysics_option1`` stops at start-up unless it finds
``G4ENSDFSTATEDATA/ENSDFSTATE.dat``, the ``G4LEVELGAMMADATA`` directory and, in
``G4LEDATA``, for every element of the detector

* ``brem_SB/br<Z>`` -- the Seltzer-Berger bremsstrahlung table read by
  ``G4SeltzerBergerModel`` through ``G4Physics2DVector::Retrieve``: a header
  ``2 Nkappa NlogT``, the grid of kappa = k/T, the grid of ln(T/MeV), then one row per
  energy of the scaled cross section ``beta^2/Z^2 k dsigma/dk`` in mb;
* ``epics2017/phot/pe-cs-<Z>.dat`` (a ``G4PhysicsFreeVector`` in ASCII:
  ``Emin Emax N`` / ``N`` / ``N`` pairs ``E sigma*E^3`` in MeV and barn MeV^3),
  ``pe-high-<Z>.dat`` and ``pe-low-<Z>.dat`` (``n_shells n_shells_used E_threshold``,
  then per shell the binding energy and six coefficients a_1..a_6 of
  ``sigma = sum_k a_k / E^k``) -- read by ``G4LivermorePhotoElectricModel``.

If the official data sets are installed (``GEANT4_DATA_DIR``, or the per-set variables
``G4LEDATA``, ``G4LEVELGAMMADATA``, ``G4ENSDFSTATEDATA``, or geant4_pybind's own
download directory ``~/.geant4_pybind``) they are used.  Otherwise approximate tables
are generated, once, into a cache directory (``$CALOFLOWS_G4DATA_CACHE``, default
``~/.cache/caloflows/g4data``):

* bremsstrahlung from the screened Bethe-Heitler cross section with Tsai's analytic
  screening functions and Coulomb correction (Y.-S. Tsai, Rev. Mod. Phys. 46 (1974) 815,
  eqs. 3.9, 3.38-3.41), the cross section Geant4's relativistic model
  ``G4eBremsstrahlungRelModel`` uses above 1 GeV; below a few MeV it is only a rough
  stand-in for the Seltzer-Berger data;
* photo-absorption from Geant4's own Sandia parameterisation (taken from a material's
  ``GetSandiaTable()``; one effective shell per element, so no fluorescence).

THESE TABLES ARE A STAND-IN FOR THE OFFICIAL ONES: showers are close to, not identical
with, what official Geant4 data give.  Every output file records which tables were used.

The environment variables must be set before ``geant4_pybind`` is imported (without them
the import asks on stdin whether to download the data; with ``CI=true`` it tries to
download and fails): call :func:`configure_geant4_data` first.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "G4DataConfig",
    "configure_geant4_data",
    "default_cache_dir",
    "tsai_k_dsigma_dk_mb",
    "write_brem_table",
    "APPROX_VERSION",
    "DETECTOR_Z",
]

#: bump when the generated tables change, so old caches are not reused
APPROX_VERSION = "approx-v1"
#: elements of the Par04 detector (W, Si) and of the G4_Galactic world (H)
DETECTOR_Z = (1, 14, 74)
#: NIST material used to get each element's Sandia coefficients
_ELEMENT_MATERIAL = {1: "G4_H", 14: "G4_Si", 74: "G4_W"}

_FINE_STRUCTURE = 7.2973525693e-3
_R_E_CM = 2.8179403262e-13
_ELECTRON_MASS_MEV = 0.51099895
#: alpha r_e^2 in millibarn (1 mb = 1e-27 cm^2)
_ALPHA_RE2_MB = _FINE_STRUCTURE * _R_E_CM**2 / 1e-27

_DATASET_VARS = ("G4LEDATA", "G4LEVELGAMMADATA", "G4ENSDFSTATEDATA")
#: directory names of the official data sets (geant4_pybind 0.1 / Geant4 11.4)
_OFFICIAL_PREFIX = {"G4LEDATA": "G4EMLOW", "G4LEVELGAMMADATA": "PhotonEvaporation", "G4ENSDFSTATEDATA": "G4ENSDFSTATE"}


@dataclass
class G4DataConfig:
    """Where Geant4 finds its data and whether the tables are official or approximate."""

    tables: str  # "official" or "approximate"
    env: dict[str, str] = field(default_factory=dict)
    description: str = ""

    def attrs(self) -> dict[str, str]:
        """Attributes every simulated file carries."""
        return {"geant4_tables": self.tables, "geant4_tables_detail": self.description}


def default_cache_dir() -> Path:
    env = os.environ.get("CALOFLOWS_G4DATA_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "caloflows" / "g4data"


def _find_official() -> dict[str, str] | None:
    """Environment for official data sets, or None if they are not installed."""
    env = {v: os.environ[v] for v in _DATASET_VARS if os.environ.get(v)}
    roots = []
    if os.environ.get("GEANT4_DATA_DIR"):
        roots.append(Path(os.environ["GEANT4_DATA_DIR"]))
    roots.append(Path(os.path.expanduser("~")) / ".geant4_pybind")
    for var, prefix in _OFFICIAL_PREFIX.items():
        if var in env:
            continue
        for root in roots:
            if root.is_dir():
                hits = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(prefix))
                if hits:
                    env[var] = str(hits[-1])
                    break
    le = env.get("G4LEDATA")
    if le and Path(le, "brem_SB").is_dir() and not Path(le, "CALOFLOWS_APPROXIMATE").exists():
        env.setdefault("GEANT4_DATA_DIR", os.environ.get("GEANT4_DATA_DIR") or str(Path(le).parent))
        return env
    return None


def configure_geant4_data(cache_dir: str | os.PathLike | None = None, elements: Iterable[int] = DETECTOR_Z,
                          force_approximate: bool = False) -> G4DataConfig:
    """Set the Geant4 data environment variables in ``os.environ`` (call before importing
    geant4_pybind) and return what was chosen.  Approximate tables are generated into the
    cache on first use (atomically: a half-written cache is never used)."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    d = root / APPROX_VERSION
    if not force_approximate:
        env = _find_official()
        if env is not None:
            # the EM-only physics list needs nothing from these two but their presence:
            # fall back to the (empty) stand-ins when only G4EMLOW is installed
            missing_vars = [v for v in ("G4LEVELGAMMADATA", "G4ENSDFSTATEDATA") if v not in env]
            if missing_vars:
                _write_nuclear_stand_ins(d)
                env.setdefault("G4LEVELGAMMADATA", str(d / "PhotonEvaporation"))
                env.setdefault("G4ENSDFSTATEDATA", str(d / "G4ENSDFSTATE"))
            os.environ.update(env)
            return G4DataConfig("official", env, f"official Geant4 data sets (G4LEDATA={env['G4LEDATA']})")
    env = {
        "G4LEDATA": str(d / "G4EMLOW"),
        "G4LEVELGAMMADATA": str(d / "PhotonEvaporation"),
        "G4ENSDFSTATEDATA": str(d / "G4ENSDFSTATE"),
        "GEANT4_DATA_DIR": str(d),
    }
    os.environ.update(env)
    missing = [z for z in elements if not _complete(d, z)]
    if missing:
        _generate(d, sorted(set(missing)))
    return G4DataConfig(
        "approximate", env,
        f"approximate tables generated by caloflows ({APPROX_VERSION}: Tsai screened Bethe-Heitler "
        f"bremsstrahlung, Sandia photo-absorption) in {d}",
    )


def _element_files(d: Path, z: int) -> list[Path]:
    le = d / "G4EMLOW"
    ph = le / "epics2017" / "phot"
    return [le / "brem_SB" / f"br{z}", ph / f"pe-cs-{z}.dat", ph / f"pe-high-{z}.dat", ph / f"pe-low-{z}.dat"]


def _complete(d: Path, z: int) -> bool:
    return (d / "G4ENSDFSTATE" / "ENSDFSTATE.dat").exists() and all(p.exists() for p in _element_files(d, z))


def _write_nuclear_stand_ins(d: Path) -> None:
    """An empty ENSDFSTATE.dat (accepted by G4NuclideTable) and an empty PhotonEvaporation dir."""
    (d / "G4ENSDFSTATE").mkdir(parents=True, exist_ok=True)
    (d / "PhotonEvaporation").mkdir(parents=True, exist_ok=True)
    if not (d / "G4ENSDFSTATE" / "ENSDFSTATE.dat").exists():
        _atomic_text(d / "G4ENSDFSTATE" / "ENSDFSTATE.dat", "")


def _generate(d: Path, elements: Sequence[int]) -> None:
    """Write the tables for ``elements`` into ``d`` (each file written to a temporary name, then renamed)."""
    sandia = _sandia_coefficients(elements)
    _write_nuclear_stand_ins(d)
    le = d / "G4EMLOW"
    (le / "brem_SB").mkdir(parents=True, exist_ok=True)
    (le / "epics2017" / "phot").mkdir(parents=True, exist_ok=True)
    _atomic_text(le / "CALOFLOWS_APPROXIMATE", "approximate tables generated by caloflows; not official Geant4 data\n")
    for z in elements:
        brem, pe_cs, pe_high, pe_low = _element_files(d, z)
        _atomic_text(brem, write_brem_table(z))
        cs, high, low = photo_tables(sandia[z])
        _atomic_text(pe_cs, cs)
        _atomic_text(pe_high, high)
        _atomic_text(pe_low, low)


def _atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# ------------------------------------------------------------ bremsstrahlung
def _coulomb_correction(z: int) -> float:
    """Tsai's Coulomb correction f(Z) (Rev. Mod. Phys. 46 (1974) 815, eq. 3.3)."""
    a2 = (_FINE_STRUCTURE * z) ** 2
    return a2 * (1.0 / (1.0 + a2) + 0.20206 - 0.0369 * a2 + 0.0083 * a2**2 - 0.002 * a2**3)


def tsai_k_dsigma_dk_mb(z: int, t_mev: np.ndarray | float, kappa: np.ndarray | float) -> np.ndarray:
    """k dsigma/dk (mb) of an electron of kinetic energy T emitting a photon k = kappa T.

    Screened Bethe-Heitler cross section with Tsai's screening functions (Tsai 1974,
    eq. 3.9 with eqs. 3.38-3.41, including the atomic-electron term):
    k dsigma/dk = alpha r_e^2 {(4/3 - 4/3 y + y^2)[Z^2(phi1 - 4/3 ln Z - 4 f) + Z(psi1 - 8/3 ln Z)]
    + 2/3 (1 - y)[Z^2(phi1 - phi2) + Z(psi1 - psi2)]},  y = k/E, E = T + m.
    """
    t = np.asarray(t_mev, dtype=np.float64)
    kap = np.asarray(kappa, dtype=np.float64)
    e = t + _ELECTRON_MASS_MEV
    k = kap * t
    y = k / e
    e_out = np.maximum(e - k, _ELECTRON_MASS_MEV)
    dum = 100.0 * _ELECTRON_MASS_MEV * k / (e * e_out)
    gam = dum / z ** (1.0 / 3.0)
    eps = dum / z ** (2.0 / 3.0)
    phi1 = 20.863 - 2.0 * np.log1p((0.55846 * gam) ** 2) - 4.0 * (1.0 - 0.6 * np.exp(-0.9 * gam) - 0.4 * np.exp(-1.5 * gam))
    phi2 = phi1 - (2.0 / 3.0) / (1.0 + 6.5 * gam + 6.0 * gam**2)
    psi1 = 28.340 - 2.0 * np.log1p((3.621 * eps) ** 2) - 2.0 * (1.0 - 0.7 * np.exp(-8.0 * eps) - 0.3 * np.exp(-29.2 * eps))
    psi2 = psi1 - (2.0 / 3.0) / (1.0 + 40.0 * eps + 400.0 * eps**2)
    lnz = math.log(z)
    fz = _coulomb_correction(z)
    nucl = z * z * (phi1 - 4.0 / 3.0 * lnz - 4.0 * fz)
    elec = z * (psi1 - 8.0 / 3.0 * lnz)
    val = (4.0 / 3.0 - 4.0 / 3.0 * y + y * y) * (np.maximum(nucl, 0.0) + np.maximum(elec, 0.0)) + (2.0 / 3.0) * (
        1.0 - y
    ) * (z * z * (phi1 - phi2) + z * (psi1 - psi2))
    return _ALPHA_RE2_MB * np.maximum(val, 0.0)


#: kappa grid of the generated tables (dense near the tip kappa -> 1, like the SB tables)
_KAPPA = np.concatenate([[1e-12], np.linspace(0.025, 0.95, 38), [0.97, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99995, 1.0]])
#: ln(T/MeV) grid: 1 keV .. 10 GeV, 8 points per decade
_LOGT = np.log(np.logspace(-3, 4, 57))


def write_brem_table(z: int) -> str:
    """Text of ``brem_SB/br<Z>`` in the Seltzer-Berger scaled format (beta^2/Z^2 k dsigma/dk, mb)."""
    t = np.exp(_LOGT)
    gamma = 1.0 + t / _ELECTRON_MASS_MEV
    beta2 = 1.0 - 1.0 / gamma**2
    rows = tsai_k_dsigma_dk_mb(z, t[:, None], _KAPPA[None, :]) * beta2[:, None] / z**2
    lines = [f"2 {len(_KAPPA)} {len(_LOGT)}", " ".join(f"{x:.8g}" for x in _KAPPA), " ".join(f"{x:.8g}" for x in _LOGT)]
    lines += [" ".join(f"{v:.6g}" for v in row) for row in rows]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------- photo effect
@dataclass
class SandiaElement:
    """Per-atom Sandia coefficients: interval lower edges (MeV) and a_1..a_4 (barn MeV^k)."""

    z: int
    edges: np.ndarray  # (n,)
    coeffs: np.ndarray  # (n, 4)

    def sigma_barn(self, e_mev: np.ndarray) -> np.ndarray:
        """sigma(E) = sum_k a_k / E^k with the coefficients of E's interval (Sandia et al.)."""
        e = np.asarray(e_mev, dtype=np.float64)
        i = np.clip(np.searchsorted(self.edges, e, side="right") - 1, 0, len(self.edges) - 1)
        a = self.coeffs[i]
        inv = 1.0 / e
        return a[..., 0] * inv + a[..., 1] * inv**2 + a[..., 2] * inv**3 + a[..., 3] * inv**4


def _sandia_coefficients(elements: Sequence[int]) -> dict[int, SandiaElement]:
    """Sandia coefficients per atom from Geant4 (material ``GetSandiaTable()``; the
    per-volume coefficients divided by the number of atoms per volume)."""
    import geant4_pybind as g4  # environment already set by configure_geant4_data

    nist = g4.G4NistManager.Instance()
    barn_mm2 = 1e-22
    out = {}
    for z in elements:
        name = _ELEMENT_MATERIAL.get(z)
        if name is None:
            el = nist.FindOrBuildElement(int(z))
            name = f"G4_{el.GetSymbol()}"
        mat = nist.FindOrBuildMaterial(name)
        if mat is None or mat.GetNumberOfElements() != 1:
            raise RuntimeError(f"no single-element NIST material for Z={z}")
        st = mat.GetSandiaTable()
        nat = mat.GetTotNbOfAtomsPerVolume()
        n = st.GetMatNbOfIntervals()
        tab = np.array([[st.GetSandiaCofForMaterial(i, j) for j in range(5)] for i in range(n)], dtype=np.float64)
        out[z] = SandiaElement(z, tab[:, 0].copy(), tab[:, 1:] / nat / barn_mm2)
    return out


def _pe_param_text(threshold: float, e_bind: float, coeffs: np.ndarray) -> str:
    a = list(coeffs) + [0.0] * (6 - len(coeffs))
    return f"1 1 {threshold:.8g}\n{e_bind:.8g} " + " ".join(f"{x:.8g}" for x in a) + "\n"


def photo_tables(s: SandiaElement, per_decade: int = 60) -> tuple[str, str, str]:
    """Texts of ``pe-cs-Z.dat``, ``pe-high-Z.dat``, ``pe-low-Z.dat`` from Sandia coefficients.

    One effective shell with binding energy = lowest Sandia edge.  Above the start of the
    last Sandia interval the 'high' parameterisation holds its coefficients, between the
    last two edges the 'low' one; below, sigma*E^3 is tabulated on a log grid.  Absorption
    edges are spread over a 10 % ramp in energy so that Geant4's spline through the table
    does not ring (and never goes negative).
    """
    e_bind = float(s.edges[0])
    n = len(s.edges)
    e_high = float(s.edges[-1])
    e_low = float(s.edges[-2]) if n >= 2 else e_high
    high = _pe_param_text(e_high, e_bind, s.coeffs[-1])
    low = _pe_param_text(e_low, e_bind, s.coeffs[-2] if n >= 2 else s.coeffs[-1])
    top = e_high * 1.05
    grid = np.geomspace(e_bind, top, max(8, int(per_decade * math.log10(top / e_bind)) + 1))
    val = np.maximum(s.sigma_barn(grid), 0.0) * grid**3
    for edge in s.edges[1:]:
        lo, hi = edge / 1.1, edge
        m = (grid > lo) & (grid < hi)
        if m.any():
            v_lo = max(float(s.sigma_barn(np.array([lo]))[0]), 0.0) * lo**3
            v_hi = max(float(s.sigma_barn(np.array([hi]))[0]), 0.0) * hi**3
            w = np.log(grid[m] / lo) / math.log(hi / lo)
            val[m] = v_lo + w * (v_hi - v_lo)
    val = np.maximum(val, 1e-30)
    lines = [f"{grid[0]:.8g} {grid[-1]:.8g} {len(grid)}", f"{len(grid)}"]
    lines += [f"{e:.8g} {v:.8g}" for e, v in zip(grid, val)]
    return "\n".join(lines) + "\n", high, low


def clear_cache(cache_dir: str | os.PathLike | None = None) -> None:
    """Remove generated approximate tables (they are rebuilt on next use)."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    shutil.rmtree(root / APPROX_VERSION, ignore_errors=True)
