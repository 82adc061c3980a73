"""The vocabulary (Variant, RunLayout) and the reproduction plan handed to Snakemake."""
import json
import pickle

import pytest

from bioflexnet.plan import Plan, code_version
from core.config import ConfigError, Mode, make_config
from core.variants import ABLATIONS, PAPER_VARIANTS, RunLayout, Variant, VariantError


def test_a_variant_is_its_name_and_knows_its_parts():
    v = Variant.parse("flex-stbp")
    assert v == "flex-stbp" and f"{v}" == "flex-stbp" and {v: 1}["flex-stbp"] == 1
    assert v.family == "flex" and v.mode is Mode.STBP and v.flex and v.spiking
    assert v.ann_twin == "flex-ann" and not v.ann_twin.spiking
    assert Variant.of(False, "hybrid") == "vgg-hybrid" and Variant.of(False, "ann", maxpool=True) == "vggmp-ann"
    assert pickle.loads(pickle.dumps(v)) == v and isinstance(pickle.loads(pickle.dumps(v)), Variant)


@pytest.mark.parametrize("name, fragment", [("flexstbp", "is not a variant name"), ("flex-snn", "is not a mode"),
                                            ("resnet-stbp", "is not a model family")])
def test_a_bad_variant_name_says_what_is_valid(name, fragment):
    with pytest.raises(VariantError, match=fragment):
        Variant.parse(name)


def test_the_config_and_the_variant_agree():
    for v in PAPER_VARIANTS:
        cfg = make_config("smoke", mode=v.mode.value, flex=v.flex)
        assert cfg.variant == v and isinstance(cfg.variant, Variant)
    assert make_config("smoke", flex=False, overrides=["model.downsample=maxpool"]).variant == "vggmp-stbp"


def test_the_run_layout(tmp_path):
    layout = RunLayout(tmp_path)
    assert layout.run_dir("vgg-ann", 2) == tmp_path / "vgg-ann" / "seed2"
    assert layout.sim_result("flex-stbp", 0, "exact") == tmp_path / "flex-stbp/seed0/sim/exact/sim.nc"
    assert RunLayout.parse_run_name("ablation-lambda0/seed3") == ("ablation-lambda0", 3)
    with pytest.raises(VariantError):
        RunLayout.parse_run_name("flex-stbp/0")


def test_the_plan_lists_the_paper_runs_and_their_commands():
    plan = Plan(profile="paper", seeds=(0, 1, 2), ablations=True, cores=16)
    assert len(plan.runs()) == 18 and len(plan.ablation_runs()) == 3 * len(ABLATIONS)
    assert plan.runs()[:6] == [(v, 0) for v in PAPER_VARIANTS]  # seed-major, the costliest first
    assert plan.train_args("vgg-hybrid", 1)[:6] == ["--profile", "paper", "--seed", "1", "--mode", "hybrid"]
    assert "--no-flex" in plan.train_args("vgg-hybrid", 1)
    abl = plan.train_args("ablation-vgg_maxpool", 2)
    assert "--no-flex" in abl and abl[abl.index("--set") + 1] == "model.downsample=maxpool"
    assert plan.twin("flex-stbp", 1) == "flex-ann/seed1"
    assert plan.sim_runs() == [("flex-stbp", 0), ("vgg-stbp", 0)]
    assert plan.train_threads == 16 // 16  # 36 runs on 16 cores: one thread each
    assert plan.costliest()[:2] == ["flex-stbp/seed0/metrics.nc", "flex-hybrid/seed0/metrics.nc"]
    assert len(plan.costliest()) == 6
    assert Plan.from_dict(json.loads(plan.to_json())) == plan


def test_a_bad_override_is_refused_before_anything_runs():
    with pytest.raises(ConfigError, match="model.time_steps"):
        Plan(profile="smoke", overrides=("model.time_steps=0",))


def test_code_version_follows_the_sources(tmp_path, monkeypatch):
    import bioflexnet.plan as plan_mod

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(plan_mod, "SOURCE_ROOT", tmp_path)
    before = code_version("pkg")
    (tmp_path / "pkg" / "a.py").write_text('"""A docstring."""\n# a comment\nx  =  1\n')
    assert code_version("pkg") == before  # docs and layout do not re-run jobs
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert code_version("pkg") != before  # code does
