"""Model directories written before the Generator contract (caloflows 0.1.0, commit e022e4f) still load
and generate the same showers (tests/data/legacy, tiny models on a 12-voxel geometry)."""

from pathlib import Path

import numpy as np
import pytest

from caloflows.models import load_model

LEGACY = Path(__file__).parent / "data" / "legacy"


@pytest.mark.parametrize("kind", ["caloflow", "l2lflows", "icaloflow"])
def test_legacy_model_directories_load(kind):
    model = load_model(LEGACY / kind)
    assert model.kind == kind and model.stage_done("train")
    d = model.sample(np.full(4, 4096.0), batch_size=4, seed=3)
    assert d.showers.shape == (4, 12) and np.isfinite(d.showers).all()
    ref = LEGACY / f"{kind}_samples_seed3.npy"
    if ref.exists():  # the showers the old code generated with the same seed
        np.testing.assert_allclose(d.showers, np.load(ref), rtol=1e-5, atol=1e-5)
