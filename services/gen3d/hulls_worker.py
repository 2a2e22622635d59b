"""``python -m services.gen3d.hulls_worker IN.npz OUT.npz``: CoACD in a process of its own.

CoACD's run time is heavy-tailed (seconds to about a minute on one mug), and a call into its C++
cannot be interrupted; running it in a child process lets the caller kill it at its time budget.
"""

from __future__ import annotations

import sys

import numpy as np


def main(argv: list[str]) -> int:
    """Decompose the mesh in ``argv[0]`` and write the hulls to ``argv[1]``."""
    import coacd

    coacd.set_log_level("error")
    src = np.load(argv[0])
    mesh = coacd.Mesh(src["vertices"].astype(np.float64), src["faces"].astype(np.int64))
    parts = coacd.run_coacd(
        mesh,
        threshold=float(src["threshold"]),
        max_convex_hull=int(src["max_hulls"]),
        preprocess_mode="off",  # the mesh is already manifold; remeshing it costs seconds
        resolution=1000,
        mcts_iterations=60,
        mcts_nodes=12,
        max_ch_vertex=64,
        seed=0,
    )
    out: dict[str, np.ndarray] = {"num": np.array(len(parts))}
    for i, (verts, faces) in enumerate(parts):
        out[f"v{i}"] = np.asarray(verts, dtype=np.float64)
        out[f"f{i}"] = np.asarray(faces, dtype=np.int64)
    np.savez(argv[1], **out)  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
