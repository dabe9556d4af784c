"""Crop/pad and paste-back exactness: network space -> native voxel order of the output grid."""

from __future__ import annotations

import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from morphometry.io import Scan, ScanInfo, save_image
from morphometry.labels import SYNTHSEG_2
from morphometry.orientation import ras_alignment
from morphometry.segment.postprocess import PostprocessConfig, postprocess, to_native, uncrop
from morphometry.segment.preprocess import PreprocessConfig, preprocess


def make_scan(data: np.ndarray, affine: np.ndarray) -> Scan:
    zooms = tuple(float(z) for z in np.linalg.norm(affine[:3, :3], axis=0))
    alignment = ras_alignment(affine)
    info = ScanInfo(shape=data.shape, zooms=zooms, ras_spacing=tuple(zooms[p] for p in alignment.perm),
                    alignment=alignment)
    return Scan(path=Path("scan.nii.gz"), data=data.astype(np.float32), affine=affine, header=None, info=info)


def signed_permutation_affine(perm, signs, zooms) -> np.ndarray:
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    for i in range(3):
        affine[perm[i], i] = signs[i] * zooms[i]
    affine[:3, 3] = (-20.0, 15.0, 3.0)
    return affine


def world_grid(affine: np.ndarray, shape) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"), axis=-1)
    return idx @ affine[:3, :3].T + affine[:3, 3]


ORIENTATIONS = [(p, s) for p in itertools.permutations(range(3)) for s in itertools.product((1, -1), repeat=3)]


@pytest.mark.parametrize("perm,signs", ORIENTATIONS[::3])
def test_network_space_pastes_back_exactly_to_the_native_grid(perm, signs):
    rng = np.random.default_rng(0)
    data = rng.gamma(3.0, 30.0, size=(23, 30, 17)).astype(np.float32)
    pre = preprocess(make_scan(data, signed_permutation_affine(perm, signs, (1.0, 1.0, 1.0))), PreprocessConfig())
    assert not pre.resampled
    lo, hi = pre.intensity_range
    expected = ((np.clip(data, lo, hi) - np.float32(lo)) / np.float32(hi - lo)).astype(np.float32)
    native = to_native(pre.image[pre.inner], pre)
    assert native.shape == data.shape
    np.testing.assert_allclose(native, expected, rtol=0, atol=1e-6)
    # world positions agree: aligned grid (aligned_affine) -> native grid (grid_affine)
    assert np.allclose(to_native(world_grid(pre.aligned_affine, pre.aligned_shape), pre),
                       world_grid(pre.grid_affine, pre.grid_shape))


def test_resampled_outputs_land_on_the_resampled_grid():
    affine = signed_permutation_affine((2, 0, 1), (-1, 1, -1), (0.7, 0.7, 5.0))
    data = np.random.default_rng(1).random((30, 28, 9)).astype(np.float32)
    pre = preprocess(make_scan(data, affine), PreprocessConfig())
    assert pre.resampled
    assert pre.grid_shape == (21, 20, 45)
    aligned = world_grid(pre.aligned_affine, pre.aligned_shape)
    np.testing.assert_allclose(to_native(aligned, pre), world_grid(pre.grid_affine, pre.grid_shape), atol=1e-9)
    np.testing.assert_allclose(to_native(pre.alignment.apply(pre.grid_image), pre), pre.grid_image)


def test_segmentation_posteriors_and_labels_go_back_channels_last():
    affine = signed_permutation_affine((1, 2, 0), (1, -1, -1), (1.0, 1.0, 1.0))
    data = np.random.default_rng(2).random((20, 26, 31)).astype(np.float32)
    pre = preprocess(make_scan(data, affine), PreprocessConfig())
    c = SYNTHSEG_2.n_channels
    post = np.zeros((c,) + pre.image.shape, dtype=np.float32)
    post[0] = 1.0
    marker = tuple(slice(s.start + 2, s.start + 6) for s in pre.inner)  # a structure near the corner
    post[0][marker] = 0.1
    post[SYNTHSEG_2.channel_of(17)][marker] = 0.9
    seg = postprocess(post, SYNTHSEG_2, pre.inner, PostprocessConfig(topology=True))
    assert seg.labels.shape == pre.aligned_shape
    labels = to_native(seg.labels, pre)
    channels_last = to_native(np.moveaxis(seg.posteriors, 0, -1), pre)
    assert labels.shape == data.shape and channels_last.shape == data.shape + (c,)
    # the aligned corner block at (2..5)^3 is, natively, where the aligned->native index map sends it
    aligned_index = world_grid(np.eye(4), pre.aligned_shape)
    native_index = to_native(aligned_index, pre)  # native voxel -> its aligned index
    in_block = np.all((native_index >= 2) & (native_index <= 5), axis=-1)
    assert np.array_equal(labels == 17, in_block)
    assert np.array_equal(channels_last[..., SYNTHSEG_2.channel_of(17)] > 0, in_block)


