"""Every error caloflows raises for a problem the user can fix.

All of them derive from :class:`CaloflowsError`; the command line catches only that base
and prints its message as one line (``caloflows: error: ...``, exit status 2).  Any other
exception is a bug and keeps its traceback.  Messages name the file or argument at fault.

The classes that also derive from :class:`ValueError` do so for backward compatibility
(code that caught ``ValueError`` keeps working).

Example:
    >>> import caloflows
    >>> try:
    ...     caloflows.load_geometry("no-such-geometry")
    ... except caloflows.errors.CaloflowsError as exc:
    ...     print(type(exc).__name__)
    GeometryError
"""

from __future__ import annotations

__all__ = [
    "CaloflowsError",
    "ShowerFileError",
    "GeometryError",
    "ModelDirError",
    "ConfigError",
    "ConditionsError",
    "UsageError",
    "EnergySpecError",
    "OutputError",
    "SimulationError",
    "EvaluationError",
    "TrainingError",
]


class CaloflowsError(Exception):
    """Base of every user-fixable caloflows error."""


class ShowerFileError(CaloflowsError, ValueError):
    """A shower file (CaloChallenge HDF5) is missing, unreadable or breaks the format.

    Raised by :mod:`caloflows.io` when reading, validating or merging files; the message names
    the file and, where it applies, the shower and voxel index."""


class GeometryError(CaloflowsError, ValueError):
    """A geometry name, binning XML or array does not match what is expected."""


class ModelDirError(CaloflowsError, ValueError):
    """A model directory or weight file is missing, corrupt, incomplete or of another model."""


class ConfigError(CaloflowsError, ValueError):
    """A model setting (preset, ``--set KEY=VALUE``, config entry) has a wrong name, type or range."""


class ConditionsError(CaloflowsError, ValueError):
    """Conditions (E_inc and named detector parameters) are missing, unknown or malformed."""


class UsageError(CaloflowsError, ValueError):
    """A command-line argument or API argument is invalid (a count below 1, a bad range...)."""


class EnergySpecError(UsageError):
    """An incident-energy specification (``--energy``) cannot be parsed or is out of range."""


class OutputError(CaloflowsError):
    """An output path is refused: it exists (without ``--force``), equals an input, is a
    special file, or is of the wrong kind (a directory where a file is expected, or the reverse)."""


class SimulationError(CaloflowsError, RuntimeError):
    """A Geant4 simulation job failed or could not be set up."""


class EvaluationError(CaloflowsError, ValueError):
    """The evaluation cannot run on the given files or options."""


class TrainingError(CaloflowsError, FloatingPointError):
    """Training cannot go on: every batch of an epoch gave a non-finite loss (lower the learning
    rate or check the data), or the data are too few for the batch and process count."""
