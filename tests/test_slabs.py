"""Slab-wise evaluation (morphometry.segment.slabs) against the whole graphs.

A U-Net evaluated slab by slab must give what the whole graph gives: every slab's rows are
computed from enough neighbouring rows (the halo) that the zero padding at a slab's cut never
reaches them, so the only differences are the engine's rounding. Checked network by network (several
architectures, slab thicknesses, depths of the cut, skip kept or recomputed), stage by stage
through the Engine (tissue hand-overs, S2, the flip-averaged and smoothed ``synthseg``, D_all),
and end to end through ``morpho segment --slab``; the whole pipeline in slabs is also held to the
original's outputs in tests/test_e2e_original.py.
"""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from morphometry.cli import main
from morphometry.errors import InputError, ModelError
from morphometry.segment.methods import METHODS
from morphometry.segment.networks import UNetSpec, random_weights, unet_model
from morphometry.segment.runtime import Engine, RuntimeConfig, choose_device, make_backend
from morphometry.segment.segmenter import Segmenter
from morphometry.segment.slabs import SlabPlan, SlabUNet, channel_argmax, halo, row_slabs, smooth_in_place
from morphometry.segment.stages import gaussian_kernel_1d

INSTALLED = [e for e in ("onnxruntime", "openvino") if importlib.util.find_spec(e)]
TOL = 1e-5  # softmax outputs; the engines' rounding differs between shapes of the same graph
STAGE_TOL = 1e-4  # softmax outputs of whole methods: the fixtures' tolerance

SPECS = {
    "k3-skips": UNetSpec(in_channels=2, n_labels=3, features=3, levels=4),
    "k5-no-top-skips": UNetSpec(in_channels=5, n_labels=5, features=2, levels=4, kernel=5, skips_removed=2),
    "one-conv-odd-halo": UNetSpec(in_channels=6, n_labels=4, features=2, levels=3, convs_per_level=1,
                                  multiplier=1, skips_removed=1),
}


class Collect:
    def __init__(self, channels, size):
        self.array = np.full((channels, *size), np.nan, np.float32)
        self.calls = []

    def __call__(self, a, b, values):
        self.calls.append((a, b))
        self.array[:, a:b] = values


def test_row_slabs_and_halo():
    assert row_slabs(48, 10) == [(0, 10), (10, 20), (20, 30), (30, 40), (40, 48)]
    assert row_slabs(32, 32) == [(0, 32)]
    assert halo(SPECS["k3-skips"]) == 2  # 2 convolutions x 1 row
    assert halo(SPECS["k5-no-top-skips"]) == 4  # 2 x 2
    assert halo(SPECS["one-conv-odd-halo"]) == 2  # 1 x 1, rounded up to even


@pytest.mark.parametrize("engine", INSTALLED)
@pytest.mark.parametrize("name", SPECS)
def test_slab_unet_equals_whole_graph(engine, name):
    spec = SPECS[name]
    rng = np.random.default_rng(5)
    weights = random_weights(spec, rng)
    backend = make_backend(RuntimeConfig(device="cpu", engine=engine, threads=1))
    backend.compile("whole", unet_model(spec, weights))
    size = (48, 32, 16) if spec.levels == 4 else (44, 24, 20)
    x = rng.normal(size=(spec.in_channels, *size)).astype(np.float32)
    ref = backend.infer("whole", {"input": x[None]}, ["posteriors"])[0].copy()  # a view until the next call
    for split in range(1, spec.levels):
        for thickness in (4, 10, size[0]):
            net = SlabUNet(backend, f"{split}-{thickness}", spec, weights, SlabPlan(thickness, split))
            out = Collect(spec.n_labels, size)
            net.run(lambda lo, hi: x[:, lo:hi], size, out)
            assert out.calls == row_slabs(size[0], thickness)
            err = np.abs(out.array - ref[0]).max()
            assert err <= TOL, f"split {split}, {thickness} rows: {err}"


def test_a_slab_cut_without_halo_would_differ(monkeypatch):
    """The halo matters: with none, the rows next to each cut change (the check above can fail)."""
    spec = SPECS["k3-skips"]
    rng = np.random.default_rng(6)
    weights = random_weights(spec, rng)
    backend = make_backend(RuntimeConfig(device="cpu", engine=INSTALLED[0], threads=1))
    backend.compile("whole", unet_model(spec, weights))
    size = (48, 32, 16)
    x = rng.normal(size=(spec.in_channels, *size)).astype(np.float32)
    ref = backend.infer("whole", {"input": x[None]}, ["posteriors"])[0].copy()  # a view until the next call
    net = SlabUNet(backend, "no-halo", spec, weights, SlabPlan(8, 1))
    net.halo = 0
    out = Collect(spec.n_labels, size)
    net.run(lambda lo, hi: x[:, lo:hi], size, out)
    assert np.abs(out.array - ref[0]).max() > 1e-3


