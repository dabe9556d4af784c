"""Keras HDF5 import against the reference outputs of the original SynthSeg networks.

Fixtures: ../shared/fixtures/keras-reference (README.md there): small-width networks with random
weights, built and run by the original Keras code. Every stage is fed the input Keras used and
compared with the README's tolerances: softmax 1e-4, logits 1e-3, maxprob 1e-4 where the argmax
agrees, argmax equal wherever the top-2 margin is >= 1e-4, QC scores rtol 1e-4 / atol 1e-6.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from morphometry.labels import SYNTHSEG_1, SYNTHSEG_2
from morphometry.segment import stages
from morphometry.segment.bundle import load_bundle, verify_bundle
from morphometry.segment.keras_import import import_keras

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "keras-reference"
pytestmark = pytest.mark.skipif(not (FIXTURES / "README.md").is_file(),
                                reason=f"Keras reference fixtures not found at {FIXTURES}")
SHAPES = ("64x64x64", "32x64x96")
ROBUST_STAGES = {"unet": "s1", "l2l": "d", "unet2": "s2"}


def session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run(path, x_last: np.ndarray, outputs=("logits", "posteriors")) -> list[np.ndarray]:
    """Run a network file on a channels-last (1, A1, A2, A3, C) input."""
    x = np.ascontiguousarray(np.transpose(x_last, (0, 4, 1, 2, 3)), np.float32)
    return session(path).run(list(outputs), {"input": x})


def one_hot(labels: np.ndarray, n: int) -> np.ndarray:
    """(A1, A2, A3) labels -> (1, A1, A2, A3, n) float32."""
    return (labels[None, ..., None] == np.arange(n)).astype(np.float32)


def assert_stage(logits: np.ndarray, post: np.ndarray, ref, name: str) -> None:
    """Compare (1, K, A1, A2, A3) outputs with the reference of Keras layer ``name``_*."""
    i1, i2, i3 = ref["sample_idx"].T
    np.testing.assert_allclose(logits[0][:, i1, i2, i3].T, ref[f"{name}_likelihood_samples"], rtol=0, atol=1e-3)
    np.testing.assert_allclose(post[0][:, i1, i2, i3].T, ref[f"{name}_prediction_samples"], rtol=0, atol=1e-4)
    n_vox = post[0, 0].size
    np.testing.assert_allclose(logits[0].sum(axis=(1, 2, 3), dtype=np.float64), ref[f"{name}_likelihood_sum"],
                               rtol=0, atol=1e-3 * n_vox)
    np.testing.assert_allclose(post[0].sum(axis=(1, 2, 3), dtype=np.float64), ref[f"{name}_prediction_sum"],
                               rtol=0, atol=1e-4 * n_vox)
    top2 = np.partition(post[0], -2, axis=0)[-2:]
    margin = top2[1] - top2[0]
    argmax = post[0].argmax(axis=0)
    agree = argmax == ref[f"{name}_argmax"]
    assert agree[margin >= 1e-4].all(), f"{name}: argmax differs at {np.sum(~agree & (margin >= 1e-4))} voxels"
    np.testing.assert_allclose(top2[1][agree], ref[f"{name}_maxprob"][agree], rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """The fixture files imported: weights-only robust + synthseg + parc + qc, and the full-model robust."""
    root = tmp_path_factory.mktemp("import")
    files = [FIXTURES / f for f in ("robust_weights.h5", "synthseg_weights.h5", "parc_weights.h5", "qc_weights.h5")]
    return {"weights": import_keras(files, root / "weights"),
            "full": import_keras([FIXTURES / "robust_full.h5"], root / "full")}


def test_bundle_records_sources_and_labels(bundles):
    bundle = load_bundle(bundles["weights"].root)
    assert verify_bundle(bundle) == []
    assert set(bundle.networks) == {"s1", "d", "s2", "synthseg", "parc", "qc"}
    records = {r["file"]: r for r in bundle.provenance["files"]}
    for name, record in records.items():
        assert record["sha256"] == hashlib.sha256((FIXTURES / name).read_bytes()).hexdigest()
        assert record["layout"] == "weights-only"
    assert records["robust_weights.h5"]["roles"] == ["s1", "d", "s2"]
    assert bundle.networks["s2"].labels == SYNTHSEG_2.values.tolist()
    assert bundle.networks["parc"].labels[:3] == [0, 1001, 1002] and len(bundle.networks["parc"].labels) == 69
    assert bundle.networks["d"].architecture["kernel"] == 5 and bundle.networks["d"].architecture["skips_removed"] == 2
    assert bundle.networks["s2"].architecture["in_channels"] == 6
    assert bundles["full"].provenance["files"][0]["layout"] == "full-model"
    assert bundles["full"].provenance["files"][0]["keras_version"] == "2.21.0"


@pytest.mark.parametrize("layout", ["weights", "full"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("stage", list(ROBUST_STAGES))
def test_robust_stage_matches_keras(bundles, layout, shape, stage):
    ref = np.load(FIXTURES / f"robust_{shape}.npz")
    image = ref["input"]
    x = {"unet": image, "l2l": one_hot(ref["unet_argmax"], 5),
         "unet2": np.concatenate([image, one_hot(ref["l2l_argmax"], 5)], axis=-1)}[stage]
    logits, post = run(bundles[layout].path(ROBUST_STAGES[stage]), x)
    assert_stage(logits, post, ref, stage)


@pytest.mark.parametrize("shape", SHAPES)
def test_robust_chain_through_stage_graphs(bundles, shape):
    """S1 -> D -> S2 with the bundle's hand-over graphs; S2 is compared only when the chain's own
    S1 and D argmax maps equal Keras's (README: the chain is discontinuous at near-ties)."""
    import onnx

    ref = np.load(FIXTURES / f"robust_{shape}.npz")
    bundle = bundles["weights"]
    net = {role: onnx.load(str(bundle.path(role))) for role in ("s1", "d", "s2")}
    image = np.ascontiguousarray(np.transpose(ref["input"], (0, 4, 1, 2, 3)))

    def run_stage(model, feeds):
        import onnxruntime as ort

        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(None, feeds)[0]

    tissue = run_stage(stages.tissue_stage(net["s1"]), {"image": image})
    if not np.array_equal(tissue[0].argmax(axis=0), ref["unet_argmax"]):
        pytest.skip("an S1 near-tie voxel flipped; the chain is compared stage by stage above")
    denoised = run_stage(stages.denoise_stage(net["d"]), {"previous": tissue})
    if not np.array_equal(denoised[0].argmax(axis=0), ref["l2l_argmax"]):
        pytest.skip("a D near-tie voxel flipped; the chain is compared stage by stage above")
    post = run_stage(stages.s2_stage(net["s2"]), {"image": image, "previous": denoised})
    i1, i2, i3 = ref["sample_idx"].T
    np.testing.assert_allclose(post[0][:, i1, i2, i3].T, ref["unet2_prediction_samples"], rtol=0, atol=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["synthseg", "parc"])
