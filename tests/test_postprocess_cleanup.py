"""Posterior clean-up on hand-made posteriors (the original's ``predict_synthseg.postprocess``)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from morphometry.errors import ModelError
from morphometry.labels import SYNTHSEG_2
from morphometry.segment.postprocess import PostprocessConfig, largest_component, postprocess

LS = SYNTHSEG_2
C = LS.n_channels
TOPOLOGY = PostprocessConfig(topology=True)
FAST = PostprocessConfig(topology=False)
PADDED = (32, 32, 32)
INNER = (slice(4, 28), slice(4, 28), slice(4, 28))
CH = {value: LS.channel_of(value) for value in LS.values}  # FreeSurfer value -> channel


def posteriors_from(channel_map: np.ndarray, p: float = 0.9) -> np.ndarray:
    """(C, X, Y, Z): the mapped channel gets p and background 1 - p; background voxels get 1."""
    post = np.zeros((C,) + channel_map.shape, dtype=np.float32)
    for c in np.unique(channel_map):
        where = channel_map == c
        post[c][where] = 1.0 if c == 0 else p
        if c != 0:
            post[0][where] = 1.0 - p
    return post


def box(x, y=(8, 16), z=(8, 16)):
    return (slice(*x), slice(*y), slice(*z))


def crop(a):
    return a[INNER]


@pytest.mark.parametrize("config", [TOPOLOGY, FAST], ids=["topology", "fast"])
def test_stray_blob_outside_the_largest_component_is_removed(config):
    cmap = np.zeros(PADDED, dtype=np.int64)
    cmap[box((8, 16))] = CH[17]  # left hippocampus, 512 voxels
    cmap[box((22, 25), (8, 11), (8, 11))] = CH[17]  # stray blob of the same label
    cmap[box((22, 25), (20, 23), (20, 23))] = CH[16]  # stray blob of another label
    seg = postprocess(posteriors_from(cmap), LS, INNER, config)
    labels = np.zeros(PADDED, dtype=np.int32)
    labels[box((8, 16))] = 17
    assert seg.labels.shape == (24, 24, 24) and seg.labels.dtype == np.int32
    assert np.array_equal(seg.labels, crop(labels))
    stray = crop(cmap > 0) & (seg.labels == 0)
    assert stray.sum() == 2 * 27
    assert np.all(seg.posteriors[0][stray] == 1.0) and np.all(seg.posteriors[1:, stray] == 0.0)
    np.testing.assert_allclose(seg.posteriors[CH[17]][crop(labels == 17)], 0.9, rtol=1e-6)


def test_topology_classes_are_cleaned_as_unions():
    # along x: WM (class 4) 8..15, cortex (class 4) 16..17, brainstem (class 3) 18..19, cortex 20..24
    cmap = np.zeros(PADDED, dtype=np.int64)
    cmap[box((8, 16))] = CH[2]
    cmap[box((16, 18))] = CH[3]
    cmap[box((18, 20))] = CH[16]
    cmap[box((20, 25))] = CH[3]
    seg = postprocess(posteriors_from(cmap), LS, INNER, TOPOLOGY)
    got = np.zeros(PADDED, dtype=np.int32)
    got[INNER] = seg.labels
    # per channel, the cortex piece 20..24 (320 voxels) would beat 16..17 (128 voxels); as a class,
    # WM + cortex 8..17 (640 voxels) wins and the far cortex piece goes
    assert np.all(got[box((8, 16))] == 2)
    assert np.all(got[box((16, 18))] == 3)
    assert np.all(got[box((18, 20))] == 16)
    assert np.all(got[box((20, 25))] == 0)
    # fast mode has no topology step: everything stays (one foreground component)
    fast = np.zeros(PADDED, dtype=np.int32)
    fast[INNER] = postprocess(posteriors_from(cmap), LS, INNER, FAST).labels
    assert np.all(fast[box((20, 25))] == 3)


def test_a_topology_class_with_no_voxel_above_the_threshold_is_zeroed_everywhere():
    """Fixture README, difference 7: the largest component of an empty mask is empty, so all of the
    class's channels become 0 (volume 0.0) even where their posterior was 0.2."""
    cmap = np.zeros(PADDED, dtype=np.int64)
    cmap[box((8, 16))] = CH[16]  # brain-stem 0.9: the foreground component
    post = posteriors_from(cmap)
    post[CH[17]][box((8, 16))] = 0.2  # left hippocampus (class 10) at 0.2 < 0.25 everywhere
    post[CH[16]][box((8, 16))] = 0.7
    seg = postprocess(post, LS, INNER, TOPOLOGY)
    assert not seg.posteriors[CH[17]].any()
    assert np.array_equal(seg.labels[crop(cmap > 0)], np.full(512, 16))
    np.testing.assert_allclose(seg.posteriors[CH[16]][crop(cmap > 0)], 0.7 / 0.8, rtol=1e-6)
    fast = postprocess(post, LS, INNER, FAST)  # compared in float32, as the original: float32(0.2) <= 0.2
    assert not fast.posteriors[CH[17]].any()


