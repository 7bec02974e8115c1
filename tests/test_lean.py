"""Lean sampling path (caloflows.lean) against the zuko path: same latent -> same sample."""

import pytest
import torch

from caloflows import flows as F
from caloflows import lean as L

torch.set_num_threads(1)


def _flow(build, context, hidden, seed=0):
    torch.manual_seed(seed)
    f = build(7, context, 3, hidden)
    with torch.no_grad():  # move away from the near-identity initialisation
        for p in f.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return f


CASES = [(F.build_maf, (32,)), (F.build_maf, (16, 16)), (F.build_iaf, (32,)), (F.build_iaf, (16, 16))]


@pytest.mark.parametrize("build,hidden", CASES)
@pytest.mark.parametrize("context", [0, 3])
def test_lean_sample_matches_zuko_float64(build, hidden, context):
    f = _flow(build, context, hidden)
    with F.double_precision(f):
        z = 1.5 * torch.randn(64, 7, dtype=torch.float64)
        c = torch.randn(64, context, dtype=torch.float64) if context else None
        ref = F.inverse_path(f, z, c, fast=False)[0]  # zuko's generic inverse
        lean = L.LeanFlow.from_flow(f, chunk=16)  # several chunks
        x = lean.sample(z, c)
        assert torch.allclose(x, ref, atol=1e-10, rtol=0)
        # data -> latent agrees with zuko's forward and inverts the sample
        assert torch.allclose(lean.transform(ref, c), F.forward_path(f, ref, c)[-1], atol=1e-9, rtol=0)
        assert torch.allclose(lean.transform(x, c), z, atol=1e-9, rtol=0)


@pytest.mark.parametrize("context", [0, 3])
def test_iaf_float32_matches_zuko(context):
    f = _flow(F.build_iaf, context, (32,), seed=1)
    z = torch.randn(200, 7)
    c = torch.randn(200, context) if context else None
    with torch.no_grad():
        ref = F.inverse_path(f, z, c)[0]
        x = L.LeanFlow.from_flow(f).sample(z, c)
    assert torch.allclose(x, ref, atol=1e-4, rtol=1e-4)


def test_flow_sample_uses_lean_and_follows_weight_changes():
    f = _flow(F.build_iaf, 2, (16,))
    c = torch.randn(10, 2)
    with torch.no_grad():
        a = F.flow_sample(f, c, generator=torch.Generator().manual_seed(3))
        b = F.flow_sample(f, c, generator=torch.Generator().manual_seed(3), fast=False)
        assert torch.allclose(a, b, atol=1e-4)
        assert "_caloflows_lean" in f.__dict__
        lean0 = L.lean_flow(f)
        for p in f.parameters():
            p.mul_(1.1)  # in-place change (like an optimizer step): the snapshot is rebuilt
        a2 = F.flow_sample(f, c, generator=torch.Generator().manual_seed(3))
        b2 = F.flow_sample(f, c, generator=torch.Generator().manual_seed(3), fast=False)
    assert L.lean_flow(f) is not lean0
    assert torch.allclose(a2, b2, atol=1e-4)
    assert not torch.allclose(a2, a, atol=1e-3)
    a2[0, 0] = 0.0  # a normal tensor (not an inference tensor): writable


def test_rqs_functions_match_zuko_and_are_identity_outside():
    from zuko.transforms import MonotonicRQSTransform

    torch.manual_seed(0)
    phi = torch.randn(50, 4, 23, dtype=torch.float64)
    x = 4 * torch.randn(50, 4, dtype=torch.float64)
    w, h, d = phi[..., :8], phi[..., 8:16], phi[..., 16:]
    t = MonotonicRQSTransform(w, h, d)
    assert torch.allclose(L.rqs_forward(w, h, d, x), t(x), atol=1e-12)
    assert torch.allclose(L.rqs_inverse(w, h, d, x), t.inv(x), atol=1e-12)
    out = x.abs() > 5
    assert out.any() and torch.equal(L.rqs_inverse(w, h, d, x)[out], x[out])


