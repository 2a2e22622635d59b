"""Image to simulation-ready asset: the CPU pipeline side by side with the convex hull of an extruded
silhouette (the first thing a user might try), in one run.

Inputs: generated test images (symmetric, asymmetric, with holes, thin parts; see
``services.gen3d.samples``) and real photographs shipped inside scikit-image (``horse.png``, a
silhouette with alpha; ``rocket.jpg``, a photo against a dusk sky with the rocket's pad on the bottom
edge and towers crossing the frame; ``logo.png``, a disc split by a white line). Per asset: seconds
(total and per stage), watertightness, drop-test stability, silhouette IoU of the exported mesh
re-projected onto the input mask by a rasterizer (pixel centres, depth buffer), texture alignment
error of an unlit front render of the exported GLB against the input image (mean absolute colour
error inside the mask, 0 to 1) beside the same error for a flat coat of the object's mean colour,
mass and inertia sanity (positive mass, positive-definite inertia satisfying the triangle
inequality), and the rest pose it is exported in (tipping angle; whether it was laid on another
side). The geometry baseline gets the same mask.

Run: ``python -m benchmarks.gen3d [--quick] [--json PATH]``.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import trimesh

from benchmarks.report import Progress, emit, standard_parser
from services.gen3d import samples
from services.gen3d.images import decode_image
from services.gen3d.mask import foreground_mask
from services.gen3d.pipeline import ObjectOptions, Settings, build_object
from services.gen3d.render import iou, silhouette

logger = logging.getLogger(__name__)

PHOTOS = {"horse": ("horse.png", "toy"), "rocket": ("rocket.jpg", "toy"), "logo": ("logo.png", "object")}
"""Real images shipped inside scikit-image, and the class each is built as."""


def inputs(quick: bool) -> list[tuple[str, bytes, str]]:
    """(name, encoded image, object class) of every benchmark input."""
    import skimage.data

    size = 160 if quick else 256
    out = [(name, samples.png_bytes(fn(size)), name) for name, fn in samples.GENERATED.items()]
    folder = Path(skimage.data.__file__).parent
    for name, (file, cls) in PHOTOS.items():
        if (folder / file).is_file():
            out.append((f"photo:{name}", (folder / file).read_bytes(), cls))
    return out


def extruded_hull_iou(data: bytes, max_side_px: int) -> float:
    """The baseline: extrude the silhouette's outline points and take their convex hull; its IoU."""
    image = decode_image(data, max_pixels=50_000_000, max_side_px=max_side_px)
    mask = foreground_mask(image.rgb, image.alpha)
    rows, cols = np.nonzero(mask)
    depth = 0.5 * max(np.ptp(rows), np.ptp(cols))
    pts = np.concatenate([np.stack([cols, np.full_like(cols, d, dtype=float), -rows], 1) for d in (-depth, depth)])
    hull = trimesh.convex.convex_hull(pts.astype(float))
    # Pixel (r, c) has its centre at column c + 0.5 and row r + 0.5 (z = -r).
    return iou(silhouette(hull, 0.5, 0.5, mask.shape), mask)


