#!/usr/bin/env python3
"""Time `imgsim index` and `imgsim query` end to end on a folder of photos.

Each index run starts from an empty database, so every image is decoded and
embedded; the time is the whole process, model loading included. Each query
is one process: model loading, decode, inference, HNSW load and search.

Usage (from the repository root, after `cargo build --release`):
  python3 benches/index_query.py [PHOTO_DIR] [--runs N] [--queries N]
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BINARY = ROOT / "target" / "release" / "imgsim"
DEFAULT_PHOTOS = ROOT.parent / "shared" / "testdata" / "photos"


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timed(command):
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode not in (0, 3):
        sys.exit(f"error: {' '.join(map(str, command))} exited {result.returncode}: {result.stderr}")
    return elapsed, result.stdout


def spread(values):
    return f"median {statistics.median(values):.3f}, min {min(values):.3f}, max {max(values):.3f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", nargs="?", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--runs", type=int, default=5, help="index runs (default 5)")
    parser.add_argument("--queries", type=int, default=20, help="query runs (default 20)")
    args = parser.parse_args()
    if not BINARY.is_file():
        sys.exit(f"error: {BINARY} not found; run `cargo build --release` first")

    print(f"machine: {os.cpu_count()} cores, {cpu_model()}")
    print(f"photos: {args.photos}")
    with tempfile.TemporaryDirectory() as scratch:
        rates, seconds = [], []
        database = Path(scratch) / "bench.db"
        for run in range(args.runs):
            for leftover in Path(scratch).iterdir():
                leftover.unlink()
            elapsed, stdout = timed([BINARY, "--db", database, "-q", "index", "--json", args.photos])
            indexed = json.loads(stdout)["indexed"]
            seconds.append(elapsed)
            rates.append(indexed / elapsed)
        print(f"index: {indexed} images; wall seconds {spread(seconds)}")
        print(f"index: images/s (whole process) {spread(rates)}")

        images = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        latencies = []
        for number in range(args.queries):
            image = images[number % len(images)]
            elapsed, _ = timed([BINARY, "--db", database, "-q", "query", "--json", "-k", "10", image])
            latencies.append(elapsed * 1000)
        print(f"query: ms per process (k=10) {spread(latencies)}")


if __name__ == "__main__":
    main()
