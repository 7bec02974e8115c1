"""caloflows: fast calorimeter shower simulation with normalizing flows.

Modules, in the order data flows through them:

* :mod:`caloflows.geometry` -- CaloChallenge voxel layouts (binning XML, catalogue)
* :mod:`caloflows.io` -- CaloChallenge HDF5 files (read, stream, validate, atomic write)
* :mod:`caloflows.simulation` -- Geant4 Par04 reference showers
* :mod:`caloflows.evaluation` -- CaloChallenge metrics and report
* :mod:`caloflows.models` -- CaloFlow, L2LFlows, iCaloFlow
* :mod:`caloflows.cli` -- the ``caloflows`` command
"""

__version__ = "0.1.0"

from . import errors  # noqa: E402
from .errors import CaloflowsError  # noqa: E402
from .geometry import Geometry, available_geometries, coarse_grain, load_geometry  # noqa: E402
from .io import ShowerData, ShowerFileError, read_showers, write_showers  # noqa: E402

__all__ = [
    "__version__",
    "errors",
    "CaloflowsError",
    "Geometry",
    "available_geometries",
    "coarse_grain",
    "load_geometry",
    "ShowerData",
    "ShowerFileError",
    "read_showers",
    "write_showers",
]
