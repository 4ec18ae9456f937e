"""Published weights of torchvision and timm backbones: from the local cache, else downloaded.

torchvision's files live in ``<torch hub dir>/checkpoints/`` (``$TORCH_HOME/hub``), timm's in the
Hugging Face cache (``$HF_HOME/hub``), as the libraries themselves keep them.  Before a download the
host is probed with a short timeout, so that a machine without network answers at once with one
sentence naming the file expected and where to put it (the libraries would retry for tens of
seconds).  The libraries do the reading and, for timm, the adaptation of the weights to the
model (e.g. a ViT's position embedding resampled to another input size).
"""
from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlparse

import torch

from metafsl.errors import UserError
from metafsl.models.pretrained import HOSTS, Pretrained, torchvision_weights
from metafsl.models.weights import load_state

#: seconds to wait for the host of the weights before calling the machine offline
PROBE_TIMEOUT = 3.0


def load(model: Pretrained, tag: str) -> None:
    if model.source == "torchvision":
        _torchvision(model, tag)
    else:
        _timm(model)


def check(source: str, arch: str, tag: str) -> None:
    """The offline sentence now, before any data is loaded, when the weights are neither cached
    nor downloadable (nothing is downloaded here)."""
    if source == "torchvision":
        meta = torchvision_weights(arch, tag)
        hub_file(meta.url, f"backbone.weights={tag}: torchvision's {meta}", download=False)
        return
    import timm

    from metafsl.models.pretrained import timm_model_name

    cfg = timm.models.get_pretrained_cfg(timm_model_name(arch, tag))
    if cfg is not None and cfg.hf_hub_id:
        _timm_file(cfg.hf_hub_id, download=False)
    elif cfg is not None and cfg.url:
        hub_file(cfg.url, f"backbone.weights: timm's {arch} weights", download=False)


def reachable(host: str) -> bool:
    try:
        socket.create_connection((host, 443), timeout=PROBE_TIMEOUT).close()
        return True
    except OSError:
        return False


def _torchvision(model: Pretrained, tag: str) -> None:
    meta = torchvision_weights(model.arch, tag)
    path = hub_file(meta.url, f"backbone.weights={tag}: torchvision's {meta}")
    load_state(model, torch.load(path, map_location="cpu", weights_only=True), str(path))


def hub_file(url: str, what: str, download: bool = True) -> Path:
    """``url``'s file in the torch hub cache (``$TORCH_HOME/hub/checkpoints``), downloaded when
    missing and the host answers (``download``); one sentence if neither."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / Path(urlparse(url).path).name
    if not path.is_file():
        host = urlparse(url).hostname or HOSTS["torchvision"]
        if not reachable(host):
            raise UserError(f"{what} are not cached and {host} cannot be reached; put {url} as {path} "
                            "(the torch hub checkpoints folder, $TORCH_HOME/hub/checkpoints) or pass "
                            "the file as backbone.weights=<path>.")
        if download:
            folder.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(path), progress=False)
    return path


def _timm_file(repo: str, download: bool = True) -> str:
    """The cached file of a Hugging Face repo of timm weights, or downloaded; one sentence if neither."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    for name in ("model.safetensors", "pytorch_model.bin"):
        cached = try_to_load_from_cache(repo, name)
        if isinstance(cached, str):
            return cached
    cache = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    if constants.HF_HUB_OFFLINE or not reachable(HOSTS["timm"]):
        raise UserError(f"backbone.weights: timm's {repo} weights are not in the Hugging Face cache ({cache}) "
                        f"and {HOSTS['timm']} cannot be reached; fill that cache on a machine with network "
                        f"(huggingface-cli download {repo}) and copy it under $HF_HOME/hub, or download "
                        "model.safetensors and pass it as backbone.weights=<path>.")
    return hf_hub_download(repo, "model.safetensors") if download else ""


def _timm(model: Pretrained) -> None:
    import timm

    cfg = model.body.pretrained_cfg
    repo, url = cfg.get("hf_hub_id"), cfg.get("url")
    if not repo and not url:
        raise UserError(f"timm's {model.arch} has no published weights; pass a weight file as "
                        "backbone.weights=<path>.")
    file = _timm_file(repo) if repo else str(hub_file(url, f"backbone.weights: timm's {model.arch} weights"))
    overlay = {"file": file}
    size = {"img_size": model.input_size} if "img_size" in _init_args(model.body) else {}
    loaded = timm.create_model(model.arch, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=0, **size)
    model.body.load_state_dict(loaded.state_dict())


def _init_args(body) -> set:
    import inspect

    return set(inspect.signature(type(body).__init__).parameters)
