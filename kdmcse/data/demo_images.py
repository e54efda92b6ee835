"""A small image–caption set that needs no download: photos shipped inside installed packages.

The photos come from scikit-image's bundled data (the `skimage.data` loaders that read files inside the
package, no network fetch) and matplotlib's sample data. The captions are written for this project, five
per photo, in the style of Flickr30k (plain English, describing what is visible). The set lets the whole
pipeline (teacher cache, training, reports) run on a laptop with no dataset licence or download.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from kdmcse.errors import KdmcseError
from kdmcse.io import atomic_path

log = logging.getLogger(__name__)


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        img = getattr(skimage.data, name)()
        return img[0] if isinstance(img, tuple) else img  # stereo_motorcycle returns (left, right, disp)

    return load


def _matplotlib(fname: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from matplotlib import cbook
        from PIL import Image

        with cbook.get_sample_data(fname, asfileobj=True) as f:
            return np.asarray(Image.open(f).convert("RGB"))

    return load


@dataclass(frozen=True)
class DemoPhoto:
    name: str  # image_id, and the JPEG's stem
    load: Callable[[], np.ndarray]
    captions: tuple[str, ...]


PHOTOS: tuple[DemoPhoto, ...] = (
    DemoPhoto("astronaut", _skimage("astronaut"), (
        "A smiling astronaut in an orange spacesuit poses for a portrait.",
        "A woman in an orange flight suit sits in front of an American flag.",
        "An astronaut with short hair smiles next to a model of the space shuttle.",
        "A portrait of a female astronaut wearing an orange pressure suit with mission patches.",
        "A white helmet with a dark visor rests beside a smiling astronaut.",
    )),
    DemoPhoto("cameraman", _skimage("camera"), (
        "A black and white photo of a man looking through a camera on a tripod.",
        "A man in a dark coat films with a camera mounted on a tripod.",
        "A photographer stands on a grass field behind his camera.",
        "A man operates a camera on a tripod with buildings in the distance.",
        "A cameraman in a black coat bends toward the viewfinder of his camera.",
    )),
    DemoPhoto("cat", _skimage("chelsea"), (
        "A close-up of a tabby cat with green eyes.",
        "A striped brown cat stares at the camera.",
        "The face of a ginger tabby cat with long white whiskers.",
        "A cat with yellow-green eyes and a pink nose looks ahead.",
        "A close view of a tabby cat's face and ears.",
    )),
    DemoPhoto("coffee", _skimage("coffee"), (
        "A cup of espresso on a red saucer with a silver spoon.",
        "A small white and red coffee cup sits on a wooden table.",
        "An espresso with crema in a red cup seen from above.",
        "A spoon rests on a red saucer next to a coffee cup.",
        "A coffee cup and saucer on a dark wooden table.",
    )),
    DemoPhoto("coins", _skimage("coins"), (
        "A black and white photo of rows of old coins.",
        "Twenty-four ancient coins arranged in a grid on a dark background.",
        "Old silver coins with faces and figures stamped on them.",
        "A collection of ancient coins laid out in four rows.",
        "Many round coins of different sizes on a black surface.",
    )),
    DemoPhoto("rocket", _skimage("rocket"), (
        "A rocket stands on a launch pad at dusk.",
        "A white rocket between tall lattice towers under a dark blue sky.",
        "A launch pad with bright lights and a rocket ready for launch.",
        "Tall metal towers surround a rocket on its launch pad.",
        "A tall rocket lit by floodlights against a deep blue sky.",
    )),
    DemoPhoto("deep_field", _skimage("hubble_deep_field"), (
        "Thousands of distant galaxies scattered across a black sky.",
        "A deep space telescope image full of small colorful galaxies.",
        "Many tiny spiral and elliptical galaxies against the darkness of space.",
        "A view of deep space showing red, white and blue points of light.",
        "A telescope picture of countless faint galaxies.",
    )),
    DemoPhoto("motorcycle", _skimage("stereo_motorcycle"), (
        "A red motorcycle parked in a garage.",
        "A red and black motorbike stands on its kickstand on a concrete floor.",
        "A motorcycle in a workshop with metal shelves and boxes behind it.",
        "A parked red motorcycle with a black seat and a chrome engine.",
        "A street motorcycle in a cluttered garage next to a wooden bench.",
    )),
    DemoPhoto("retina", _skimage("retina"), (
        "A photograph of the back of a human eye.",
        "An orange retina with red blood vessels branching across it.",
        "A fundus image showing the optic disc and the blood vessels of the eye.",
        "A round medical image of a retina on a black background.",
        "Blood vessels spread out from a bright spot on an orange retina.",
    )),
    DemoPhoto("horse", _skimage("horse"), (
        "A black silhouette of a horse on a white background.",
        "The outline of a standing horse in solid black.",
        "A horse shape facing right, drawn in black.",
        "A simple black and white silhouette of a horse standing still.",
        "A dark horse silhouette with its head raised.",
    )),
    DemoPhoto("tissue", _skimage("immunohistochemistry"), (
        "A microscope image of tissue stained brown and blue.",
        "Stained tissue cells seen under a microscope.",
        "Brown stained glands surrounded by blue cell nuclei.",
        "A close-up of a tissue sample with brown and light blue staining.",
        "Cells in a histology slide colored brown and blue.",
    )),
    DemoPhoto("naval_officer", _matplotlib("grace_hopper.jpg"), (
        "An elderly woman in a navy uniform poses in front of an American flag.",
        "A portrait of a naval officer wearing glasses and an officer's cap.",
        "An older woman with glasses wears a dark uniform with ribbons.",
        "A woman in a dark dress uniform with a white shirt and a black tie.",
        "A woman in a military cap and dark jacket looks at the camera.",
    )),
)


def _to_rgb_uint8(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    elif img.dtype != np.uint8:
        img = np.clip(img * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return img[..., :3]


def write_demo_images(images_dir: str | os.PathLike[str]) -> list[tuple[str, str, tuple[str, ...]]]:
    """Save every available demo photo as `<images_dir>/<name>.jpg`.

    Returns `(image_id, file_name, captions)` per photo written, in a fixed order. A photo whose package
    is missing is skipped with a warning; with none at all this raises a KdmcseError.
    """
    from PIL import Image

    images_dir = Path(images_dir)
    images_dir.mkdir(parents=True, exist_ok=True)
    out: list[tuple[str, str, tuple[str, ...]]] = []
    for photo in PHOTOS:
        try:
            arr = _to_rgb_uint8(photo.load())
        except (ImportError, OSError, AttributeError, ValueError) as exc:
            log.warning("demo photo %s unavailable (%s); skipping it", photo.name, exc)
            continue
        file_name = f"{photo.name}.jpg"
        with atomic_path(images_dir / file_name, suffix=".jpg") as tmp:
            Image.fromarray(arr).save(tmp, format="JPEG", quality=90)
        out.append((photo.name, file_name, photo.captions))
    if not out:
        raise KdmcseError("no demo photo could be loaded; install scikit-image (pip install scikit-image)")
    log.info("wrote %d demo photos to %s", len(out), images_dir)
    return out
