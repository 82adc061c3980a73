"""`make gpu-check DRY=1`: every stage of the prepared GPU session runs here at tiny size (about 1.5 min)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.brian


def test_the_gpu_check_dry_run_passes_every_stage(tmp_path, cifar_dir):
    out = tmp_path / "gpu-check"
    proc = subprocess.run([sys.executable, "-m", "bioflexnet.gpucheck", "--dry-run", "--out", str(out),
                           "--data-dir", str(cifar_dir)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "FAILED" not in proc.stdout
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] is True
    assert report["brian2"]["identical"] is True and set(report["brian2"]["spike_agreement"].values()) == {1.0}
    assert report["throughput"]["flex"]["images_per_s"] > 0 and report["throughput"]["vgg"]["images_per_s"] > 0
    assert report["train"]["epochs"] == 1 and 0.0 <= report["train"]["val_accuracy"][-1] <= 1.0
