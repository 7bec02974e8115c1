"""Geant4 reference showers of the Par04 calorimeter (CaloChallenge datasets 2 and 3) and of
the ParaFlow PbWO4 calorimeter behind a variable iron plate (``paraflow.txt``).

* :mod:`.g4data`   -- official Geant4 data sets, or approximate tables generated once;
* :mod:`.par04`    -- detector, physics list, silicon scoring and voxelisation;
* :mod:`.energies` -- incident-energy specifications and per-shower seeds;
* :mod:`.runner`   -- :func:`simulate`: sharded, parallel runs written as HDF5 files;
* :mod:`.paraflow` -- the ParaFlow detector and :func:`.paraflow.simulate_paraflow`.

Importing this package does not import Geant4.
"""

from .energies import EnergySpec, parse_energy, shower_energies_mev, shower_seeds
from .runner import PARTICLES, SimulationError, output_paths, parse_shard, shard_range, simulate

__all__ = [
    "EnergySpec",
    "parse_energy",
    "shower_energies_mev",
    "shower_seeds",
    "PARTICLES",
    "SimulationError",
    "output_paths",
    "parse_shard",
    "shard_range",
    "simulate",
]
