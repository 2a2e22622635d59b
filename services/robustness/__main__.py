"""``python -m services.robustness``: run the robustness monitor service."""

import sys

from services.common.entrypoint import service_main
from services.robustness.server import create_server

if __name__ == "__main__":
    sys.exit(service_main("robustness", create_server))