def test_auto_chunk():
    assert L.auto_chunk(648, 23, 4) & (L.auto_chunk(648, 23, 4) - 1) == 0  # a power of two
    assert L.auto_chunk(648, 23, 8) <= L.auto_chunk(648, 23, 4) <= L.auto_chunk(64, 23, 4)
    assert 64 <= L.auto_chunk(648, 23, 4) <= 4096
    assert L.auto_chunk(3, 23, 8) == 4096
    assert L.auto_chunk(10**6, 23, 8) == L.CHUNK_MIN_ROWS == 256
    # one-pass blocks measured in bench_lean.py / bench_chunk.py: the students of ds2-coarse (648
    # voxels), ParaFlow (128 crystals) and one ds2 layer (144 voxels) all get 256 rows; sequentially
    # inverted MAF blocks keep larger chunks: flow-I (9 layers, float64) 4096, the ParaFlow teacher 512
    assert [L.auto_chunk(d, 23, 4) for d in (648, 128, 144)] == [256, 256, 256]
    assert L.auto_chunk(9, 23, 8, sequential=True) == 4096 and L.auto_chunk(128, 23, 8, sequential=True) == 512
    # which rule a flow uses: a MAF samples sequentially and evaluates densities in one pass, an IAF
    # the other way round
    maf, iaf = (L.LeanFlow.from_flow(b(128, 3, 2, (16,))) for b in (F.build_maf, F.build_iaf))
    assert maf.chunk_rows(torch.float64, sampling=True) == 512 and maf.chunk_rows(torch.float64, sampling=False) == 256
    assert iaf.chunk_rows(torch.float32, sampling=True) == 256 and iaf.chunk_rows(torch.float32, sampling=False) == 1024


def test_unsupported_flow_falls_back():
    import zuko

    f = zuko.flows.MAF(3, 1, transforms=1, hidden_features=(8,))  # affine, not RQS
    assert not L.supports_lean(f)
    g = F.build_maf(3, 1, 1, (8,))
    g.transform.transforms[0].hyper[1] = torch.nn.ELU()
    assert not L.supports_lean(g) and L.supports_lean(F.build_maf(3, 1, 1, (8,)))
    with torch.no_grad():
        assert F.flow_sample(f, torch.randn(4, 1)).shape == (4, 3)


def test_double_precision_keeps_the_lean_cache_and_follows_changes():
    f = _flow(F.build_maf, 1, (8, 8))
    c = torch.randn(5, 1, dtype=torch.float64)
    ptrs = [p.data_ptr() for p in f.parameters()]
    with torch.no_grad():
        with F.double_precision(f):
            a = F.flow_sample(f, c, generator=torch.Generator().manual_seed(0))
            lean = L.lean_flow(f)
            assert next(lean.buffers()).dtype == torch.float64
        assert [p.data_ptr() for p in f.parameters()] == ptrs and next(f.parameters()).dtype == torch.float32
        with F.double_precision(f):
            assert L.lean_flow(f) is lean  # not rebuilt
            b = F.flow_sample(f, c, generator=torch.Generator().manual_seed(0))
            ref = F.flow_sample(f, c, generator=torch.Generator().manual_seed(0), fast=False)
            for p in f.parameters():
                p.mul_(1.01)  # changed inside the block: kept (cast back) and the cache follows
        assert [p.data_ptr() for p in f.parameters()] != ptrs
        with F.double_precision(f):
            assert L.lean_flow(f) is not lean
    assert torch.equal(a, b) and torch.allclose(a, ref, atol=1e-10)


@pytest.mark.parametrize("build", [F.build_maf, F.build_iaf])
@pytest.mark.parametrize("rows", [1, 5])
@pytest.mark.parametrize("hidden", [(32,), (16, 16)])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_small_batch_numpy_inverse_matches_torch_steps(build, rows, hidden, dtype, tol, monkeypatch):
    """Few rows on the CPU: the numpy steps of a MAF inverse (one row: Python-float spline) and the
    numpy spline of an IAF block's one pass equal the torch path and zuko's inverse for the same
    latent, including values outside the spline's range (identity tails); data -> latent inverts them."""
    f = _flow(build, 2, hidden, seed=2)
    lean = L.LeanFlow.from_flow(f).to(dtype)
    gen = torch.Generator().manual_seed(rows)
    z = 2.5 * torch.randn(rows, 7, generator=gen, dtype=dtype)
    z[0, 0] = 7.0  # outside [-bound, bound]
    c = torch.randn(rows, 2, generator=gen, dtype=dtype)
    with torch.inference_mode():
        monkeypatch.setattr(L, "NUMPY_ROWS", 0)
        ref = lean.sample(z, c)
        monkeypatch.setattr(L, "NUMPY_ROWS", 16)
        x = lean.sample(z, c)
        assert x.dtype == dtype and torch.allclose(x, ref, atol=tol, rtol=0)
        # an IAF's data -> latent is its sequential direction: in float32 these random weights amplify
        # round-off ~1000x (numpy and torch samples, 1e-6 apart, invert to 3e-3 and 4e-4 of z), so the
        # float32 IAF round trip is checked in the float64 case only (there: 1e-12)
        if build is F.build_maf or dtype == torch.float64:
            assert torch.allclose(lean.transform(x, c), z, atol=10 * tol, rtol=0)
    if dtype == torch.float64:
        with F.double_precision(f):
            zuko = F.inverse_path(f, z, c, fast=False)[0]
        assert torch.allclose(x, zuko, atol=tol, rtol=0)


