"""caloflows.training: LR schedules, the one resumable training loop (fit_flow), model directories, checkpoints."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from caloflows.geometry import load_geometry
from caloflows.training.checkpoint import (
    ModelDirError,
    load_checkpoint,
    load_weights,
    read_model_config,
    save_checkpoint,
    save_weights,
    write_model_config,
)
from caloflows.training.loop import ArraySource, TrainConfig, fit_flow, resolve_device, split_indices
from caloflows.training.schedules import make_scheduler

torch.set_num_threads(1)


def _lrs(kind, steps_per_epoch=10, epochs=20, **kw):
    p = [torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.Adam(p, lr=1.0)
    s = make_scheduler(opt, kind, base_lr=1e-4, max_lr=1e-3, steps_per_epoch=steps_per_epoch, epochs=epochs, **kw)
    out = []
    for _ in range(steps_per_epoch * epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        s.step()
    return np.array(out)


def test_onecycle_with_annihilation():
    lr = _lrs("onecycle", annihilation=0.2)  # 200 steps: up 80, down 80, annihilate 40
    assert np.isclose(lr[0], 1e-4)
    top = int(np.argmax(lr))
    assert abs(top - 80) <= 1 and np.isclose(lr.max(), 1e-3)
    assert np.isclose(lr[2 * top], 1e-4)  # back to base, then the annihilation phase (20 %)
    assert lr[-1] < 1e-4 / 1e3 and lr[-1] > 0  # annihilated towards base / 1e4
    assert np.all(np.diff(lr[:top]) > 0) and np.all(np.diff(lr[top:]) < 0)  # updated every batch


def test_cyclic_max_lr_halves_each_cycle():
    lr = _lrs("cyclic", cycle_epochs=10, epochs=30)  # 3 cycles of 100 steps
    amp = [lr[i * 100:(i + 1) * 100].max() - 1e-4 for i in range(3)]
    assert np.allclose(amp, [9e-4, 4.5e-4, 2.25e-4], rtol=1e-6)
    assert np.isclose(lr[0], 1e-4) and np.argmax(lr[:100]) == 50


def test_unknown_schedule():
    with pytest.raises(ValueError, match="unknown LR schedule"):
        _lrs("weird")


def test_split_is_deterministic_70_30():
    a, b = split_indices(100, 0.3, seed=3)
    a2, b2 = split_indices(100, 0.3, seed=3)
    assert len(a) == 70 and len(b) == 30 and torch.equal(a, a2) and torch.equal(b, b2)
    assert sorted(torch.cat([a, b]).tolist()) == list(range(100))


# --------------------------------------------------------------------- Trainer
SCRIPT = textwrap.dedent(
    """
    import sys, time, torch
    torch.set_num_threads(1)
    import numpy as np
    from caloflows.flows import LogProb, build_maf
    from caloflows.training.loop import ArraySource, TrainConfig, fit_flow

    def make():
        torch.manual_seed(0)
        flow = build_maf(3, 0, 2, (16,))
        g = torch.Generator().manual_seed(1)
        a = torch.randn(2000, 1, generator=g)
        data = torch.cat([a, 0.5 * a + 0.3 * torch.randn(2000, 1, generator=g), a.abs()], 1)
        return flow, data.numpy()

    def inputs(slow=0.0):
        def fn(ii, raw, gen):
            if slow:
                time.sleep(slow)
            x = torch.as_tensor(raw)
            # noise from the batch's counter-based generator (the same after a resume)
            return x + 0.01 * torch.randn(x.shape, generator=gen), torch.zeros(len(x), 0)
        return fn

    class Unconditional(torch.nn.Module):
        def __init__(self, flow):
            super().__init__()
            self.flow = flow

        def forward(self, x, c):
            return self.flow().log_prob(x)

    def run(workdir, resume, slow, epochs=6):
        flow, data = make()
        cfg = TrainConfig(epochs=epochs, batch_size=100, base_lr=1e-3, max_lr=1e-2, schedule="onecycle", seed=5)
        return fit_flow(Unconditional(flow), ArraySource(data), inputs(slow), "toy", workdir, cfg, progress=False,
                        resume=resume)

    if __name__ == "__main__":
        run(sys.argv[1], resume=sys.argv[2] == "1", slow=float(sys.argv[3]))
    """
)


def _load_script(tmp_path):
    path = tmp_path / "toy_train.py"
    path.write_text(SCRIPT)
    import importlib.util

    spec = importlib.util.spec_from_file_location("toy_train", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return path, mod


def test_trainer_lowers_validation_loss_and_writes_files(tmp_path):
    _, mod = _load_script(tmp_path)
    r = mod.run(tmp_path / "a", resume=False, slow=0.0)
    h = r.history
    assert h["epoch"] == [1, 2, 3, 4, 5, 6]
    assert r.best_val < h["val_loss"][0] and r.best_val == min(h["val_loss"])
    # the recorded LR is the one the epoch's last step used: positive, annihilated to ~1e-3 / 1e4
    assert all(lr > 0 for lr in h["lr"]) and 1e-8 < h["lr"][-1] < 1e-6
    for f in ("loss_toy.png", "history_toy.json", "checkpoints/toy_last.pt", "checkpoints/toy_best.pt"):
        assert (tmp_path / "a" / f).exists(), f
    assert (tmp_path / "a" / "loss_toy.png").read_bytes()[:4] == b"\x89PNG"


def test_early_stopping(tmp_path):
    class Square(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(1, 1)

        def forward(self, x):
            return -(self.lin(x) ** 2)[:, 0]

    cfg = TrainConfig(epochs=20, batch_size=10, base_lr=0.0, max_lr=0.0, schedule="constant", patience=2)
    data = torch.randn(50, 1).numpy()
    r = fit_flow(Square(), ArraySource(data), lambda ii, raw, gen: (torch.as_tensor(raw),), "es", tmp_path, cfg,
                 progress=False)
    assert r.stopped_early and r.epochs_run == 3  # best at epoch 1, two epochs without improvement


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    path, mod = _load_script(tmp_path)
    ref = mod.run(tmp_path / "ref", resume=False, slow=0.0)
    work = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(path), str(work), "0", "0.03"], env=env)
    last = work / "checkpoints" / "toy_last.pt"
    killed_at = None
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if last.exists():
                ep = load_checkpoint(last)["epoch"]
                if ep >= 2:
                    os.kill(proc.pid, signal.SIGKILL)
                    killed_at = ep
                    break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert killed_at is not None and killed_at < 6, "training was not interrupted mid-run"
    assert proc.returncode == -signal.SIGKILL
    r = mod.run(work, resume=True, slow=0.0)
    assert r.history["epoch"] == [1, 2, 3, 4, 5, 6]  # epochs continue, not restarted
    assert r.best_val <= min(r.history["val_loss"][:killed_at]) + 1e-12
    # counter-based noise and shuffling: the resumed run is the uninterrupted run, bit for bit
    assert r.history["val_loss"] == ref.history["val_loss"] and r.best_val == ref.best_val


def test_resume_refuses_other_settings(tmp_path):
    _, mod = _load_script(tmp_path)
    mod.run(tmp_path / "x", resume=False, slow=0.0)
    with pytest.raises(ModelDirError, match="other training settings"):
        mod.run(tmp_path / "x", resume=True, slow=0.0, epochs=7)


def test_device_selection():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device(None).type == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")


# --------------------------------------------------------------------- model files
def test_model_config_checks(tmp_path):
    g = load_geometry("ds2-coarse")
    write_model_config(tmp_path / "m", "caloflow", g, {"a": 1})
    d = read_model_config(tmp_path / "m", kind="caloflow", geometry=g)
    assert d["config"] == {"a": 1} and d["geometry"].n_voxels == 648
    with pytest.raises(ModelDirError, match="not a 'l2lflows' model"):
        read_model_config(tmp_path / "m", kind="l2lflows")
    with pytest.raises(ModelDirError, match="trained for geometry"):
        read_model_config(tmp_path / "m", geometry=load_geometry("ds1-photons"))
    with pytest.raises(ModelDirError, match="model directory not found"):
        read_model_config(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelDirError, match="not a caloflows model directory"):
        read_model_config(tmp_path / "empty")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["format_version"] = 99
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelDirError, match="format version 99 is not supported"):
        read_model_config(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(ModelDirError, match="unreadable model config"):
        read_model_config(tmp_path / "m")


def test_weights_roundtrip_and_corrupt_files(tmp_path):
    sd = torch.nn.Linear(3, 2).state_dict()
    save_weights(tmp_path / "w.safetensors", sd)
    back = load_weights(tmp_path / "w.safetensors")
    assert all(torch.equal(sd[k], back[k]) for k in sd)
    (tmp_path / "bad.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(ModelDirError, match="bad.safetensors: corrupt"):
        load_weights(tmp_path / "bad.safetensors")
    with pytest.raises(ModelDirError, match="weight file not found"):
        load_weights(tmp_path / "missing.safetensors")
    save_checkpoint(tmp_path / "c.pt", {"model": sd, "epoch": 3, "h": {"x": [1.0]}})
    assert load_checkpoint(tmp_path / "c.pt")["epoch"] == 3
    # a pickle with an arbitrary object is refused (weights_only=True), never executed
    torch.save({"obj": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ModelDirError, match="evil.pt: corrupt or unreadable checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporary files


class _Evil:
    pass


# --------------------------------------------------------------------- compiled training
def _conditional_maf_data(n=600):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    c = torch.rand(n, 1, generator=g)
    a = torch.randn(n, 1, generator=g)
    x = torch.cat([a + 2 * c, 0.5 * a + 0.2 * torch.randn(n, 1, generator=g), (a * c).abs(), 3 * c - a], 1)
    return x.float(), c.float()


def test_maf_log_prob_is_zukos_density_with_the_same_gradients():
    from caloflows.flows import build_iaf, build_maf, maf_log_prob, supports_maf_log_prob

    torch.manual_seed(1)
    flow = build_maf(4, 1, transforms=3, hidden_features=(32,)).double()
    with torch.no_grad():  # weights far from the identity init, so the splines bend
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x, c = _conditional_maf_data(200)
    x, c = 3 * x.double(), c.double()  # some rows outside the spline's [-5, 5]: the identity tails
    assert bool((x.abs() > 5).any())
    ours, zuko = maf_log_prob(flow, x, c), flow(c).log_prob(x)
    assert torch.allclose(ours, zuko, rtol=1e-10, atol=1e-9)
    grads = []
    for lp in (lambda: maf_log_prob(flow, x, c), lambda: flow(c).log_prob(x)):
        flow.zero_grad()
        lp().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in flow.parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-8, atol=1e-10)
    assert supports_maf_log_prob(flow) and not supports_maf_log_prob(build_iaf(4, 1, transforms=2))


def test_a_compiled_log_prob_is_one_graph_in_training_and_in_validation():
    # zuko's lazy transforms and the cached MADE weights of no-grad calls break dynamo's graph
    # (and past 8 MADE layers hit its recompile limit): compiled, the density must trace whole
    import torch._dynamo as dynamo

    from caloflows.flows import LogProb, build_maf, mark_plain_mafs
    from caloflows.models.embedding import ConditionalFlow

    x, c = _conditional_maf_data(20)
    for module in (LogProb(build_maf(4, 1, transforms=3, hidden_features=(16, 16))),
                   ConditionalFlow(4, 1, embed=True, embed_hidden=(8,), embed_out=4, transforms=2, hidden=(8,))):
        mark_plain_mafs(module)  # as fit_flow does before it compiles
        for grad in (True, False):
            with torch.set_grad_enabled(grad):
                module(x, c)  # eager: a no-grad call caches the masked weights (validation after epoch 1)
                e = dynamo.explain(module)(x, c)
            assert (e.graph_count, e.graph_break_count) == (1, 0), (type(module).__name__, grad)


@pytest.mark.slow
def test_compiled_training_follows_the_eager_run_and_lowers_the_validation_loss(tmp_path):
    from caloflows.flows import LogProb, build_maf

    x, c = _conditional_maf_data()
    data = torch.cat([x, c], 1).numpy()

    def run(compile_, where):
        torch.manual_seed(0)
        flow = build_maf(4, 1, transforms=2, hidden_features=(16,))
        cfg = TrainConfig(epochs=3, batch_size=100, base_lr=1e-3, max_lr=1e-2, seed=2, compile=compile_)
        inputs = lambda ii, raw, gen: (torch.as_tensor(raw[:, :4]), torch.as_tensor(raw[:, 4:]))  # noqa: E731
        return fit_flow(LogProb(flow), ArraySource(data), inputs, "toy", tmp_path / where, cfg, progress=False), flow

    (eager, f_e), (comp, f_c) = run(False, "eager"), run(True, "compiled")
    assert comp.history["val_loss"][-1] < comp.history["val_loss"][0]
    assert f_c.__dict__.get("_plain_maf") is True  # fit_flow marked it: traced as maf_log_prob
    # the same density and gradients: the runs differ by float32 round-off only
    assert np.allclose(comp.history["train_loss"], eager.history["train_loss"], rtol=1e-4)
    assert np.allclose(comp.history["val_loss"], eager.history["val_loss"], rtol=1e-4)
    for a, b in zip(f_e.parameters(), f_c.parameters()):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)
    # bit-identical repeat of the compiled run (same machine, same choice)
    again, f_a = run(True, "again")
    assert again.history["val_loss"] == comp.history["val_loss"]
    assert all(torch.equal(a, b) for a, b in zip(f_a.parameters(), f_c.parameters()))


def test_compile_setting_is_checked_and_not_part_of_the_resume_identity():
    from caloflows.errors import ConfigError
    from caloflows.models.settings import check_train_config

    check_train_config({"compile": True}, "flow2_train")
    with pytest.raises(ConfigError, match="flow2_train.compile=1: must be true or false"):
        check_train_config({"compile": 1}, "flow2_train")
    assert TrainConfig(compile=True).identity() == TrainConfig().identity()
