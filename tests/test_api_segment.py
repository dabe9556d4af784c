"""The segmentation API: ``Segmenter.segment`` (a file or a nibabel image in memory) and
``segment_many`` give what ``morpho segment`` writes for the same inputs; bad inputs and settings
raise errors naming the file or the setting."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from morphometry.cli import main
from morphometry.errors import InputError, ModelError
from morphometry.segment.batch import Shard
from morphometry.segment.segmenter import Segmenter, merge

from conftest import head_phantom, save

METHODS = ("synthseg+", "synthseg")


@pytest.fixture(scope="module")
def cli_out(tiny_bundle, scan_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "out"
    code = main(["segment", str(scan_folder), "-o", str(out), "--models", str(tiny_bundle.root),
                 *[a for m in METHODS for a in ("--method", m)], "--threads", "2", "--posteriors"])
    assert code == 1  # the broken file
    return out


@pytest.fixture(scope="module")
def segmenter(tiny_bundle):
    return Segmenter(tiny_bundle.root, METHODS, threads=2)


@pytest.fixture(scope="module")
def single(tiny_bundle):
    return Segmenter(tiny_bundle, "synthseg", threads=2)  # a loaded Bundle works too


def _cli_row(out, scan_id: str, method: str) -> pd.Series:
    vol = pd.read_parquet(out / "volumes.parquet")
    return vol[(vol.scan_id == scan_id) & (vol.method == method)].iloc[0]


def _assert_same_row(api: pd.Series, cli: pd.Series, skip: tuple[str, ...] = ()) -> None:
    assert list(api.index) == list(cli.index)
    for column in api.index:
        if column in skip:
            continue
        a, b = api[column], cli[column]
        assert (pd.isna(a) and pd.isna(b)) or a == b, (column, a, b)


def _assert_same_image(api: nib.Nifti1Image, path) -> None:
    written = nib.load(str(path))
    assert api.shape == written.shape and api.get_data_dtype() == written.get_data_dtype()
    np.testing.assert_array_equal(np.asarray(api.dataobj), np.asarray(written.dataobj))
    np.testing.assert_allclose(api.affine, written.affine, atol=1e-5)


def test_segment_a_file_gives_the_cli_files(segmenter, cli_out, scan_folder):
    seg = segmenter.segment(scan_folder / "iso15.nii.gz", posteriors=True)
    assert seg.scan_id == "iso15" and set(seg.methods) == set(METHODS)
    for method in METHODS:
        result = seg[method]
        assert np.asarray(result.labels.dataobj).dtype == np.int32
        _assert_same_image(result.labels, cli_out / "seg" / f"iso15_{method}.nii.gz")
        _assert_same_image(result.posteriors, cli_out / "posteriors" / f"iso15_{method}.nii.gz")
        _assert_same_row(result.volumes, _cli_row(cli_out, "iso15", method))
        assert result.volumes["path"] == str(scan_folder / "iso15.nii.gz")
    table = seg.volumes_table()
    assert table.method.tolist() == sorted(METHODS)
    cli = pd.read_parquet(cli_out / "volumes.parquet").query("scan_id == 'iso15'").reset_index(drop=True)
    pd.testing.assert_frame_equal(table.drop(columns="session_id"), cli.drop(columns="session_id"), check_dtype=False)
    with pytest.raises(InputError, match=r"2 methods \(synthseg\+, synthseg\); choose one"):
        seg.labels
    with pytest.raises(KeyError, match="no method 's1'"):
        seg["s1"]


def test_segment_an_image_in_memory(segmenter, single, cli_out, scan_folder):
    src = nib.load(str(scan_folder / "coronal5.nii.gz"))  # 5 mm coronal int16: resampled, not RAS
    image = nib.Nifti1Image(np.asarray(src.dataobj), src.affine)
    assert image.get_filename() is None
    seg = segmenter.segment(image, scan_id="coronal5")
    for method in METHODS:
        _assert_same_image(seg[method].labels, cli_out / "seg" / f"coronal5_{method}.nii.gz")
        _assert_same_row(seg[method].volumes, _cli_row(cli_out, "coronal5", method), skip=("path",))
        assert seg[method].volumes["path"] is None and seg[method].posteriors is None
    # an MGH image in memory: same voxels and geometry, same result
    iso = nib.load(str(scan_folder / "iso15.nii.gz"))
    mgh = single.segment(nib.MGHImage(np.asarray(iso.dataobj), iso.affine))
    assert mgh.scan_id == "image" and mgh.volumes["subject_id"] == "image"
    _assert_same_image(mgh.labels, cli_out / "seg" / "iso15_synthseg.nii.gz")
    _assert_same_row(mgh.volumes, _cli_row(cli_out, "iso15", "synthseg"), skip=("path", "scan_id", "subject_id"))


def test_one_method_results_directly_on_the_segmentation(single, cli_out, scan_folder):
    seg = single.segment(str(scan_folder / "sub" / "las1.nii"))
    _assert_same_image(seg.labels, cli_out / "seg" / "las1_synthseg.nii.gz")
    _assert_same_row(seg.volumes, _cli_row(cli_out, "las1", "synthseg"))
    assert seg.posteriors is None and seg.warnings == ()
    assert len(seg.volumes_table()) == 1


def test_a_4d_series_uses_its_first_volume_with_a_warning(single):
    rng = np.random.default_rng(2)
    first = head_phantom((30, 34, 28), rng)
    series = nib.Nifti1Image(np.stack([first, first[::-1]], axis=-1), np.diag([1.2, 1.2, 1.2, 1.0]))
    seg = single.segment(series, scan_id="series")
    assert seg.warnings == ("4-D image with 2 volumes: using the first",)
    plain = single.segment(nib.Nifti1Image(first, np.diag([1.2, 1.2, 1.2, 1.0])))
    np.testing.assert_array_equal(np.asarray(seg.labels.dataobj), np.asarray(plain.labels.dataobj))
    assert seg.volumes["scan_id"] == "series" and seg.volumes["subject_id"] == "series"


def test_segment_many_gives_the_cli_tables_and_files(segmenter, cli_out, scan_folder, tmp_path):
    out = tmp_path / "api"
    result = segmenter.segment_many(scan_folder, out, progress=False)
    assert (result.total, result.succeeded, result.failed, result.skipped) == (4, 3, 1, 0)
    assert not result.ok and result.out_dir == out
    pd.testing.assert_frame_equal(result.volumes, pd.read_parquet(cli_out / "volumes.parquet"))
    pd.testing.assert_frame_equal(result.failures, pd.read_csv(cli_out / "failures.csv", dtype=str))
    pd.testing.assert_frame_equal(pd.read_csv(out / "volumes.csv"), pd.read_csv(cli_out / "volumes.csv"))
    written = sorted(p.name for p in (out / "seg").iterdir())
    assert written == sorted(p.name for p in (cli_out / "seg").iterdir()) and len(written) == 6
    for name in written:
        np.testing.assert_array_equal(np.asarray(nib.load(str(out / "seg" / name)).dataobj),
                                      np.asarray(nib.load(str(cli_out / "seg" / name)).dataobj))
    prov = json.loads((out / "provenance.json").read_text())
    assert ".segment_many(" in prov["command"] and prov["result"]["succeeded"] == 3
    assert "network:s1" in result.timings and not (out / "posteriors").exists()

    again = segmenter.segment_many([scan_folder], out, progress=False)  # resume=True: only the failed scan
    assert (again.total, again.succeeded, again.failed, again.skipped) == (1, 0, 1, 3)
    pd.testing.assert_frame_equal(again.volumes, result.volumes)
    with pytest.raises(InputError) as refused:
        segmenter.segment_many(scan_folder, out, resume=False)
    assert refused.value.setting == "resume" and str(out) in str(refused.value)


def test_shards_partition_and_merge(single, scan_folder, tmp_path):
    images = [p for p in scan_folder.rglob("*.nii*") if p.name != "broken.nii.gz"]
    outs = [tmp_path / "a", tmp_path / "b"]
    parts = [single.segment_many(images, outs[0], shard="1/2", progress=False),
             single.segment_many(images, outs[1], shard=Shard(2, 2), progress=False)]
    assert sum(p.total for p in parts) == 3 and all(p.ok for p in parts)
    merged = merge(outs, tmp_path / "merged")
    assert sorted(merged.volumes.scan_id.unique()) == ["coronal5", "iso15", "las1"] and merged.failures.empty
    assert len(merged.volumes) == 3 and not merged.volumes.duplicated(["scan_id", "method"]).any()
    with pytest.raises(InputError, match="no segment results found"):
        merge([tmp_path / "merged"], tmp_path / "m2")


def test_bad_scans_name_the_file(segmenter, tmp_path):
    with pytest.raises(InputError, match=r"nope\.nii\.gz: file not found"):
        segmenter.segment(tmp_path / "nope.nii.gz")
    flat = nib.Nifti1Image(np.ones((40, 40), np.float32), np.eye(4))
    with pytest.raises(InputError, match=r"^image: 2-D image, a 3-D volume is required \(shape \(40, 40\)\)"):
        segmenter.segment(flat)
    with pytest.raises(InputError, match=r"^flat: 2-D image"):
        segmenter.segment(flat, scan_id="flat")
    with pytest.raises(InputError, match="expected a nibabel image .* got ndarray"):
        segmenter.segment(np.zeros((40, 40, 40), np.float32))
    with pytest.raises(InputError, match="is a folder") as folder:
        segmenter.segment(tmp_path)
    assert folder.value.setting == "image"
    constant = tmp_path / "constant.nii.gz"
    save(constant, np.full((30, 30, 30), 7, np.float32), np.eye(4))
    with pytest.raises(InputError, match=r"constant\.nii\.gz: image is constant \(7\)"):
        segmenter.segment(constant)


@pytest.mark.parametrize("kwargs, setting, message", [
    ({"methods": ("synthseg++",)}, "methods", r"unknown method\(s\) synthseg\+\+ \(choose from synthseg\+, "),
    ({"methods": ()}, "methods", "at least one method"),
    ({"device": "gpu"}, "device", "'gpu': choose auto, cpu, cuda"),
    ({"threads": -1}, "threads", "whole number >= 0"),
    ({"workers": 0}, "workers", "whole number >= 1"),
    ({"models": 3}, "models", "expected 'starter', a bundle folder or a Bundle"),
])
def test_bad_settings_name_the_setting(tiny_bundle, kwargs, setting, message):
    with pytest.raises(InputError, match=message) as error:
        Segmenter(**{"models": tiny_bundle.root, **kwargs})
    assert error.value.setting == setting and str(error.value).startswith(f"{setting}: ")


def test_bundle_problems_name_the_setting(tiny_bundle, tmp_path):
    from morphometry.segment.random_bundle import random_bundle

    with pytest.raises(ModelError, match="no bundle.json") as missing:
        Segmenter(tmp_path)
    assert missing.value.setting == "models"
    partial = random_bundle(tmp_path / "partial", features=2, roles=("synthseg",))
    with pytest.raises(ModelError, match="method synthseg\\+ needs network\\(s\\) d, s1, s2") as lacking:
        Segmenter(partial.root)
    assert lacking.value.setting == "methods"
    with pytest.raises(ModelError, match="parcellation needs network\\(s\\) parc") as parc:
        Segmenter(tiny_bundle.root, parc=True)
    assert parc.value.setting == "parc"
    with open(partial.root / "synthseg.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelError, match="does not match its sha256") as tampered:
        Segmenter(partial.root, "synthseg")
    assert tampered.value.setting == "models"


def test_shard_settings():
    assert Shard.parse("2/5") == Shard(2, 5)
    for text in ("3/2", "0/4", "x", "1/2/3"):
        with pytest.raises(InputError) as error:
            Shard.parse(text)
        assert error.value.setting == "shard"
