"""``python -m services.gen3d``: run the 3D generation service."""

import sys

from services.common.entrypoint import service_main
from services.gen3d.server import create_server

if __name__ == "__main__":
    sys.exit(service_main("gen3d", create_server))
