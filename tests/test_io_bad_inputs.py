"""Each bad input gives an InputError naming the file and the cause; oddities give warnings."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
from conftest import save

from morphometry.errors import InputError
from morphometry.io import LoadLimits, check_image, load_scan


def good(shape=(16, 16, 16)):
    return np.random.default_rng(0).random(shape).astype(np.float32)


def expect(path, fragment, **kw):
    with pytest.raises(InputError) as info:
        load_scan(path, **kw)
    assert str(path) in str(info.value)
    assert fragment in str(info.value)


def test_missing_file(tmp_path):
    expect(tmp_path / "nope.nii.gz", "file not found")


def test_not_an_image_suffix(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello")
    expect(p, "not an image file")


def test_garbage_content(tmp_path):
    p = tmp_path / "garbage.nii"
    p.write_bytes(b"x" * 500)
    expect(p, "not a readable NIfTI/MGZ image")


def test_truncated_gzip(tmp_path):
    p = save(tmp_path / "full.nii.gz", good((32, 32, 32)), np.eye(4))
    data = p.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(data[: len(data) // 2])
    expect(cut, "truncated or corrupt")


def test_2d_image(tmp_path):
    expect(save(tmp_path / "slice.nii.gz", good((16, 16)), np.eye(4)), "2-D image")


def test_too_few_slices(tmp_path):
    expect(save(tmp_path / "thin.nii.gz", good((16, 16, 2)), np.eye(4)), "too few slices")


def test_4d_first_volume_with_warning(tmp_path):
    data = np.stack([good(), good() + 5], axis=-1)
    scan = load_scan(save(tmp_path / "series.nii.gz", data, np.eye(4)))
    assert scan.data.shape == (16, 16, 16)
    np.testing.assert_array_equal(scan.data, data[..., 0])
    assert any("4-D image with 2 volumes" in w for w in scan.warnings)


def test_all_zero_and_constant(tmp_path):
    expect(save(tmp_path / "zero.nii.gz", np.zeros((16, 16, 16), np.float32), np.eye(4)), "all-zero")
    expect(save(tmp_path / "const.nii.gz", np.full((16, 16, 16), 7, np.float32), np.eye(4)), "constant (7)")


def test_nan_inf_cleaned_with_warning(tmp_path):
    data = good()
    data[0, 0, 0], data[1, 1, 1] = np.nan, np.inf
    scan = load_scan(save(tmp_path / "nan.nii.gz", data, np.eye(4)))
    assert np.isfinite(scan.data).all() and scan.data[0, 0, 0] == 0 and scan.data[1, 1, 1] == 0
    assert any("2 NaN/Inf voxels set to 0" in w for w in scan.warnings)


def test_all_nan(tmp_path):
    expect(save(tmp_path / "allnan.nii.gz", np.full((16, 16, 16), np.nan, np.float32), np.eye(4)), "no finite voxel")


def test_singular_affine(tmp_path):
    affine = np.eye(4)
    affine[:3, 2] = affine[:3, 0]  # two voxel axes point the same way
    p = tmp_path / "singular.nii.gz"
    img = nib.Nifti1Image(good(), affine)
    img.header.set_zooms((1, 1, 1))
    nib.save(img, str(p))
    expect(p, "singular affine")


def test_non_finite_affine(tmp_path):
    p = save(tmp_path / "nanaff.nii.gz", good(), np.eye(4))
    img = nib.load(str(p))
    img.header["srow_x"] = [np.nan, 0, 0, 0]
    img.header.set_sform(None, code=1)
    raw = img.header.binaryblock
    data = gzip.decompress(p.read_bytes())
    p.write_bytes(gzip.compress(raw + data[len(raw):]))
    expect(p, "non-finite values in the affine")


@pytest.mark.parametrize("zoom", [0.0, -1.0])
def test_zero_or_negative_voxel_size(tmp_path, zoom):
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((16, 16, 16))
    hdr.set_data_dtype(np.float32)
    hdr["pixdim"][1:4] = [zoom, 1, 1]
    hdr["vox_offset"] = 352
    p = tmp_path / "zoom.nii"
    p.write_bytes(hdr.binaryblock + b"\0" * 4 + good().tobytes())
    expect(p, "voxel size")


def test_absurd_dimensions_refused_before_reading(tmp_path):
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((30000, 30000, 30000))
    hdr.set_data_dtype(np.float32)
    p = tmp_path / "huge.nii"
    p.write_bytes(hdr.binaryblock + b"\0" * 4 + b"\0" * 64)  # header only: reading voxels would fail
    expect(p, "absurd dimensions")


def test_limits_are_configurable(tmp_path):
    p = save(tmp_path / "ok.nii.gz", good((20, 20, 20)), np.eye(4))
    expect(p, "absurd dimensions", limits=LoadLimits(max_voxels=1000))


def test_mgz_and_spacing(tmp_path):
    affine = np.array([[0, 0, 2.5, -10], [1.2, 0, 0, 5], [0, 1.0, 0, 3], [0, 0, 0, 1.0]])
    p = tmp_path / "scan.mgz"
    nib.save(nib.MGHImage(good((20, 24, 28)), affine), str(p))
    scan = load_scan(p)
    assert scan.info.ras_spacing == pytest.approx((2.5, 1.2, 1.0))
    assert scan.info.slice_axis == "sagittal" and scan.info.slice_spacing == pytest.approx(2.5)
    assert scan.info.ras_shape == (28, 20, 24)


def test_header_scaling_is_applied(tmp_path):
    """Voxels in physical units: stored * scl_slope + scl_inter (the original's get_fdata)."""
    stored = (good() * 1000).astype(np.int16)
    img = nib.Nifti1Image(stored, np.eye(4))
    img.header.set_slope_inter(2.0, 10.0)
    p = tmp_path / "scaled.nii.gz"
    nib.save(img, str(p))
    np.testing.assert_array_equal(load_scan(p).data, stored.astype(np.float32) * 2 + 10)


def test_an_image_in_memory_gets_the_affine_of_its_file(tmp_path):
    """A NIfTI-1 file stores the sform in float32: the in-memory image is checked as saved and loaded,
    so its working grid (from the affine's column norms) is the same."""
    affine = np.diag([0.8, 0.8, 0.8, 1.0])
    affine[:3, 3] = (-60.3, 71.1, 13.7)
    img = nib.Nifti1Image(good((20, 20, 20)), affine)
    p = tmp_path / "saved.nii.gz"
    nib.save(img, str(p))
    in_memory, from_file = check_image(img), load_scan(p)
    np.testing.assert_array_equal(in_memory.affine, from_file.affine)
    assert in_memory.affine[0, 0] == float(np.float32(0.8)) != 0.8
    assert in_memory.info.zooms == from_file.info.zooms