def test_padding_is_kept_during_the_topology_step_only():
    # a blob inside the volume touches the border and joins the main structure through the padding
    cmap = np.zeros(PADDED, dtype=np.int64)
    cmap[box((10, 20), (4, 16), (8, 16))] = CH[10]  # left thalamus, touching the border y = 4
    cmap[box((24, 28), (4, 6), (8, 16))] = CH[10]  # inside, on the border y = 4
    cmap[box((10, 28), (1, 4), (8, 16))] = CH[10]  # bridge in the padding (y < 4)
    topo = postprocess(posteriors_from(cmap), LS, INNER, TOPOLOGY)
    fast = postprocess(posteriors_from(cmap), LS, INNER, FAST)
    blob = (slice(20, 24), slice(0, 2), slice(4, 12))  # the border blob in inner coordinates
    assert np.all(topo.labels[blob] == 10)
    assert np.all(fast.labels[blob] == 0)
    assert np.all(fast.labels[6:16, 0:12, 4:12] == 10)


def test_fast_threshold_applies_to_non_background_channels():
    post = np.zeros((C,) + PADDED, dtype=np.float32)
    post[0] = 0.1
    main = box((8, 16))
    post[CH[2]][main] = 0.5
    post[CH[3]][main] = np.float32(0.2)  # exactly the threshold: removed
    post[CH[4]][main] = 0.2001  # kept
    post[CH[5]][main] = 0.15  # removed
    seg = postprocess(post, LS, INNER, FAST)
    centre = (8, 8, 8)  # inner coordinates of padded (12, 12, 12)
    expected = np.zeros(C)
    expected[0], expected[CH[2]], expected[CH[4]] = 0.1, 0.5, 0.2001
    expected /= expected.sum()
    np.testing.assert_allclose(seg.posteriors[(slice(None),) + centre], expected, rtol=1e-6)
    # the topology mode has no 0.2 threshold
    topo = postprocess(post, LS, INNER, TOPOLOGY)
    assert topo.posteriors[(CH[5],) + centre] > 0


def test_all_zero_voxel_becomes_background():
    post = np.zeros((C,) + PADDED, dtype=np.float32)
    post[0] = 1.0
    post[0][box((8, 16))] = 0.0
    post[CH[17]][box((8, 16))] = 1.0
    post[0][box((20, 23))] = 0.0  # zero background probability ...
    post[CH[18]][box((20, 23))] = 1.0  # ... and a stray blob that is removed: all channels 0
    for config in (TOPOLOGY, FAST):
        seg = postprocess(post, LS, INNER, config)
        assert np.all(np.isfinite(seg.posteriors))
        empty = (slice(16, 19), slice(4, 12), slice(4, 12))
        assert np.all(seg.labels[empty] == 0)
        assert np.all(seg.posteriors[(0,) + empty] == 1.0)
        np.testing.assert_allclose(seg.posteriors.sum(axis=0), 1.0, rtol=1e-6)


def test_ties_go_to_the_lowest_channel():
    post = np.zeros((C,) + PADDED, dtype=np.float32)
    post[0] = 1.0
    post[0][box((8, 16))] = 0.0
    post[CH[3]][box((8, 16))] = 0.5
    post[CH[2]][box((8, 16))] = 0.5
    seg = postprocess(post, LS, INNER, FAST)
    assert np.all(seg.labels[4:12, 4:12, 4:12] == 2)


