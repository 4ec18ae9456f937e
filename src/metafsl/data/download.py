"""Fetching a dataset archive: streamed to disk, time-limited, checked against a published MD5.

Only sources with a stable public address and a known checksum are fetched; everything else
is placed by hand, and the loaders' errors say exactly which files go where.
"""
from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path
from typing import Optional

from metafsl.errors import UserError

CHUNK = 1 << 20


def fetch(url: str, target: Path, md5: Optional[str] = None, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``target`` (atomically) and verify its MD5 when one is published;
    return ``target``.  Every loader's ``dataset.download=true`` goes through here.

    ``timeout`` bounds every network wait (connect and each read), so an unreachable host
    fails within seconds instead of hanging; any failure is one sentence naming the URL and
    where to place the file by hand.
    """
    target = Path(target)
    part = target.with_name(target.name + ".part")
    digest = hashlib.md5()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as f:
            for chunk in iter(lambda: response.read(CHUNK), b""):
                digest.update(chunk)
                f.write(chunk)
    except Exception as exc:  # no network, DNS failure, timeout, HTTP error, read-only or full disk ...
        if part.is_file():
            part.unlink()
        raise UserError(f"Could not download {url} ({_reason(exc)}); place {target.name} in {target.parent} "
                        "by hand.") from None
    if md5 is not None and digest.hexdigest() != md5:
        part.unlink()
        raise UserError(f"Downloaded {target.name} does not match its published MD5 checksum ({md5}); try again.")
    os.replace(part, target)
    return target


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
    text = str(reason).strip()
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
