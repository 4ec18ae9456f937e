"""Fetching a dataset archive: streamed to disk, time-limited, checked against a published MD5.

Only sources with a stable public address and a known checksum are fetched; everything else
is placed by hand, and the loaders' errors say exactly which files go where.
"""
from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

from metafsl.errors import UserError

CHUNK = 1 << 20


def fetch(url: str, target: Path, md5: str, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``target`` (atomically) and verify its MD5; return ``target``.

    ``timeout`` bounds every network wait (connect and each read), so an unreachable
    host fails within seconds instead of hanging.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as f:
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                digest.update(chunk)
                f.write(chunk)
    except Exception as exc:  # no network, DNS failure, timeout, HTTP error, full disk ...
        if part.exists():
            part.unlink()
        reason = str(getattr(exc, "reason", "") or exc.__class__.__name__)
        raise UserError(f"Could not download {url} ({reason}); place {target.name} in {target.parent} by hand.") from None
    if digest.hexdigest() != md5:
        part.unlink()
        raise UserError(f"Downloaded {target.name} does not match its published MD5 checksum ({md5}); try again.")
    os.replace(part, target)
    return target


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
