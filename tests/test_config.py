from pathlib import Path

import pytest
import yaml

from latentfit.core.config import Params, ParamsError, load_params, parse_params, to_flat_dict

ROOT = Path(__file__).resolve().parents[1]


def test_repository_params_are_valid_and_name_every_default():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = load_params(ROOT / "params.yaml")
    # every knob is pinned in params.yaml, not left to a code default
    pinned = {f"{section}.{key}" for section, body in raw.items() if isinstance(body, dict) for key in body}
    pinned |= {section for section, body in raw.items() if not isinstance(body, dict)}
    assert set(to_flat_dict(params)) == pinned
    assert params.model.z_dim == 20 and params.train_direct.mc_samples == 64


def test_lists_become_tuples_and_ints_widen_to_float():
    params = parse_params({"data": {"mirrors": ["/a", "http://b"]}, "train_vae": {"lr": 1}})
    assert params.data.mirrors == ("/a", "http://b")
    assert params.train_vae.lr == 1.0 and isinstance(params.train_vae.lr, float)
    assert parse_params({}) == Params()


@pytest.mark.parametrize(
    "raw, fragments",
    [
        ({"train_vae": {"epochs": 0}}, ["train_vae.epochs", "0", ">= 1"]),
        ({"train_vae": {"epochs": "ten"}}, ["train_vae.epochs", "'ten'", "int"]),
        ({"train_vae": {"epochs": True}}, ["train_vae.epochs", "int"]),
        ({"train_vae": {"lr": -0.1}}, ["train_vae.lr", "> 0"]),
        ({"train_vae": {"lr": float("nan")}}, ["train_vae.lr", "finite"]),
        ({"data": {"dataset": "cifar"}}, ["data.dataset", "'cifar'", "mnist", "fashion-mnist", "kmnist"]),
        ({"train_vae": {"epoch": 3}}, ["train_vae.epoch", "Did you mean 'train_vae.epochs'"]),
        ({"trian_vae": {}}, ["trian_vae", "Did you mean 'train_vae'"]),
        ({"evaluate": {"flip_probs": [0.1, 2]}}, ["evaluate.flip_probs[1]", "<= 1"]),
        ({"data": {"mirrors": "/just/a/string"}}, ["data.mirrors", "list"]),
        ({"device": "tpu"}, ["device", "auto"]),
        ({"model": 5}, ["model", "mapping"]),
        ({"data": {"verify": "md5"}}, ["data.verify", "checksums", "shape"]),
        # params that bound each other: the key, the values, the bound and its key
        ({"evaluate": {"iwae_curve": [1, 10, 5000], "iwae_samples": 100}},
         ["evaluate.iwae_curve = [1, 10, 5000] exceeds evaluate.iwae_samples = 100", "<= 100"]),
        ({"evaluate": {"prior_mc_curve": [64, 5000], "prior_mc_samples": 1000}},
         ["evaluate.prior_mc_curve = [64, 5000] exceeds evaluate.prior_mc_samples = 1000"]),
        ({"evaluate": {"ais_curve_steps": [10, 400]}}, ["evaluate.ais_curve_steps", "exceeds evaluate.ais_steps = 300"]),
        ({"evaluate": {"ais_curve_images": 101}}, ["evaluate.ais_curve_images = 101 exceeds evaluate.ais_images = 100"]),
        ({"evaluate": {"ais_curve_images": 30, "ais_images": 50, "iwae_images": 20}},
         ["evaluate.ais_curve_images = 30 exceeds evaluate.iwae_images = 20"]),
    ],
)
def test_bad_values_name_the_key_the_value_and_what_is_allowed(raw, fragments):
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("train_vae: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")
