"""Records the hosts a test's subprocess reaches: Python's `site` imports `sitecustomize` from
sys.path at start-up, so a subprocess run with this folder on PYTHONPATH and M2E_NETWORK_LOG set
appends one line per name lookup or connection made through Python sockets (PEP 578 audit events
`socket.getaddrinfo` and `socket.connect`: gcsfs / aiohttp, google-auth, google-cloud-storage) to
that file. tests/test_gcs.py checks every line names loopback."""

import os
import sys


def _audit(event: str, args: tuple) -> None:
    if event == "socket.getaddrinfo":
        host = args[0]
    elif event == "socket.connect":
        address = args[1]
        host = address[0] if isinstance(address, tuple) else "unix"
    else:
        return
    with open(os.environ["M2E_NETWORK_LOG"], "a") as f:
        f.write(f"{event} {host!s}\n")


if os.environ.get("M2E_NETWORK_LOG"):
    sys.addaudithook(_audit)
