"""--seed makes training reproducible through the CLI, bit for bit, including kill -9 + --resume
(issue 10, item 5): networks are built after seeding, and every random draw of training comes from
counter-based generators (caloflows.training.loop.batch_generator)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from caloflows.geometry import load_geometry
from caloflows.io import write_showers
from caloflows.toy_showers import toy_showers
from caloflows.training.checkpoint import load_checkpoint

TINY = ["flow1_transforms=1", "flow1_hidden=[8]", "flow2_transforms=2", "flow2_hidden=32", "bins=4",
        "flow1_train.epochs=2", "flow2_train.epochs=10", "flow1_train.batch_size=100", "flow2_train.batch_size=100"]


def _cmd(data: Path, out: Path, *extra: str) -> list[str]:
    args = [sys.executable, "-m", "caloflows", "train", "caloflow", "--data", str(data), "--geometry", "ds2-coarse",
            "--out", str(out), "--seed", "3"]
    for s in TINY:
        args += ["--set", s]
    return args + list(extra)


def _weights(d: Path) -> dict[str, dict[str, bytes]]:
    """Every tensor of every weight file as raw bytes (the safetensors header's metadata order varies)."""
    from safetensors.torch import load_file

    return {p.name: {k: v.numpy().tobytes() for k, v in load_file(str(p)).items()} for p in sorted(d.glob("*.safetensors"))}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("repro")
    einc, sh = toy_showers(load_geometry("ds2-coarse"), 1000, seed=1)
    write_showers(d / "train.h5", einc, sh)
    return d / "train.h5"


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def test_same_seed_same_weights_and_sigkill_resume_matches(data, tmp_path):
    a, b, k = tmp_path / "a", tmp_path / "b", tmp_path / "killed"
    subprocess.run(_cmd(data, a), check=True, env=ENV, capture_output=True)
    subprocess.run(_cmd(data, b), check=True, env=ENV, capture_output=True)
    wa, wb = _weights(a), _weights(b)
    assert set(wa) == {"flow1.safetensors", "flow2_teacher.safetensors"}
    assert wa == wb  # two runs of the same command: bit-identical weights

    proc = subprocess.Popen(_cmd(data, k), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = k / "checkpoints" / "flow2_teacher_last.pt"
    killed_at = None
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if last.exists():
                try:
                    ep = load_checkpoint(last)["epoch"]
                except Exception:  # noqa: BLE001 - being written (atomic rename): look again
                    ep = 0
                if ep >= 2:
                    os.kill(proc.pid, signal.SIGKILL)
                    killed_at = ep
                    break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert killed_at is not None and killed_at < 10, "training was not interrupted mid-run"
    subprocess.run(_cmd(data, k, "--resume"), check=True, env=ENV, capture_output=True)
    assert _weights(k) == wa  # killed + resumed == uninterrupted, bit for bit