def test_single_network_matches_keras(bundles, shape, kind):
    ref = np.load(FIXTURES / f"{kind}_{shape}.npz")
    logits, post = run(bundles["weights"].path(kind), ref["input"])
    assert_stage(logits, post, ref, {"synthseg": "unet", "parc": "unet_parc"}[kind])


@pytest.mark.parametrize("shape", SHAPES)
def test_qc_matches_keras(bundles, shape, tmp_path):
    import onnx

    from morphometry.segment.keras_import import infer_qc, read_keras_h5
    from morphometry.segment.qcnet import qc_model

    ref = np.load(FIXTURES / f"qc_{shape}.npz")
    (scores,) = run(bundles["weights"].path("qc"), ref["input"], outputs=("scores",))
    np.testing.assert_allclose(scores, ref["qc_final_pred"], rtol=1e-4, atol=1e-6)
    # the intermediate tensors, through the same weights with extra outputs
    kf = read_keras_h5(FIXTURES / "qc_weights.h5")
    taps = ("bn_down", "maxpool", "final_conv_0", "final_conv_1")
    onnx.save(qc_model(infer_qc(kf), kf.networks["qc"], taps=taps), str(tmp_path / "qc_taps.onnx"))
    outs = run(tmp_path / "qc_taps.onnx", ref["input"], outputs=taps)
    for tap, out in zip(("qc_bn_down_3", "qc_maxpool_3", "qc_final_conv_0", "qc_final_conv_1"), outs):
        expected = ref[tap]
        atol = 1e-5 * max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(np.transpose(out, (0, 2, 3, 4, 1)), expected, rtol=0, atol=atol, err_msg=tap)


def test_synthseg_1_gets_a_zero_csf_channel(tmp_path):
    """A 32-label (SynthSeg 1.0) network: drop the CSF column of the 2.0 fixture's head; its posteriors
    must be the softmax of the remaining reference logits, with CSF exactly 0 in the 33-label order."""
    path = tmp_path / "synthseg_1.0.h5"
    shutil.copy(FIXTURES / "synthseg_weights.h5", path)
    csf = SYNTHSEG_2.channel_of(24)
    with h5py.File(path, "r+") as fh:
        group = fh["unet_likelihood"]
        for name in group.attrs["weight_names"]:
            name = name.decode() if isinstance(name, bytes) else name
            data = np.delete(group[name][()], csf, axis=-1)
            del group[name]
            group.create_dataset(name, data=data)
    bundle = import_keras([path], tmp_path / "bundle")
    net = bundle.networks["synthseg"]
    assert net.labels == SYNTHSEG_2.values.tolist()
    assert net.architecture["source_labels"] == SYNTHSEG_1.values.tolist()
    assert net.architecture["zero_channels"] == [24]
    ref = np.load(FIXTURES / "synthseg_32x64x96.npz")
    logits, post = run(bundle.path("synthseg"), ref["input"])
    i1, i2, i3 = ref["sample_idx"].T
    keep = [c for c in range(33) if c != csf]
    ref_logits = ref["unet_likelihood_samples"][:, keep].astype(np.float64)
    ref_post = np.exp(ref_logits - ref_logits.max(axis=1, keepdims=True))
    ref_post /= ref_post.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(logits[0][keep][:, i1, i2, i3].T, ref_logits, rtol=0, atol=1e-3)
    np.testing.assert_allclose(post[0][keep][:, i1, i2, i3].T, ref_post, rtol=0, atol=1e-4)
    assert (post[0][csf] == 0).all() and (logits[0][csf] == np.finfo(np.float32).min).all()
    # through the method's own glue (smoothing and flip averaging): CSF stays 0, channels sum to ~1 inside
    import onnx
    import onnxruntime as ort

    stage = stages.synthseg_stage(onnx.load(str(bundle.path("synthseg"))), SYNTHSEG_2.flip_channels)
    sess = ort.InferenceSession(stage.SerializeToString(), providers=["CPUExecutionProvider"])
    (smoothed,) = sess.run(None, {"image": np.ascontiguousarray(np.transpose(ref["input"], (0, 4, 1, 2, 3)))})
    assert (smoothed[0][csf] == 0).all()
    np.testing.assert_allclose(smoothed[0].sum(axis=0)[1:-1, 1:-1, 1:-1], 1.0, atol=1e-5)
