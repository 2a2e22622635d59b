"""``python -m services.trainer``: run the trainer service."""

import sys

from services.common.entrypoint import service_main
from services.trainer.server import create_server

if __name__ == "__main__":
    sys.exit(service_main("trainer", create_server))
