"""Publishing: the output folder is locked, staged inside itself and replaced as one unit; a
failure, a signal or a crash mid-publish leaves one complete run in it, never a mix."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from crafted import QUICK, checkpoint, digits, previous_run, run_cli, snapshot

from compressor.errors import CompressorError
from compressor.io import publish
from compressor.io.publish import PREVIOUS_PREFIX, RUN_INFO, STAGING_PREFIX, OutputFolder

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = {"model.onnx", "baseline.onnx", "model.mlpackage", "model.tensorrt", "model.pt2"}


def stage_run(folder: OutputFolder, names: dict[str, str]) -> None:
    """Stage a run's files (a name ending in / is a folder artifact) and its report."""
    for name, text in names.items():
        if name.endswith("/"):
            (folder.staging / name).mkdir()
            (folder.staging / name / "inside.bin").write_text(text)
        else:
            (folder.staging / name).write_text(text)
    files = sorted([n.rstrip("/") for n in names] + ["report.json"])
    (folder.staging / "report.json").write_text(json.dumps({"schema_version": 3, "files": files}))


def test_a_rerun_replaces_the_previous_results_as_one_unit(tmp_path):
    out = tmp_path / "out"
    previous_run(out)  # model.mlpackage/, model.onnx, report.json, and the user's notes.txt
    with OutputFolder(out) as folder:
        stage_run(folder, {"model.onnx": "new", "model.tensorrt/": "engine files"})
        published = folder.publish(ARTIFACTS, set())
    assert sorted(p.name for p in published) == ["model.onnx", "model.tensorrt", "report.json"]
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.tensorrt", "notes.txt", "report.json"]
    assert (out / "model.onnx").read_text() == "new" and (out / "notes.txt").read_text() == "the user's own notes"
    # and again, over a folder artifact of the same name (ENOTEMPTY for a plain rename)
    with OutputFolder(out) as folder:
        stage_run(folder, {"model.tensorrt/": "newer engine"})
        folder.publish(ARTIFACTS, set())
    assert (out / "model.tensorrt" / "inside.bin").read_text() == "newer engine" and not (out / "model.onnx").exists()


def test_a_report_without_a_file_list_is_replaced_by_name_and_inputs_are_kept(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("report.json", "report.md", "baseline.onnx", "model.pt2", "my_data.npz"):
        (out / name).write_text("old")
    with OutputFolder(out) as folder:
        stage_run(folder, {"model.onnx": "new"})
        folder.publish(ARTIFACTS, keep={out / "model.pt2"})  # the run's own input model lives here
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.pt2", "my_data.npz", "report.json"]


def test_a_second_run_is_refused_naming_the_first_and_the_folder_is_untouched(tmp_path):
    out = tmp_path / "out"
    previous_run(out)
    with OutputFolder(out):
        before = snapshot(out)
        with pytest.raises(CompressorError, match=rf"another compress run is writing to .*pid {os.getpid()}"):
            OutputFolder(out).__enter__()
        assert snapshot(out) == before
        result = run_cli([str(ROOT / "cnn_mnist.pt"), "-o", str(out), "-q"])
        assert result.exit_code == 2 and "another compress run" in result.output and snapshot(out) == before
    with OutputFolder(out):  # released: the next run gets it
        pass


def test_a_failed_publish_rolls_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    previous_run(out)
    before = snapshot(out)
    real_replace = os.replace
    calls = []

    def failing_replace(src, dst):
        calls.append(dst)
        if Path(src).name == "report.json" and Path(src).parent.name.startswith(STAGING_PREFIX):
            raise OSError(13, "Permission denied", str(dst))  # the last rename of the new set
        real_replace(src, dst)

    monkeypatch.setattr(publish.os, "replace", failing_replace)
    with pytest.raises(CompressorError, match="left as it was"), OutputFolder(out) as folder:
        stage_run(folder, {"model.onnx": "new", "baseline.onnx": "new"})
        folder.publish(ARTIFACTS, set())
    assert snapshot(out) == before and len(calls) > 3


def test_ctrl_c_during_publishing_waits_until_the_new_set_is_complete(tmp_path, monkeypatch):
    out = tmp_path / "out"
    previous_run(out)
    real_replace = os.replace

    def replace_and_interrupt(src, dst):
        if Path(dst).parent.name.startswith(PREVIOUS_PREFIX) and Path(dst).name == "report.json":
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C as the old set starts moving aside
        real_replace(src, dst)

    monkeypatch.setattr(publish.os, "replace", replace_and_interrupt)
    with pytest.raises(KeyboardInterrupt) as interrupted, OutputFolder(out) as folder:
        stage_run(folder, {"model.onnx": "new"})
        folder.publish(ARTIFACTS, set())
    assert interrupted.value.published  # the CLI then says the folder holds the new results
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "notes.txt", "report.json"]
    assert (out / "model.onnx").read_text() == "new"