def inertia_sane(inertia: np.ndarray) -> bool:
    """Symmetric, positive definite, principal moments satisfying the triangle inequality."""
    if not np.allclose(inertia, inertia.T, atol=1e-12):
        return False
    moments = np.linalg.eigvalsh(inertia)
    return bool(moments.min() > 0 and moments[0] + moments[1] >= moments[2] * (1 - 1e-6))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and print the standard JSON report."""
    args = standard_parser(__doc__.splitlines()[0]).parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    settings = (
        Settings(resolution=72, texture_size_px=256, collision_budget_s=2.0, num_drops=3, max_side_px=512)
        if args.quick
        else Settings()
    )
    cases = inputs(args.quick)
    per_asset: dict[str, Any] = {}
    progress = Progress("gen3d assets", total=len(cases))
    seconds: list[float] = []
    stage_seconds: dict[str, list[float]] = {}
    for name, data, cls in cases:
        with tempfile.TemporaryDirectory(prefix="gen3d-bench-") as tmp:
            started = time.perf_counter()
            try:
                result = build_object(
                    data, Path(tmp), name="asset", options=ObjectOptions(object_class=cls), settings=settings
                )
            except Exception as exc:  # a failed input is a figure, not a crash of the benchmark
                per_asset[name] = {"failed": f"{type(exc).__name__}: {exc}"}
                progress.advance()
                continue
            elapsed = time.perf_counter() - started
        r = result.report
        inertia = np.asarray(r["inertia_kg_m2"])
        per_asset[name] = {
            "seconds": elapsed,
            "stage_seconds": result.timings_s,
            "geometry_method": r["geometry_method"],
            "watertight": r["watertight"],
            "stable_drops": r["drop_test"]["num_stable"],
            "num_drops": r["drop_test"]["num_drops"],
            "drop_failures": r["drop_test"]["failures"],
            "max_rest_penetration_m": r["drop_test"]["max_penetration_m"],
            "max_impact_penetration_m": r["drop_test"]["max_impact_penetration_m"],
            "silhouette_iou": r["silhouette_iou"],
            "texture_error": r["texture_error"],
            "texture_baseline_error": r["texture_baseline_error"],
            "mass_kg": r["mass_kg"],
            "mass_sane": 0 < r["mass_kg"] < 1000,
            "inertia_sane": inertia_sane(inertia),
            "num_faces": r["num_faces"],
            "tipping_angle_deg": r["rest_pose"]["tipping_angle_deg"],
            "upright_tipping_angle_deg": r["rest_pose"]["upright_tipping_angle_deg"],
            "reoriented": r["rest_pose"]["reoriented"],
            "collision": r["collision_method"],
            "baseline_iou": extruded_hull_iou(data, settings.max_side_px),
        }
        seconds.append(elapsed)
        for stage, s in result.timings_s.items():
            stage_seconds.setdefault(stage, []).append(s)
        progress.advance()
    progress.finish()
    done = [a for a in per_asset.values() if "failed" not in a]
    n = len(cases)
    figures = {
        "assets": per_asset,
        "num_inputs": n,
        "num_failed": n - len(done),
        "seconds_p95": float(np.percentile(seconds, 95)) if seconds else 0.0,
        "stage_seconds_median": {k: statistics.median(v) for k, v in stage_seconds.items()},
        "texture_error_mean": statistics.mean(a["texture_error"] for a in done) if done else 1.0,
        "texture_baseline_error_mean": statistics.mean(a["texture_baseline_error"] for a in done) if done else 1.0,
        "max_rest_penetration_m": max((a["max_rest_penetration_m"] for a in done), default=0.0),
    }
    ratios = {
        "watertight_rate": sum(a["watertight"] for a in done) / n,
        "stable_rate": sum(a["stable_drops"] for a in done) / max(1, sum(a["num_drops"] for a in done)),
        "iou_mean": statistics.mean(a["silhouette_iou"] for a in done) if done else 0.0,
        "seconds_median": statistics.median(seconds) if seconds else 0.0,
        "baseline_iou_mean": statistics.mean(a["baseline_iou"] for a in done) if done else 0.0,
        "texture_error_mean": figures["texture_error_mean"],
        "texture_baseline_error_mean": figures["texture_baseline_error_mean"],
        "seconds_p95": figures["seconds_p95"],
        "mass_inertia_sane_rate": sum(a["mass_sane"] and a["inertia_sane"] for a in done) / n,
        "success_rate": len(done) / n,
    }
    config = {"quick": args.quick, "settings": settings.__dict__, "inputs": [c[0] for c in cases]}
    return emit("gen3d", config=config, figures=figures, ratios=ratios, json_path=args.json)


if __name__ == "__main__":
    main()
