"""CaloChallenge HDF5 I/O: round trips, streaming, validation errors, atomic writes."""

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from caloflows.cli import main as cli_main
from caloflows.io import (
    ShowerFileError,
    ShowerWriter,
    file_summary,
    iter_showers,
    merge_files,
    read_showers,
    validate_file,
    write_showers,
)


def _sample(n=50, v=368, seed=0):
    rng = np.random.default_rng(seed)
    inc = 2.0 ** rng.integers(8, 23, n).astype(np.float64)
    showers = (rng.random((n, v)) < 0.3) * rng.exponential(10.0, (n, v))
    return inc, showers.astype(np.float32)


def _raw(path, inc, showers, **extra):
    with h5py.File(path, "w") as f:
        if inc is not None:
            f["incident_energies"] = inc
        if showers is not None:
            f["showers"] = showers
        for k, v in extra.items():
            f[k] = v


def test_roundtrip_with_conditions(tmp_path):
    inc, sh = _sample()
    cond = np.stack([np.linspace(0, 1, 50), np.arange(50.0)], 1)
    p = tmp_path / "a.h5"
    write_showers(p, inc, sh, conditions=cond, condition_names=["x0_upstream", "k"], attrs={"seed": 3, "d": {"a": 1}},
                  geometry="ds1-photons")
    d = read_showers(p, geometry="1-photons")
    assert np.array_equal(d.incident_energies, inc)
    assert np.array_equal(d.showers, sh) and d.showers.dtype == np.float32
    assert np.array_equal(d.conditions, cond) and d.condition_names == ("x0_upstream", "k")
    assert d.attrs["seed"] == 3 and d.attrs["geometry"] == "ds1-photons"
    with h5py.File(p) as f:  # CaloChallenge layout
        assert f["incident_energies"].shape == (50, 1)
        assert f["showers"].compression == "gzip"
    part = read_showers(p, start=10, stop=20)
    assert np.array_equal(part.showers, sh[10:20])


def test_reads_plain_calochallenge_file(tmp_path):
    # files as the CaloChallenge distributes them: only the two datasets, no attributes
    inc, sh = _sample(v=533)
    p = tmp_path / "dataset_1_pions_1.hdf5"
    _raw(p, inc.reshape(-1, 1), sh)
    d = read_showers(p, geometry="ds1-pions")
    assert d.showers.shape == (50, 533) and d.conditions is None
    assert validate_file(p, "ds1-pions")["n_showers"] == 50


def test_streaming_chunks(tmp_path):
    inc, sh = _sample(n=103)
    p = tmp_path / "s.h5"
    write_showers(p, inc, sh)
    chunks = list(iter_showers(p, chunk_size=25))
    assert [len(c) for c in chunks] == [25, 25, 25, 25, 3]
    assert np.array_equal(np.concatenate([c.showers for c in chunks]), sh)


@pytest.mark.parametrize(
    "case,match",
    [
        ("missing", "missing dataset 'showers'"),
        ("voxels", "368 voxels but geometry 'ds1-pions' has 533"),
        ("nmismatch", "50 incident energies but 49 showers"),
        ("nan", "shower 7, voxel 3 is NaN"),
        ("negative", "shower 4, voxel 1 has negative energy"),
        ("einc", "incident energy of shower 2 is not positive"),
        ("empty", "holds no showers"),
    ],
)
def test_validation_errors_name_file(tmp_path, case, match):
    inc, sh = _sample()
    p = tmp_path / f"{case}.h5"
    if case == "missing":
        _raw(p, inc.reshape(-1, 1), None)
    elif case == "nmismatch":
        _raw(p, inc.reshape(-1, 1), sh[:49])
    else:
        if case == "nan":
            sh[7, 3] = np.nan
        if case == "negative":
            sh[4, 1] = -1.0
        if case == "einc":
            inc[2] = 0.0
        if case == "empty":
            inc, sh = inc[:0], sh[:0]
        _raw(p, inc.reshape(-1, 1), sh)
    geometry = "ds1-pions" if case == "voxels" else None
    with pytest.raises(ShowerFileError) as e:
        read_showers(p, geometry=geometry)
    assert str(p) in str(e.value) and match in str(e.value)


