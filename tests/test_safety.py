"""Issue 10: no user data is ever destroyed (items 1-4 and 7), at CLI level on tiny data.

Every refused case checks the one-line error, the exit status and that the inputs (and any
other file) are byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from caloflows.cli import main
from caloflows.geometry import load_geometry
from caloflows.io import read_showers, write_showers
from caloflows.outputs import REPORT_MARKER, clean_orphans, temp_prefix
from caloflows.toy_showers import toy_showers

torch.set_num_threads(1)
SRC = str(Path(__file__).resolve().parents[1] / "src")

XML = """<Bins><Bin pid="11" name="electron">
<Layer id="0" r_edges="0,2,5,10" n_bin_alpha="2"/>
<Layer id="1" r_edges="0,2,5,10" n_bin_alpha="2"/>
<Layer id="2" r_edges="0,2,5,10,20" n_bin_alpha="1"/>
</Bin></Bins>"""
SMALL = ["--epochs", "1", "--set", "flow2_hidden=8", "--set", "student_hidden=8", "--set", "flow2_transforms=2",
         "--set", "flow1_transforms=2"]


def _digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones too) -> sha256 of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _refused(argv, capsys, msg: str, rc: int = 2) -> str:
    assert main(argv) == rc, argv
    err = capsys.readouterr().err.strip()
    assert err.startswith("caloflows: error:") and msg in err and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Tiny geometry, training / reference files and a trained + distilled CaloFlow model."""
    d = tmp_path_factory.mktemp("safety")
    (d / "tiny.xml").write_text(XML)
    g = load_geometry(str(d / "tiny.xml"))
    inc, sh = toy_showers(g, 300, seed=4)
    write_showers(d / "train.h5", inc, sh, attrs={"particle": "e-"})
    write_showers(d / "ref.h5", inc[:30], sh[:30])
    xml = str(d / "tiny.xml")
    assert main(["train", "caloflow", "--data", str(d / "train.h5"), "--geometry", xml, "--out", str(d / "m1"),
                 *SMALL]) == 0
    assert main(["distill", str(d / "m1"), "--data", str(d / "train.h5"), "--epochs", "1"]) == 0
    # ds1-photons files for the evaluation cases
    for name, seed in (("gen", 1), ("ref", 2)):
        i, x = toy_showers(load_geometry("ds1-photons"), 60, seed=seed)
        write_showers(d / f"p_{name}.h5", i, x, geometry="ds1-photons")
    return {"d": d, "g": g, "xml": xml}


# ------------------------------------------------------------------ item 1: evaluate --out
def _eval(ws, gen, ref, out, *extra):
    return ["evaluate", str(gen), str(ref), "--out", str(out), "--metrics", "hist", "--no-plots", *extra]


def test_evaluate_out_never_deletes_inputs_or_foreign_dirs(ws, tmp_path, capsys, monkeypatch):
    d = ws["d"]
    data = tmp_path / "data"
    data.mkdir()
    for n in ("p_gen.h5", "p_ref.h5"):
        (data / n).write_bytes((d / n).read_bytes())
    before = _digest(tmp_path)
    for force in ([], ["--force"]):
        # the reproduction: --out is the directory holding the inputs
        _refused(_eval(ws, data / "p_gen.h5", data / "p_ref.h5", data, *force), capsys, "contains the input")
        # a directory holding other files
        other = tmp_path / "other"
        other.mkdir(exist_ok=True)
        (other / "notes.txt").write_text("mine")
        before_other = _digest(tmp_path)
        _refused(_eval(ws, d / "p_gen.h5", d / "p_ref.h5", other, *force), capsys, "not a caloflows report")
        assert _digest(tmp_path) == before_other
        # an existing file
        _refused(_eval(ws, d / "p_gen.h5", d / "p_ref.h5", data / "p_gen.h5", *force), capsys, "is a file")
        _refused(_eval(ws, data / "p_gen.h5", d / "p_ref.h5", data / "p_gen.h5", *force), capsys, "contains the input")
        _refused(_eval(ws, d / "p_gen.h5", d / "p_ref.h5", other / "notes.txt", *force), capsys, "is a file")
        # --out . from inside the data directory: refused, nothing left behind
        monkeypatch.chdir(data)
        _refused(_eval(ws, "p_gen.h5", "p_ref.h5", ".", *force), capsys, "contains the input")
        monkeypatch.chdir(tmp_path)
    (tmp_path / "other" / "notes.txt").unlink()
    (tmp_path / "other").rmdir()
    assert _digest(tmp_path) == before and sorted(os.listdir(data)) == ["p_gen.h5", "p_ref.h5"]