def test_flow_sample_in_float64_without_casting_the_module():
    """``flow_sample(dtype=float64)`` on a float32 flow equals sampling inside double_precision
    (same noise, same snapshot) and leaves the module's parameters untouched."""
    f = _flow(F.build_maf, 1, (8, 8))
    c = torch.randn(3, 1, dtype=torch.float64)
    params = [(p.data_ptr(), p._version) for p in f.parameters()]
    with torch.no_grad():
        a = F.flow_sample(f, c, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        assert [(p.data_ptr(), p._version) for p in f.parameters()] == params
        with F.double_precision(f):
            b = F.flow_sample(f, c, generator=torch.Generator().manual_seed(1))
            assert L.lean_flow(f) is L.lean_flow(f, torch.float64)  # one cache entry for both ways
        with F.lean_sampling(False):
            ref = F.flow_sample(f, c, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert a.dtype == torch.float64 and torch.equal(a, b)
    assert torch.allclose(a, ref, atol=1e-10)
    assert next(f.parameters()).dtype == torch.float32


def _toy_caloflow(tmp_path):
    """A trained-looking CaloFlow on a 3-layer toy geometry (weights moved off the initialisation)."""
    from caloflows.geometry import load_geometry
    from caloflows.io import ShowerData
    from caloflows.models.caloflow import CaloFlow, CaloFlowConfig
    from caloflows.toy_showers import toy_showers

    (tmp_path / "g.xml").write_text('<Bins><Bin pid="11" name="e"><Layer id="0" r_edges="0,2,5" n_bin_alpha="2"/>'
                                    '<Layer id="1" r_edges="0,2,5" n_bin_alpha="2"/>'
                                    '<Layer id="2" r_edges="0,2,5,9" n_bin_alpha="1"/></Bin></Bins>')
    g = load_geometry(str(tmp_path / "g.xml"))
    m = CaloFlow(g, CaloFlowConfig(flow1_transforms=2, flow2_transforms=2, flow2_hidden=16, student_hidden=16))
    inc, sh = toy_showers(g, 300, seed=0)
    m.fit_constants(ShowerData(inc, sh))
    with torch.no_grad():
        for net in (m.flow1, m.student, m.teacher):
            for p in net.parameters():
                p.add_(0.2 * torch.randn_like(p))
    m.trained = {k: True for k in m.trained}
    return m


def test_caloflow_batch1_chain_matches_zuko_path(tmp_path):
    """Whole CaloFlow chain at batch 1 and 3 (flow-I through the numpy steps, snapshot in float64):
    same seed -> the same showers as the zuko path (lean sampling off)."""
    import numpy as np

    m = _toy_caloflow(tmp_path)
    g = m.geometry
    for n in (1, 3):
        e = np.geomspace(2e3, 5e4, n)
        a = m.sample(e, batch_size=n, seed=5, variant="student").showers
        with F.lean_sampling(False):
            b = m.sample(e, batch_size=n, seed=5, variant="student").showers
        assert a.shape == (n, g.n_voxels) and np.isfinite(a).all()
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * b.max())


def test_generator_eval_sees_submodules_in_training_mode():
    """``Generator.sample`` skips the eval() walk when nothing trains, but a submodule left in
    training mode (a distillation objective trains the inner flow, not its wrapper) is caught."""
    from caloflows.models.base import _eval

    m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Sequential(torch.nn.Dropout()))
    _eval(m)
    assert not any(x.training for x in m.modules())
    m[1][0].train()
    assert not m.training
    _eval(m)
    assert not any(x.training for x in m.modules())


