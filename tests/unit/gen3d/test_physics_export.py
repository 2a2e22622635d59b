"""Stages 4 to 6: mass and inertia, collision hulls, exports that reload, and the drop test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trimesh

from services.gen3d import check, export, samples
from services.gen3d.physics import Physics, collision_hulls, compute_physics, mass_properties
from services.gen3d.pipeline import ObjectOptions, Settings, build_object
from services.gen3d.texture import Textured

SMALL = Settings(resolution=40, texture_size_px=64, collision_budget_s=20.0, num_drops=3)


def test_shell_mass_and_inertia_match_a_thin_sphere() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.1)
    mass, com, inertia, model = mass_properties(sphere, 1000.0, 0.002)
    assert model == "shell"
    expected = 4 * np.pi * 0.1**2 * 0.002 * 1000.0
    assert mass == pytest.approx(expected, rel=0.02)
    assert np.allclose(com, 0, atol=1e-6)
    assert np.allclose(np.diag(inertia), 2 / 3 * mass * 0.1**2, rtol=0.02)


def test_solid_mass_and_scale_from_size_hint() -> None:
    box = trimesh.creation.box(extents=[2.0, 1.0, 1.0])
    phys = compute_physics(box, size_hint_m=0.2, density_kg_per_m3=500.0, wall_thickness_m=0.0, collision_budget_s=0)
    assert phys.metres_per_unit == pytest.approx(0.1)
    assert phys.mass_kg == pytest.approx(0.2 * 0.1 * 0.1 * 500.0)
    assert phys.hull_method.startswith("convex_hull")


def test_hollow_mug_weighs_far_less_than_a_solid_one() -> None:
    cup = trimesh.creation.cylinder(radius=0.04, height=0.1)
    hollow = compute_physics(cup, object_class="mug", size_hint_m=0.1, collision_budget_s=0)
    solid = compute_physics(cup, object_class="mug", size_hint_m=0.1, wall_thickness_m=0.0, collision_budget_s=0)
    assert 0.15 < hollow.mass_kg < 0.6  # a ceramic mug, not a 1 kg solid lump
    assert solid.mass_kg > 3 * hollow.mass_kg


def test_collision_decomposition_falls_back_at_its_budget() -> None:
    mesh = trimesh.creation.annulus(r_min=0.03, r_max=0.05, height=0.02)
    hulls, how = collision_hulls(mesh, budget_s=0.01)
    assert how.startswith("convex_hull") and "budget" in how
    assert len(hulls) == 1 and hulls[0].is_convex


def test_object_pipeline_exports_files_that_reload_and_stand(tmp_path: Path) -> None:
    result = build_object(
        samples.png_bytes(samples.mug(96)),
        tmp_path,
        name="mug",
        options=ObjectOptions(object_class="mug"),
        settings=SMALL,
    )
    report = result.report
    assert report["watertight"]
    for name in ("mug.glb", "mug.obj", "mug.mtl", "mug.urdf", "mug.xml", "mug_albedo.png", "mug_preview.png"):
        assert (tmp_path / name).is_file(), name
        assert name in result.files
    assert set(report["reloaded"]) == {"mug.glb", "mug.obj", "mug.urdf", "mug.xml"}
    assert "map_Kd mug_albedo.png" in (tmp_path / "mug.mtl").read_text()
    assert report["drop_test"]["num_stable"] == report["drop_test"]["num_drops"] == 3
    assert report["drop_test"]["max_penetration_m"] < check.REST_PENETRATION_M
    assert 0.1 < report["mass_kg"] < 1.0
    assert max(report["extents_m"]) == pytest.approx(0.11)
    assert report["silhouette_iou"] > 0.97
    assert report["texture_error"] < 0.5 * report["texture_baseline_error"]


def _exported(tmp_path: Path, mesh: trimesh.Trimesh) -> export.ExportedObject:
    tex = Textured(
        vertices=np.asarray(mesh.vertices),
        faces=np.asarray(mesh.faces),
        uv=np.zeros((len(mesh.vertices), 2)),
        albedo=np.full((8, 8, 3), 128, np.uint8),
        metallic_roughness=np.full((8, 8, 3), 128, np.uint8),
        normal=np.full((8, 8, 3), 128, np.uint8),
        roughness=0.5,
        metallic=0.0,
        highlight_fraction=0.0,
    )
    mass, com, inertia, _ = mass_properties(mesh, 1000.0, 0.0)
    phys = Physics(
        metres_per_unit=1.0,
        mass_kg=mass,
        center_of_mass_m=com,
        inertia_kg_m2=inertia,
        hulls=[mesh.convex_hull],
        hull_method="convex_hull",
        density_kg_per_m3=1000.0,
        wall_thickness_m=0.0,
    )
    exported, _ = export.write_object(tmp_path, "thing", tex, phys)
    return exported


def test_drop_test_fails_an_object_that_cannot_stand(tmp_path: Path) -> None:
    # A cone on its tip "does not explode" but cannot come to rest upright.
    cone = trimesh.creation.cone(radius=0.05, height=0.15)
    cone.apply_transform(trimesh.transformations.rotation_matrix(np.pi, [1, 0, 0]))
    cone.apply_translation([0, 0, -cone.bounds[0, 2]])
    result = check.drop_test(_exported(tmp_path, cone), tmp_path, num_drops=2)
    assert result.num_stable == 0
    assert all("not upright" in f or "moving" in f for f in result.failures)


def test_drop_test_passes_a_box(tmp_path: Path) -> None:
    box = trimesh.creation.box(extents=[0.1, 0.1, 0.05])
    box.apply_translation([0, 0, 0.025])
    result = check.drop_test(_exported(tmp_path, box), tmp_path, num_drops=3)
    assert result.num_stable == 3, result.failures
    assert result.max_penetration_m < check.REST_PENETRATION_M
