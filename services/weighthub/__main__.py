"""``python -m services.weighthub``: run the weight hub service."""

import sys

from services.common.entrypoint import service_main
from services.weighthub.server import create_server

if __name__ == "__main__":
    sys.exit(service_main("weighthub", create_server))
