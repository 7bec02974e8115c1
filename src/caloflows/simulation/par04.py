"""The Par04 sampling calorimeter in Geant4 (CaloChallenge datasets 2 and 3).

Geant4 extended example Par04, as used for CaloChallenge datasets 2 and 3 (review,
sec. 2.2): 90 layers of 1.4 mm tungsten followed by 0.3 mm silicon, read out in 45
layers of two physical layers each (3.4 mm); the particle enters at (0, 0, 0) along +z.
Only silicon deposits are recorded, scaled by 1/0.033 (the sampling fraction) so that a
voxel holds an estimate of the energy deposited in its whole volume.

GEOMETRY APPROXIMATION: the real Par04 detector is a set of concentric cylinders of inner
radius 800 mm; here the layers are planar slabs perpendicular to z (1 m x 1 m).  Over the
~42 mm transverse extent of the readout (ds2: 41.85 mm, ds3 likewise) the cylinder
curvature moves a layer by at most r^2/(2 R) = 1.1 mm x (r/42 mm)^2 in depth, which is
well below the 1.7 mm sampling period, so the slab stack is an excellent approximation.

Physics: ``G4EmStandardPhysics_option1`` alone (no hadronic physics: electron and photon
showers do not need it, and it would require more data sets), production cut 1 mm, applied
with ``/run/setCut`` (Par04 uses 0.7 mm; our earlier versions asked for 0.7 mm through the physics
list's ``SetDefaultCutValue``, which does not reach the kernel through geant4_pybind, so every
file was simulated with Geant4's 1 mm default: the cut is now set explicitly to the value used
and recorded truthfully).

Scoring: a Python ``G4VSensitiveDetector`` on the silicon logical volume collects every
step's energy at the step midpoint (x, y, z).  At the end of each event the deposits are
voxelised into any number of CaloChallenge geometries (``caloflows.geometry``), so that the
same shower can be written as ds2, ds3 and ds2-coarse without simulating it again.

Geant4 allows a single run manager per process and keeps global state, so
:class:`Par04Simulation` must live in its own process (see :mod:`.runner`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..geometry import Geometry

__all__ = ["Par04Config", "Par04Simulation", "voxelise", "PHYSICS_LIST", "SAMPLING_FRACTION"]

#: physics list recorded in every output file
PHYSICS_LIST = "G4EmStandardPhysics_option1 (EM only), production cut 1 mm"
#: silicon energy is divided by this (review sec. 2.2)
SAMPLING_FRACTION = 0.033
W_THICKNESS_MM = 1.4
SI_THICKNESS_MM = 0.3
N_PHYSICAL_LAYERS = 90
N_READOUT_LAYERS = 45
PERIOD_MM = W_THICKNESS_MM + SI_THICKNESS_MM
READOUT_MM = 2 * PERIOD_MM
#: radiation length of tungsten (PDG), mm
X0_W_MM = 3.504


@dataclass(frozen=True)
class Par04Config:
    """Detector and physics settings."""

    transverse_half_mm: float = 500.0
    production_cut_mm: float = 1.0
    sampling_fraction: float = SAMPLING_FRACTION


def voxelise(x: np.ndarray, y: np.ndarray, layer: np.ndarray, e: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Sum deposits at (x, y) in readout ``layer`` (0..44) into the flat voxels of ``geometry``.

    alpha = atan2(y, x) in [-pi, pi) so that eta = r cos(alpha) = x and phi = r sin(alpha) = y
    (CaloChallenge convention, review sec. 8.1).  A geometry with L layers groups 45/L
    readout layers per layer (ds2-coarse: 5).  Deposits outside the outermost radial edge
    are dropped (they leave the readout).  No threshold is applied here.
    """
    out = np.zeros(geometry.n_voxels, dtype=np.float64)
    if len(e) == 0:
        return out
    if N_READOUT_LAYERS % geometry.n_layers:
        raise ValueError(f"geometry {geometry.name!r}: {geometry.n_layers} layers do not group 45 readout layers")
    glayer = layer * geometry.n_layers // N_READOUT_LAYERS
    r = np.hypot(x, y)
    alpha = np.arctan2(y, x)
    offsets = geometry.layer_offsets
    for li, lay in enumerate(geometry.layers):
        m = glayer == li
        if not m.any():
            continue
        edges = np.asarray(lay.r_edges)
        ir = np.searchsorted(edges, r[m], side="right") - 1
        ia = np.floor((alpha[m] + math.pi) / (2 * math.pi) * lay.n_alpha).astype(np.int64)
        ia = np.clip(ia, 0, lay.n_alpha - 1)
        ok = (ir >= 0) & (ir < lay.n_r)
        idx = offsets[li] + ia[ok] * lay.n_r + ir[ok]
        np.add.at(out, idx, e[m][ok])
    return out