def test_wrong_channel_count_is_a_model_error():
    with pytest.raises(ModelError, match="33 labels"):
        postprocess(np.zeros((5,) + PADDED, dtype=np.float32), LS, INNER, FAST)


def test_largest_component_is_six_connected_with_ties_to_the_first():
    mask = np.zeros((6, 6, 6), dtype=bool)
    mask[0, 0, 0] = mask[1, 1, 0] = True  # diagonal neighbours: two components under 6-connectivity
    box_, keep = largest_component(mask)
    assert box_ == (slice(0, 1), slice(0, 1), slice(0, 1)) and keep.all()
    assert largest_component(np.zeros((3, 3, 3), dtype=bool)) is None


# --- comparison with a plain full-volume implementation ------------------------------------------

def _largest(mask: np.ndarray) -> np.ndarray:
    labelled, n = ndimage.label(mask)
    if n == 0:
        return mask
    counts = np.bincount(labelled.ravel())
    counts[0] = 0
    return labelled == np.argmax(counts)


def reference(posteriors: np.ndarray, inner, topology: bool):
    """2.8 A-D on whole volumes, written straight from the text."""
    p = posteriors.copy() if topology else posteriors[(slice(None),) + inner].copy()
    p[1:] *= _largest(p[1:].sum(axis=0) > 0.25)
    if topology:
        classes = LS.topology_classes
        for k in np.unique(classes[classes != 0]):
            members = classes == k
            p[members] *= _largest((p[members] > 0.25).any(axis=0))
        p = p[(slice(None),) + inner]
    else:
        p[1:][p[1:] <= 0.2] = 0
    total = p.sum(axis=0)
    p[0][total == 0] = 1
    total[total == 0] = 1
    p = p / total
    return p, LS.values[np.argmax(p, axis=0)]


def random_posteriors(rng: np.random.Generator, shape) -> np.ndarray:
    """Softmax of smooth random logits; background dominates outside a ball."""
    logits = ndimage.gaussian_filter(rng.normal(size=(C,) + shape), sigma=(0, 1.5, 1.5, 1.5)) * 12
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    logits[0] += np.where((grid**2).sum(axis=0) > 0.6, 8.0, -2.0)
    e = np.exp(logits - logits.max(axis=0))
    return (e / e.sum(axis=0)).astype(np.float32)


@pytest.mark.parametrize("config", [TOPOLOGY, FAST], ids=["topology", "fast"])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_a_plain_full_volume_implementation(config, seed):
    rng = np.random.default_rng(seed)
    post = random_posteriors(rng, (40, 36, 44))
    inner = (slice(3, 37), slice(6, 36), slice(0, 41))
    original = post.copy()
    seg = postprocess(post, LS, inner, config)
    ref_post, ref_labels = reference(post, inner, config.topology)
    assert np.array_equal(post, original)  # input untouched
    np.testing.assert_allclose(seg.posteriors, ref_post, atol=2e-6)
    assert np.array_equal(seg.labels, ref_labels)
    np.testing.assert_allclose(seg.posteriors.sum(axis=0), 1.0, rtol=2e-6)
    assert np.array_equal(seg.labels, LS.values[np.argmax(seg.posteriors, axis=0)])
    assert len(np.unique(seg.labels)) > 5  # the case is not trivial


@pytest.mark.parametrize("topology", [True, False], ids=["topology", "fast"])
def test_in_place_gives_the_same_result_as_a_view_of_the_input(topology):
    post = random_posteriors(np.random.default_rng(2), (40, 36, 44))
    inner = (slice(3, 37), slice(6, 36), slice(0, 41))
    copied = postprocess(post, LS, inner, PostprocessConfig(topology=topology))
    in_place = postprocess(post, LS, inner, PostprocessConfig(topology=topology, in_place=True))
    assert np.shares_memory(in_place.posteriors, post)
    assert np.array_equal(in_place.posteriors, copied.posteriors)
    assert np.array_equal(in_place.labels, copied.labels)