def test_shape_mismatch_is_refused():
    pre = preprocess(make_scan(np.random.default_rng(3).random((10, 11, 12)), np.eye(4)), PreprocessConfig())
    with pytest.raises(ValueError, match="does not match"):
        to_native(np.zeros((11, 10, 12)), pre)


def _written(tmp_path, name, array, affine, header, dtype=None):
    path = tmp_path / name
    save_image(array, affine, path, header=header, dtype=dtype)
    return nib.load(str(path))


def test_outputs_carry_the_input_header_as_the_original_writes_them(tmp_path):
    """nibabel rewrites the input's header where the affine changed: a resampled grid gets sform_code
    2, qform_code 0 and 1 mm pixdims; a native grid keeps the input's codes and pixdims. Labels are
    int32 and unscaled even when the input had scl_slope / scl_inter."""
    affine = np.diag([1.2, -1.2, 3.0, 1.0])
    source = nib.Nifti1Image((np.random.default_rng(0).random((10, 11, 12)) * 100).astype(np.int16), affine)
    source.header.set_slope_inter(2.0, 10.0)
    source.header.set_xyzt_units("mm", "sec")
    source.set_sform(affine, code=1)
    source.set_qform(affine, code=1)
    nib.save(source, str(tmp_path / "in.nii.gz"))
    header = nib.load(str(tmp_path / "in.nii.gz")).header
    labels = np.arange(10 * 11 * 12, dtype=np.int32).reshape(10, 11, 12)
    native = _written(tmp_path, "native.nii.gz", labels, affine, header, np.int32)
    assert (int(native.header["sform_code"]), int(native.header["qform_code"])) == (1, 1)
    np.testing.assert_allclose(native.header.get_zooms(), (1.2, 1.2, 3.0))
    assert native.get_data_dtype() == np.int32 and native.header.get_slope_inter() == (None, None)
    np.testing.assert_array_equal(np.asarray(native.dataobj), labels)
    resampled_affine = np.diag([1.0, -1.0, 1.0, 1.0])
    resampled = _written(tmp_path, "resampled.nii.gz", labels, resampled_affine, header, np.int32)
    assert (int(resampled.header["sform_code"]), int(resampled.header["qform_code"])) == (2, 0)
    np.testing.assert_array_equal(resampled.header["pixdim"][1:4], 1.0)
    assert resampled.header.get_xyzt_units() == ("mm", "sec")
    # the resampled image: the input's on-disk type, nibabel choosing the scaling
    image = np.linspace(10, 900, labels.size, dtype=np.float32).reshape(labels.shape)
    written = _written(tmp_path, "image.nii.gz", image, resampled_affine, header)
    assert written.get_data_dtype() == np.int16
    np.testing.assert_allclose(written.get_fdata(), image, atol=written.dataobj.slope)
    fresh = _written(tmp_path, "fresh.nii.gz", image, resampled_affine, None)
    assert fresh.get_data_dtype() == np.float32 and fresh.header.get_xyzt_units()[0] == "mm"


def test_a_cropped_scan_gets_background_outside_the_box():
    """2.10: labels 0 and posteriors (1, 0, ..., 0) outside the analysed box, then native order."""
    affine = signed_permutation_affine((1, 2, 0), (1, -1, -1), (1.0, 1.0, 1.0))
    data = np.random.default_rng(4).random((40, 50, 45)).astype(np.float32)
    pre = preprocess(make_scan(data, affine), PreprocessConfig(crop=(32, 32, 32)))
    box_shape = tuple(s.stop - s.start for s in pre.crop)
    labels = np.full(box_shape, 17, dtype=np.int32)
    post = np.full(box_shape + (3,), 0.25, dtype=np.float32)
    full_labels, full_post = uncrop(labels, pre), uncrop(post, pre)
    assert full_labels.shape == pre.aligned_shape and full_post.shape == pre.aligned_shape + (3,)
    inside = np.zeros(pre.aligned_shape, dtype=bool)
    inside[pre.crop] = True
    assert np.all(full_labels[inside] == 17) and np.all(full_labels[~inside] == 0)
    assert np.all(full_post[inside] == 0.25)
    np.testing.assert_array_equal(full_post[~inside], np.tile([1.0, 0.0, 0.0], ((~inside).sum(), 1)))
    assert to_native(full_labels, pre).shape == data.shape
    uncropped = preprocess(make_scan(data, affine), PreprocessConfig())
    assert uncrop(labels, uncropped) is labels
