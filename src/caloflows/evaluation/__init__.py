"""The CaloChallenge evaluation (review sec. 8; CaloFlow paper sec. 4 and appendix B).

Modules, one job each: :mod:`.features` (high-level features), :mod:`.stream` (chunked passes over
a sample in bounded memory), :mod:`.histograms` (separation power with out-of-range fractions,
chi2/NDF), :mod:`.correlations`, :mod:`.inputs` and :mod:`.classifier` (binary DNN test),
:mod:`.cnn` (3D-ResNet classifier), :mod:`.multiclass`, :mod:`.distances` (FPD/KPD),
:mod:`.manifold` (precision/recall/density/coverage), :mod:`.params`, :mod:`.plots`,
:mod:`.report`; :func:`evaluate` ties them together.
"""

from .api import (
    ALL_METRICS,
    DEFAULT_METRICS,
    FAST_METRICS,
    EvaluationError,
    EvaluationWarning,
    evaluate,
    parse_metrics,
)
from .features import HighLevelFeatures, compute_features
from .params import count_parameters

__all__ = [
    "evaluate",
    "parse_metrics",
    "EvaluationError",
    "EvaluationWarning",
    "ALL_METRICS",
    "DEFAULT_METRICS",
    "FAST_METRICS",
    "HighLevelFeatures",
    "compute_features",
    "count_parameters",
]
