from pathlib import Path

import pytest
import yaml

from latentfit.core.config import Params, ParamsError, load_params, parse_params, to_flat_dict

ROOT = Path(__file__).resolve().parents[1]


def test_repository_params_are_valid_and_name_every_default():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = load_params(ROOT / "params.yaml")
    # every knob is pinned in params.yaml, not left to a code default
    pinned = {f"{section}.{key}" for section, body in raw.items() if isinstance(body, dict) and section != "fits"
              for key in body}
    pinned |= {f"fits.{fit}.{key}" for fit, body in raw["fits"].items() for key in body}
    pinned |= {section for section, body in raw.items() if not isinstance(body, dict)}
    assert set(to_flat_dict(params)) == pinned
    assert list(params.fits) == ["vae", "direct"]  # the notebook's two fits
    assert params.model.z_dim == 20 and params.fits["direct"].mc_samples == 64 and params.fits["vae"].iwae_k == 1


def test_a_third_fit_is_one_entry_of_its_kind():
    params = parse_params({"fits": {"vae": {"kind": "vae"}, "iwae8": {"kind": "vae", "iwae_k": 8},
                                    "direct": {"kind": "direct", "mc_samples": 32}}})
    assert list(params.fits) == ["vae", "iwae8", "direct"] and params.fits["iwae8"].iwae_k == 8
    assert to_flat_dict(params)["fits.direct.mc_samples"] == 32
    view = params.reading(("fits.iwae8",), "train@iwae8")
    assert view.fits["iwae8"].epochs == 40
    with pytest.raises(ParamsError, match=r"stage train@iwae8 reads fits.vae without declaring it.*stages/train.py"):
        view.fits["vae"]


def test_lists_become_tuples_and_ints_widen_to_float():
    params = parse_params({"data": {"mirrors": ["/a", "http://b"]}, "fits": {"vae": {"kind": "vae", "lr": 1}}})
    assert params.data.mirrors == ("/a", "http://b")
    assert params.fits["vae"].lr == 1.0 and isinstance(params.fits["vae"].lr, float)
    assert parse_params({}) == Params()


@pytest.mark.parametrize(
    "raw, fragments",
    [
        ({"fits": {"vae": {"kind": "vae", "epochs": 0}}}, ["fits.vae.epochs", "0", ">= 1"]),
        ({"fits": {"vae": {"kind": "vae", "epochs": "ten"}}}, ["fits.vae.epochs", "'ten'", "int"]),
        ({"fits": {"vae": {"kind": "vae", "epochs": True}}}, ["fits.vae.epochs", "int"]),
        ({"fits": {"direct": {"kind": "direct", "lr": -0.1}}}, ["fits.direct.lr", "> 0"]),
        ({"fits": {"vae": {"kind": "vae", "lr": float("nan")}}}, ["fits.vae.lr", "finite"]),
        ({"data": {"dataset": "cifar"}}, ["data.dataset", "'cifar'", "mnist", "fashion-mnist", "kmnist"]),
        ({"fits": {"vae": {"kind": "vae", "epoch": 3}}}, ["fits.vae.epoch", "Did you mean 'fits.vae.epochs'"]),
        ({"fits": {"vae": {"kind": "vae", "mc_samples": 3}}}, ["fits.vae.mc_samples", "Allowed keys here: kind, epochs"]),
        ({"fits": {"v2": {"epochs": 3}}}, ["fits.v2.kind = None", "vae, direct"]),
        ({"fits": {"IWAE-8": {"kind": "vae"}}}, ["fits.IWAE-8", "lower-case letters"]),
        ({"fits": {}}, ["fits must map each fit's name"]),
        ({"fits": {"gap": {"kind": "vae"}}}, ["fits.gap", "may not start with 'gap'"]),
        ({"fitz": {}}, ["fitz", "Did you mean 'fits'"]),
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
    (tmp_path / "params.yaml").write_text("fits: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")
