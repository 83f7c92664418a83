"""Firmware endpoint: download throughput and the server's memory while many meters download.

The endpoint runs in a child process (directory archive, SQLite metadata) so its resident
memory is measured alone; clients are raw sockets in this process. Two runs on one image:
- **fast**: N clients download the whole image in parallel (aggregate MiB/s);
- **slow**: N clients each read 64 KiB every 50 ms (a poor link), so every download sits with
  full socket buffers; the server's RSS growth over its idle RSS is what a download costs.
Holding each image whole, as the endpoint used to, would cost N x the image size.

    .venv/bin/python bench/firmware_endpoint.py [--image-mib 128] [--clients 16] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import socket
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from _common import rss_mib

RESULTS = Path(__file__).parent / "results" / "firmware_endpoint.json"
SLOW_READ = 64 * 1024
SLOW_PAUSE_S = 0.05
SLOW_SECONDS = 3.0


def serve(root: str, image_mib: int, clients: int, pipe: Connection) -> None:
    """The child: upload an image, serve it, hand the signed path and port back, wait."""
    from iotmeter_tui.backend.control.firmware import FirmwareServer
    from iotmeter_tui.backend.control.ota import OtaService
    from iotmeter_tui.backend.stores.archive_dir import DirectoryArchive
    from iotmeter_tui.backend.stores.factory import open_metadata

    metadata = open_metadata(f"sqlite:///{root}/meta.db")
    archive = DirectoryArchive(Path(root) / "archive")
    fw = OtaService(metadata, archive).upload_bytes(os.urandom(image_mib << 20), "9.0.0")
    server = FirmwareServer("127.0.0.1:0", metadata, archive, max_downloads=clients)
    server.start()
    path = server.url_for(fw, 3600).split(f":{server.port}", 1)[1]
    pipe.send((server.port, path, fw.size))
    pipe.recv()  # until the parent is done
    server.stop(drain_s=0.5)


def download(port: int, path: str, *, slow: bool, stop: threading.Event,
             out: list[int]) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    if slow:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: fw\r\nConnection: close\r\n\r\n".encode())
    received = 0
    while not stop.is_set():
        chunk = sock.recv(SLOW_READ if slow else 1 << 20)
        if not chunk:
            break
        received += len(chunk)
        if slow:
            time.sleep(SLOW_PAUSE_S)
    sock.close()
    out.append(received)


def run(port: int, path: str, clients: int, *, slow: bool, server_pid: int) -> dict[str, Any]:
    stop = threading.Event()
    out: list[int] = []
    threads = [threading.Thread(target=download, args=(port, path),
                                kwargs={"slow": slow, "stop": stop, "out": out})
               for _ in range(clients)]
    peak = rss_mib(server_pid) or 0.0
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    deadline = started + SLOW_SECONDS if slow else None
    while any(t.is_alive() for t in threads):
        peak = max(peak, rss_mib(server_pid) or 0.0)
        if deadline is not None and time.perf_counter() >= deadline:
            stop.set()
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    total = sum(out)
    return {"clients": clients, "seconds": round(elapsed, 2), "mib": round(total / 2**20, 1),
            "mib_per_s": round(total / 2**20 / elapsed, 1), "server_rss_peak_mib": round(peak, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-mib", type=int, default=128)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="iotmeter-bench-fw-") as root:
        parent, child = context.Pipe()
        process = context.Process(target=serve, args=(root, args.image_mib, args.clients, child))
        process.start()
        port, path, size = parent.recv()
        time.sleep(0.5)
        idle = rss_mib(process.pid) or 0.0
        fast = run(port, path, args.clients, slow=False, server_pid=process.pid)
        slow = run(port, path, args.clients, slow=True, server_pid=process.pid)
        parent.send("done")
        process.join(10)
    result = {
        "bench": "firmware_endpoint",
        "machine": f"{platform.machine()} {os.cpu_count()} cpu",
        "image_mib": args.image_mib,
        "server_rss_idle_mib": round(idle, 1),
        "fast": fast,
        "slow": slow,
        "slow_rss_growth_mib": round(slow["server_rss_peak_mib"] - idle, 1),
        "whole_image_per_download_would_be_mib": args.clients * args.image_mib,
    }
    assert fast["mib"] == round(args.clients * size / 2**20, 1), "a fast download came up short"
    print(f"fast: {args.clients} x {args.image_mib} MiB in {fast['seconds']} s = "
          f"{fast['mib_per_s']} MiB/s, server RSS peak {fast['server_rss_peak_mib']} MiB "
          f"(idle {result['server_rss_idle_mib']})")
    print(f"slow: {args.clients} slow readers for {SLOW_SECONDS:g} s, server RSS grew "
          f"{result['slow_rss_growth_mib']} MiB (whole images would be "
          f"{result['whole_image_per_download_would_be_mib']} MiB)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