def test_a_run_killed_mid_publish_is_repaired_by_the_next(tmp_path):
    """SIGKILL between moving the old set aside and moving the new report in: the next run that
    takes the lock puts the old set back (no report.json means the new set is incomplete)."""
    out = tmp_path / "out"
    previous_run(out)
    before = snapshot(out)
    dead_staging, previous = out / f"{STAGING_PREFIX}dead", out / f"{PREVIOUS_PREFIX}dead"
    dead_staging.mkdir()
    previous.mkdir()
    (dead_staging / RUN_INFO).write_text(json.dumps({"files": ["baseline.onnx", "model.onnx", "report.json"]}))
    for name in ("report.json", "model.onnx", "model.mlpackage"):
        os.replace(out / name, previous / name)
    (out / "baseline.onnx").write_text("half of the new set")
    with OutputFolder(out):
        pass
    assert snapshot(out) == before
    # killed after the new report went in: the new set is complete, the old one is dropped
    previous.mkdir()
    (previous / "stale.onnx").write_text("old")
    with OutputFolder(out):
        pass
    assert snapshot(out) == before


def test_a_failed_run_removes_the_folders_it_created(tmp_path):
    out = tmp_path / "new" / "deeper" / "out"
    with pytest.raises(RuntimeError), OutputFolder(out) as folder:
        assert folder.staging.parent == out
        raise RuntimeError("a crash")
    assert not (tmp_path / "new").exists()


# -- whole runs: a mount point, a full disk, signals ------------------------------------------------
@pytest.fixture
def tiny(tmp_path) -> list[str]:
    import numpy as np

    checkpoint(tmp_path / "tiny.pt")
    (tmp_path / "quick.yaml").write_text(QUICK)
    x, y = digits()
    np.savez(tmp_path / "digits.npz", x=x, y=y)
    return [str(tmp_path / "tiny.pt"), "-r", str(tmp_path / "quick.yaml"), "--calib", str(tmp_path / "digits.npz"),
            "--eval", str(tmp_path / "digits.npz"), "--export", "torch", "-q"]  # the quickest exporter


@pytest.fixture
def mount(tmp_path):
    """A tmpfs mounted at a fresh folder (the output folder as a container volume); root only."""
    mounted = []

    def make(size: str) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                          capture_output=True).returncode != 0:
            pytest.skip("mounting a tmpfs needs root")
        mounted.append(point)
        return point

    yield make
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_output_folder_on_a_mount_point_publishes_and_republishes(tiny, mount):
    out = mount("64m")  # a rename from outside this file system would fail with EXDEV
    for _ in range(2):
        result = run_cli([*tiny, "-o", str(out)])
        assert result.exit_code == 0, result.output
        report = json.loads((out / "report.json").read_text())
        assert sorted(p.name for p in out.iterdir()) == report["files"]


def test_a_full_disk_is_exit_2_and_leaves_the_folder_as_it_was(tiny, mount):
    out = mount("160k")  # room for the previous run, not for the two programs of the new one
    previous_run(out)
    before = snapshot(out)
    result = run_cli([*tiny, "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "no space left on the device of" in " ".join(result.output.split()) and "Traceback" not in result.output
    assert snapshot(out) == before


@pytest.mark.parametrize("signum, during", [
    (signal.SIGTERM, STAGING_PREFIX), (signal.SIGINT, STAGING_PREFIX),
    pytest.param(signal.SIGTERM, "tvm-export-", marks=pytest.mark.slow),  # waits for the TVM export: ~20 s
])
def test_a_signal_mid_run_cleans_up_everything(tiny, tmp_path, signum, during):
    """kill, timeout or a cancelled CI job: exit 128+signal, the folder as it was, no staging
    folder and no temporary folder (TVM's, the signal arriving while it exports) left anywhere."""
    if during.startswith("tvm"):
        pytest.importorskip("tvm")
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    previous_run(out)
    tmp.mkdir()
    before = snapshot(out)
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "compressor.cli", *tiny, "-o", str(out), "--export", "torch,tvm"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not list(out.glob(f"{during}*")) + list(tmp.glob(f"{during}*")) and proc.poll() is None \
            and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, proc.stdout.read()
    if during == STAGING_PREFIX:
        time.sleep(1.0)  # into the run: data read, capture or passes under way
    proc.send_signal(signum)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signum, output
    assert f"stopped by {signal.Signals(signum).name}" in output and "Traceback" not in output
    # torch's compile cache (torchinductor_<user>) is made by every run, finished or not, and kept on purpose
    assert snapshot(out) == before and not [p for p in tmp.iterdir() if not p.name.startswith("torchinductor_")]