def test_evaluate_replaces_only_its_own_report_with_force(ws, tmp_path, capsys):
    d = ws["d"]
    rep = tmp_path / "rep"
    assert main(_eval(ws, d / "p_gen.h5", d / "p_ref.h5", rep)) == 0
    assert (rep / REPORT_MARKER).exists() and (rep / "metrics.json").exists()
    first = _digest(rep)
    _refused(_eval(ws, d / "p_gen.h5", d / "p_ref.h5", rep), capsys, "--force")  # exists
    assert _digest(rep) == first
    assert main(_eval(ws, d / "p_gen.h5", d / "p_ref.h5", rep, "--force")) == 0
    assert (rep / REPORT_MARKER).exists()
    (rep / "my_notes.txt").write_text("do not delete")  # a user file inside a report: never replaced
    _refused(_eval(ws, d / "p_gen.h5", d / "p_ref.h5", rep, "--force"), capsys, "my_notes.txt")
    assert (rep / "my_notes.txt").read_text() == "do not delete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]  # no .tmp / .old left
    # an empty existing directory (mkdir first) is fine without --force
    (tmp_path / "empty").mkdir()
    assert main(_eval(ws, d / "p_gen.h5", d / "p_ref.h5", tmp_path / "empty")) == 0


# ------------------------------------------------------------------ item 2: no silent overwrite
def test_every_command_refuses_to_overwrite(ws, tmp_path, capsys):
    d, xml = ws["d"], ws["xml"]
    m1 = d / "m1"
    before = _digest(d)
    gen = ["generate", str(m1), "--n", "5"]
    # output == input: refused even with --force; a model file: refused even with --force
    for force in ([], ["--force"]):
        _refused(["generate", str(m1), "--n", "5", "--energies", str(d / "train.h5"), "--out", str(d / "train.h5"),
                  *force], capsys, "input")
        _refused([*gen, "--out", str(m1 / "config.json"), *force], capsys, "input directory")
        _refused(["merge", str(d / "train.h5"), str(d / "train.h5"), *force], capsys, "input")
        _refused([*gen, "--out", str(d), *force], capsys, "is a directory")
        if os.path.exists("/dev/full"):
            _refused([*gen, "--out", "/dev/full", *force], capsys, "character device")
        fifo = tmp_path / "fifo"
        if not fifo.exists():
            os.mkfifo(fifo)
        _refused([*gen, "--out", str(fifo), *force], capsys, "FIFO")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    # an existing output that is not an input: refused without --force, replaced with it
    old = tmp_path / "old.h5"
    old.write_bytes(b"precious")
    _refused([*gen, "--out", str(old)], capsys, "exists; pass --force")
    _refused(["merge", str(old), str(d / "ref.h5")], capsys, "exists; pass --force")  # `merge part1 part2` typo
    _refused(["simulate", "--geometry", "ds2-coarse", "--energy", "1", "--n", "1", "--out", str(old)], capsys,
             "exists; pass --force")
    assert old.read_bytes() == b"precious"
    assert main([*gen, "--out", str(old), "--force"]) == 0 and len(read_showers(old)) == 5
    assert main(["merge", str(tmp_path / "m.h5"), str(d / "ref.h5"), str(d / "ref.h5")]) == 0
    # a directory where a file is expected is refused before the model is even loaded, also missing parents
    _refused([*gen, "--out", str(tmp_path / "nodir" / "x.h5")], capsys, "does not exist")
    assert _digest(d) == before  # inputs and the model byte-identical
    # distill refuses to replace a student, train an existing model (item 3 below)
    _refused(["distill", str(m1), "--data", str(d / "train.h5"), "--epochs", "1"], capsys, "--force")
    assert _digest(d) == before


