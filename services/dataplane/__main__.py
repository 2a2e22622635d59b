"""``python -m services.dataplane``: run the data plane service."""

import sys

from services.common.entrypoint import service_main
from services.dataplane.server import create_server

if __name__ == "__main__":
    sys.exit(service_main("dataplane", create_server))
