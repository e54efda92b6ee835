"""Image-only feature extractors: torchvision ResNets with the classifier removed, as the released MCSE baseline
used them (method.md §4.2: ResNet-50's 2048-d pooled features, torchvision's ImageNet weights).

MCSE's `extract_visn_feature.py` built `resnet50(pretrained=True)` (in torchvision's current API the weights
`IMAGENET1K_V1`), replaced `fc` by the identity, and fed images through Resize(256), CenterCrop(224), ToTensor and
ImageNet's mean/std, in float32. `load_image_features` rebuilds exactly that and returns it as a `Teacher` whose
`encode_image` gives the pooled features, so the teacher stage encodes, resumes and checks it like a CLIP teacher
and writes an image-feature cache (`kdmcse.teacher.cache`, `kind: image`).

`weights` is a torchvision weights name (downloaded by torchvision into its hub cache, or read from there
offline), a local state-dict file (recognised by its sha256 when it is a published one), or `none`: random
weights, seeded, for tests and offline mechanics runs only, flagged in the metadata and the log.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from kdmcse.errors import KdmcseError
from kdmcse.io import sha256_file
from kdmcse.teacher.model import PRECISIONS, RANDOM_INIT_SEED, Teacher, _package_version, resolve_device

log = logging.getLogger(__name__)

IMAGE_SIZE = 224
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ARCHITECTURES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


class PooledFeatures(nn.Module):
    """A torchvision ResNet without its classifier: `encode_image` returns the global-average-pooled features."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.dim = int(net.fc.in_features)
        net.fc = nn.Identity()
        self.net = net
        self.image_size = IMAGE_SIZE

    def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        out = self.net(pixels)
        return nn.functional.normalize(out, dim=-1) if normalize else out

    forward = encode_image


def _to_rgb(img: Any) -> Any:
    return img.convert("RGB")


def mcse_transform() -> Any:
    """MCSE's image transform (its `extract_visn_feature.py`): the same as torchvision's V1 ImageNet eval preset."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.Lambda(_to_rgb),  # torchvision's default_loader converts to RGB, as MCSE read images
        transforms.Resize(256),
        transforms.CenterCrop(IMAGE_SIZE),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def published_weights(model: str) -> Any:
    """The torchvision weights enum of `model` (e.g. ResNet50_Weights)."""
    import torchvision.models as models

    return models.get_model_weights(model)


def identify_weights(model: str, file_sha256: str) -> str | None:
    """The torchvision weights name whose published file has this sha256 (its URL carries a prefix of it)."""
    for w in published_weights(model):
        prefix = os.path.splitext(os.path.basename(w.url))[0].rsplit("-", 1)[-1]
        if len(prefix) >= 8 and file_sha256.startswith(prefix):
            return w.name
    return None


def _load_state(net: nn.Module, state: Any, where: str) -> None:
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise KdmcseError(f"{where} does not hold the state dict of this architecture ({str(exc).splitlines()[0]}); "
                          "give torchvision weights of the architecture named in image_features.<alias>.model") from exc


def load_image_features(model: str, weights: str, *, device: str = "auto", precision: str = "fp32") -> Teacher:
    """The ResNet `model` with `weights` (a torchvision weights name, a state-dict file, or none), as a Teacher."""
    import torchvision.models as models

    if model not in ARCHITECTURES:
        raise KdmcseError(f"image-feature model {model!r} is not one of {', '.join(ARCHITECTURES)} (torchvision ResNets)")
    dev = resolve_device(device)
    if precision not in PRECISIONS:
        raise KdmcseError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)} for an image-feature model")
    if precision != "fp32" and dev.type != "cuda":
        raise KdmcseError(f"--precision {precision} is autocast on a GPU only; use --precision fp32 on {dev.type}")
    meta: dict[str, Any] = {}
    random_init = weights.lower() in ("none", "")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)  # a random init is seeded: two runs of a test config agree
        net = models.get_model_builder(model)(weights=None)
    if random_init:
        source, recorded = "none", "none"
        log.warning("WARNING: image features %s with RANDOM weights (weights none). They carry no visual knowledge; "
                    "use this only for tests and offline mechanics runs, never for results.", model)
    elif os.path.isfile(weights):
        source = "file"
        meta["pretrained_file"] = os.path.abspath(weights)
        meta["pretrained_sha256"] = sha256_file(weights)
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a file that is not a tensor checkpoint
            raise KdmcseError(f"weights file {weights} is not a readable state-dict file ({exc})") from exc
        _load_state(net, state, f"weights file {weights}")
        known = identify_weights(model, meta["pretrained_sha256"])
        recorded = known or os.path.basename(weights)
        if known:
            log.info("weights file %s is torchvision's published %s weights of %s", weights, known, model)
        else:
            log.warning("weights file %s is not a published torchvision checkpoint of %s (sha256 %s)", weights, model,
                        meta["pretrained_sha256"][:12])
    else:
        enum = published_weights(model)
        names = [w.name for w in enum]
        if weights not in names:
            raise KdmcseError(f"weights {weights!r} of {model} are neither torchvision weights ({', '.join(names)}), "
                              "a local state-dict file, nor 'none'")
        source, recorded = "tag", weights
        try:
            state = enum[weights].get_state_dict(progress=False, check_hash=True)
        except Exception as exc:  # offline: URLError/OSError; a damaged download: RuntimeError
            raise KdmcseError(
                f"could not load torchvision's {model} weights {weights} ({type(exc).__name__}: {exc}). Offline, "
                f"download {enum[weights].url} elsewhere and give its path as the weights (or put it into "
                f"torch's hub cache, {torch.hub.get_dir()}/checkpoints)"
            ) from exc
        _load_state(net, state, f"torchvision's {model} weights {weights}")
    features = PooledFeatures(net).eval().to(dev)
    meta.update(
        kind="image", model=model, pretrained=recorded, pretrained_source=source, random_init=random_init,
        normalised=False, precision=precision, autocast=precision != "fp32", device_type=dev.type,
        feature="global-average-pooled features before fc", preprocessing={"transform": repr(mcse_transform())},
        versions={"torch": torch.__version__, "torchvision": _package_version("torchvision"),
                  "kdmcse": _package_version("kdmcse"), "pillow": _package_version("pillow")},
    )
    return Teacher(features, mcse_transform(), None, dev, PRECISIONS[precision], meta)
