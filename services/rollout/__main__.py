"""``python -m services.rollout``: run the rollout server and verifiers service."""

import sys

from services.common.entrypoint import service_main
from services.rollout.server import create_server

if __name__ == "__main__":
    sys.exit(service_main("rollout", create_server))
