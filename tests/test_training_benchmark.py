"""The training-step benchmark compares like with like and prints its table (no timed assertions)."""
import json

from core.config import Downsample
from bioflexnet import bench_training as benchmark


def _downsampling(model) -> set[str]:
    return {type(s).__name__ for s in model.stages}


def test_the_peer_net_is_the_classic_vgg_and_vgg_is_the_twin():
    # the peers implement a 2x2 max-pool VGG: BioFlexNet's contender must be the same net, not the twin
    peer = benchmark.bioflexnet_model("stbp", False, 2, 0.125, downsample="maxpool")
    twin = benchmark.bioflexnet_model("stbp", False, 2, 0.125)
    assert peer.cfg.downsample is Downsample.MAXPOOL and "MaxPool2d" in _downsampling(peer)
    assert twin.cfg.downsample is Downsample.CONV and "MaxPool2d" not in _downsampling(twin)


def test_the_table_has_every_comparison(tmp_path):
    out = tmp_path / "t.txt"
    assert benchmark.main(["--width", "0.0625", "--batch", "4", "--rounds", "1", "--no-memory",
                           "--only", "ann", "stbp", "--out", str(out)]) == 0
    text = out.read_text()
    for line in ("-- ann: FLEX vs VGG, VGG5", "-- stbp: FLEX vs VGG, VGG5", "stbp/flex-reference-ops",
                 "stbp/vggmp", "-- FLEX / VGG step, ann:", "-- FLEX / VGG step, stbp:", "STBP vs T x ANN",
                 "-- time resolution: K = 4 ticks per step vs 1 (flex-stbp", "stbp/vgg-ticks4"):
        assert line in text
    times = json.loads(out.with_suffix(".json").read_text())["times_s"]
    assert set(times) == {"ann/flex", "ann/vgg", "stbp/flex", "stbp/vgg", "stbp/flex-reference-ops", "stbp/vggmp",
                          "stbp/flex-ticks4", "stbp/vgg-ticks4"}
    assert all(len(v) == 1 and v[0] > 0 for v in times.values())
