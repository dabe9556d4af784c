"""Model bundles: a folder with ``bundle.json`` and one ONNX file per network.

``bundle.json`` names each network's role (``s1``, ``d``, ``s2``, ``synthseg``, ``d_all``,
``parc``, ``qc``), its input channels and their meaning, its output labels in channel order, the
working resolution (mm), the intensity normalisation, provenance (sha256 of every file; the
imported-from file and its sha256, or the training configuration) and the licence. Each network
file has the input ``input`` (N, C_in, X, Y, Z) and the outputs ``logits`` and ``posteriors``
(N, C_out, X, Y, Z) (QC: ``scores`` (N, 9)).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx

from morphometry.errors import ModelError
from morphometry.labels import SYNTHSEG_2, TISSUE_GROUPS
from morphometry.tables import atomic_write

FORMAT = "morphometry-bundle/1"
ROLES = ("s1", "d", "s2", "synthseg", "d_all", "parc", "qc")

# What each role reads and writes (channel meanings), for checks and for bundle.json.
ROLE_INPUTS = {
    "s1": ["image"],
    "d": [f"tissue:{g}" for g in TISSUE_GROUPS],
    "s2": ["image"] + [f"tissue:{g}" for g in TISSUE_GROUPS],
    "synthseg": ["image"],
    "d_all": [f"label:{v}" for v in SYNTHSEG_2.values.tolist()],
    "parc": ["image", "not_cortex", "cortex"],
    "qc": [f"qc_group:{i}" for i in range(9)],
}
TISSUE_LABELS = list(range(len(TISSUE_GROUPS)))


@dataclass(frozen=True)
class Network:
    """One network of a bundle."""

    role: str
    file: str
    sha256: str
    input_channels: list[str]
    labels: list[int]  # output values in channel order (tissue groups, FreeSurfer labels, QC groups)
    architecture: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Bundle:
    """A verified model bundle on disk."""

    root: Path
    model_id: str
    resolution_mm: float
    networks: dict[str, Network]
    normalisation: dict
    provenance: dict
    licence: str
    description: str = ""
    min_size: int = 128  # voxels per axis the padded network input has at least (official: 128)

    def path(self, role: str) -> Path:
        return self.root / self.networks[role].file

    def has(self, *roles: str) -> bool:
        return all(r in self.networks for r in roles)

    def sha256(self) -> str:
        """Hash of ``bundle.json`` (which holds the hash of every network file)."""
        return file_sha256(self.root / "bundle.json")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_bundle(root: Path, model_id: str, models: dict[str, tuple[onnx.ModelProto, list[int], dict]],
                 provenance: dict, resolution_mm: float = 1.0, licence: str = "", description: str = "",
                 min_size: int = 128) -> Bundle:
    """Write ONNX files and ``bundle.json``; ``models`` maps role -> (model, labels, architecture)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    networks = {}
    for role, (model, labels, arch) in models.items():
        if role not in ROLES:
            raise ModelError(f"unknown network role {role!r} (known: {', '.join(ROLES)})")
        path = root / f"{role}.onnx"
        atomic_write(path, lambda tmp, m=model: onnx.save(m, str(tmp)))
        networks[role] = Network(role, path.name, file_sha256(path), ROLE_INPUTS[role], list(map(int, labels)), arch)
    doc = {
        "format": FORMAT,
        "model_id": model_id,
        "description": description,
        "resolution_mm": resolution_mm,
        "min_size": min_size,
        "normalisation": {"kind": "percentile", "low": 0.5, "high": 99.5},
        "licence": licence,
        "provenance": provenance,
        "networks": {role: asdict(net) for role, net in networks.items()},
    }
    atomic_write(root / "bundle.json", lambda tmp: tmp.write_text(json.dumps(doc, indent=1)))
    return load_bundle(root)


def load_bundle(root: str | Path) -> Bundle:
    """Read ``bundle.json``; ModelError naming what is wrong."""
    root = Path(root)
    meta = root / "bundle.json"
    if not meta.is_file():
        raise ModelError(f"{root}: not a model bundle (no bundle.json)")
    try:
        doc = json.loads(meta.read_text())
        if doc.get("format") != FORMAT:
            raise ModelError(f"{meta}: unsupported bundle format {doc.get('format')!r} (expected {FORMAT})")
        networks = {role: Network(**net) for role, net in doc["networks"].items()}
        bundle = Bundle(root, doc["model_id"], float(doc["resolution_mm"]), networks, doc["normalisation"],
                        doc.get("provenance", {}), doc.get("licence", ""), doc.get("description", ""),
                        int(doc.get("min_size", 128)))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{meta}: malformed bundle.json ({type(exc).__name__}: {exc})") from None
    unknown = set(bundle.networks) - set(ROLES)
    if unknown:
        raise ModelError(f"{meta}: unknown network roles {sorted(unknown)}")
    return bundle


def verify_bundle(bundle: Bundle, roles: tuple[str, ...] | None = None) -> list[str]:
    """Check files, hashes, input/output shapes and label lists; return a list of problems."""
    problems = []
    for role, net in bundle.networks.items():
        if roles is not None and role not in roles:
            continue
        path = bundle.root / net.file
        if not path.is_file():
            problems.append(f"{role}: file {net.file} is missing")
            continue
        if file_sha256(path) != net.sha256:
            problems.append(f"{role}: {net.file} does not match its sha256 in bundle.json")
            continue
        if net.input_channels != ROLE_INPUTS[role]:
            problems.append(f"{role}: input channels {len(net.input_channels)} do not match the role "
                            f"({len(ROLE_INPUTS[role])} expected)")
        problems += _check_interface(role, net, path)
    for role in ("s1", "d"):
        if role in bundle.networks and bundle.networks[role].labels != TISSUE_LABELS:
            problems.append(f"{role}: outputs must be the {len(TISSUE_LABELS)} tissue groups")
    for role in ("s2", "synthseg", "d_all"):
        if role in bundle.networks and bundle.networks[role].labels != SYNTHSEG_2.values.tolist():
            problems.append(f"{role}: output labels differ from the 33 SynthSeg 2.0 labels")
    return problems


def _check_interface(role: str, net: Network, path: Path) -> list[str]:
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        return [f"{role}: {net.file} is not a readable ONNX model ({type(exc).__name__})"]
    inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name for o in model.graph.output}
    problems = []
    if "input" not in inputs:
        return [f"{role}: {net.file} has no input named 'input'"]
    channels = inputs["input"].type.tensor_type.shape.dim[1]
    if channels.HasField("dim_value") and channels.dim_value != len(net.input_channels):
        problems.append(f"{role}: network reads {channels.dim_value} channels, bundle.json says "
                        f"{len(net.input_channels)}")
    wanted = {"scores"} if role == "qc" else {"posteriors"}
    if not wanted <= outputs:
        problems.append(f"{role}: {net.file} lacks output(s) {sorted(wanted - outputs)}")
    return problems


def require(bundle: Bundle, roles: set[str], what: str) -> None:
    """ModelError naming the networks ``what`` needs that the bundle lacks."""
    missing = sorted(roles - set(bundle.networks))
    if missing:
        raise ModelError(f"{bundle.root}: {what} needs network(s) {', '.join(missing)}, "
                         f"the bundle has {', '.join(sorted(bundle.networks)) or 'none'}")
