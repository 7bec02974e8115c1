"""caloflows.flows: MAF / IAF builders over zuko (invertibility, densities, pass counts)."""

import math

import pytest
import torch

from caloflows import flows as F

torch.set_num_threads(1)


def _pair(D=12, C=2, K=3, H=16):
    torch.manual_seed(0)
    return F.build_maf(D, C, K, (H,)), F.build_iaf(D, C, K, (H,))


def _perturb(flow, scale=0.3):
    # untrained zuko splines are close to identity; random weights make the test meaningful
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn_like(p))


@pytest.mark.parametrize("which", ["maf", "iaf"])
def test_x_z_x_roundtrip_float64(which):
    maf, iaf = _pair()
    flow = maf if which == "maf" else iaf
    _perturb(flow)
    x = 1.5 * torch.randn(64, 12, dtype=torch.float64)
    c = torch.randn(64, 2, dtype=torch.float64)
    with F.double_precision(flow):
        z = F.forward_path(flow, x, c)[-1]
        x2 = F.inverse_path(flow, z, c)[0]
        z2 = F.forward_path(flow, x2, c)[-1]
    assert (z - x).abs().max() > 1e-2  # the flow is not the identity
    assert (x2 - x).abs().max().item() < 1e-5
    assert (z2 - z).abs().max().item() < 1e-5
    assert next(flow.parameters()).dtype == torch.float32  # restored after the block


@pytest.mark.parametrize("which", ["maf", "iaf"])
def test_log_prob_matches_change_of_variables(which):
    D, C = 4, 1
    torch.manual_seed(1)
    flow = F.build_maf(D, C, 2, (8,)) if which == "maf" else F.build_iaf(D, C, 2, (8,))
    _perturb(flow)
    flow.double()
    x = torch.randn(D, dtype=torch.float64)
    c = torch.randn(1, C, dtype=torch.float64)
    f = lambda v: F.forward_path(flow, v[None], c)[-1][0]
    J = torch.autograd.functional.jacobian(f, x)
    z = f(x)
    expected = -0.5 * (z**2).sum() - 0.5 * D * math.log(2 * math.pi) + torch.linalg.slogdet(J)[1]
    got = flow(c).log_prob(x[None])[0].detach()
    assert abs(float((got - expected).detach())) < 1e-8
    # one autoregressive block: triangular Jacobian, det = product of the diagonal
    b = F.flow_blocks(flow)[0]
    J1 = torch.autograd.functional.jacobian(lambda v: b(c)(v[None])[0], x)
    assert torch.allclose(torch.triu(J1, 1), torch.zeros_like(J1)) or torch.allclose(torch.tril(J1, -1), torch.zeros_like(J1))


def _count_hyper_calls(flow, fn):
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for m in flow.modules() if type(m).__name__ == "MaskedMLP"]
    try:
        fn()
    finally:
        for h in hooks:
            h.remove()
    return len(calls)


def test_student_samples_in_one_pass_teacher_in_D():
    D, K = 7, 3
    maf, iaf = _pair(D=D, K=K)
    c = torch.randn(5, 2)
    assert _count_hyper_calls(iaf, lambda: F.flow_sample(iaf, c)) == K
    assert _count_hyper_calls(maf, lambda: F.flow_sample(maf, c, fast=False)) == K * D  # zuko's inverse
    x = torch.randn(5, D)
    assert _count_hyper_calls(maf, lambda: maf(c).log_prob(x)) == K
    assert _count_hyper_calls(iaf, lambda: iaf(c).log_prob(x)) == K * D + K


def test_parameter_count_known_answer():
    D, C, K, H, bins = 5, 3, 2, 10, 8
    maf = F.build_maf(D, C, K, (H,), bins=bins)
    per_block = (D + C) * H + H + H * D * (3 * bins - 1) + D * (3 * bins - 1)
    assert F.count_parameters(maf) == K * per_block
    assert F.count_parameters(F.build_iaf(D, C, K, (H,), bins=bins)) == K * per_block
    assert F.count_effective_parameters(maf) < F.count_parameters(maf)  # MADE masks remove weights


def test_intermediate_paths_have_matching_shapes():
    maf, iaf = _pair(K=4)
    x, c = torch.randn(3, 12), torch.randn(3, 2)
    h = F.forward_path(maf, x, c)
    g = F.inverse_path(iaf, torch.randn(3, 12), c)
    assert len(h) == len(g) == 5
    assert all(a.shape == b.shape == (3, 12) for a, b in zip(h, g))


def test_too_few_features():
    with pytest.raises(ValueError):
        F.build_maf(1, 1)


