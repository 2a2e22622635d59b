"""A Reader in a process of its own: fetches a version, says so on stdout, then serves it until
stdin closes (or it is killed). Used where a test needs a holder that can really die."""

from __future__ import annotations

import asyncio
import sys

from clients.weighthub import Reader


async def main(hub: str, model: str, holder_id: str, host: str, version: int) -> None:
    async with Reader(
        hub, model=model, holder_id=holder_id, host=host, transport_bind_host="127.0.0.1", lease_ttl_s=2.0
    ) as reader:
        await reader.fetch(version)
        print(f"held {version}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])))
