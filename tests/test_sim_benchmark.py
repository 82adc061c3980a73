"""The device benchmark prints a table of medians and checks that the devices agree (no timed assertions)."""
import pytest
from export_helpers import random_export

from bioflexnet import bench_sim as benchmark


@pytest.mark.brian
def test_benchmark_prints_medians_and_ratio(tmp_path, capsys):
    random_export(tmp_path / "e.npz", n_images=2)
    assert benchmark.main([str(tmp_path / "e.npz"), "--devices", "runtime", "--images", "2",
                           "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "runtime" in out and "ratio" in out and "  1.00 " in out
    assert "every run gave the same spikes and read-out" in out


def test_benchmark_refuses_zero_repeats(tmp_path):
    random_export(tmp_path / "e.npz", n_images=1)
    with pytest.raises(SystemExit):
        benchmark.main([str(tmp_path / "e.npz"), "--repeats", "0"])
