"""Scenes: several objects built from their images, laid out on supports without interpenetration.

Each object runs the object pipeline (an object that something stands on gets a flat top). The
layout places supports first: an object's frame goes at its support's top surface, offset by
(x, y) from the support's centre and turned by its yaw. Objects that share a support are pushed
apart along the line between them until their footprints (circles around their collision hulls,
so any yaw is safe) no longer overlap. The scene is exported as one MJCF and one URDF referencing
the objects' files, and dropped (settled) as a whole by the same check as single objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.common.errors import InvalidArgument
from services.gen3d import check, export
from services.gen3d.backends import BackendRegistry
from services.gen3d.pipeline import (
    DEFAULT_SETTINGS,
    ObjectOptions,
    ObjectResult,
    OnStage,
    Settings,
    StageClock,
    build_object,
)

GAP_M = 0.005
"""Clearance left between neighbours' footprints."""


@dataclass(frozen=True)
class SceneItem:
    """Where one object of a scene goes."""

    name: str
    support: str = ""
    x_m: float = 0.0
    y_m: float = 0.0
    yaw_deg: float = 0.0


@dataclass
class SceneResult:
    """A built scene: every object's report, the scene check, the files."""

    reports: list[dict[str, Any]]
    drop_test: dict[str, Any]
    files: list[str]
    placements: dict[str, export.Placement]
    notes: list[str] = field(default_factory=list)


def support_order(items: list[SceneItem]) -> list[SceneItem]:
    """Items with every support before what stands on it; InvalidArgument on unknown supports or cycles."""
    by_name = {i.name: i for i in items}
    done: list[SceneItem] = []
    placed: set[str] = set()
    for _ in range(len(items) + 1):
        for item in items:
            if item.name in placed:
                continue
            if item.support and item.support not in by_name:
                raise InvalidArgument(f"{item.name!r} stands on unknown {item.support!r}")
            if not item.support or item.support in placed:
                done.append(item)
                placed.add(item.name)
    if len(done) != len(items):
        raise InvalidArgument("the supports of the scene form a cycle")
    return done


def footprint_radius(hull_vertices: np.ndarray) -> float:
    """Radius of the smallest origin-centred circle around the hulls seen from above."""
    return float(np.linalg.norm(hull_vertices[:, :2], axis=1).max())


def layout(items: list[SceneItem], objects: dict[str, ObjectResult]) -> tuple[dict[str, export.Placement], list[str]]:
    """Placements of every object (see the module docstring) and notes on what was moved."""
    notes: list[str] = []
    pos: dict[str, np.ndarray] = {}
    ordered = support_order(items)
    radius = {n: footprint_radius(o.exported.hull_vertices_m) for n, o in objects.items()}
    groups: dict[str, list[SceneItem]] = {}
    for item in ordered:
        groups.setdefault(item.support, []).append(item)
    # Groups in support order: a support is final (pushed clear of its own neighbours) before
    # anything is placed on it.
    rank = {"": -1, **{item.name: k for k, item in enumerate(ordered)}}
    for support in sorted(groups, key=lambda s: rank[s]):
        members = groups[support]
        base = np.zeros(3)
        if support:
            top = float(objects[support].exported.hull_vertices_m[:, 2].max())
            base = pos[support] + np.array([0.0, 0.0, top])
        for item in members:
            pos[item.name] = base + np.array([item.x_m, item.y_m, 0.0])
        names = [item.name for item in members]
        for _ in range(100):
            moved = False
            for i, a in enumerate(names):
                for b in names[i + 1 :]:
                    d = pos[b][:2] - pos[a][:2]
                    dist = float(np.linalg.norm(d))
                    need = radius[a] + radius[b] + GAP_M
                    if dist >= need:
                        continue
                    direction = d / dist if dist > 1e-9 else np.array([1.0, 0.0])
                    push = (need - dist) / 2 + 1e-4
                    pos[a][:2] -= direction * push
                    pos[b][:2] += direction * push
                    moved = True
            if not moved:
                break
        for item in members:
            if np.linalg.norm(pos[item.name][:2] - base[:2] - [item.x_m, item.y_m]) > 1e-6:
                p = pos[item.name]
                notes.append(f"{item.name} moved to ({p[0]:.3f}, {p[1]:.3f}) m to clear its neighbours")
    placements = {}
    for item in ordered:
        half = math.radians(item.yaw_deg) / 2
        q = (math.cos(half), 0.0, 0.0, math.sin(half))
        placements[item.name] = export.Placement(tuple(float(v) for v in pos[item.name]), q)  # type: ignore[arg-type]
    return placements, notes


def build_scene(
    items: list[tuple[SceneItem, bytes, ObjectOptions]],
    folder: Path,
    *,
    settings: Settings = DEFAULT_SETTINGS,
    backends: BackendRegistry | None = None,
    on_stage: OnStage | None = None,
) -> SceneResult:
    """Build every object, lay them out, export ``scene.xml`` / ``scene.urdf`` and check the scene."""
    scene_items = [i for i, _, _ in items]
    support_order(scene_items)
    supports = {i.support for i in scene_items if i.support}
    stages = ("mask", "geometry", "texture", "physics", "layout", "export", "check")
    objects: dict[str, ObjectResult] = {}
    files: list[str] = []
    notes: list[str] = []
    span = 0.8 / len(items)
    timings: dict[str, float] = {}
    for k, (item, data, options) in enumerate(items):
        clock = StageClock(on_stage, ("mask", "geometry", "texture", "physics", "export", "check"), k * span, span)
        try:
            result = build_object(
                data,
                folder,
                name=item.name,
                options=options,
                settings=settings,
                backends=backends,
                flat_top=item.name in supports,
                clock=clock,
            )
        except InvalidArgument as exc:
            raise InvalidArgument(f"object {item.name!r}: {exc.message}") from None
        objects[item.name] = result
        files += result.files
        notes += [f"{item.name}: {n}" for n in result.notes]
        for stage, seconds in result.timings_s.items():
            timings[stage] = timings.get(stage, 0.0) + seconds
    scene_clock = StageClock(on_stage, stages, 0.8, 0.2)
    with scene_clock.stage("layout"):
        placements, layout_notes = layout(scene_items, objects)
        notes += layout_notes
    with scene_clock.stage("export"):
        placed = [(objects[i.name].exported, placements[i.name]) for i in scene_items]
        (folder / "scene.xml").write_text(export.mjcf(placed, model="scene", floor=True))
        (folder / "scene.urdf").write_text(export.urdf(placed, model="scene"))
        files += ["scene.xml", "scene.urdf"]
        export.verify_reload(folder, ["scene.xml", "scene.urdf"])
    with scene_clock.stage("check"):
        settled = check.scene_drop_test(placed, folder)
    drop = {
        "num_drops": settled.num_drops,
        "num_stable": settled.num_stable,
        "max_penetration_m": settled.max_penetration_m,
        "max_impact_penetration_m": settled.max_impact_penetration_m,
        "failures": settled.failures,
    }
    return SceneResult(
        reports=[objects[i.name].report for i in scene_items],
        drop_test=drop,
        files=files,
        placements=placements,
        notes=notes,
    )
