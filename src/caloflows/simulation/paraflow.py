"""The ParaFlow toy calorimeter in Geant4: PbWO4 crystals behind a variable iron plate.

Detector (``paraflow.txt`` sec. 2, fig. 1): a 24 x 24 matrix of PbWO4 crystals of
22 x 22 x 230 mm; photons from a gun 1.29 m in front of the calorimeter face, flying
perpendicular to it, the gun position smeared in x and y with a Gaussian of 44 mm; a
uniform 4 T magnetic field along x in the whole volume (charged particles bend along y);
an iron plate of 1 x 1 m^2 and thickness d (in X0 = 1.757 cm) whose centre is at a
distance b (cm) from the calorimeter face.  d and b are drawn per shower (uniformly, or
fixed) and each shower is simulated in its own Geant4 run with its own plate: the plate's
solid and placement are re-dimensioned between runs and the run manager is told
``GeometryHasBeenModified`` (the paper: "a separate run was started with different
parameter settings per photon").

Coordinates: the calorimeter face is the plane z = 0, the crystals fill 0 < z < 230 mm
and |x|, |y| < 264 mm; crystal (row iy, column ix) of the image has its centre at
x = (ix - 11.5) 22 mm, y = (iy - 11.5) 22 mm.  The gun is at z = -1290 mm, the plate
centre at z = -b.

CHOICES NOT FIXED BY THE PAPER (recorded in every file):

* the world is vacuum (``G4_Galactic``), 1.2 x 1.2 x 2.8 m;
* the crystals abut without gaps or wrapping, so the matrix is built as one PbWO4 block
  (identical physics, much cheaper navigation) read out per crystal: every step's
  energy is scored at the step midpoint and summed into the crystal that contains it;
* physics: ``G4EmStandardPhysics_option1`` (electromagnetic only, as for Par04), the production
  cut and the field-propagation accuracy of :data:`DEFAULT_G4` (:class:`G4Settings`; set with
  ``/run/setCut``: the physics list's ``SetDefaultCutValue`` does not reach the kernel through
  geant4_pybind, so files written before this fix used Geant4's 1 mm default although their
  attributes said 0.7 mm); no noise, no digitisation, no threshold (paper sec. 2).
* speed (``benchmarks/bench_paraflow_g4_speed.py``): > 99.7 % of the Geant4 steps of a shower
  are in the PbWO4 (the plate, the world and the field outside the crystals cost < 0.2 % of
  the time); switching the field off saves ~10 % of the CPU time; the production cut sets the
  number of charged steps.  Adopted: cut 2 mm (14 % faster than 0.7 mm, observables unchanged
  within statistics); not adopted: relaxed field accuracy (gain not resolved), killing
  particles in the world (nothing to gain), cut 5 mm (34 % faster, w -1.5 sigma).

Geant4 allows one run manager per process (see :mod:`.runner`): :class:`ParaflowSimulation`
must live in its own spawned worker; :func:`simulate_paraflow` runs and merges them.

Output (sec. 3): the 8 x 16 window of maximum energy sum -- 16 rows along y, the bending
direction, by 8 columns along x -- as ``showers`` (N, 128) in geometry ``paraflow-8x16``;
``conditions`` (N, 2) named ``d``, ``b`` with units ``X0``, ``cm``; per-shower truth
``window_origin`` (row, column of the window in the 24 x 24 matrix), ``gun_xy_mm`` and
``converted`` (1 if the primary photon converted to e+e- in the plate); with
``store="full"`` also the whole matrix as ``showers_full`` (N, 576, geometry
``paraflow-24x24``).
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConditionsError, SimulationError
from ..io import CONVERTED
from .energies import EnergySpec, parse_energy, shower_energies_mev, shower_seeds, shower_uniforms

__all__ = [
    "ParaflowSimulation",
    "G4Settings",
    "DEFAULT_G4",
    "ConditionRange",
    "parse_conditions",
    "shower_conditions",
    "gun_positions_mm",
    "crop_window",
    "bin_crystals",
    "simulate_paraflow",
    "simulate_paraflow_raw",
    "conversion_probability",
    "N_CRYSTALS",
    "CRYSTAL_MM",
    "WINDOW_ROWS",
    "WINDOW_COLS",
    "X0_FE_CM",
    "CONDITION_UNITS",
]

N_CRYSTALS = 24
CRYSTAL_MM = 22.0
CRYSTAL_LENGTH_MM = 230.0
GUN_DISTANCE_MM = 1290.0
GUN_SIGMA_MM = 44.0
FIELD_TESLA = 4.0
PLATE_HALF_MM = 500.0
#: radiation length of iron (paper sec. 2)
X0_FE_CM = 1.757
#: the cropped window: 16 rows along y (bending direction) x 8 columns along x
WINDOW_ROWS, WINDOW_COLS = 16, 8
#: condition names, units and default ranges (paper sec. 2)
CONDITION_UNITS = {"d": "X0", "b": "cm"}
DEFAULT_CONDITIONS = {"d": (0.5, 1.5), "b": (50.0, 90.0)}
PHYSICS_LIST = "G4EmStandardPhysics_option1 (EM only)"
#: elements of the detector: H (vacuum), O, W, Pb (PbWO4), Fe
PARAFLOW_Z = (1, 8, 26, 74, 82)
#: uniform-number streams of :func:`.energies.shower_uniforms`
_STREAM = {"d": 1, "b": 2, "gun": 3}


# ------------------------------------------------------------------ conditions
@dataclass(frozen=True)
class ConditionRange:
    """A detector condition drawn uniformly in [lo, hi] per shower (lo == hi: fixed)."""

    name: str
    lo: float
    hi: float

    @property
    def unit(self) -> str:
        return CONDITION_UNITS[self.name]

    def describe(self) -> str:
        if self.lo == self.hi:
            return f"{self.name} = {self.lo:g} {self.unit}"
        return f"{self.name} uniform in [{self.lo:g}, {self.hi:g}] {self.unit}"


def parse_conditions(specs: Sequence[str] | Mapping[str, str | float | tuple] | None = None) -> dict[str, ConditionRange]:
    """``["d=0.5:1.5", "b=70"]`` -> {name: ConditionRange}; missing names get the paper's ranges.

    The plate must lie between the gun and the calorimeter: b - d X0 / 2 > 0 and
    b + d X0 / 2 < 129 cm for every allowed (d, b).

    >>> c = parse_conditions(["d=1", "b=50:90"])
    >>> c["d"].describe(), c["b"].describe()
    ('d = 1 X0', 'b uniform in [50, 90] cm')
    """
    items: dict[str, object] = {}
    if isinstance(specs, Mapping):
        items = dict(specs)
    else:
        for s in specs or ():
            if "=" not in str(s):
                raise ConditionsError(f"condition {s!r}: expected NAME=A:B or NAME=VALUE (names: d, b)")
            k, text = str(s).split("=", 1)
            k = k.strip()
            if k in items:
                raise ConditionsError(f"condition {k!r} given twice")
            items[k] = text
    out = {}
    for k in items:
        if k not in CONDITION_UNITS:
            raise ConditionsError(f"condition {k!r}: the paraflow detector has conditions d (X0) and b (cm)")
    for name, (dlo, dhi) in DEFAULT_CONDITIONS.items():
        v = items.get(name, (dlo, dhi))
        if isinstance(v, (tuple, list)):
            lo, hi = (float(x) for x in v)
        elif isinstance(v, (int, float)):
            lo = hi = float(v)
        else:
            parts = str(v).split(":")
            try:
                vals = [float(p) for p in parts]
            except ValueError:
                raise ConditionsError(f"condition {name}={v!r}: not a number or A:B range") from None
            if len(vals) not in (1, 2):
                raise ConditionsError(f"condition {name}={v!r}: expected A:B or a single value")
            lo, hi = vals[0], vals[-1]
        if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo or lo <= 0:
            raise ConditionsError(f"condition {name}={v!r}: need 0 < A <= B")
        out[name] = ConditionRange(name, lo, hi)
    d_max_cm = out["d"].hi * X0_FE_CM
    if out["b"].lo - d_max_cm / 2 <= 0 or out["b"].hi + d_max_cm / 2 >= GUN_DISTANCE_MM / 10:
        raise ConditionsError(
            f"conditions {out['d'].describe()}, {out['b'].describe()}: the plate must stay between the "
            f"calorimeter face (b - d/2 > 0) and the gun (b + d/2 < {GUN_DISTANCE_MM / 10:g} cm)"
        )
    return out


def shower_conditions(ranges: Mapping[str, ConditionRange], seed: int, indices) -> np.ndarray:
    """(N, 2) values of d (X0) and b (cm) per shower index, a function of (seed, k) only."""
    idx = np.asarray(indices, dtype=np.int64)
    cols = []
    for name in ("d", "b"):
        r = ranges[name]
        u = shower_uniforms(seed, idx, _STREAM[name])[:, 0] if r.hi > r.lo else np.zeros(len(idx))
        cols.append(r.lo + (r.hi - r.lo) * u)
    return np.stack(cols, axis=1)


def gun_positions_mm(seed: int, indices, sigma_mm: float = GUN_SIGMA_MM) -> np.ndarray:
    """(N, 2) gun x, y (mm): independent Gaussians of width 44 mm (Box-Muller on stream 3)."""
    u = shower_uniforms(seed, indices, _STREAM["gun"], n=2)
    rad = np.sqrt(-2.0 * np.log1p(-u[:, 0]))
    return sigma_mm * np.stack([rad * np.cos(2 * math.pi * u[:, 1]), rad * np.sin(2 * math.pi * u[:, 1])], axis=1)


def conversion_probability(d_x0) -> np.ndarray:
    """High-energy photon conversion probability in d radiation lengths: 1 - exp(-7/9 d) (PDG)."""
    return 1.0 - np.exp(-7.0 / 9.0 * np.asarray(d_x0, dtype=np.float64))


# ------------------------------------------------------------------ readout
def bin_crystals(x: np.ndarray, y: np.ndarray, e: np.ndarray, n: int = N_CRYSTALS, cell_mm: float = CRYSTAL_MM) -> np.ndarray:
    """Sum deposits at (x, y) mm into the (n, n) crystal image [row iy (y), column ix (x)];
    deposits outside the matrix are dropped."""
    img = np.zeros((n, n), dtype=np.float64)
    if len(e) == 0:
        return img
    ix = np.floor(np.asarray(x) / cell_mm + n / 2).astype(np.int64)
    iy = np.floor(np.asarray(y) / cell_mm + n / 2).astype(np.int64)
    ok = (ix >= 0) & (ix < n) & (iy >= 0) & (iy < n)
    np.add.at(img, (iy[ok], ix[ok]), np.asarray(e)[ok])
    return img


def crop_window(images: np.ndarray, rows: int = WINDOW_ROWS, cols: int = WINDOW_COLS) -> tuple[np.ndarray, np.ndarray]:
    """The rows x cols window of maximum energy sum of each image (paper sec. 3).

    Args:
        images: (N, H, W) or (H, W) crystal images.
    Returns:
        windows (N, rows, cols) and origins (N, 2) = (first row, first column); among
        windows of equal sum the first in row-major order of the origin is taken.

    >>> img = np.zeros((24, 24)); img[20, 3] = 5.0
    >>> w, o = crop_window(img)
    >>> w.shape, o.tolist(), float(w.sum())
    ((1, 16, 8), [[5, 0]], 5.0)
    """
    src = np.asarray(images)
    if src.ndim == 2:
        src = src[None]
    a = src.astype(np.float64)
    n, h, w = a.shape
    if rows > h or cols > w:
        raise ValueError(f"window {rows} x {cols} larger than the image {h} x {w}")
    c = np.zeros((n, h + 1, w + 1))
    c[:, 1:, 1:] = a.cumsum(1).cumsum(2)
    sums = c[:, rows:, cols:] - c[:, :-rows, cols:] - c[:, rows:, :-cols] + c[:, :-rows, :-cols]
    flat = sums.reshape(n, -1).argmax(axis=1)
    r0, c0 = np.divmod(flat, w - cols + 1)
    idx_r = r0[:, None] + np.arange(rows)[None]
    idx_c = c0[:, None] + np.arange(cols)[None]
    win = src[np.arange(n)[:, None, None], idx_r[:, :, None], idx_c[:, None, :]]
    return win, np.stack([r0, c0], axis=1)


# ------------------------------------------------------------------ Geant4
@dataclass(frozen=True)
class G4Settings:
    """Geant4 tracking settings of the ParaFlow detector that the paper does not fix.

    Attributes:
        production_cut_mm: range cut for gamma, e-, e+ (all volumes).
        delta_chord_mm: maximum sagitta of a chord of a curved track in the field
            (``G4ChordFinder::SetDeltaChord``); None: Geant4's default (0.25 mm).
        delta_one_step_mm, delta_intersection_mm: accuracy of the field integration per step and
            of the boundary intersection (``G4FieldManager``); None: Geant4's defaults (0.01 mm,
            0.001 mm).
        lowest_electron_kev: e+- below this kinetic energy stop and deposit it where they are
            (``G4EmParameters::SetLowestElectronEnergy``); None: Geant4's default (1 keV).
        world_min_ekin_mev: charged and neutral particles below this kinetic energy are killed
            in the vacuum world only (``G4UserLimits`` on the world volume with
            ``G4StepLimiterPhysics``); never in the plate or the crystals.  0: off.
        field: the 4 T field (False only for profiling: not the paper's detector).
    """

    production_cut_mm: float = 2.0
    delta_chord_mm: float | None = None
    delta_one_step_mm: float | None = None
    delta_intersection_mm: float | None = None
    lowest_electron_kev: float | None = None
    world_min_ekin_mev: float = 0.0
    field: bool = True

    def describe(self) -> str:
        def d(v: float | None, default: str) -> str:
            return default if v is None else f"{v:g} mm"

        kill = (f"particles below {self.world_min_ekin_mev:g} MeV killed in the vacuum world (G4UserLimits)"
                if self.world_min_ekin_mev > 0 else "no kinetic-energy cut in the world")
        return (f"production cut {self.production_cut_mm:g} mm; field {'4 T' if self.field else 'OFF'}, delta chord "
                f"{d(self.delta_chord_mm, '0.25 mm (default)')}, delta one step "
                f"{d(self.delta_one_step_mm, '0.01 mm (default)')}, delta intersection "
                f"{d(self.delta_intersection_mm, '0.001 mm (default)')}; lowest e+- energy "
                f"{'1 keV (default)' if self.lowest_electron_kev is None else f'{self.lowest_electron_kev:g} keV'}; "
                f"{kill}")


#: the settings :func:`simulate_paraflow` uses: a 2 mm production cut (~ 1/11 of a crystal width,
#: 0.22 X0 of PbWO4): 14 % less CPU time per shower than 0.7 mm, with w, R9, the cluster count,
#: E_sum / E_inc and the conversions unchanged within statistics (250 paired photons, pulls < 1;
#: benchmarks/bench_paraflow_g4_speed.py, README); Geant4's default field accuracy
DEFAULT_G4 = G4Settings(production_cut_mm=2.0)


class ParaflowSimulation:
    """One Geant4 run manager with the ParaFlow detector; :meth:`shower` runs one photon.

    Import only after :func:`caloflows.simulation.g4data.configure_geant4_data` (with the
    elements :data:`PARAFLOW_Z`).
    """

    def __init__(self, particle: str = "gamma", settings: G4Settings | None = None, calorimeter: bool = True) -> None:
        """``settings``: tracking settings (default :data:`DEFAULT_G4`).  ``calorimeter=False``
        replaces the PbWO4 by vacuum (no showers): a fast mode for checking photon conversions
        in the plate."""
        import geant4_pybind as g4

        from .par04 import make_physics

        self.g4 = g4
        self.settings = st = settings or DEFAULT_G4
        self._conv: list[float] = []
        self._image = np.zeros(N_CRYSTALS * N_CRYSTALS)
        self.run_manager = g4.G4RunManagerFactory.CreateRunManager(g4.G4RunManagerType.SerialOnly)
        self._det = _make_detector(g4, self._conv, calorimeter, st)
        self._phys = make_physics(g4, st.production_cut_mm)
        if st.lowest_electron_kev is not None:
            g4.G4EmParameters.Instance().SetLowestElectronEnergy(st.lowest_electron_kev * g4.keV)
        if st.world_min_ekin_mev > 0:  # G4UserSpecialCuts, acting where G4UserLimits are set (the world)
            self._limiter = g4.G4StepLimiterPhysics()
            self._phys.RegisterPhysics(self._limiter)
        self.run_manager.SetUserInitialization(self._det)
        self.run_manager.SetUserInitialization(self._phys)
        self._gun = _make_gun(g4, particle)
        self.run_manager.SetUserAction(self._gun)
        self._event = _make_event_action(g4, self._image)
        self.run_manager.SetUserAction(self._event)
        ui = g4.G4UImanager.GetUIpointer()
        for cmd in ("/control/verbose 0", "/run/verbose 0", "/event/verbose 0", "/tracking/verbose 0",
                    "/process/verbose 0", "/process/em/verbose 0"):
            ui.ApplyCommand(cmd)
        # the physics list's SetDefaultCutValue does not reach the kernel through geant4_pybind (the
        # couples kept Geant4's 1 mm default: G4ProductionCutsTable DumpCouples); /run/setCut does
        ui.ApplyCommand(f"/run/setCut {st.production_cut_mm:.12g} mm")
        self.run_manager.Initialize()
        self._plate: tuple[float | None, float | None] = (None, None)
        self.set_plate(1.0, 70.0)
        self.run_manager.BeamOn(0)  # physics tables now, not in the first shower

    def set_plate(self, d_x0: float, b_cm: float) -> None:
        """Re-dimension the iron plate: thickness d (X0), centre at b (cm) from the face."""
        if (d_x0, b_cm) == self._plate:
            return
        g4 = self.g4
        self._det.plate_box.SetZHalfLength(0.5 * d_x0 * X0_FE_CM * 10.0 * g4.mm)
        self._det.plate_pv.SetTranslation(g4.G4ThreeVector(0, 0, -b_cm * 10.0 * g4.mm))
        self.run_manager.GeometryHasBeenModified()
        self._plate = (d_x0, b_cm)

    def shower(self, energy_mev: float, seed: int, d_x0: float, b_cm: float,
               gun_xy_mm: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, float | None]:
        """Simulate one photon; returns the 24 x 24 crystal image (MeV) and the z (mm) where
        the primary converted in the plate (None if it did not)."""
        self.set_plate(float(d_x0), float(b_cm))
        self._image[:] = 0.0
        self._conv.clear()
        self._gun.energy_mev = float(energy_mev)
        self._gun.seed = int(seed)
        self._gun.xy = (float(gun_xy_mm[0]), float(gun_xy_mm[1]))
        self.run_manager.BeamOn(1)
        img = self._image.reshape(N_CRYSTALS, N_CRYSTALS) / self.g4.MeV
        return img.copy(), (self._conv[0] if self._conv else None)


def _make_detector(g4, conv: list, calorimeter: bool = True, settings: G4Settings = DEFAULT_G4):
    mm = g4.mm

    class PlateSD(g4.G4VSensitiveDetector):
        """Records where the primary photon converts (process 'conv') inside the plate."""

        def ProcessHits(self, step, history) -> bool:  # noqa: N802
            if step.GetTrack().GetParentID() == 0:
                post = step.GetPostStepPoint()
                proc = post.GetProcessDefinedStep()
                if proc is not None and proc.GetProcessName() == "conv":
                    conv.append(post.GetPosition().z)
            return False

    class Detector(g4.G4VUserDetectorConstruction):
        def __init__(self) -> None:
            super().__init__()
            self._keep: list = []

        def Construct(self):  # noqa: N802
            nist = g4.G4NistManager.Instance()
            vac = nist.FindOrBuildMaterial("G4_Galactic")
            pbwo4 = nist.FindOrBuildMaterial("G4_PbWO4" if calorimeter else "G4_Galactic")
            fe = nist.FindOrBuildMaterial("G4_Fe")
            half = 0.5 * N_CRYSTALS * CRYSTAL_MM * mm
            world_s = g4.G4Box("World", 600 * mm, 600 * mm, 1400 * mm)
            world_lv = g4.G4LogicalVolume(world_s, vac, "World")
            if settings.world_min_ekin_mev > 0:  # applies to the world volume only, not to its daughters
                big = float(np.finfo(np.float64).max)  # DBL_MAX: no step, track length or time limit
                self.world_limits = g4.G4UserLimits(big, big, big, settings.world_min_ekin_mev * g4.MeV)
                world_lv.SetUserLimits(self.world_limits)
            world_pv = g4.G4PVPlacement(None, g4.G4ThreeVector(), world_lv, "World", None, False, 0, False)
            hz = 0.5 * CRYSTAL_LENGTH_MM * mm
            cell = CRYSTAL_MM * mm
            calo_s = g4.G4Box("Calorimeter", half, half, hz)
            calo_lv = g4.G4LogicalVolume(calo_s, pbwo4, "Calorimeter")
            calo_pv = g4.G4PVPlacement(None, g4.G4ThreeVector(0, 0, hz), calo_lv, "Calorimeter", world_lv, False, 0, False)
            # rows along y (replica 0 at the lowest y), each divided into crystals along x
            row_s = g4.G4Box("Row", half, 0.5 * cell, hz)
            row_lv = g4.G4LogicalVolume(row_s, pbwo4, "Row")
            row_pv = g4.G4PVReplica("Row", row_lv, calo_lv, g4.kYAxis, N_CRYSTALS, cell)
            xtal_s = g4.G4Box("Crystal", 0.5 * cell, 0.5 * cell, hz)
            self.crystal_lv = g4.G4LogicalVolume(xtal_s, pbwo4, "Crystal")
            xtal_pv = g4.G4PVReplica("Crystal", self.crystal_lv, row_lv, g4.kXAxis, N_CRYSTALS, cell)
            self._keep += [calo_s, calo_lv, row_s, row_lv, row_pv, xtal_s, xtal_pv]
            self.plate_box = g4.G4Box("Plate", PLATE_HALF_MM * mm, PLATE_HALF_MM * mm, 0.5 * X0_FE_CM * 10 * mm)
            self.plate_lv = g4.G4LogicalVolume(self.plate_box, fe, "Plate")
            self.plate_pv = g4.G4PVPlacement(None, g4.G4ThreeVector(0, 0, -700 * mm), self.plate_lv, "Plate",
                                             world_lv, False, 0, False)
            self._keep += [world_s, world_lv, world_pv, calo_s, calo_pv]
            return world_pv

        def ConstructSDandField(self) -> None:  # noqa: N802
            sdm = g4.G4SDManager.GetSDMpointer()
            # energy per crystal scored in C++ (no Python call per step): index = row * 24 + column
            # (depth 2: the calorimeter, copy 0; depth 1: row replica; depth 0: crystal replica)
            self.sd = g4.G4MultiFunctionalDetector("Calo")
            self.edep = g4.G4PSEnergyDeposit3D("edep", 1, N_CRYSTALS, N_CRYSTALS, 2, 1, 0)
            self.sd.RegisterPrimitive(self.edep)
            sdm.AddNewDetector(self.sd)
            self.SetSensitiveDetector(self.crystal_lv, self.sd)
            self.psd = PlateSD("PlateSD")
            sdm.AddNewDetector(self.psd)
            self.SetSensitiveDetector(self.plate_lv, self.psd)
            if not settings.field:
                return
            self.field = g4.G4UniformMagField(g4.G4ThreeVector(FIELD_TESLA * g4.tesla, 0.0, 0.0))
            fm = g4.G4TransportationManager.GetTransportationManager().GetFieldManager()
            fm.SetDetectorField(self.field)
            fm.CreateChordFinder(self.field)
            if settings.delta_chord_mm is not None:
                fm.GetChordFinder().SetDeltaChord(settings.delta_chord_mm * mm)
            if settings.delta_one_step_mm is not None:
                fm.SetDeltaOneStep(settings.delta_one_step_mm * mm)
            if settings.delta_intersection_mm is not None:
                fm.SetDeltaIntersection(settings.delta_intersection_mm * mm)

    return Detector()


def _make_event_action(g4, image: np.ndarray):
    class EventAction(g4.G4UserEventAction):
        """Copies the crystal energies of the event's hits map into ``image`` (flat, 576)."""

        def __init__(self) -> None:
            super().__init__()
            self.hcid = -1

        def EndOfEventAction(self, event) -> None:  # noqa: N802
            if self.hcid < 0:
                self.hcid = g4.G4SDManager.GetSDMpointer().GetCollectionID("Calo/edep")
            hce = event.GetHCofThisEvent()
            if hce is None:
                return
            for k, v in hce.GetHC(self.hcid):
                image[int(k)] += float(v)

    return EventAction()


def _make_gun(g4, particle: str):
    class Gun(g4.G4VUserPrimaryGeneratorAction):
        """Particle at (x, y, -1290 mm) along +z; reseeds the engine per event."""

        def __init__(self) -> None:
            super().__init__()
            from .par04 import particle_gun

            self.gun = particle_gun(g4, particle)
            self.energy_mev, self.seed, self.xy = 1000.0, 1, (0.0, 0.0)

        def GeneratePrimaries(self, event) -> None:  # noqa: N802
            g4.G4Random.setTheSeed(self.seed)
            self.gun.SetParticlePosition(g4.G4ThreeVector(self.xy[0] * g4.mm, self.xy[1] * g4.mm, -GUN_DISTANCE_MM * g4.mm))
            self.gun.SetParticleEnergy(self.energy_mev * g4.MeV)
            self.gun.GeneratePrimaryVertex(event)

    return Gun()


# ------------------------------------------------------------------ runs
@dataclass
class _Task:
    worker: int
    particle: str
    indices: np.ndarray
    energies_mev: np.ndarray
    seeds: np.ndarray
    conditions: np.ndarray
    gun_xy: np.ndarray
    path: str
    attrs: dict
    env: dict
    store_full: bool
    parent_pid: int = 0
    chunk: int = 64


def _worker_main(task: _Task, progress) -> None:  # runs in a spawned process
    from .runner import _die_with_parent, _quiet_stdout

    _die_with_parent(task.parent_pid)
    _quiet_stdout()
    os.environ.update(task.env)
    from ..io import ShowerWriter

    sim = ParaflowSimulation(task.particle)
    w = ShowerWriter(task.path, WINDOW_ROWS * WINDOW_COLS, condition_names=("d", "b"),
                     condition_units=(CONDITION_UNITS["d"], CONDITION_UNITS["b"]), attrs=task.attrs)
    try:
        buf: dict[str, list] = {"inc": [], "win": [], "full": [], "org": [], "conv": []}
        start = 0
        n = len(task.seeds)
        for j in range(n):
            d_x0, b_cm = task.conditions[j]
            img, zc = sim.shower(task.energies_mev[j], int(task.seeds[j]), d_x0, b_cm, tuple(task.gun_xy[j]))
            img32 = img.astype(np.float32)
            win, org = crop_window(img32[None])
            buf["inc"].append(float(task.energies_mev[j]))
            buf["win"].append(win[0].reshape(-1))
            buf["org"].append(org[0])
            buf["conv"].append(zc is not None)
            if task.store_full:
                buf["full"].append(img32.reshape(-1))
            if len(buf["inc"]) >= task.chunk or j == n - 1:
                sl = slice(start, j + 1)
                extra = {"window_origin": np.asarray(buf["org"], dtype=np.int16),
                         "gun_xy_mm": task.gun_xy[sl].astype(np.float64),
                         CONVERTED: np.asarray(buf["conv"], dtype=np.int8)}
                if task.store_full:
                    extra["showers_full"] = np.stack(buf["full"])
                w.append(np.asarray(buf["inc"]), np.stack(buf["win"]), task.conditions[sl], extra=extra)
                for v in buf.values():
                    v.clear()
                start = j + 1
            progress.put((task.worker, 1))
        w.close()
    except BaseException as exc:
        w.abort((type(exc), exc, exc.__traceback__))
        raise


def simulate_paraflow(
    energy: str | EnergySpec,
    n: int,
    out: str | os.PathLike,
    *,
    conditions: Sequence[str] | Mapping | None = None,
    particle: str = "gamma",
    store: str = "window",
    seed: int = 0,
    shard: tuple[int, int] | str | None = None,
    jobs: int | None = None,
    progress: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
) -> list[str]:
    """Simulate ParaFlow showers and write one file (geometry ``paraflow-8x16``).

    Args:
        energy: energy specification, e.g. ``"U:20:100"`` (paper: uniform 20-100 GeV).
        n: showers of the whole run (all shards).
        out: output HDF5 path (an existing file is refused).
        conditions: ``["d=0.5:1.5", "b=50:90"]`` (the default) or fixed values (``"d=1"``).
        particle: ``gamma`` (paper), ``e-`` or ``e+``.
        store: ``"window"`` (the 8 x 16 window) or ``"full"`` (also the 24 x 24 matrix).
        seed, shard, jobs, progress, cache_dir, force: as :func:`caloflows.simulation.simulate`;
            shower k depends only on (seed, k), so merged shards equal the unsharded run; the
            workers, their temporaries and interruptions are handled by
            :func:`caloflows.simulation.runner.run_workers`.

    >>> simulate_paraflow("U:20:100", 100, "/tmp/pf.h5", jobs=2)  # doctest: +SKIP
    ['/tmp/pf.h5']
    """
    from ..io import merge_files
    from ..outputs import check_output_files
    from .g4data import configure_geant4_data
    from .runner import PARTICLES, geant4_pybind_version, job_pieces, parse_shard, run_workers, shard_range

    if particle not in PARTICLES:
        raise SimulationError(f"particle {particle!r}: use one of {', '.join(PARTICLES)}")
    if store not in ("window", "full"):
        raise SimulationError(f"store {store!r}: use 'window' or 'full'")
    spec = parse_energy(energy) if not isinstance(energy, EnergySpec) else energy
    ranges = parse_conditions(conditions)
    if int(n) < 1:
        raise SimulationError(f"number of showers must be at least 1, got {n}")
    shard = parse_shard(shard) if not isinstance(shard, tuple) else shard
    start, stop = shard_range(int(n), shard)
    if stop <= start:
        raise SimulationError(f"shard {shard[0]}/{shard[1]} of {n} showers is empty")
    out = str(out)
    check_output_files([out], force=force)
    data = configure_geant4_data(cache_dir, elements=PARAFLOW_Z)

    idx = np.arange(start, stop, dtype=np.int64)
    energies = shower_energies_mev(spec, seed, idx)
    seeds = shower_seeds(seed, idx)
    conds = shower_conditions(ranges, seed, idx)
    gun = gun_positions_mm(seed, idx)
    pieces = job_pieces(len(idx), jobs)
    attrs = {
        "generator": "Geant4 (caloflows simulate --detector paraflow)",
        "detector": (
            "ParaFlow toy calorimeter (paraflow.txt sec. 2): 24 x 24 PbWO4 crystals 22 x 22 x 230 mm (one block read "
            "out per crystal, no gaps); gun 1290 mm in front of the face, perpendicular, x/y smeared by a 44 mm "
            "Gaussian; uniform 4 T field along x everywhere; iron plate 1 x 1 m2, thickness d (X0 = 1.757 cm), centre "
            "at distance b from the face, one Geant4 run per shower; vacuum (G4_Galactic) world"
        ),
        "physics_list": f"{PHYSICS_LIST}; {DEFAULT_G4.describe()}",
        **data.attrs(),
        "geant4_pybind_version": geant4_pybind_version(),
        "particle": particle,
        "energy_spec": spec.text or spec.describe(),
        "energy_distribution": spec.describe(),
        "conditions_spec": "; ".join(r.describe() for r in ranges.values()),
        "seed": int(seed),
        "n_showers_run": int(n),
        "shard": f"{shard[0]}/{shard[1]}",
        "first_shower_index": int(start),
        "geometry": "paraflow-8x16",
        "threshold_mev": 0.0,
        "store": store,
    }
    def tasks(tmpdir: str) -> list[tuple[_Task, list[str]]]:
        out_tasks = []
        for w, piece in enumerate(pieces):
            path = os.path.join(tmpdir, f"w{w:03d}.h5")
            out_tasks.append((_Task(w, particle, idx[piece], energies[piece], seeds[piece], conds[piece], gun[piece],
                                    path, dict(attrs), dict(data.env), store == "full", parent_pid=os.getpid()),
                              [path]))
        return out_tasks

    def merge(files: list[list[str]]) -> None:
        merge_files([f[0] for f in files], out, attrs={**attrs, "merged_from": f"{len(files)} local worker file(s)"})

    run_workers(_worker_main, tasks, len(idx), os.path.dirname(os.path.abspath(out)), merge, progress)
    return [out]


def _raw_worker(particle, energies, seeds, conds, gun, env, calorimeter=True, settings=None):
    from .runner import _quiet_stdout

    _quiet_stdout()
    os.environ.update(env)
    t0 = time.perf_counter()
    sim = ParaflowSimulation(particle, settings=settings, calorimeter=calorimeter)
    init = time.perf_counter() - t0
    imgs, zs, secs, cpu = [], [], [], []
    for e, s, c, g in zip(energies, seeds, conds, gun):
        t, tc = time.perf_counter(), time.process_time()
        img, z = sim.shower(float(e), int(s), float(c[0]), float(c[1]), (float(g[0]), float(g[1])))
        secs.append(time.perf_counter() - t)
        cpu.append(time.process_time() - tc)
        imgs.append(img.astype(np.float32))
        zs.append(np.nan if z is None else z)
    return np.stack(imgs), np.asarray(zs), np.asarray(secs), init, np.asarray(cpu)


@dataclass
class RawParaflow:
    """Full 24 x 24 images of :func:`simulate_paraflow_raw` with Geant4 truth and timings."""

    energies_mev: np.ndarray
    conditions: np.ndarray  # (N, 2): d (X0), b (cm)
    gun_xy_mm: np.ndarray
    images: np.ndarray  # (N, 24, 24) MeV
    conversion_z_mm: np.ndarray  # NaN: the primary did not convert in the plate
    seconds: np.ndarray  # wall time per shower
    init_seconds: float
    tables: str
    cpu_seconds: np.ndarray | None = None  # CPU time of the worker process per shower (robust under load)


def simulate_paraflow_raw(energies_mev, conditions, *, particle: str = "gamma", seed: int = 0,
                          calorimeter: bool = True, cache_dir: str | os.PathLike | None = None,
                          settings: G4Settings | None = None, cpu: int | None = None) -> RawParaflow:
    """Simulate showers with given energies and (d, b) rows in one spawned worker; return the
    full images, conversion truth and per-shower Geant4 times (physics tests, benchmark).
    ``calorimeter=False``: vacuum instead of PbWO4 (conversion checks only, no showers);
    ``settings``: Geant4 tracking settings (default :data:`DEFAULT_G4`); ``cpu``: pin the worker
    to this core (timings)."""
    from concurrent.futures import ProcessPoolExecutor

    from .g4data import configure_geant4_data

    e = np.asarray(energies_mev, dtype=np.float64)
    c = np.asarray(conditions, dtype=np.float64).reshape(len(e), 2)
    idx = np.arange(len(e))
    seeds, gun = shower_seeds(seed, idx), gun_positions_mm(seed, idx)
    data = configure_geant4_data(cache_dir, elements=PARAFLOW_Z)
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as ex:
        try:
            if cpu is not None and hasattr(os, "sched_setaffinity"):
                ex.submit(os.sched_setaffinity, 0, {int(cpu)}).result()
            imgs, zs, secs, init, cpu_s = ex.submit(_raw_worker, particle, e, seeds, c, gun, dict(data.env), calorimeter,
                                             settings).result()
        except Exception as exc:  # BrokenProcessPool when Geant4 aborts
            raise SimulationError(f"Geant4 worker failed: {exc}") from None
    return RawParaflow(e, c, gun, imgs, zs, secs, float(init), data.tables, cpu_s)