def test_fast_teacher_inverse_equals_zuko_inverse():
    torch.manual_seed(3)
    maf = F.build_maf(9, 3, 3, (20,))
    _perturb(maf)
    z = torch.randn(40, 9, dtype=torch.float64)
    c = torch.randn(40, 3, dtype=torch.float64)
    with F.double_precision(maf), torch.no_grad():
        fast = F.inverse_path(maf, z, c, fast=True)
        slow = F.inverse_path(maf, z, c, fast=False)
        assert all((a - b).abs().max().item() < 1e-10 for a, b in zip(fast, slow))
        assert (F.forward_path(maf, fast[0], c)[-1] - z).abs().max().item() < 1e-9
    # two hidden layers (SuperCalo's MADEs): the fast inverse equals zuko's too
    maf2 = F.build_maf(6, 4, 3, (16, 16))
    _perturb(maf2)
    c2 = torch.randn(30, 4, dtype=torch.float64)
    z2 = torch.randn(30, 6, dtype=torch.float64)
    with F.double_precision(maf2), torch.no_grad():
        fast = F.inverse_path(maf2, z2, c2, fast=True)
        slow = F.inverse_path(maf2, z2, c2, fast=False)
        assert all((a - b).abs().max().item() < 1e-10 for a, b in zip(fast, slow))
        assert (F.forward_path(maf2, fast[0], c2)[-1] - z2).abs().max().item() < 1e-9
        assert _count_hyper_calls(maf2, lambda: F.inverse_path(maf2, z2, c2, fast=True)) == 0  # no full MADE pass


def test_student_warm_start_reproduces_teacher_parameters():
    torch.manual_seed(4)
    maf = F.build_maf(6, 2, 2, (10,))
    _perturb(maf)
    iaf = F.build_iaf(6, 2, 2, (15,))
    assert F.init_student_from_teacher(iaf, maf)
    x = torch.randn(5, 8)
    for s, t in zip(F.flow_blocks(iaf), F.flow_blocks(maf)):
        assert torch.allclose(s.hyper(x), t.hyper(x), atol=1e-6)
    assert not F.init_student_from_teacher(F.build_iaf(6, 2, 2, (5,)), maf)  # narrower student: refused


def test_student_warm_start_with_two_hidden_layers_and_wider_student():
    """SUPERCALO's MADEs have 2 hidden layers: the warm start must reproduce them too."""
    torch.manual_seed(5)
    maf = F.build_maf(5, 3, 2, (12, 12))
    _perturb(maf)
    for hidden in ((12, 12), (20, 16)):
        iaf = F.build_iaf(5, 3, 2, hidden)
        assert F.init_student_from_teacher(iaf, maf)
        x = torch.randn(7, 8)
        for s, t in zip(F.flow_blocks(iaf), F.flow_blocks(maf)):
            assert torch.allclose(s.hyper(x), t.hyper(x), atol=1e-6)
    assert not F.init_student_from_teacher(F.build_iaf(5, 3, 2, (12, 8)), maf)  # a narrower layer
    assert not F.init_student_from_teacher(F.build_iaf(5, 3, 2, (12,)), maf)  # another depth


def test_spline_column_inverse_matches_zuko_inside_and_outside_the_bound():
    from zuko.transforms import MonotonicRQSTransform

    torch.manual_seed(4)
    K, bound, slope = 5, 3.0, 1e-2
    phi = 2 * torch.randn(200, 3 * K - 1, dtype=torch.float64)
    y = torch.cat([torch.linspace(-2.99, 2.99, 150), torch.tensor([-3.0, 3.0, -7.0, 9.5]),
                   torch.randn(46) * 5]).to(torch.float64)
    t = MonotonicRQSTransform(phi[:, None, :K], phi[:, None, K:2 * K], phi[:, None, 2 * K:], bound=bound, slope=slope)
    ours = F.rqs_inverse_column(phi, y, K, bound, slope)
    assert torch.allclose(ours, t.inv(y[:, None])[:, 0], atol=1e-12, rtol=0)
    assert torch.equal(ours[y.abs() > bound], y[y.abs() > bound])  # identity tails
    assert torch.allclose(t(ours[:, None])[:, 0], y, atol=1e-10)  # x -> y -> x


