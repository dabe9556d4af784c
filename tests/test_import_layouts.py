"""Keras HDF5 import: layouts, architecture inference, and refusals with messages naming the layer."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from morphometry.cli import main
from morphometry.cli.models import KIND_CHOICES
from morphometry.errors import InputError, ModelError
from morphometry.segment.keras_import import KINDS, import_keras, infer_qc, infer_unet, read_keras_h5, write_keras_h5
from morphometry.segment.networks import OFFICIAL_SPECS, UNetSpec, random_weights, read_weights, unet_model
from morphometry.segment.qcnet import QCSpec

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "keras-reference"
needs_fixtures = pytest.mark.skipif(not (FIXTURES / "README.md").is_file(),
                                    reason=f"Keras reference fixtures not found at {FIXTURES}")


def copy_fixture(name: str, tmp_path: Path) -> Path:
    path = tmp_path / name
    shutil.copy(FIXTURES / name, path)
    path.chmod(0o644)
    return path


def text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def drop_layer(path: Path, layer: str, keep_listed: bool = False) -> None:
    with h5py.File(path, "r+") as fh:
        root = fh["model_weights"] if "model_weights" in fh else fh
        del root[layer]
        if not keep_listed:
            names = [text(n).encode() for n in root.attrs["layer_names"] if text(n) != layer]
            root.attrs["layer_names"] = np.array(names)


def replace_weight(path: Path, layer: str, index: int, array: np.ndarray) -> None:
    with h5py.File(path, "r+") as fh:
        group = fh[layer]
        name = text(group.attrs["weight_names"][index])
        del group[name]
        group.create_dataset(name, data=array)


def small_unet(rng, **changes) -> tuple[UNetSpec, dict]:
    spec = replace(OFFICIAL_SPECS["s1"], features=2, **changes)
    return spec, random_weights(spec, rng)


# --- official layouts and their variants -------------------------------------------------------

def test_official_parameter_counts():
    """Counts the fixture README states for the builders at full width."""
    assert QCSpec().n_parameters() == 12_450_663
    assert OFFICIAL_SPECS["d"].n_parameters() == 27_086_501
    assert sum(OFFICIAL_SPECS[r].n_parameters() for r in ("s1", "d", "s2")) == 53_574_739


def test_kind_choices_match_importer():
    assert KIND_CHOICES == tuple(KINDS)


@pytest.mark.parametrize("changes", [{}, {"levels": 3, "convs_per_level": 3}, {"kernel": 5, "skips_removed": 2},
                                     {"multiplier": 3, "levels": 4, "skips_removed": 1}, {"levels": 2}])
def test_unet_architecture_is_inferred(tmp_path, changes):
    spec, weights = small_unet(np.random.default_rng(0), **changes)
    write_keras_h5(tmp_path / "net.h5", {"unet": weights})
    assert infer_unet(read_keras_h5(tmp_path / "net.h5"), "unet") == spec


@pytest.mark.parametrize("spec", [QCSpec(features=2), QCSpec(features=2, levels=3, convs_per_level=3, kernel=3,
                                                                multiplier=3)])
def test_qc_architecture_is_inferred(tmp_path, spec):
    write_keras_h5(tmp_path / "qc.h5", {"qc": random_weights(spec, np.random.default_rng(1), relu=True)})
    assert infer_qc(read_keras_h5(tmp_path / "qc.h5")) == spec


def test_split_attributes_and_training_checkpoint_layers(tmp_path):
    """layer_names / weight_names split into chunks (Keras, > 64 kB), a full-model layout with
    weightless training layers, another network's weights and optimizer state: all read alike."""
    rng = np.random.default_rng(2)
    spec, weights = small_unet(rng)
    plain, split = tmp_path / "plain.h5", tmp_path / "split.h5"
    write_keras_h5(plain, {"unet": weights})
    write_keras_h5(split, {"unet": weights, "generator": {"conv": (np.ones((1, 1, 1, 1, 1)), np.ones(1))}},
                   full_model=True)
    with h5py.File(split, "r+") as fh:
        root = fh["model_weights"]
        names = list(root.attrs["layer_names"]) + [b"labels_to_image_model", b"dice_loss"]
        for extra in (b"labels_to_image_model", b"dice_loss"):
            root.create_group(extra.decode()).attrs["weight_names"] = np.array([], dtype="S1")
        del root.attrs["layer_names"]
        for i, chunk in enumerate(np.array_split(np.array(names), 3)):
            root.attrs[f"layer_names{i}"] = chunk
        bn = root["unet_bn_down_0"]
        wn = bn.attrs["weight_names"]
        del bn.attrs["weight_names"]
        bn.attrs["weight_names0"], bn.attrs["weight_names1"] = wn[:2], wn[2:]
        fh.create_group("optimizer_weights").create_dataset("Adam/iterations:0", data=np.int64(5))
        fh.attrs["model_config"] = b'{"class_name": "Functional"}'
    a, b = read_keras_h5(plain), read_keras_h5(split)
    assert (a.layout, b.layout) == ("weights-only", "full-model")
    assert set(b.networks) == {"unet"}  # "generator" is no SynthSeg network
    assert list(a.networks["unet"]) == list(b.networks["unet"])
    for layer, arrays in a.networks["unet"].items():
        for x, y in zip(arrays, b.networks["unet"][layer]):
            np.testing.assert_array_equal(x, y)
    assert infer_unet(b, "unet") == spec


