"""Image-feature caches (the released MCSE baseline's ResNet features): same format, resume and checks as the CLIP
teacher's; random init offline, torchvision's weights from its hub cache or a local state-dict file."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from test_teacher import make_caption_table, make_images

from kdmcse.errors import KdmcseError
from kdmcse.io import sha256_file
from kdmcse.teacher import image_features as IF
from kdmcse.teacher import run as T
from kdmcse.teacher import work as W
from kdmcse.teacher.cache import open_teacher_cache

pytest.importorskip("torchvision")


@pytest.fixture()
def dataset(tmp_path: Path) -> tuple[Path, list[Path]]:
    images = make_images(tmp_path / "imgs", 5)
    return make_caption_table(tmp_path / "captions.parquet", images, captions_per_image=2), images


def run(captions: Path, out: Path, weights: str = "none", model: str = "resnet18", **kw):
    kw.setdefault("workers", 0)
    return T.run_teacher(captions, out, model=model, pretrained=weights, kind="image", device="cpu", **kw)


def reference_features(net_weights: dict | None, images: list[Path], model: str = "resnet18") -> np.ndarray:
    """MCSE's extraction written out directly: torchvision model, fc = identity, its transform, one image at a time."""
    import torchvision
    from PIL import Image
    from torchvision import transforms

    torch.manual_seed(0)
    net = torchvision.models.get_model_builder(model)(weights=None)
    if net_weights is not None:
        net.load_state_dict(net_weights)
    net.fc = torch.nn.Identity()
    net.eval()
    tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    with torch.inference_mode():
        return torch.cat([net(tf(Image.open(p).convert("RGB")).unsqueeze(0)) for p in images]).numpy()


def test_image_cache_holds_the_pooled_features_and_no_caption_embeddings(dataset, tmp_path, caplog):
    captions, images = dataset
    with caplog.at_level(logging.WARNING):
        meta = run(captions, tmp_path / "cache", batch_size=2)
    assert "RANDOM weights" in caplog.text
    cache = open_teacher_cache(tmp_path / "cache")
    assert cache.meta["kind"] == "image" and cache.meta["random_init"] and meta["dim"] == 512
    assert cache.caption_emb is None and not (tmp_path / "cache" / "caption_emb.npy").exists()
    assert len(cache.caption_ids) == 10 and cache.image_emb.shape == (5, 512)
    # each caption maps to its image's row
    assert [cache.image_ids[r] for r in cache.caption_image_row] == [p.stem for p in images for _ in range(2)]
    np.testing.assert_allclose(cache.image_emb, reference_features(None, images), rtol=1e-4, atol=1e-5)


def test_local_state_dict_file_is_loaded_and_recognised(dataset, tmp_path, monkeypatch):
    """The real-weights path without the network: a state-dict file, and torchvision's hub cache."""
    import torchvision

    captions, images = dataset
    torch.manual_seed(123)
    state = torchvision.models.resnet18(weights=None).state_dict()
    weights_file = tmp_path / "my-resnet18.pth"
    torch.save(state, weights_file)
    run(captions, tmp_path / "file", weights=str(weights_file))
    cache = open_teacher_cache(tmp_path / "file")
    assert cache.meta["pretrained_source"] == "file" and not cache.meta["random_init"]
    assert cache.meta["pretrained_sha256"] == sha256_file(weights_file)
    assert cache.meta["pretrained"] == "my-resnet18.pth"  # not a published checkpoint
    np.testing.assert_allclose(cache.image_emb, reference_features(state, images), rtol=1e-4, atol=1e-5)

    # torchvision's own weights name, served from its hub cache (what a download would have left there)
    hub = tmp_path / "torch-home"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    (hub / "checkpoints").mkdir(parents=True)
    torch.save(state, hub / "checkpoints" / url.rsplit("/", 1)[1])
    run(captions, tmp_path / "tag", weights="IMAGENET1K_V1")
    tag = open_teacher_cache(tmp_path / "tag")
    assert tag.meta["pretrained"] == "IMAGENET1K_V1" and tag.meta["pretrained_source"] == "tag"
    np.testing.assert_array_equal(tag.image_emb, cache.image_emb)


def test_a_file_with_the_published_checksum_is_named_after_its_weights(monkeypatch):
    digest = IF.identify_weights("resnet50", "0676ba61" + "0" * 56)
    assert digest == "IMAGENET1K_V1"
    assert IF.identify_weights("resnet50", "f" * 64) is None


def test_offline_weights_name_fails_with_a_hint(dataset, tmp_path, monkeypatch):
    captions, _ = dataset
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))

    def offline(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(KdmcseError, match="Offline, download https://download.pytorch.org/models/resnet18"):
        run(captions, tmp_path / "x", weights="IMAGENET1K_V1")
    with pytest.raises(KdmcseError, match="neither torchvision weights"):
        run(captions, tmp_path / "x", weights="IMAGENET9K")
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, wrong)
    with pytest.raises(KdmcseError, match="does not hold the state dict"):
        run(captions, tmp_path / "x", weights=str(wrong))


def test_image_cache_resumes_from_finished_chunks(dataset, tmp_path, monkeypatch):
    captions, _ = dataset
    out = tmp_path / "cache"
    saved = []
    real_save = W.save_chunk

    def save_then_die(work_dir, kind, index, **arrays):
        real_save(work_dir, kind, index, **arrays)
        saved.append(index)
        if len(saved) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(W, "save_chunk", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(captions, out, chunk_size=2, batch_size=2)
    assert not out.exists() and (tmp_path / "cache.work" / "images-00000.npz").is_file()
    monkeypatch.setattr(W, "save_chunk", real_save)
    loaded = []
    real_load = W.load_chunk
    monkeypatch.setattr(W, "load_chunk", lambda *a: loaded.append(a[2]) or real_load(*a))
    run(captions, out, chunk_size=2, batch_size=2)
    first = open_teacher_cache(out).image_emb.copy()
    run(captions, tmp_path / "fresh", chunk_size=2, batch_size=2)
    np.testing.assert_array_equal(first, open_teacher_cache(tmp_path / "fresh").image_emb)


def test_unknown_architecture_and_cpu_half_precision_are_refused(dataset, tmp_path):
    captions, _ = dataset
    with pytest.raises(KdmcseError, match="not one of resnet18"):
        run(captions, tmp_path / "x", model="vgg16")
    with pytest.raises(KdmcseError, match="GPU only"):
        run(captions, tmp_path / "x", precision="fp16")
