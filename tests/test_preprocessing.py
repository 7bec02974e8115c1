"""caloflows.preprocessing: invertibility and the CaloFlow equations."""

import numpy as np
import pytest
import torch

from caloflows import preprocessing as P


def test_logit_roundtrip_and_jacobian():
    l = P.Logit(1e-6)
    x = np.random.default_rng(0).random(1000)
    assert np.abs(l.inverse(l.forward(x)) - x).max() < 1e-10
    t = torch.tensor(x)
    assert (l.inverse(l.forward(t)) - t).abs().max() < 1e-10
    # alpha keeps 0 and 1 finite: logit(alpha) = -13.8
    assert np.isclose(l.forward(np.array([0.0]))[0], np.log(1e-6 / (1 - 1e-6)))
    h = 1e-7
    num = (l.forward(x[:5] + h) - l.forward(x[:5] - h)) / (2 * h)
    assert np.allclose(np.log(num), l.log_abs_det_jacobian(x[:5]), rtol=1e-5)


def test_unit_space_roundtrip_and_exact_sums():
    rng = np.random.default_rng(1)
    E = rng.gamma(2.0, 100.0, size=(200, 5))
    E[:10, 3:] = 0.0  # empty last layers
    einc = rng.choice([1000.0, 4000.0], size=200)
    t = P.UnitSpaceEnergies.fit(E, einc)
    u = t.forward(E, einc)
    assert u.min() >= 0 and u.max() <= 1 + 1e-12
    assert np.isclose(u[:, 0].max(), 1.0)  # u0 rescaled by its training maximum (ds1 eq. 1)
    # u_1 = E_0 / sum_j E_j
    assert np.allclose(u[:, 1], E[:, 0] / E.sum(1))
    back = t.inverse(u, einc)
    assert np.allclose(back, E, rtol=1e-10, atol=1e-9)
    # any u in [0,1]^L maps to energies summing exactly to u0 * u0_max * E_inc
    uu = rng.random((50, 5))
    Ei = t.inverse(uu, einc[:50])
    assert (Ei >= 0).all()
    assert np.allclose(Ei.sum(1), uu[:, 0] * t.u0_max * einc[:50], rtol=1e-12)
    tt = t.inverse(torch.tensor(u), torch.tensor(einc))
    assert torch.allclose(tt, torch.tensor(E), rtol=1e-10, atol=1e-9)


def test_conditions_known_values():
    assert np.isclose(P.log_einc(np.array([33.3e3]))[0], 0.0)
    assert np.isclose(P.log_einc(np.array([2.0**22]))[0], np.log10(2**22 / 33.3e3))
    assert np.isclose(P.log_layer_energy(np.array([100e3 - 1e-3]))[0], -1.0)
    e = np.array([0.0, 1.0, 1e5])
    assert np.allclose(P.inv_log_layer_energy(P.log_layer_energy(e)), e, atol=1e-9)
    assert np.allclose(P.inv_log_einc(P.log_einc(e[1:])), e[1:])


def test_standardize_and_json_roundtrip():
    x = np.random.default_rng(2).normal(3.0, 2.0, size=(500, 4))
    s = P.Standardize.fit(x)
    y = s.forward(x)
    assert np.allclose(y.mean(0), 0, atol=1e-10) and np.allclose(y.std(0), 1)
    assert np.allclose(s.inverse(y), x)
    text = P.to_json({"std": s, "logit": P.Logit(1e-6), "unit": P.UnitSpaceEnergies(2.42), "n": 3})
    back = P.from_json(text)
    assert back["n"] == 3 and back["unit"].u0_max == 2.42 and back["logit"].alpha == 1e-6
    assert np.allclose(back["std"].forward(x), y)
    with pytest.raises(ValueError):
        P.from_dict({"type": "Nope"})


def test_normalise_renormalise_exact_layer_sums():
    offs = np.array([0, 3, 7, 8])
    rng = np.random.default_rng(3)
    x = rng.random((20, 8))
    x[0, 3:7] = 0.0
    frac, E = P.normalise_layers(x, offs)
    assert np.allclose(frac[1:, 0:3].sum(1), 1) and np.all(frac[0, 3:7] == 0)
    back = P.renormalise_layers(frac, E, offs)
    assert np.allclose(back, x)
    # arbitrary (even negative) fractions are renormalised to the requested energies exactly
    noisy = frac + rng.normal(0, 0.1, frac.shape)
    target = rng.gamma(2, 5, size=(20, 3))
    out = P.renormalise_layers(noisy, target, offs)
    assert (out >= 0).all()
    sums = np.stack([out[:, a:b].sum(1) for a, b in zip(offs[:-1], offs[1:])], 1)
    assert np.allclose(sums, target, rtol=1e-12)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_equal_layers_renormalise_as_the_per_layer_loop_bit_for_bit(lib):
    """Equal layers (one call on the (N L, n) rows) give the per-layer loop's result bit for bit,
    including an empty layer (uniform) and negative fractions (clipped)."""
    rng = np.random.default_rng(5)
    offs = np.arange(0, 13, 4)  # 3 layers of 4
    f = rng.normal(0.3, 0.4, (7, 12))
    f[2, 4:8] = -1.0  # a layer that sums to 0 after clipping
    E = rng.gamma(2, 5, size=(7, 3))
    conv = (lambda a: torch.as_tensor(a)) if lib == "torch" else (lambda a: a)
    fast = P.renormalise_layers(conv(f), conv(E), offs)
    # the loop: each layer renormalised by itself
    loop = [P.renormalise_layers(conv(f[:, a:b]), conv(E[:, i:i + 1]), np.array([0, b - a]))
            for i, (a, b) in enumerate(zip(offs[:-1], offs[1:]))]
    ref = torch.cat(loop, 1) if lib == "torch" else np.concatenate(loop, 1)
    fast, ref = np.asarray(fast), np.asarray(ref)
    assert np.array_equal(fast, ref)
    assert np.allclose(fast[2, 4:8], E[2, 1] / 4) and (fast >= 0).all()


def test_noise_range():
    x = torch.zeros(10000, dtype=torch.float64)
    y = P.add_uniform_noise(x, 1e-3, torch.Generator().manual_seed(0))
    assert y.min() >= 0 and y.max() < 1e-3 and abs(float(y.mean()) - 5e-4) < 2e-5
    z = P.add_uniform_noise(np.zeros(100), 1e-4, np.random.default_rng(0))
    assert z.max() < 1e-4 and z.min() >= 0
