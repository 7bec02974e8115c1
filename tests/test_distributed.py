"""DistributedDataParallel training of a layer flow: 2 CPU processes (gloo) == 1 process.

The layer trainer (caloflows.training.loop) splits every global batch into equal shards
and DDP averages the shard gradients, so two processes must end with the weights of one
process trained on the same data and seed.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from caloflows.geometry import load_geometry
from caloflows.io import write_showers
from caloflows.models.l2lflows import L2LFlows, L2LFlowsConfig, layer_file
from caloflows.toy_showers import toy_showers
from caloflows.training.distributed import DistContext, shard_bounds
from caloflows.training.loop import TrainConfig


def _config() -> L2LFlowsConfig:
    tc = asdict(TrainConfig(epochs=2, batch_size=64, base_lr=1e-4, max_lr=2e-3, val_fraction=0.2, seed=3))
    return L2LFlowsConfig(cf_hidden=[16], embed_hidden=[32, 16], embed_out=8, cf_transforms=2, bins=4,
                          edf_hidden=[8], edf_transforms=2, edf_train=tc, cf_train=tc, chunk_rows=96, cache_mb=0.0)


def _worker(rank: int, world: int, init: str, data: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        model = L2LFlows("ds2-coarse", _config())
        model.train(data, out, layers=[2], energy=True, progress=False, ctx=DistContext(rank, world, rank))
    finally:
        dist.destroy_process_group()


def _weights(path) -> dict:
    from safetensors.torch import load_file

    return {k: v.double() for k, v in load_file(str(path)).items()}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    inc, sh = toy_showers(load_geometry("ds2-coarse"), 320, seed=5)
    p = d / "train.h5"
    write_showers(p, inc, sh, geometry="ds2-coarse")
    return p


def test_two_gloo_processes_match_one_process(data_file, tmp_path):
    torch.set_num_threads(1)
    single, multi = tmp_path / "single", tmp_path / "ddp"
    L2LFlows("ds2-coarse", _config()).train(data_file, single, layers=[2], energy=True, progress=False)
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'pg'}", str(data_file), str(multi)), nprocs=2, join=True)
    for name in (layer_file(2), "energy_flow.safetensors"):
        a, b = _weights(single / name), _weights(multi / name)
        assert a.keys() == b.keys()
        diff = max(float((a[k] - b[k]).abs().max()) for k in a)
        print(name, "ddp-vs-single max diff", diff)
        assert diff < 1e-5, f"{name}: DDP weights differ from single-process weights by {diff}"
        # and training moved the weights away from their (seeded) initialisation
        init = L2LFlows("ds2-coarse", _config()).build_causal(2).state_dict() if name != "energy_flow.safetensors" \
            else L2LFlows("ds2-coarse", _config()).build_energy_flow().state_dict()
        moved = max(float((a[k] - init[k].double()).abs().max()) for k in a)
        assert moved > 1e-3
    # streamed (cache_mb=0) and single-process runs wrote the same history of validation losses
    import json

    ha = json.loads((single / "history_causal_layer_002.json").read_text())
    hb = json.loads((multi / "history_causal_layer_002.json").read_text())
    assert np.allclose(ha["val_loss"], hb["val_loss"], rtol=1e-5)


def test_shard_bounds_split_global_batch():
    assert shard_bounds(64, DistContext(0, 2)) == (0, 32)
    assert shard_bounds(64, DistContext(1, 2)) == (32, 64)
    with pytest.raises(ValueError, match="not divisible"):
        shard_bounds(63, DistContext(0, 2))
