"""Threshold-aware post-processing of generated layers (L2LFlows, ``l2lflows.txt`` appendix B.3).

A causal flow's sample of layer ``i`` is rescaled to the layer energy ``E_i`` of the energy
distribution flow.  A plain rescale followed by the threshold cut loses the energy of the
voxels that fall below the cut; instead the dimmest voxels are dropped until the
*renormalised* survivors are all above the threshold ``t``:

    I_pp = E_i * I_{>= t'} / S(I_{>= t'})            (eq. B.8)
    with t' such that E_i * t' / S(I_{>= t'}) = t     (eq. B.9)

For voxels sorted by decreasing energy ``v_1 >= v_2 >= ...`` with partial sums ``S_k``, the
smallest renormalised survivor when keeping ``k`` voxels is ``E v_k / S_k``, which never
increases with ``k``; so we keep the largest ``k`` with ``E v_k / S_k >= t``.  The kept voxels
sum exactly to ``E_i`` (up to float64 round-off) and none is below ``t``.  A layer with
``E_i < t`` cannot hold any voxel above the threshold and is returned empty (its sum is 0),
unless ``single_hit`` is given: a layer with ``single_hit <= E_i < t`` then keeps ``E_i`` in its
brightest voxel (an extension beyond the paper, issue 15: in Geant4 ds2-coarse 11-12 % of the
non-empty layers 7 and 8 carry less than 2 MeV, deposited by one or a few particles).

>>> import numpy as np
>>> v = np.array([[4.0, 3.0, 2.0, 1.0]])
>>> out = threshold_renormalise(v, np.array([1.0]), 0.2)
>>> out.round(4).tolist(), round(float(out.sum()), 12)
([[0.4444, 0.3333, 0.2222, 0.0]], 1.0)
"""

from __future__ import annotations

import numpy as np
import torch

from .preprocessing import equal_layer_size

__all__ = ["threshold_renormalise", "threshold_renormalise_layers"]


def threshold_renormalise(voxels, layer_energy, threshold: float, single_hit: float | None = None):
    """Eqs. B.8-B.9 for one layer: ``voxels`` (N, n) >= 0, ``layer_energy`` (N,) -> (N, n).

    Works on numpy arrays or torch tensors (same type returned).  Negative or non-finite
    inputs count as 0.  ``single_hit``: layers with ``single_hit <= E_i < threshold`` keep ``E_i``
    in their brightest voxel instead of ending empty (module docstring).

    >>> import numpy as np
    >>> v = np.array([[0.3, 0.5, 0.2], [0.3, 0.5, 0.2]])
    >>> threshold_renormalise(v, np.array([1.5, 0.1]), 2.0, single_hit=0.2).tolist()
    [[0.0, 1.5, 0.0], [0.0, 0.0, 0.0]]
    """
    is_t = isinstance(voxels, torch.Tensor)
    v = voxels if is_t else torch.as_tensor(np.asarray(voxels, dtype=np.float64))
    E = layer_energy if isinstance(layer_energy, torch.Tensor) else torch.as_tensor(np.asarray(layer_energy, dtype=np.float64))
    v = torch.nan_to_num(v.to(torch.float64), nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0.0)
    E = torch.nan_to_num(E.to(v.device, torch.float64).reshape(-1), nan=0.0, posinf=0.0).clamp_min(0.0)
    if v.ndim != 2 or v.shape[0] != E.shape[0]:
        raise ValueError(f"voxels must be (N, n) and layer energies (N,), got {tuple(v.shape)} and {tuple(E.shape)}")
    vs, order = torch.sort(v, dim=1, descending=True)
    S = torch.cumsum(vs, dim=1)
    smallest = E[:, None] * vs / S.clamp_min(1e-300)
    ok = (vs > 0) & (smallest >= threshold)
    k = ok.sum(1)  # ok is a prefix (monotone), so k is the number kept
    keep_sorted = torch.arange(v.shape[1], device=v.device)[None, :] < k[:, None]
    Sk = torch.gather(S, 1, (k - 1).clamp_min(0)[:, None]).squeeze(1)
    scale = torch.where(k > 0, E / Sk.clamp_min(1e-300), torch.zeros_like(E))
    out_sorted = torch.where(keep_sorted, vs * scale[:, None], torch.zeros_like(vs))
    if single_hit is not None:  # E_i in the brightest voxel where nothing survives the cut
        one = (k == 0) & (single_hit <= E) & (vs[:, 0] > 0)
        first = torch.arange(v.shape[1], device=v.device)[None, :] == 0
        out_sorted = torch.where(one[:, None] & first, E[:, None].expand_as(vs), out_sorted)
    out = torch.empty_like(out_sorted).scatter_(1, order, out_sorted)
    if is_t:
        return out.to(voxels.dtype) if voxels.dtype == torch.float64 else out
    return out.numpy()


def threshold_renormalise_layers(showers, layer_energies, layer_offsets, threshold: float,
                                 single_hit: float | None = None):
    """Apply :func:`threshold_renormalise` to every layer of full showers (N, V).

    When every layer has the same number of voxels (ds2, ds3, ds2-coarse) the layers are one call on
    the (N L, n) rows, a reshape (also inside an exported ONNX graph): each row is processed on its
    own, so the result is the per-layer loop's, bit for bit, with 1 sort instead of L (at batch 1 the
    loop's per-call overhead was ~1.5 ms of a 13 ms ds2-coarse CaloFlow shower).
    """
    is_t = isinstance(showers, torch.Tensor)
    n_vox = equal_layer_size(layer_offsets, showers.shape[1])
    if n_vox is not None:
        n_lay = len(layer_offsets) - 1
        rows = showers.reshape(-1, n_vox)
        E = layer_energies.reshape(-1)
        return threshold_renormalise(rows, E, threshold, single_hit).reshape(showers.shape[0], n_lay * n_vox)
    parts = []
    for i, (a, b) in enumerate(zip(layer_offsets[:-1], layer_offsets[1:])):
        blk = showers[:, int(a):int(b)]
        parts.append(threshold_renormalise(blk, layer_energies[:, i], threshold, single_hit))
    return torch.cat(parts, 1) if is_t else np.concatenate(parts, 1)
