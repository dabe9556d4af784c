"""Keyed pseudonyms: scan, subject and session ids that carry no identifier in clear.

An id is ``<prefix>-`` and the first 16 hex digits of HMAC-SHA256(key, ``<kind>:<value>``) with a
per-project key: the same patient (PatientID) gets the same subject id in every run and at every
site that shares the key, and without the key an id cannot be traced back. The key is a file of
64 hex digits (32 random bytes), created on first use with owner-only permissions; it is read,
never written into any output. Re-identification: compute :func:`pseudonym` of the candidate
values with the key and look the ids up.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from morphometry.errors import InputError

DEFAULT_KEY_FILE = Path("~/.config/morphometry/project.key")
KEY_BYTES = 32
PREFIXES = {"patient": "subj", "study": "ses", "series": "scan"}  # kind of value -> id prefix
DIGITS = 16  # hex digits kept: 64 bits


def load_key(path: str | os.PathLike | None = None) -> bytes:
    """The key in ``path`` (default :data:`DEFAULT_KEY_FILE`), created there when the file does not
    exist; InputError naming the file when it cannot be read, created or parsed."""
    path = Path(path if path is not None else DEFAULT_KEY_FILE).expanduser()
    if not path.exists():
        _create(path)
    try:
        text = path.read_text().strip()
        key = bytes.fromhex(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the identity key ({type(exc).__name__})", setting="id_key") from None
    except ValueError:
        raise InputError(f"{path}: not an identity key (expected {2 * KEY_BYTES} hex digits)",
                         setting="id_key") from None
    if len(key) < KEY_BYTES:
        raise InputError(f"{path}: identity key too short ({len(key)} bytes, need {KEY_BYTES})", setting="id_key")
    return key


def _create(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # created meanwhile by another process: use that one
        return
    except OSError as exc:
        raise InputError(f"{path}: cannot create the identity key ({exc.strerror})", setting="id_key") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(KEY_BYTES) + "\n")


def pseudonym(key: bytes, kind: str, value: str) -> str:
    """The id of ``value`` (a PatientID, StudyInstanceUID or SeriesInstanceUID, as ``kind`` says:
    patient | study | series), e.g. ``subj-3f9c0a1b2c3d4e5f``."""
    digest = hmac.new(key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()
    return f"{PREFIXES[kind]}-{digest[:DIGITS]}"