class Par04Simulation:
    """One Geant4 run manager with the Par04 detector; call :meth:`shower` per event.

    Import only after :func:`caloflows.simulation.g4data.configure_geant4_data`.
    """

    def __init__(self, particle: str, config: Par04Config = Par04Config()) -> None:
        import geant4_pybind as g4

        self.g4 = g4
        self.config = config
        self._hits: list[tuple[float, float, float, float]] = []
        self.run_manager = g4.G4RunManagerFactory.CreateRunManager(g4.G4RunManagerType.SerialOnly)
        self._det = _make_detector(g4, config, self._hits)
        self._phys = make_physics(g4, config.production_cut_mm)
        self.run_manager.SetUserInitialization(self._det)
        self.run_manager.SetUserInitialization(self._phys)
        self._gun_action = _make_gun(g4, particle)
        self.run_manager.SetUserAction(self._gun_action)
        self._silence()
        # SetDefaultCutValue (make_physics) does not reach the kernel through geant4_pybind; /run/setCut does
        self.g4.G4UImanager.GetUIpointer().ApplyCommand(f"/run/setCut {config.production_cut_mm:.12g} mm")
        self.run_manager.Initialize()
        self.run_manager.BeamOn(0)  # build physics tables now, not in the first shower

    def _silence(self) -> None:
        ui = self.g4.G4UImanager.GetUIpointer()
        for cmd in ("/control/verbose 0", "/run/verbose 0", "/event/verbose 0", "/tracking/verbose 0",
                    "/process/verbose 0", "/process/em/verbose 0"):
            ui.ApplyCommand(cmd)

    def shower(self, energy_mev: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Simulate one shower; returns silicon deposits (x, y, readout layer, E/0.033 in MeV)."""
        self._hits.clear()
        self._gun_action.energy_mev = float(energy_mev)
        self._gun_action.seed = int(seed)
        self.run_manager.BeamOn(1)
        if not self._hits:
            z = np.zeros(0)
            return z, z, np.zeros(0, dtype=np.int64), z
        h = np.asarray(self._hits, dtype=np.float64)
        layer = np.clip((h[:, 2] // READOUT_MM).astype(np.int64), 0, N_READOUT_LAYERS - 1)
        return h[:, 0], h[:, 1], layer, h[:, 3] / self.config.sampling_fraction


def _make_detector(g4, config: Par04Config, hits: list):
    mm = g4.mm

    class SiliconSD(g4.G4VSensitiveDetector):
        """Records (x, y, z, E) of every silicon step at its midpoint."""

        def __init__(self, name: str) -> None:
            super().__init__(name)

        def ProcessHits(self, step, history) -> bool:  # noqa: N802
            e = step.GetTotalEnergyDeposit()
            if e <= 0.0:
                return False
            a = step.GetPreStepPoint().GetPosition()
            b = step.GetPostStepPoint().GetPosition()
            hits.append((0.5 * (a.x + b.x), 0.5 * (a.y + b.y), 0.5 * (a.z + b.z), e))
            return True

    class Detector(g4.G4VUserDetectorConstruction):
        def __init__(self) -> None:
            super().__init__()
            self._keep: list = []

        def Construct(self):  # noqa: N802
            nist = g4.G4NistManager.Instance()
            vac = nist.FindOrBuildMaterial("G4_Galactic")
            w = nist.FindOrBuildMaterial("G4_W")
            si = nist.FindOrBuildMaterial("G4_Si")
            half = config.transverse_half_mm * mm
            depth = N_PHYSICAL_LAYERS * PERIOD_MM * mm
            world_s = g4.G4Box("World", 1.2 * half, 1.2 * half, depth + 100 * mm)
            world_lv = g4.G4LogicalVolume(world_s, vac, "World")
            world_pv = g4.G4PVPlacement(None, g4.G4ThreeVector(), world_lv, "World", None, False, 0, False)
            w_s = g4.G4Box("Absorber", half, half, 0.5 * W_THICKNESS_MM * mm)
            si_s = g4.G4Box("Sensor", half, half, 0.5 * SI_THICKNESS_MM * mm)
            self.w_lv = g4.G4LogicalVolume(w_s, w, "Absorber")
            self.si_lv = g4.G4LogicalVolume(si_s, si, "Sensor")
            self._keep += [world_s, world_lv, world_pv, w_s, si_s, self.w_lv, self.si_lv]
            for i in range(N_PHYSICAL_LAYERS):
                z0 = i * PERIOD_MM * mm
                pw = g4.G4PVPlacement(None, g4.G4ThreeVector(0, 0, z0 + 0.5 * W_THICKNESS_MM * mm), self.w_lv,
                                      "Absorber", world_lv, False, i, False)
                ps = g4.G4PVPlacement(None, g4.G4ThreeVector(0, 0, z0 + (W_THICKNESS_MM + 0.5 * SI_THICKNESS_MM) * mm),
                                      self.si_lv, "Sensor", world_lv, False, i, False)
                self._keep += [pw, ps]
            return world_pv

        def ConstructSDandField(self) -> None:  # noqa: N802
            self.sd = SiliconSD("SiliconSD")
            g4.G4SDManager.GetSDMpointer().AddNewDetector(self.sd)
            self.SetSensitiveDetector(self.si_lv, self.sd)

    return Detector()


def make_physics(g4, cut_mm: float):
    """``G4EmStandardPhysics_option1`` with production cut ``cut_mm`` (both detectors use it)."""
    class Physics(g4.G4VModularPhysicsList):
        def __init__(self) -> None:
            super().__init__()
            self.SetVerboseLevel(0)
            self.SetDefaultCutValue(cut_mm * g4.mm)
            self.RegisterPhysics(g4.G4EmStandardPhysics_option1())

    return Physics()


def particle_gun(g4, particle: str):
    """A ``G4ParticleGun`` of one ``particle`` travelling along +z (both detectors use it)."""
    gun = g4.G4ParticleGun(1)
    pdef = g4.G4ParticleTable.GetParticleTable().FindParticle(particle)
    if pdef is None:
        raise ValueError(f"unknown Geant4 particle {particle!r}")
    gun.SetParticleDefinition(pdef)
    gun.SetParticleMomentumDirection(g4.G4ThreeVector(0, 0, 1))
    return gun


def _make_gun(g4, particle: str):
    class Gun(g4.G4VUserPrimaryGeneratorAction):
        """Particle at (0,0,0) along +z; reseeds the engine so event k depends only on its seed."""

        def __init__(self) -> None:
            super().__init__()
            self.gun = particle_gun(g4, particle)
            self.gun.SetParticlePosition(g4.G4ThreeVector(0, 0, 0))
            self.energy_mev = 1000.0
            self.seed = 1

        def GeneratePrimaries(self, event) -> None:  # noqa: N802
            g4.G4Random.setTheSeed(self.seed)
            self.gun.SetParticleEnergy(self.energy_mev * g4.MeV)
            self.gun.GeneratePrimaryVertex(event)

    return Gun()