def test_unreadable_and_missing_file(tmp_path):
    with pytest.raises(ShowerFileError, match="file not found"):
        read_showers(tmp_path / "none.h5")
    bad = tmp_path / "junk.h5"
    bad.write_bytes(b"not hdf5 at all")
    with pytest.raises(ShowerFileError, match="junk.h5: not a readable HDF5 file"):
        read_showers(bad)


def test_write_refuses_bad_data_and_leaves_nothing(tmp_path):
    inc, sh = _sample()
    sh[0, 0] = np.inf
    p = tmp_path / "out.h5"
    with pytest.raises(ShowerFileError, match="NaN or inf"):
        write_showers(p, inc, sh)
    with pytest.raises(ShowerFileError, match="geometry 'ds2'"):
        write_showers(p, inc, np.abs(np.nan_to_num(sh, posinf=1)), geometry="ds2")
    assert os.listdir(tmp_path) == []


def test_atomic_write_interrupted(tmp_path):
    """A writer killed mid-write leaves no file at the target path."""
    p = tmp_path / "big.h5"
    code = f"""
import os, signal, numpy as np
from caloflows.io import ShowerWriter
w = ShowerWriter({str(p)!r}, 368)
for i in range(3):
    w.append(np.full(10, 1000.0), np.ones((10, 368), np.float32))
os.kill(os.getpid(), signal.SIGKILL)
"""
    r = subprocess.run([sys.executable, "-c", code])
    assert r.returncode != 0
    assert not p.exists()
    # the exception path also cleans up
    with pytest.raises(RuntimeError):
        with ShowerWriter(p, 368) as w:
            w.append(np.full(10, 1000.0), np.ones((10, 368), np.float32))
            raise RuntimeError("boom")
    assert not p.exists() and not [f for f in os.listdir(tmp_path) if f.endswith(".tmp") and not f.startswith(".big")]


def test_merge(tmp_path):
    parts = []
    all_inc, all_sh = [], []
    for i in range(3):
        inc, sh = _sample(n=10 + i, seed=i)
        q = tmp_path / f"p{i}.h5"
        write_showers(q, inc, sh, conditions=np.full((len(inc), 1), i), condition_names=["c"])
        parts.append(q)
        all_inc.append(inc)
        all_sh.append(sh)
    out = tmp_path / "m.h5"
    assert merge_files(parts, out) == 33
    d = read_showers(out)
    assert np.array_equal(d.showers, np.concatenate(all_sh))
    assert np.array_equal(d.incident_energies, np.concatenate(all_inc))
    assert d.conditions[:, 0].tolist() == [0] * 10 + [1] * 11 + [2] * 12
    assert d.attrs["merged_from"] == ["p0.h5", "p1.h5", "p2.h5"]
    other = tmp_path / "o.h5"
    write_showers(other, *_sample(v=533))
    with pytest.raises(ShowerFileError, match="differ"):
        merge_files([parts[0], other], tmp_path / "x.h5")


def test_info_cli(tmp_path, capsys):
    inc, sh = _sample(n=40)
    p = tmp_path / "i.h5"
    write_showers(p, inc, sh, geometry="ds1-photons", attrs={"physics_list": "test"})
    assert cli_main(["info", str(p)]) == 0
    out = capsys.readouterr().out
    assert "showers:            40" in out
    assert "ds1-photons (5 layers) -- matches" in out
    assert "zero voxels" in out and "attr physics_list:" in out
    s = file_summary(p)
    assert s["zero_fraction"] == pytest.approx(np.mean(sh == 0))
    assert cli_main(["info", str(p), "--geometry", "ds2"]) == 1  # a mismatch fails the check (issue 10)
    assert "DOES NOT MATCH" in capsys.readouterr().out
    assert cli_main(["info", str(tmp_path / "missing.h5")]) == 2
    assert "missing.h5: file not found" in capsys.readouterr().err
