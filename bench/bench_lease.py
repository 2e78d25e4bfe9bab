"""What the lease's fence costs per write: the latency of ``Lease.check`` (the driver's guard),
``check_ref`` (a shard writer's, on the holder's machine) and ``Lease.renew`` (the compare-and-set
heartbeat) on a local folder and on a moto S3 server on loopback, with N shard markers beside the lock.

    python bench/bench_lease.py [--markers 1000] [--calls 30]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--markers", type=int, default=1000, help="shard markers written beside the lock (default 1000)")
    p.add_argument("--calls", type=int, default=30, help="timed calls of each operation (default 30)")
    args = p.parse_args()
    if args.markers < 0 or args.calls < 1:
        p.error("--markers must be >= 0 and --calls >= 1")

    from measure import start_s3

    server, _ = start_s3()
    from dakter_scale.data import storage
    from dakter_scale.data.lease import Lease, check_ref

    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, url in (("local", f"{tmp}/out"), ("moto-s3", "s3://bench/out")):
                fs, root = storage.url_to_fs(url)
                if storage.is_local(fs):
                    fs.makedirs(root, exist_ok=True)
                fs.pipe({storage.join(root, f"shard-{i:06d}.json"): b"{}" for i in range(args.markers)})
                lease = Lease(url, "bench", heartbeat=False).acquire()
                for label, call in (
                    ("Lease.check", lease.check),
                    ("check_ref", lambda: check_ref(lease.ref())),
                    ("Lease.renew", lease.renew),
                ):
                    times = []
                    for _ in range(args.calls):
                        t0 = time.perf_counter()
                        call()
                        times.append(time.perf_counter() - t0)
                    print(
                        f"{name:8s} {label:12s} median {1000 * statistics.median(times):6.1f} ms  max {1000 * max(times):6.1f} ms  ({args.calls} calls, {args.markers} markers beside the lock)"
                    )
                lease.release()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
