"""Scenes (layout without interpenetration), the content-addressed store, and learned backends."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from services.common.errors import InvalidArgument, NotFound
from services.gen3d import samples
from services.gen3d.backends import BackendRegistry
from services.gen3d.images import decode_image
from services.gen3d.mask import foreground_mask
from services.gen3d.pipeline import ObjectOptions, Settings
from services.gen3d.scene import SceneItem, build_scene, support_order
from services.gen3d.store import AssetStore

SMALL = Settings(resolution=40, texture_size_px=64, collision_budget_s=0.0, num_drops=2)


def _table() -> bytes:
    img = Image.new("RGB", (128, 128), (240, 240, 240))
    d = ImageDraw.Draw(img)
    d.rectangle([8, 40, 120, 52], fill=(120, 80, 40))
    d.rectangle([12, 52, 24, 115], fill=(120, 80, 40))
    d.rectangle([104, 52, 116, 115], fill=(120, 80, 40))
    return samples.png_bytes(img)


def test_support_cycle_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="cycle"):
        support_order([SceneItem("a", "b"), SceneItem("b", "a")])


def test_scene_objects_on_a_table_are_pushed_apart_and_settle(tmp_path: Path) -> None:
    items = [
        (SceneItem("table"), _table(), ObjectOptions(object_class="table")),
        # Both asked for the same spot: the layout must separate them.
        (SceneItem("mug", "table", 0.0, 0.0), samples.png_bytes(samples.mug(96)), ObjectOptions(object_class="mug")),
        (
            SceneItem("bottle", "table", 0.0, 0.0, 45.0),
            samples.png_bytes(samples.bottle(96)),
            ObjectOptions(object_class="bottle"),
        ),
    ]
    scene = build_scene(items, tmp_path, settings=SMALL)
    mug, bottle, table = (np.array(scene.placements[n].pos) for n in ("mug", "bottle", "table"))
    assert mug[2] == pytest.approx(bottle[2]) and mug[2] > table[2] + 0.3  # on the table's top
    assert np.linalg.norm(mug[:2] - bottle[:2]) > 0.05
    assert any("moved" in n for n in scene.notes)
    assert scene.drop_test["num_stable"] == 1, scene.drop_test["failures"]
    assert (tmp_path / "scene.xml").is_file() and (tmp_path / "scene.urdf").is_file()
    assert {"table.glb", "mug.glb", "bottle.glb"} <= set(scene.files)


def test_store_is_content_addressed_and_refuses_paths_outside(tmp_path: Path) -> None:
    store = AssetStore(tmp_path / "store")
    path, sha = store.put_bytes(b"pixels")
    assert store.put_bytes(b"pixels") == (path, sha)
    assert store.resolve(path).read_bytes() == b"pixels"
    (tmp_path / "secret").write_text("x")
    for bad in ("../secret", "/etc/passwd", "blobs/../../secret"):
        with pytest.raises(InvalidArgument):
            store.resolve(bad)
    (store.root / "blobs" / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(InvalidArgument):
        store.resolve("blobs/link")
    with pytest.raises(NotFound):
        store.resolve("blobs/nope")


class SphereOccupancy(torch.nn.Module):
    """A stand-in learned model: occupancy of a sphere whose radius follows the image's brightness."""

    def __init__(self, grid: int = 24) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.8))
        self.grid = grid

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        lin = torch.linspace(-1.0, 1.0, self.grid, device=image.device)
        x, y, z = torch.meshgrid(lin, lin, lin, indexing="ij")
        radius = self.scale * (0.5 + image.mean())
        return (radius - torch.sqrt(x * x + y * y + z * z))[None] * 10.0


def _weights(folder: Path) -> Path:
    (folder / "sphere").mkdir(parents=True)
    torch.jit.script(SphereOccupancy()).save(str(folder / "sphere" / "model.pt"))
    (folder / "sphere" / "backend.json").write_text(
        json.dumps({"format": "torchscript_occupancy", "file": "model.pt", "image_px": 64})
    )
    return folder


def _run_backend(folder: Path, device: str) -> None:
    registry = BackendRegistry(_weights(folder), device)
    assert registry.names() == ["classical", "sphere"]
    decoded = decode_image(samples.png_bytes(samples.vase(96)), max_pixels=10**7, max_side_px=512)
    mask = foreground_mask(decoded.rgb, decoded.alpha)
    geom = registry.get("sphere").build(decoded.rgb, mask, resolution=48, max_faces=2000)
    assert geom.method == "learned:sphere"
    assert geom.mesh.is_watertight and geom.mesh.is_volume
    assert geom.mesh.bounds[0, 2] == pytest.approx(0.0, abs=1e-6)


def test_learned_backend_loads_from_a_local_folder(tmp_path: Path) -> None:
    _run_backend(tmp_path, "cpu")
    with pytest.raises(InvalidArgument, match="unknown geometry backend"):
        BackendRegistry(tmp_path).get("../sphere")


@pytest.mark.gpu
def test_learned_backend_runs_on_the_gpu(tmp_path: Path) -> None:
    _run_backend(tmp_path, "cuda")