def test_two_knot_lookup_at_knots_and_domain_edges():
    """The sampling splines find the bin on unnormalised cumulative sizes (stop 20): exactly at the
    knots, at +-bound and just outside they agree with zuko in float64 and with float64 in float32."""
    from zuko.transforms import MonotonicRQSTransform

    torch.manual_seed(3)
    phi = 2 * torch.randn(40, 5, 23, dtype=torch.float64)
    w, h, d = phi[..., :8], phi[..., 8:16], phi[..., 16:]
    t = MonotonicRQSTransform(w, h, d)
    ky, kx = t.vertical, t.horizontal  # zuko's knots (40, 5, 9)
    for j in range(9):  # every knot, the ends being -bound and bound
        y, x = ky[..., j], kx[..., j]
        assert torch.allclose(L.rqs_inverse(w, h, d, y), t.inv(y), atol=1e-12, rtol=0)
        assert torch.allclose(L.rqs_forward(w, h, d, x), t(x), atol=1e-12, rtol=0)
    for v in (-5.0, 5.0, -5.0 - 1e-9, 5.0 + 1e-9, -7.0, 7.0):
        y = torch.full((40, 5), v, dtype=torch.float64)
        assert torch.allclose(L.rqs_inverse(w, h, d, y), t.inv(y), atol=1e-12, rtol=0)
        assert torch.allclose(L.rqs_forward(w, h, d, y), t(y), atol=1e-12, rtol=0)
    y = 6 * torch.rand(40, 5, dtype=torch.float64) - 3
    x32 = L.rqs_inverse(w.float(), h.float(), d.float(), y.float()).double()
    assert (x32 - t.inv(y)).abs().max() < 1e-4


@pytest.mark.parametrize("build", [F.build_iaf, F.build_maf])
@pytest.mark.parametrize("degrees,hidden,triangular", [("spread", (12,), True), ("cyclic", (12,), False),
                                                       ("cyclic", (64,), True), ("spread", (12, 12), True)])
def test_block_triangular_output_layer_matches_zuko(degrees, hidden, triangular, build, monkeypatch):
    """The MADE output layer as matmuls over prefixes of degree-sorted hidden units (issue 13) is
    used where it saves work (spread degrees, or H >= D) and gives zuko's samples; a MAF's
    sequential inverse runs on the same degree-sorted weights."""
    monkeypatch.setattr(L, "OUTPUT_GROUPS_MIN_WEIGHTS", 0)  # (real layers: >= 1M weights)
    torch.manual_seed(3)
    f = build(40, 3, 2, hidden, degrees=degrees)
    with torch.no_grad():
        for p in f.parameters():
            p.add_(0.2 * torch.randn_like(p))
    with F.double_precision(f):
        lean = L.LeanFlow.from_flow(f)
        assert all((b._out_chunks is not None) == triangular for b in lean.blocks)
        for rows in (L.OUTPUT_GROUPS_ROWS - 1, L.OUTPUT_GROUPS_ROWS):  # dense below, grouped from here
            z = torch.randn(rows, 40, dtype=torch.float64)
            c = torch.randn(rows, 3, dtype=torch.float64)
            ref = F.inverse_path(f, z, c, fast=False)[0]
            with torch.inference_mode():
                x = lean.sample(z, c)
                back = lean.transform(x, c)  # the other direction (MAF: the grouped layer)
            assert torch.allclose(x, ref, atol=1e-10, rtol=0)
            assert torch.allclose(back, z, atol=1e-8, rtol=0)
        if triangular:  # the prefixes are shorter than the layer
            assert min(ch[0] for ch in lean.blocks[0]._out_chunks) < hidden[-1] // 2


def test_small_output_layers_stay_dense():
    f = F.build_iaf(10, 3, 2, (64,))  # SUPERCALO-sized: 10 x 23 outputs of 64 units
    assert all(b._out_chunks is None for b in L.LeanFlow.from_flow(f).blocks)


def _bigger_iaf(seed=0):
    torch.manual_seed(seed)
    f = F.build_iaf(40, 3, 2, (64,))
    with torch.no_grad():
        for p in f.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return f