def test_prefix_overlap_is_resolved_by_full_name(tmp_path):
    """unet_parc_* layers also start with unet_: they must not be read as a synthseg network."""
    rng = np.random.default_rng(3)
    parc = replace(OFFICIAL_SPECS["parc"], features=2)
    write_keras_h5(tmp_path / "parc.h5", {"unet_parc": random_weights(parc, rng)})
    bundle = import_keras([tmp_path / "parc.h5"], tmp_path / "bundle")
    assert set(bundle.networks) == {"parc"}
    assert bundle.networks["parc"].architecture["in_channels"] == 3


# --- refusals ----------------------------------------------------------------------------------

@needs_fixtures
def test_missing_layer_is_named(tmp_path):
    path = copy_fixture("robust_weights.h5", tmp_path)
    drop_layer(path, "unet2_conv_uparm_6_1")
    with pytest.raises(ModelError, match=r"robust_weights\.h5: layer unet2_conv_uparm_6_1: missing"):
        import_keras([path], tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


@needs_fixtures
def test_listed_layer_without_group_is_named(tmp_path):
    path = copy_fixture("robust_full.h5", tmp_path)
    drop_layer(path, "l2l_bn_up_1", keep_listed=True)
    with pytest.raises(ModelError, match="layer l2l_bn_up_1 is listed in layer_names but has no group"):
        import_keras([path], tmp_path / "bundle")


@needs_fixtures
def test_wrong_kernel_size_is_named(tmp_path):
    path = copy_fixture("robust_weights.h5", tmp_path)
    replace_weight(path, "l2l_conv_downarm_2_0", 0, np.zeros((3, 3, 3, 4, 8), np.float32))
    with pytest.raises(ModelError, match=r"layer l2l_conv_downarm_2_0: weight shapes \(\(3, 3, 3, 4, 8\), \(8,\)\), "
                                         r"expected \(\(5, 5, 5, 4, 8\), \(8,\)\)"):
        import_keras([path], tmp_path / "bundle")


@needs_fixtures
def test_wrong_channel_count_is_named(tmp_path):
    path = copy_fixture("parc_weights.h5", tmp_path)
    replace_weight(path, "unet_parc_conv_downarm_2_1", 0, np.zeros((3, 3, 3, 12, 13), np.float32))
    with pytest.raises(ModelError, match=r"layer unet_parc_conv_downarm_2_1: weight shapes"):
        import_keras([path], tmp_path / "bundle")


@needs_fixtures
def test_wrong_qc_head_is_named(tmp_path):
    path = copy_fixture("qc_weights.h5", tmp_path)
    replace_weight(path, "qc_final_conv_0", 0, np.zeros((3, 3, 3, 24, 9), np.float32))
    with pytest.raises(ModelError, match=r"layer qc_final_conv_0: weight shapes \(\(3, 3, 3, 24, 9\), \(9,\)\), "
                                         r"expected \(\(5, 5, 5, 24, 9\)"):
        import_keras([path], tmp_path / "bundle")


def test_missing_weight_array_is_named(tmp_path):
    write_keras_h5(tmp_path / "net.h5", {"unet": small_unet(np.random.default_rng(13))[1]})
    with h5py.File(tmp_path / "net.h5", "r+") as fh:
        del fh["unet_bn_down_0/unet_bn_down_0/beta:0"]
    with pytest.raises(ModelError, match="layer unet_bn_down_0: weight unet_bn_down_0/beta:0 is listed but missing"):
        import_keras([tmp_path / "net.h5"], tmp_path / "bundle")


def test_unknown_layer_is_named(tmp_path):
    spec, weights = small_unet(np.random.default_rng(4))
    weights["dense_0"] = (np.zeros((1, 1, 1, 2, 2)), np.zeros(2))
    write_keras_h5(tmp_path / "net.h5", {"unet": weights})
    with pytest.raises(ModelError, match="layer unet_dense_0: not a layer of a SynthSeg U-Net"):
        import_keras([tmp_path / "net.h5"], tmp_path / "bundle")


def test_extra_level_layer_is_named(tmp_path):
    spec, weights = small_unet(np.random.default_rng(5))
    weights["conv_downarm_2_2"] = weights["conv_downarm_2_1"]
    write_keras_h5(tmp_path / "net.h5", {"unet": weights})
    with pytest.raises(ModelError, match="layer unet_conv_downarm_2_2: unexpected .inferred 5-level U-Net, 2 convs"):
        import_keras([tmp_path / "net.h5"], tmp_path / "bundle")


def test_skip_missing_in_the_middle_is_refused(tmp_path):
    spec, weights = small_unet(np.random.default_rng(6))
    kernel, bias = weights["conv_uparm_6_0"]
    below = spec.width(spec.levels - 2)
    weights["conv_uparm_6_0"] = (kernel[:, :, :, -below:], bias)  # step 1 without its skip, others with
    write_keras_h5(tmp_path / "net.h5", {"unet": weights})
    with pytest.raises(ModelError, match="layer unet_conv_uparm_6_0: skip connections may only be missing"):
        import_keras([tmp_path / "net.h5"], tmp_path / "bundle")


def test_non_cubic_kernel_is_refused(tmp_path):
    spec, weights = small_unet(np.random.default_rng(7))
    kernel, bias = weights["conv_downarm_0_0"]
    weights["conv_downarm_0_0"] = (np.concatenate([kernel, kernel[:1]], axis=0), bias)
    write_keras_h5(tmp_path / "net.h5", {"unet": weights})
    with pytest.raises(ModelError, match=r"layer unet_conv_downarm_0_0: kernel \(4, 3, 3, 1, 2\)"):
        import_keras([tmp_path / "net.h5"], tmp_path / "bundle")


def test_wrong_interface_for_the_role_is_refused(tmp_path):
    spec, weights = small_unet(np.random.default_rng(8))  # 1 -> 5 channels: an S1, not a synthseg net
    write_keras_h5(tmp_path / "s1.h5", {"unet": weights})
    with pytest.raises(ModelError, match="layer unet_likelihood: 5 output channels, role synthseg gives 33 or 32"):
        import_keras([tmp_path / "s1.h5"], tmp_path / "bundle")


def test_incomplete_robust_file_is_refused(tmp_path):
    rng = np.random.default_rng(9)
    write_keras_h5(tmp_path / "robust.h5", {"unet": small_unet(rng)[1],
                                            "l2l": random_weights(replace(OFFICIAL_SPECS["d"], features=2), rng)})
    with pytest.raises(ModelError, match="layer unet2_conv_downarm_0_0: missing .kind robust needs network unet2"):
        import_keras([tmp_path / "robust.h5"], tmp_path / "bundle")


def test_forced_kind_absent_from_file(tmp_path):
    write_keras_h5(tmp_path / "s1.h5", {"unet": small_unet(np.random.default_rng(10))[1]})
    with pytest.raises(ModelError, match="layer qc_conv_downarm_0_0: missing .kind qc needs network qc"):
        import_keras([tmp_path / "s1.h5"], tmp_path / "bundle", kinds=["qc"])


def test_unreadable_inputs(tmp_path):
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(InputError, match="text.h5: not an HDF5 file"):
        import_keras([tmp_path / "text.h5"], tmp_path / "bundle")
    with pytest.raises(InputError, match="absent.h5: no such file"):
        import_keras([tmp_path / "absent.h5"], tmp_path / "bundle")
    with h5py.File(tmp_path / "plain.h5", "w") as fh:
        fh.create_dataset("x", data=np.zeros(3))
    with pytest.raises(InputError, match="plain.h5: not a Keras 2 HDF5 weights file"):
        import_keras([tmp_path / "plain.h5"], tmp_path / "bundle")
    write_keras_h5(tmp_path / "other.h5", {"encoder": {"conv": (np.zeros((1, 1, 1, 1, 1)), np.zeros(1))}})
    with pytest.raises(ModelError, match="other.h5: no SynthSeg network layers found"):
        import_keras([tmp_path / "other.h5"], tmp_path / "bundle")


def test_bundle_level_refusals(tmp_path):
    write_keras_h5(tmp_path / "qc.h5", {"qc": random_weights(QCSpec(features=2), np.random.default_rng(11), relu=True)})
    with pytest.raises(InputError, match="network role qc is already provided by"):
        import_keras([tmp_path / "qc.h5", tmp_path / "qc.h5"], tmp_path / "b1")
    with pytest.raises(InputError, match="--kind given 2 times for 3 files"):
        import_keras([tmp_path / "qc.h5"] * 3, tmp_path / "b1", kinds=["qc", "qc"])
    import_keras([tmp_path / "qc.h5"], tmp_path / "b2")
    with pytest.raises(InputError, match="already holds a model bundle"):
        import_keras([tmp_path / "qc.h5"], tmp_path / "b2")


# --- the command -------------------------------------------------------------------------------

def test_import_keras_command(tmp_path, capsys):
    rng = np.random.default_rng(12)
    s1 = small_unet(rng)[1]
    d = random_weights(replace(OFFICIAL_SPECS["d"], features=2), rng)
    s2 = random_weights(replace(OFFICIAL_SPECS["s2"], features=2), rng)
    write_keras_h5(tmp_path / "synthseg_robust_2.0.h5", {"unet": s1, "l2l": d, "unet2": s2}, full_model=True)
    write_keras_h5(tmp_path / "synthseg_qc_2.0.h5", {"qc": random_weights(QCSpec(features=2), rng, relu=True)})
    assert main(["models", "import-keras", str(tmp_path / "synthseg_robust_2.0.h5"),
                 str(tmp_path / "synthseg_qc_2.0.h5"), "-o", str(tmp_path / "bundle"),
                 "--model-id", "official-test"]) == 0
    out = capsys.readouterr().out
    assert "synthseg_robust_2.0.h5: full-model, robust -> s1, d, s2" in out
    assert "bundle official-test written" in out and "synthseg+" in out and "--qc" in out
    with pytest.raises(SystemExit):
        main(["models", "import-keras", "x.h5", "-o", "b", "--kind", "robust+"])


@pytest.mark.parametrize("spec", [OFFICIAL_SPECS["d"], UNetSpec(in_channels=1, n_labels=5, features=4, levels=3)])
def test_weights_read_back_from_a_built_graph(spec):
    weights = random_weights(spec, np.random.default_rng(3))
    back = read_weights(unet_model(spec, weights), spec)
    assert back.keys() == weights.keys()
    for name, arrays in weights.items():
        for a, b in zip(arrays, back[name], strict=True):
            np.testing.assert_array_equal(a, b, err_msg=name)
    other = replace(spec, levels=spec.levels + 1)
    with pytest.raises(ValueError, match="no initializer 'conv_downarm_"):
        read_weights(unet_model(spec, weights), other)