def test_read_only_output_directory_is_refused_before_work(ws, tmp_path, capsys, monkeypatch):
    d = ws["d"]
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access

    def access(path, mode, *a, **k):  # as root os.access always says writable: simulate a read-only dir
        if Path(path).resolve() == ro.resolve() and mode & os.W_OK:
            return False
        return real_access(path, mode, *a, **k)

    monkeypatch.setattr(os, "access", access)
    import caloflows.models as M

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(M, "load_model", no_load)
    _refused(["generate", str(d / "m1"), "--n", "5", "--out", str(ro / "g.h5")], capsys, "not writable")
    _refused(_eval(ws, d / "p_gen.h5", d / "p_ref.h5", ro / "rep"), capsys, "not writable")
    _refused(["train", "caloflow", "--data", str(d / "train.h5"), "--geometry", ws["xml"], "--out", str(ro / "m")],
             capsys, "not writable")
    assert os.listdir(ro) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only directories")
def test_read_only_directory_real(ws, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        _refused(["generate", str(ws["d"] / "m1"), "--n", "5", "--out", str(ro / "g.h5")], capsys, "not writable")
    finally:
        ro.chmod(0o755)


# ------------------------------------------------------------------ item 3: model directories
def test_train_refuses_existing_model_dir_and_force_keeps_foreign_files(ws, tmp_path, capsys):
    d, xml = ws["d"], ws["xml"]
    m = tmp_path / "m"
    shutil.copytree(d / "m1", m)
    assert (m / "checkpoints" / "flow2_student_last.pt").exists()
    (m / "notes.txt").write_text("keep me")
    before = _digest(m)
    train = ["train", "caloflow", "--data", str(d / "train.h5"), "--geometry", xml, "--out", str(m), *SMALL]
    _refused(train, capsys, "already holds a model")
    _refused(["train", "l2lflows", "--data", str(d / "train.h5"), "--geometry", xml, "--out", str(m)], capsys,
             "already holds a model")
    _refused(["train", "caloflow", "--data", str(d / "train.h5"), "--geometry", xml, "--out",
              str(d / "train.h5")], capsys, "a model directory is expected")
    assert _digest(m) == before
    assert (m / "flow2_student.safetensors").exists()
    assert main([*train, "--force"]) == 0
    assert (m / "notes.txt").read_text() == "keep me"
    assert not (m / "flow2_student.safetensors").exists()  # the stale student of the old model is gone
    assert (m / "flow2_teacher.safetensors").exists() and not (m / "checkpoints" / "flow2_student_last.pt").exists()


# ------------------------------------------------------------------ item 4: SIGTERM / SIGKILL
def _children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(p.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_sim(tmp_path: Path, env) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "caloflows", "simulate", "--geometry", "ds2-coarse", "--energy", "8",
                          "--n", "400", "--jobs", "2", "--out", str(tmp_path / "run.h5"), "--no-progress"],
                         cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while time.time() - t0 < 120:  # wait until both workers simulate (their shard files exist)
        tmp = [x for x in tmp_path.iterdir() if x.name.startswith(".caloflows-sim-")]
        if tmp and len([f for f in tmp[0].iterdir()]) >= 2:
            return p
        if p.poll() is not None:
            raise AssertionError(p.communicate())
        time.sleep(0.2)
    p.kill()
    raise AssertionError("workers did not start")


@pytest.fixture(scope="module")
def sim_env(tmp_path_factory):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    env.setdefault("CALOFLOWS_G4DATA_CACHE", str(tmp_path_factory.mktemp("g4data")))
    return env


def _reap(p: subprocess.Popen, workers: list[int]) -> None:
    """Test hygiene: never leave the processes this test started running, whatever failed."""
    for pid in [p.pid, *workers]:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:
        p.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        pass


@pytest.mark.geant4
def test_sigterm_ends_workers_and_removes_temporaries(tmp_path, sim_env):
    p = _start_sim(tmp_path, sim_env)
    workers = _children(p.pid)
    try:
        assert len(workers) >= 2
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
        assert p.returncode == 143, err
        assert "Traceback" not in err and "terminated" in err
        time.sleep(0.5)
        assert not [w for w in workers if _alive(w)]
        assert os.listdir(tmp_path) == []  # no temporary directory, no partial output
    finally:
        _reap(p, workers)


@pytest.mark.geant4
def test_sigkill_workers_die_and_next_run_removes_the_orphan(tmp_path, sim_env):
    p = _start_sim(tmp_path, sim_env)
    workers = _children(p.pid)
    try:
        p.kill()
        p.communicate(timeout=30)
        t0 = time.time()
        while any(_alive(w) for w in workers) and time.time() - t0 < 10:
            time.sleep(0.2)
        assert not [w for w in workers if _alive(w)], "Geant4 workers run on after the parent was killed"
    finally:
        _reap(p, workers)
    orphan = [x.name for x in tmp_path.iterdir() if x.name.startswith(".caloflows-sim-")]
    assert len(orphan) == 1 and not (tmp_path / "run.h5").exists()
    r = subprocess.run([sys.executable, "-m", "caloflows", "simulate", "--geometry", "ds2-coarse", "--energy", "1",
                        "--n", "1", "--jobs", "1", "--out", str(tmp_path / "next.h5"), "--no-progress"],
                       cwd=tmp_path, env=sim_env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert orphan[0] in r.stderr and "removed" in r.stderr
    assert os.listdir(tmp_path) == ["next.h5"]


def test_orphaned_temporary_file_of_a_killed_writer_is_removed(tmp_path, capsys):
    # a temporary left by a dead process (pid of a finished child) is removed by the next write of that output
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tag = temp_prefix("x.h5").replace(f"-{os.getpid()}-", f"-{dead.pid}-")
    stale = tmp_path / f"{tag}abcd.tmp"
    stale.write_bytes(b"partial")
    live = tmp_path / f"{temp_prefix('x.h5')}efgh.tmp"  # ours, alive: kept
    live.write_bytes(b"in progress")
    foreign = tmp_path / ".x.h5.abcdefgh.tmp"  # not tagged: never touched
    foreign.write_bytes(b"?")
    assert clean_orphans(tmp_path, names=["x.h5"], notify=lambda m: None) == [str(stale)]
    assert live.exists() and foreign.exists() and not stale.exists()


# ------------------------------------------------------------------ item 7: edge cases
def test_evaluate_one_shower_reference_and_all_zero_showers(ws, tmp_path, capsys):
    d = ws["d"]
    g = load_geometry("ds1-photons")
    i, x = toy_showers(g, 3, seed=9)
    write_showers(tmp_path / "one.h5", i[:1], x[:1], geometry="ds1-photons")
    _refused(_eval(ws, d / "p_gen.h5", tmp_path / "one.h5", tmp_path / "r1"), capsys, "at least 2")
    write_showers(tmp_path / "zero.h5", np.full(40, 1e3), np.zeros((40, g.n_voxels), np.float32), geometry="ds1-photons")
    _refused(_eval(ws, tmp_path / "zero.h5", d / "p_ref.h5", tmp_path / "r2"), capsys, "every shower is zero")
    gz = ws["g"]
    write_showers(tmp_path / "tz.h5", np.full(50, 1e3), np.zeros((50, gz.n_voxels), np.float32))
    _refused(["train", "caloflow", "--data", str(tmp_path / "tz.h5"), "--geometry", ws["xml"], "--out",
              str(tmp_path / "mz"), *SMALL], capsys, "all 50 showers are zero")
    assert not (tmp_path / "mz").exists() and not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def test_geometry_of_another_particle_is_refused(tmp_path, capsys):
    g = load_geometry("ds2-coarse")
    layers = "".join(f'<Layer id="{i}" r_edges="{",".join(f"{r:g}" for r in lay.r_edges)}" n_bin_alpha="{lay.n_alpha}"/>'
                     for i, lay in enumerate(g.layers))
    (tmp_path / "photon.xml").write_text(f'<Bins><Bin pid="22" name="photon">{layers}</Bin></Bins>')
    assert load_geometry(str(tmp_path / "photon.xml")).threshold_mev == 1.0  # the 15.15 keV -> 1 MeV trap
    for n, s in (("a", 1), ("b", 2)):
        i, x = toy_showers(g, 40, seed=s)
        write_showers(tmp_path / f"{n}.h5", i, x, geometry="ds2-coarse", attrs={"particle": "e-"})
    _refused(["evaluate", str(tmp_path / "a.h5"), str(tmp_path / "b.h5"), "--geometry", str(tmp_path / "photon.xml"),
              "--out", str(tmp_path / "rep"), "--metrics", "hist", "--no-plots"], capsys, "photon")
    assert main(["evaluate", str(tmp_path / "a.h5"), str(tmp_path / "b.h5"), "--out", str(tmp_path / "rep"),
                 "--metrics", "hist", "--no-plots"]) == 0


def test_info_mismatch_exit_status_and_broken_pipe(ws, tmp_path, capsys):
    d = ws["d"]
    assert main(["info", str(d / "p_gen.h5")]) == 0
    assert main(["info", str(d / "p_gen.h5"), "--geometry", "ds2"]) == 1
    assert "DOES NOT MATCH" in capsys.readouterr().out
    env = {**os.environ, "PYTHONPATH": SRC}
    # the reader exits before caloflows writes: BrokenPipe must not give a traceback
    r = subprocess.run(f"{sys.executable} -m caloflows info {d / 'p_gen.h5'} | true", shell=True, env=env,
                       capture_output=True, text=True, timeout=120)
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr


def test_simulate_energy_specs_refused_before_geant4(tmp_path, capsys):
    out = tmp_path / "x.h5"
    for spec, msg in (("1,,2", "empty entry"), ("1,", "empty entry"), ("1e9", "outside the supported range"),
                      ("0.0001", "outside the supported range"), ("1:1e6", "outside the supported range"),
                      ("pow2:1:1e5", "outside the supported range")):
        _refused(["simulate", "--geometry", "ds2-coarse", "--energy", spec, "--n", "2", "--out", str(out)], capsys, msg)
    assert os.listdir(tmp_path) == []


def test_weight_checksums_and_permissions(ws, tmp_path, capsys):
    d = ws["d"]
    m = tmp_path / "m"
    m.mkdir()
    for f in (d / "m1").iterdir():
        if f.is_file():
            (m / f.name).write_bytes(f.read_bytes())
    src = d / "m1"
    w = src / "flow1.safetensors"
    assert (src / "flow1.safetensors.sha256").exists()
    mode = stat.S_IMODE(os.stat(w).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == stat.S_IMODE(os.stat(src / "config.json").st_mode) == 0o666 & ~umask
    # payload corruption of the same size: detected by the checksum
    b = bytearray((m / "flow1.safetensors").read_bytes())
    b[-5] ^= 0xFF
    (m / "flow1.safetensors").write_bytes(bytes(b))
    _refused(["generate", str(m), "--n", "3", "--out", str(tmp_path / "g.h5")], capsys, "SHA-256")
    assert not (tmp_path / "g.h5").exists()
    # a model written before checksums existed (no .sha256 files) still loads
    (m / "flow1.safetensors").write_bytes(w.read_bytes())
    for s in m.glob("*.sha256"):
        s.unlink()
    assert main(["generate", str(m), "--n", "3", "--out", str(tmp_path / "g.h5")]) == 0


def test_output_equal_to_input_through_links_is_refused(tmp_path):
    from caloflows.errors import OutputError
    from caloflows.outputs import check_output_file

    src = tmp_path / "data.h5"
    src.write_bytes(b"x")
    os.link(src, tmp_path / "hard.h5")
    os.symlink(src, tmp_path / "soft.h5")
    for out in ("hard.h5", "soft.h5", "data.h5", "./sub/../data.h5"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(OutputError, match="input"):
            check_output_file(tmp_path / out, [src], force=True)
    assert check_output_file(tmp_path / "new.h5", [src]) == tmp_path / "new.h5"
    assert src.read_bytes() == b"x"
