"""Training data: prior rescaling, label-map folders, determinism of the example stream."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from morphometry.errors import DataError, InputError
from morphometry.segment.synthesis.priors import (
    DegradationPriors,
    GeneratorPriors,
    Uniform,
    UniformVariance,
)
from morphometry.segment.training.data import (
    N_LABELS,
    DataConfig,
    ExampleSource,
    batches,
    coarsen,
    coarsening_factor,
    list_label_maps,
    load_maps,
    scaled_degradation_priors,
    scaled_generator_priors,
    split_label_maps,
)


def phantom_labels(n: int = 40, seed: int = 0) -> np.ndarray:
    """A head of generation labels: skin, skull, CSF, cortex, white matter, ventricles and a
    cerebellum, left (2, 3, 4, 8) and right (41, 42, 43, 47) halves."""
    rng = np.random.default_rng(seed)
    grid = np.indices((n, n, n)).astype(float)
    centre = (n - 1) / 2 + rng.uniform(-1, 1, 3)
    r = np.sqrt(sum(((grid[i] - centre[i]) / (0.45 * n)) ** 2 for i in range(3)))
    left = grid[0] < centre[0]
    labels = np.zeros((n, n, n), np.int32)
    labels[r < 1.0] = 511
    labels[r < 0.9] = 515
    labels[r < 0.8] = 24
    labels[r < 0.7] = np.where(left, 3, 42)[r < 0.7]
    labels[r < 0.55] = np.where(left, 2, 41)[r < 0.55]
    labels[r < 0.2] = np.where(left, 4, 43)[r < 0.2]
    low = (r < 0.55) & (grid[2] < centre[2] - 0.3 * n)
    labels[low] = np.where(left, 8, 47)[low]
    return labels


def write_maps(folder: Path, count: int, n: int = 40) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        nib.save(nib.Nifti1Image(phantom_labels(n, i), np.eye(4)), str(folder / f"map_{i:02d}.nii.gz"))
    return folder


@pytest.fixture(scope="module")
def maps_dir(tmp_path_factory) -> Path:
    return write_maps(tmp_path_factory.mktemp("labelmaps"), 4)


def test_priors_rescaled_to_coarse_voxels():
    g = scaled_generator_priors(GeneratorPriors(), 2.0)
    assert g.spatial.nonlin_std == Uniform(0.0, 2.0)  # 0-4 voxels of 1 mm = 0-2 voxels of 2 mm
    assert g.spatial.nonlin_scale == pytest.approx(0.08)  # same control points per mm
    assert g.resolution.aniso_spacing == Uniform(0.5, 4.0)
    assert g.spatial.rotation_deg == GeneratorPriors().spatial.rotation_deg  # angles unchanged
    assert g.gmm.stds == Uniform(0.0, 50.0 / 2**1.5)  # a 2 mm voxel averages 8 independent 1 mm draws
    assert g.gmm.means == GeneratorPriors().gmm.means
    d = scaled_degradation_priors(DegradationPriors(), 2.0)
    assert d.spatial.nonlin_std == UniformVariance(1.0)  # variance 4 mm^2 = 1 voxel^2 of 2 mm
    assert d.spatial.translation_mm == Uniform(-25.0, 25.0)
    assert scaled_generator_priors(GeneratorPriors(), 1.0) == GeneratorPriors()


def test_coarsening():
    assert coarsening_factor(2.0) == 2
    with pytest.raises(InputError, match="whole number"):
        coarsening_factor(1.5)
    a = np.arange(6**3).reshape(6, 6, 6)
    np.testing.assert_array_equal(coarsen(a, 2), a[1::2, 1::2, 1::2])


def test_label_map_folders(tmp_path, maps_dir):
    train, val = split_label_maps(maps_dir, 1)
    assert [p.name for p in val] == ["map_03.nii.gz"] and len(train) == 3
    with pytest.raises(InputError, match="need more than the 4 held out"):
        split_label_maps(maps_dir, 4)
    with pytest.raises(InputError, match="no label maps"):
        list_label_maps(tmp_path)
    with pytest.raises(InputError, match="not found"):
        list_label_maps(tmp_path / "missing")


def test_bad_label_map_is_named(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    data = phantom_labels(20)
    data[0, 0, 0] = 999  # not a generation label
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(bad))
    with pytest.raises(DataError, match="bad.nii.gz.*999"):
        load_maps([bad], 2.0)


@pytest.mark.parametrize("role,channels,n_out", [("s1", 1, 5), ("synthseg", 1, N_LABELS), ("s2", 6, N_LABELS)])
def test_examples_per_role_are_seeded(maps_dir, role, channels, n_out):
    maps = load_maps(split_label_maps(maps_dir, 1)[0], 2.0)
    source = ExampleSource(maps, DataConfig(role, crop=16, resolution_mm=2.0))
    x, y = source.example(np.random.default_rng([5, 1, 0]))
    x2, y2 = source.example(np.random.default_rng([5, 1, 0]))
    assert x.shape == (channels, 16, 16, 16) and y.shape == (16, 16, 16) and x.dtype == np.float32
    assert y.min() >= 0 and y.max() < n_out and len(np.unique(y)) > 2
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)


def test_batches_do_not_depend_on_workers_or_start(maps_dir):
    maps = load_maps(split_label_maps(maps_dir, 1)[0], 2.0)
    source = ExampleSource(maps, DataConfig("s1", crop=16, resolution_mm=2.0))
    serial = list(batches(source, 3, 1, 3, 2, workers=0))
    parallel = list(batches(source, 3, 2, 3, 2, workers=1))
    assert [s for s, _, _ in serial] == [1, 2, 3] and [s for s, _, _ in parallel] == [2, 3]
    for (_, xa, ya), (_, xb, yb) in zip(serial[1:], parallel):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(serial[0][1], serial[1][1])


def test_denoiser_needs_the_previous_network(maps_dir):
    maps = load_maps(split_label_maps(maps_dir, 1)[0], 2.0)
    with pytest.raises(InputError, match="needs the trained network"):
        ExampleSource(maps, DataConfig("d", crop=16))
    with pytest.raises(InputError, match="unknown role"):
        DataConfig("s3")


def test_denoiser_examples_from_the_generator_images(maps_dir):
    from morphometry.segment import stages
    from morphometry.segment.networks import UNetSpec, random_weights, unet_model
    from morphometry.segment.training.data import GROUP_LUT

    spec = UNetSpec(1, 5, features=2, levels=2)
    previous = stages.tissue_stage(unet_model(spec, random_weights(spec, np.random.default_rng(0)), "s1"))
    maps = load_maps(split_label_maps(maps_dir, 1)[0], 2.0)
    source = ExampleSource(maps, DataConfig("d", crop=16, resolution_mm=2.0, d_inputs="generator"),
                           previous.SerializeToString())
    x, y = source.example(np.random.default_rng([5, 1, 0]))
    sample = source.generator.sample(np.random.default_rng([5, 1, 0]))  # independently: S1 on that image
    np.testing.assert_array_equal(x, source._run_previous(sample.image))
    np.testing.assert_array_equal(y, GROUP_LUT[sample.target])
    assert set(np.unique(x)) <= {0.0, 1.0} and np.all(x.sum(0) == 1)  # S1's one-hot output
    with pytest.raises(InputError, match="d_inputs: 'real': choose degraded or generator"):
        DataConfig("d", d_inputs="real")
