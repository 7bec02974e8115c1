"""Incident energies and per-shower random seeds of a simulation run.

Shower ``k`` of a run with seed ``S`` gets its incident energy and its Geant4 seed from
``numpy.random.SeedSequence(S, spawn_key=(k,))`` alone, so any subset of showers (a shard
``--shard i/N``, a local worker) reproduces exactly the showers of the full run.

Energy specifications (GeV on the command line, MeV inside):

* ``A:B``          log-uniform in [A, B] GeV (CaloChallenge datasets 2 and 3: 1..1000 GeV);
* ``U:A:B``        uniform in [A, B] GeV (ParaFlow, ``paraflow.txt`` sec. 2: 20..100 GeV);
* ``pow2:A:B``     the powers of two 2^i with A <= 2^i <= B GeV, used in turn
  (shower k gets value k mod n: equal counts, like dataset 1's discrete energies);
* ``E``            a fixed energy of E GeV;
* ``E1,E2,...``    a list of discrete energies, used in turn.

Every energy must lie in [:data:`MIN_ENERGY_GEV`, :data:`MAX_ENERGY_GEV`] = [1 MeV, 10 TeV]:
the CaloChallenge datasets span 1 GeV - 1 TeV (ds2, ds3) and 256 MeV - 4 TeV (ds1); the
45 readout layers (about 36 X0 of tungsten) stop containing showers well above 10 TeV and the
Geant4 time grows linearly with energy (a 1e9 GeV request would run for ever), and below 1 MeV
there is no shower to speak of.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import EnergySpecError

__all__ = ["EnergySpec", "parse_energy", "shower_energies_mev", "shower_seeds", "shower_uniforms", "MIN_ENERGY_GEV",
           "MAX_ENERGY_GEV"]

#: lowest incident energy ``simulate`` accepts (GeV)
MIN_ENERGY_GEV = 1e-3
#: highest incident energy ``simulate`` accepts (GeV)
MAX_ENERGY_GEV = 1e4


@dataclass(frozen=True)
class EnergySpec:
    """How incident energies are drawn: ``kind`` is 'loguniform', 'uniform' or 'discrete' (GeV values)."""

    kind: str
    lo_gev: float = 0.0
    hi_gev: float = 0.0
    values_gev: tuple[float, ...] = ()
    text: str = ""

    def describe(self) -> str:
        if self.kind == "loguniform":
            return f"log-uniform {self.lo_gev:g}-{self.hi_gev:g} GeV"
        if self.kind == "uniform":
            return f"uniform {self.lo_gev:g}-{self.hi_gev:g} GeV"
        return "discrete " + ", ".join(f"{v:g}" for v in self.values_gev) + " GeV (cycled)"


def _num(s: str, text: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise EnergySpecError(f"energy {text!r}: {s!r} is not a number") from None
    if not math.isfinite(v) or v <= 0:
        raise EnergySpecError(f"energy {text!r}: energies must be positive, got {s!r}")
    if not MIN_ENERGY_GEV <= v <= MAX_ENERGY_GEV:
        raise EnergySpecError(f"energy {text!r}: {s} GeV is outside the supported range "
                              f"{MIN_ENERGY_GEV:g}-{MAX_ENERGY_GEV:g} GeV")
    return v


def parse_energy(text: str) -> EnergySpec:
    """Parse ``A:B``, ``U:A:B``, ``pow2:A:B``, ``E`` or ``E1,E2,...`` (GeV).

    >>> parse_energy("U:20:100").describe()
    'uniform 20-100 GeV'
    """
    t = str(text).strip()
    if t[:2] in ("U:", "u:"):
        parts = t.split(":")
        if len(parts) != 3:
            raise EnergySpecError(f"energy {text!r}: expected U:A:B (GeV)")
        lo, hi = _num(parts[1], t), _num(parts[2], t)
        if hi <= lo:
            raise EnergySpecError(f"energy {text!r}: upper end must be above lower end")
        return EnergySpec("uniform", lo, hi, (), t)
    if t.startswith("pow2:"):
        parts = t.split(":")
        if len(parts) != 3:
            raise EnergySpecError(f"energy {text!r}: expected pow2:A:B (GeV)")
        lo, hi = _num(parts[1], t), _num(parts[2], t)
        vals = tuple(2.0**i for i in range(math.ceil(math.log2(lo) - 1e-9), math.floor(math.log2(hi) + 1e-9) + 1))
        if not vals:
            raise EnergySpecError(f"energy {text!r}: no power of two between {lo:g} and {hi:g} GeV")
        return EnergySpec("discrete", min(vals), max(vals), vals, t)
    if ":" in t:
        parts = t.split(":")
        if len(parts) != 2:
            raise EnergySpecError(f"energy {text!r}: expected A:B (GeV), U:A:B, pow2:A:B, E or E1,E2,...")
        lo, hi = _num(parts[0], t), _num(parts[1], t)
        if hi < lo:
            raise EnergySpecError(f"energy {text!r}: upper end below lower end")
        if hi == lo:
            return EnergySpec("discrete", lo, lo, (lo,), t)
        return EnergySpec("loguniform", lo, hi, (), t)
    parts = t.split(",")
    if not t or any(not p.strip() for p in parts):
        raise EnergySpecError(f"energy {text!r}: empty entry; expected E or E1,E2,... (GeV)")
    vals = tuple(_num(p, t) for p in parts)
    return EnergySpec("discrete", min(vals), max(vals), vals, t)


def _states(seed: int, indices: np.ndarray) -> np.ndarray:
    """Four uint32 words per shower index from SeedSequence(seed, spawn_key=(k,))."""
    return np.array(
        [np.random.SeedSequence(int(seed), spawn_key=(int(k),)).generate_state(4, np.uint32) for k in indices],
        dtype=np.uint64,
    ).reshape(len(indices), 4)


def shower_energies_mev(spec: EnergySpec, seed: int, indices) -> np.ndarray:
    """Incident energy (MeV) of each shower index, a function of (seed, k) only."""
    idx = np.asarray(indices, dtype=np.int64)
    if spec.kind == "discrete":
        vals = np.asarray(spec.values_gev, dtype=np.float64)
        return vals[idx % len(vals)] * 1e3
    st = _states(seed, idx)
    u = ((st[:, 2] << np.uint64(21)) ^ (st[:, 3] >> np.uint64(11))).astype(np.float64) / 2.0**53  # [0, 1)
    if spec.kind == "uniform":
        return (spec.lo_gev + (spec.hi_gev - spec.lo_gev) * u) * 1e3
    return spec.lo_gev * (spec.hi_gev / spec.lo_gev) ** u * 1e3


def shower_seeds(seed: int, indices) -> np.ndarray:
    """Geant4 engine seed (positive, < 2^31) of each shower index, a function of (seed, k) only."""
    idx = np.asarray(indices, dtype=np.int64)
    st = _states(seed, idx)
    return ((st[:, 0] ^ (st[:, 1] << np.uint64(7))) % np.uint64(2**31 - 1) + np.uint64(1)).astype(np.int64)


def shower_uniforms(seed: int, indices, stream: int, n: int = 1) -> np.ndarray:
    """``n`` uniform numbers in [0, 1) per shower index from stream ``stream`` >= 1, a function
    of (seed, k, stream) only and independent of the energy and Geant4 seed (stream 0).

    Used for per-shower detector conditions (ParaFlow's d and b) and the gun position.

    >>> u = shower_uniforms(3, [0, 1, 2], stream=1)
    >>> u.shape, bool(((u >= 0) & (u < 1)).all())
    ((3, 1), True)
    """
    if int(stream) < 1:
        raise ValueError("stream 0 is the energy/seed stream; use stream >= 1")
    idx = np.asarray(indices, dtype=np.int64)
    words = np.array(
        [np.random.SeedSequence(int(seed), spawn_key=(int(k), int(stream))).generate_state(2 * n, np.uint32)
         for k in idx],
        dtype=np.uint64,
    ).reshape(len(idx), n, 2)
    return ((words[..., 0] << np.uint64(21)) ^ (words[..., 1] >> np.uint64(11))).astype(np.float64) / 2.0**53