@pytest.mark.parametrize("engine", INSTALLED)
def test_engine_stages_in_slabs_equal_the_stage_graphs(tiny_bundle, engine):
    """Every method (S1/D tissue hand-overs, S2, synthseg with the flip average and smoothing, D_all)."""
    rng = np.random.default_rng(8)
    image = rng.normal(size=(64, 64, 32)).astype(np.float32)
    methods = list(METHODS.values())
    results = {}
    for slab in (0, 12):
        eng = Engine(tiny_bundle, methods, RuntimeConfig(device="cpu", engine=engine, threads=1, slab=slab))
        results[slab] = {m.name: post.copy() for m, _, post in eng.segment(image)}
    for name in results[0]:
        whole, slabs = results[0][name], results[12][name]
        assert whole.shape == slabs.shape
        # The fixtures' tolerance here, not the networks' 1e-5: synthseg's smoothing runs on the host in
        # slabs and in the graph otherwise, and a smoothed near-tie that flips an argmax hand-over moves
        # the next network's softmax by up to ~4e-5 around it (synthseg+d on OpenVINO).
        close = np.abs(whole - slabs).max(axis=0) <= STAGE_TOL
        assert close.mean() >= 0.9999, f"{name}: {1 - close.mean():.2%} of voxels differ"


def test_segment_cli_with_slabs_matches_whole(tiny_bundle, scan_folder, tmp_path):
    inputs = [str(p) for p in sorted(scan_folder.rglob("*.nii*")) if "broken" not in p.name]
    tables = {}
    for slab in ("0", "8"):
        out = tmp_path / f"slab{slab}"
        code = main(["-q", "segment", *inputs, "-o", str(out), "--models", str(tiny_bundle.root), "--device", "cpu",
                     "--method", "synthseg+", "--method", "synthseg", "--slab", slab])
        assert code == 0
        tables[slab] = pd.read_csv(out / "volumes.csv").set_index(["scan_id", "method"]).sort_index()
        provenance = json.loads((out / "provenance.json").read_text())
        assert provenance["slab"] == int(slab)
    numeric = tables["0"].select_dtypes("number").columns
    np.testing.assert_allclose(tables["8"][numeric], tables["0"][numeric], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("engine", INSTALLED)
def test_auto_slabs_with_openvino_only(tiny_bundle, engine):
    seg = Segmenter(tiny_bundle, "synthseg+", device="cpu", engine=engine)
    assert seg.engine.slab == (16 if engine == "openvino" else 0)
    assert Segmenter(tiny_bundle, "synthseg+", device="cpu", engine=engine, slab=8).engine.slab == 8


@pytest.mark.parametrize("slab", [3, -2])
def test_bad_slab_is_refused(slab):
    with pytest.raises(InputError, match="even number") as err:
        choose_device(RuntimeConfig(device="cpu", slab=slab))
    assert err.value.setting == "slab"


def test_slab_on_a_gpu_is_refused():
    with pytest.raises(InputError, match="CPU memory saving"):
        choose_device(RuntimeConfig(device="cuda", slab=32))


def test_cli_bad_slab_one_line(tiny_bundle, scan_folder, tmp_path, capsys):
    code = main(["segment", str(scan_folder / "iso15.nii.gz"), "-o", str(tmp_path / "o"), "--models",
                 str(tiny_bundle.root), "--device", "cpu", "--slab", "7"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--slab" in err[0] and "even" in err[0]


def test_bundle_without_architecture_cannot_run_in_slabs(tiny_bundle, tmp_path):
    root = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.root, root)
    doc = json.loads((root / "bundle.json").read_text())
    doc["networks"]["s1"]["architecture"] = {}
    (root / "bundle.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="cannot run in slabs") as err:
        Segmenter(root, "synthseg+", device="cpu", slab=32)
    assert "s1" in str(err.value)
    assert Segmenter(root, "synthseg+", device="cpu").engine.slab == 0  # auto: whole graphs need no record
    assert Segmenter(root, "synthseg+", device="cpu", slab=0).engine.slab == 0


def test_which_methods_stream(tiny_bundle):
    methods = [METHODS[n] for n in ("synthseg+", "s1+s2", "s1+s2+d", "synthseg", "synthseg+d")]
    from morphometry.segment.methods import resolve_methods

    eng = Engine(tiny_bundle, resolve_methods([m.name for m in methods]),
                 RuntimeConfig(device="cpu", engine=INSTALLED[0], threads=1, slab=8))
    streams = {m.name: eng.streams(m) for m in eng.methods}
    # s1+s2's posteriors feed s1+s2+d; synthseg's stage smooths the whole volume
    assert streams == {"synthseg+": True, "s1+s2": False, "s1+s2+d": True, "synthseg": False, "synthseg+d": True}
    whole = Engine(tiny_bundle, [METHODS["synthseg+"]], RuntimeConfig(device="cpu", engine=INSTALLED[0], slab=0))
    assert not whole.streams(METHODS["synthseg+"])
    with pytest.raises(ValueError, match="cannot stream"):
        next(eng.segment(np.zeros((32, 32, 32), np.float32), {"s1+s2": object()}))


def test_streamed_postprocessing_gives_the_dense_results(tmp_path, monkeypatch):
    """Labels and volumes of a streamed method equal those postprocessed from its whole posteriors
    (asked for with ``posteriors=True``, which turns streaming off)."""
    from morphometry.segment import streamed_postprocess

    calls = []
    original = streamed_postprocess.FastStream.result
    monkeypatch.setattr(streamed_postprocess.FastStream, "result", lambda self: calls.append(1) or original(self))
    import nibabel as nib

    from morphometry.segment.synthesis.anatomy import default_anatomy

    anatomy = default_anatomy().downsampled(2)  # a head the starter models segment (2 mm)
    rng = np.random.default_rng(0)
    means = rng.uniform(20, 120, size=int(anatomy.labels.max()) + 1)
    image = means[anatomy.labels] + rng.normal(0, 3, anatomy.labels.shape)
    scan = tmp_path / "head.nii.gz"
    nib.save(nib.Nifti1Image(image.astype(np.float32), anatomy.affine), scan)
    seg = Segmenter("starter", ["synthseg+", "s1+s2+d"], device="cpu", engine=INSTALLED[-1], slab=16)
    streamed = seg.segment(scan)
    assert len(calls) == 2
    dense = seg.segment(scan, posteriors=True)
    assert len(calls) == 2
    for name in ("synthseg+", "s1+s2+d"):
        np.testing.assert_array_equal(streamed[name].labels.get_fdata(), dense[name].labels.get_fdata())
        row, ref = streamed[name].volumes, dense[name].volumes
        numbers = [k for k, v in ref.items() if isinstance(v, float)]
        assert len(numbers) > 30 and ref["total_intracranial"] > 0
        np.testing.assert_array_equal(row[numbers].to_numpy(float), ref[numbers].to_numpy(float))


@pytest.mark.parametrize("threads", [1, 3])
def test_host_smoothing_is_the_separable_gaussian_with_zero_padding(threads):
    """synthseg's posterior smoothing on the host (channels spread over threads) against a float64
    sum of shifted copies of the zero-padded volume, weighted by the 1-D kernel along each axis."""
    rng = np.random.default_rng(0)
    post = rng.random((5, 9, 7, 6)).astype(np.float32)
    kernel = gaussian_kernel_1d(0.5)
    r = len(kernel) // 2
    expected = post.astype(np.float64)
    for axis in (1, 2, 3):
        pad = [(0, 0)] * 4
        pad[axis] = (r, r)
        padded = np.pad(expected, pad)
        n = expected.shape[axis]
        expected = sum(w * np.take(padded, range(i, i + n), axis=axis) for i, w in enumerate(kernel))
    smooth_in_place(post, threads=threads)
    np.testing.assert_allclose(post, expected, rtol=0, atol=1e-6)


def test_channel_argmax_is_numpys_argmax_with_ties_to_the_first():
    rng = np.random.default_rng(1)
    post = rng.random((33, 6, 5, 4)).astype(np.float32)
    post[[4, 9, 20], 0] = 2.0  # a three-way tie on a whole row: channel 4 wins
    post[:, 1, 0, 0] = 0.5  # all channels equal: channel 0
    labels = channel_argmax(post)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, np.argmax(post, axis=0))
    assert (labels[0] == 4).all() and labels[1, 0, 0] == 0
