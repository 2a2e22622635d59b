"""Image-to-3D generation of simulation-ready assets."""