def test_cached_masks_follow_weight_changes_and_leave_training_alone():
    torch.manual_seed(5)
    maf = F.build_maf(6, 2, 2, (12,))
    layers = [m for m in maf.modules() if isinstance(m, F.CachedMaskedLinear)]
    assert len(layers) == 4  # two MADEs of two layers each
    x, c = torch.randn(5, 6), torch.randn(5, 2)

    def reference():  # zuko's formula, mask applied on the spot
        with torch.no_grad():
            h = x
            for t in F.flow_blocks(maf):
                lin = [m for m in t.hyper if isinstance(m, torch.nn.Linear)]
                a = torch.relu(torch.nn.functional.linear(torch.cat([h, c], -1), lin[0].mask * lin[0].weight, lin[0].bias))
                phi = torch.nn.functional.linear(a, lin[1].mask * lin[1].weight, lin[1].bias)
                h = t(c)(h)
            return phi, h

    with torch.no_grad():
        out1 = maf(c).log_prob(x)
    _perturb(maf)  # in-place change of every weight: the cached products must be rebuilt
    with torch.no_grad():
        out2 = maf(c).log_prob(x)
        phi_ref, _ = reference()
        last = F.flow_blocks(maf)[-1]
        h = F.forward_path(maf, x, c)[-2]
        phi = last.hyper(torch.cat([h, c], -1))
    assert not torch.allclose(out1, out2)
    assert torch.allclose(phi, phi_ref, atol=1e-6)
    with torch.enable_grad():  # training: gradients reach the weights, masked entries get none
        loss = -maf(c).log_prob(x).mean()
        loss.backward()
    for m in layers:
        assert m.weight.grad is not None and torch.all(m.weight.grad[~m.mask.bool()] == 0)
    with F.double_precision(maf), torch.no_grad():  # new dtype: rebuilt in float64
        assert maf(c.double()).log_prob(x.double()).dtype == torch.float64
    with torch.no_grad():
        assert torch.allclose(maf(c).log_prob(x), out2, atol=1e-5)


# ---------------------------------------------------------------- MADE hidden degrees (issue 15)
def _jacobian_support(block, D, C):
    """Which data features (columns) each latent feature (rows) of one MAF block depends on, at
    any of 8 random points (ReLU units can be inactive at one)."""
    support = torch.zeros(D, D, dtype=torch.bool)
    for _ in range(8):
        x = torch.randn(1, D, dtype=torch.float64)
        c = torch.randn(1, C, dtype=torch.float64)
        J = torch.autograd.functional.jacobian(lambda v: block(c)(v), x)[0, :, 0, :]
        support |= J.abs() > 0
    return support


@pytest.mark.parametrize("hidden", [(16,), (7, 5), (40,)])
def test_cyclic_masks_are_zukos(hidden):
    from zuko.nn import MaskedLinear

    torch.manual_seed(0)
    flow = F.build_iaf(20, 3, 2, hidden, randperm_seed=4)
    for t in F.flow_blocks(flow):
        layers = [m for m in t.hyper if isinstance(m, MaskedLinear)]
        adj = torch.cat((t.order[:, None] > t.order, torch.ones(20, 3, dtype=torch.bool)), 1)
        masks = F.made_masks(adj.repeat_interleave(t.total, 0), hidden, "cyclic")
        assert all(torch.equal(a, b.mask) for a, b in zip(masks, layers))


def test_spread_degrees_let_every_feature_read_the_whole_order():
    """zuko's cyclic degrees with H < D: features beyond rank H read only the first H - 1 features
    (the quick CaloFlow flow-II: 128 units for 648 voxels); spread degrees reach all, and the block
    stays autoregressive (nothing above the diagonal in its order)."""
    D, C, H = 60, 2, 12
    support = {}
    for degrees in ("cyclic", "spread"):
        torch.manual_seed(1)
        flow = F.build_maf(D, C, 2, (H,), degrees=degrees).double()
        _perturb(flow)
        for t in F.flow_blocks(flow):
            s = _jacobian_support(t, D, C)
            rank = torch.argsort(t.order)  # features in the order's sequence
            s = s[rank][:, rank]
            assert not s.triu(0).logical_and(~torch.eye(D, dtype=torch.bool)).any()  # autoregressive
            support[degrees] = s.tril(-1).sum().item() / (D * (D - 1) / 2)
            # the last feature of the order reads the features at the start and near its end
            if degrees == "spread":
                assert s[-1, 0] and s[-1, D - 1 - D // H - 1]
            else:
                assert not s[-1, D - 2]
    assert support["cyclic"] < 0.4 and support["spread"] > 0.85


@pytest.mark.parametrize("which", ["maf", "iaf"])
def test_spread_degrees_roundtrip_and_warm_start(which):
    torch.manual_seed(2)
    maf = F.build_maf(30, 2, 2, (8,), degrees="spread")
    iaf = F.build_iaf(30, 2, 2, (8,), degrees="spread")
    _perturb(maf)
    assert F.init_student_from_teacher(iaf, maf)  # same widths: the masks agree
    flow = maf if which == "maf" else iaf
    if which == "iaf":
        _perturb(flow)
    x = torch.randn(16, 30, dtype=torch.float64)
    c = torch.randn(16, 2, dtype=torch.float64)
    with F.double_precision(flow):
        z = F.forward_path(flow, x, c)[-1]
        x2 = F.inverse_path(flow, z, c)[0]
    assert (z - x).abs().max() > 1e-2  # not the identity
    assert (x2 - x).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="degrees"):
        F.build_maf(4, 1, 1, (3,), degrees="random")
