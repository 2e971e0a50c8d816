#!/usr/bin/env python3
"""Time re-running `imgsim index` over 1000 indexed photos: with nothing
changed, and after the photos' folder was renamed.

The 1000 files are copies of the photos in PHOTO_DIR, each with different
trailing bytes after the JPEG end marker, so every file has its own content
fingerprint. A first run indexes them; it is not timed. Each timed run is
the whole process, model loading included.

Usage (from the repository root, after `cargo build --release`):
  python3 benches/reindex.py [PHOTO_DIR] [--files N] [--runs N]
"""

import argparse
import resource
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BINARY = ROOT / "target" / "release" / "imgsim"
DEFAULT_PHOTOS = ROOT.parent / "shared" / "testdata" / "photos"


def make_album(photos_dir, folder, count):
    photos = sorted(p for p in photos_dir.iterdir() if p.suffix.lower() == ".jpg")
    folder.mkdir(parents=True)
    for number in range(count):
        source = photos[number % len(photos)]
        data = source.read_bytes() + f"copy {number}".encode()
        (folder / f"{number:05}-{source.name}").write_bytes(data)


def index(database, folder):
    started = time.perf_counter()
    result = subprocess.run(
        [BINARY, "--db", database, "-q", "index", "--json", folder],
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"error: index exited {result.returncode}: {result.stderr}")
    return elapsed, json.loads(result.stdout)


def spread(values):
    return f"median {statistics.median(values):.3f} s, min {min(values):.3f}, max {max(values):.3f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", nargs="?", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--files", type=int, default=1000, help="photos to index (default 1000)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each kind (default 5)")
    args = parser.parse_args()
    if not BINARY.is_file():
        sys.exit(f"error: {BINARY} not found; run `cargo build --release` first")

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        root = scratch / "archive"
        folder = root / "before"
        make_album(args.photos, folder, args.files)
        database = scratch / "bench.db"
        first, summary = index(database, root)
        # The first child is the largest, so the children's maximum is its peak.
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(
            f"first run: {summary['indexed']} images indexed in {first:.1f} s "
            f"({summary['indexed'] / first:.0f} images/s), peak memory {peak_mib:.0f} MiB"
        )

        unchanged = []
        for _ in range(args.runs):
            elapsed, summary = index(database, root)
            assert summary["unchanged"] == args.files, summary
            assert summary["decoded"] == 0, summary
            unchanged.append(elapsed)
        print(f"no-change re-run of {args.files} photos: {spread(unchanged)}")

        moved = []
        for run in range(args.runs):
            target = root / f"after-{run}"
            folder.rename(target)
            folder = target
            elapsed, summary = index(database, root)
            assert summary["moved"] == args.files, summary
            assert summary["decoded"] == 0, summary
            moved.append(elapsed)
        print(f"re-run after renaming their folder: {spread(moved)}")


if __name__ == "__main__":
    main()