@pytest.mark.skipif(not L.int8_supported(), reason="no quantized CPU engine in this torch build")
def test_int8_output_layer_within_the_quantisation_bound():
    """``LeanBlock.quantize_output``: the int8 spline parameters differ from float32 by no more than
    the rounding of the weights (half a step of each row's scale) and of the activations (half a
    step of the 7-bit range of the call's largest activation) allow."""
    f = _bigger_iaf()
    blk = L.LeanFlow.from_flow(f).blocks[-1]
    h = torch.relu(torch.randn(5, 64))
    w = blk.w_out_t  # (H, D T)
    ref = torch.addmm(blk.b_out, h, w)
    blk.quantize_output()
    with torch.no_grad():
        got = torch.ops.quantized.linear_dynamic(h, blk._q_out, True)
    s_w = w.abs().amax(0) / 127  # per output row
    for r in range(len(h)):  # the bound of one row, sampled alone (one activation scale per call)
        with torch.no_grad():
            one = torch.ops.quantized.linear_dynamic(h[r:r + 1], blk._q_out, True)[0]
        s_x = h[r].max() / 127
        bound = (h[r].abs()[:, None] * s_w / 2 + w.abs() * s_x / 2 + s_w * s_x / 4).sum(0)
        assert ((one - ref[r]).abs() <= bound + 1e-5).all()
        assert 0 < (one - ref[r]).abs().max() < 0.05 * ref[r].abs().max()
    assert got.shape == ref.shape


@pytest.mark.skipif(not L.int8_supported(), reason="no quantized CPU engine in this torch build")
def test_int8_sampling_weights_touch_only_iaf_blocks_and_switch_back():
    iaf, maf = _bigger_iaf(), F.build_maf(40, 3, 2, (64,))
    z, c = torch.randn(8, 40), torch.randn(8, 3)
    with torch.no_grad():
        a_iaf, a_maf = F.flow_decode(iaf, z, c), F.flow_decode(maf, z, c)
        for f in (iaf, maf):
            L.set_sampling_weights(f, "int8")
        b_iaf, b_maf = F.flow_decode(iaf, z, c), F.flow_decode(maf, z, c)
        assert torch.equal(b_maf, a_maf)  # a MAF samples in sequential steps: float as before
        d = (b_iaf - a_iaf).abs()
        assert 0 < d.max() < 0.1 * a_iaf.abs().max()
        # one row alone is the same shower as in a batch up to the per-call activation scale
        assert torch.allclose(F.flow_decode(iaf, z[:1], c[:1]), b_iaf[:1], atol=0.05)
        L.set_sampling_weights(iaf, "float32")
        assert torch.equal(F.flow_decode(iaf, z, c), a_iaf)
    with pytest.raises(ValueError, match="int8"):
        L.set_sampling_weights(iaf, "int4")


@pytest.mark.skipif(not L.int8_supported(), reason="no quantized CPU engine in this torch build")
def test_student_weights_int8_generation_setting(tmp_path):
    """``--set student_weights=int8``: the student's showers move within the quantisation error and
    keep their layer energies (exact renormalisation); the teacher's do not move; a family without
    a student refuses the setting, and an unknown value is refused in one line."""
    import numpy as np

    from caloflows.errors import ConfigError, UsageError
    from caloflows.models.l2lflows import L2LFlows

    m = _toy_caloflow(tmp_path)
    e = np.geomspace(2e3, 5e4, 40)
    f32 = m.sample(e, batch_size=40, seed=3, variant="student").showers
    t32 = m.sample(e, batch_size=40, seed=3, variant="teacher").showers
    m.with_generation_settings(["student_weights=int8"])
    i8 = m.sample(e, batch_size=40, seed=3, variant="student").showers
    assert np.array_equal(m.sample(e, batch_size=40, seed=3, variant="teacher").showers, t32)
    assert not np.array_equal(i8, f32)
    g = m.geometry
    np.testing.assert_allclose(g.layer_energies(i8), g.layer_energies(f32), rtol=1e-4)
    both = (i8 > 0) & (f32 > 0)
    assert np.median(np.abs(i8 - f32)[both] / f32[both]) < 0.05
    m.with_generation_settings(["student_weights=float32"])
    assert np.array_equal(m.sample(e, batch_size=40, seed=3, variant="student").showers, f32)
    with pytest.raises(ConfigError, match="student_weights"):
        m.with_generation_settings(["student_weights=int4"])
    with pytest.raises(UsageError, match="not a generation setting"):
        L2LFlows(g).with_generation_settings(["student_weights=int8"])
