"""The old service's install path, reproduced for the memory benchmark.

Each device gets its own thread, as in the Python service this project replaces. A thread downloads
the whole APK into memory with ``requests.get(url).content`` and POSTs those bytes to the device
agent as a multipart upload (fields packageName, sha256 and the file part ``apk``). Nothing here is
optimised on purpose: this is the code path that was OOMKilled at 5 devices in a 500 MB container.

Protocol with the benchmark: prints one JSON line ``{"ready": true}`` once imports are done, waits
for a line on stdin (so the idle RSS can be read first), runs every device concurrently, then prints
one JSON line with per-device timings and exits.

Usage: old_service.py --agent URL --devices id1,id2 --url APK_URL --package NAME [--sha256 HEX]
"""

import argparse
import json
import sys
import threading
import time

import requests


def install_on_device(agent, device, url, package, sha256, out):
    t0 = time.monotonic()
    try:
        apk = requests.get(url, timeout=600).content  # the whole APK in memory
        t1 = time.monotonic()
        res = requests.post(
            f"{agent}/mobile/{device}/installApp",
            data={"packageName": package, "sha256": sha256 or ""},
            files={"apk": ("app.apk", apk, "application/vnd.android.package-archive")},
            timeout=600,
        )
        res.raise_for_status()
        out[device] = {"ok": True, "bytes": len(apk), "downloadS": t1 - t0, "installS": time.monotonic() - t1}
    except Exception as err:  # a thread's failure is reported, like the old service logged it
        out[device] = {"ok": False, "error": repr(err)[:500]}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--agent", required=True)
    p.add_argument("--devices", required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--package", required=True)
    p.add_argument("--sha256", default="")
    a = p.parse_args()
    devices = [d for d in a.devices.split(",") if d]

    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()

    out = {}
    t0 = time.monotonic()
    threads = [
        threading.Thread(target=install_on_device, args=(a.agent, d, a.url, a.package, a.sha256, out), daemon=True)
        for d in devices
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"wallS": time.monotonic() - t0, "devices": out}), flush=True)


if __name__ == "__main__":
    main()
