"""Config: profiles, overrides, validation, JSON round trip."""
import json

import pytest

from core.config import PROFILES, ConfigError, Mode, config_from_dict, make_config


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_profiles_round_trip_through_json(profile):
    cfg = make_config(profile, mode="hybrid", flex=False, seed=3)
    again = config_from_dict(json.loads(cfg.to_json()))
    assert again == cfg
    assert cfg.variant == "vgg-hybrid"


def test_overrides_dotted_and_bare():
    cfg = make_config("smoke", overrides=["model.time_steps=5", "epochs=3", "model.reset=zero", "train.augment=false"])
    assert cfg.model.time_steps == 5 and cfg.train.epochs == 3
    assert cfg.model.reset.value == "zero" and cfg.train.augment is False


def test_ann_runs_one_step():
    cfg = make_config("quick", mode="ann")
    assert cfg.model.mode is Mode.ANN and cfg.model.steps == 1 and not cfg.model.spiking


@pytest.mark.parametrize("override, message", [
    ("model.time_steps=0", "time_steps=0 must be >= 1"),
    ("model.width=0", "width=0.0 must be > 0"),
    ("model.width=-1", "must be > 0"),
    ("model.beta=1.5", "must lie in [0, 1]"),
    ("model.mode=snn", "choose one of ['ann', 'hybrid', 'stbp']"),
    ("model.arch=resnet", "choose one of"),
    ("model.nope=1", "unknown key"),
    ("train.epochs=two", "must be an integer"),
    ("train.lr=0", "must be > 0"),
    ("model.time_steps", "not of the form key=value"),
])
def test_bad_values_are_refused_with_the_valid_choices(override, message):
    with pytest.raises(ConfigError) as err:
        make_config("smoke", overrides=[override])
    assert message in str(err.value)


def test_unknown_profile_lists_profiles():
    with pytest.raises(ConfigError, match="paper"):
        make_config("huge")


def test_newer_config_format_is_refused():
    data = make_config("smoke").to_dict()
    data["format"] = 99
    with pytest.raises(ConfigError, match="format 99"):
        config_from_dict(data)
