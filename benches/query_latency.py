"""End-to-end `imgsim query` latency and `imgsim dupes` cost on a large index.

Builds a database of N vectors (default 100,000) without decoding N files:
the sample photos are indexed for real, then their stored vectors are
repeated with Gaussian noise (cosine about 0.9 to their source) under paths
that do not exist. Then it times, as whole processes:

- the first `imgsim query`, which builds and saves the HNSW graph;
- repeated `imgsim query` runs with the saved graph (the figure users see);
- `imgsim dupes --json` over all N vectors, with its peak memory.

Run from the repository root after `cargo build --release` (numpy needed):

    /tmp/bench-venv/bin/python benches/query_latency.py --vectors 100000
"""

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def timed(command):
    """Runs a command; returns (seconds, peak resident MiB of that process)."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        sys.exit(f"{' '.join(map(str, command))} failed: {stderr}")
    return seconds, usage.ru_maxrss / 1024


def fill(database: Path, count: int, seed: int) -> None:
    connection = sqlite3.connect(database)
    rows = connection.execute("SELECT vector FROM images").fetchall()
    sources = np.stack([np.frombuffer(row[0], dtype="<f4") for row in rows])
    rng = np.random.default_rng(seed)
    dimension = sources.shape[1]
    made = 0
    with connection:
        while made < count - len(sources):
            batch = min(10_000, count - len(sources) - made)
            picked = sources[rng.integers(0, len(sources), batch)]
            noisy = picked + rng.normal(0, 0.5 / np.sqrt(dimension), (batch, dimension)).astype("<f4")
            noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
            connection.executemany(
                "INSERT INTO images (path, file_size, modified_ns, width, height, format, vector, indexed_at)"
                " VALUES (?, 50000, 0, 640, 480, 'jpeg', ?, 0)",
                ((f"/synthetic/{made + i:07d}.jpg".encode(), noisy[i].astype("<f4").tobytes()) for i in range(batch)),
            )
            made += batch
    connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--imgsim", default=str(ROOT / "target/release/imgsim"))
    parser.add_argument("--photos", default=str(ROOT.parent / "shared/testdata/photos"))
    parser.add_argument("--skip-dupes", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        database = Path(scratch) / "large.db"
        imgsim = [args.imgsim, "--db", database]
        subprocess.run([*imgsim, "index", "-q", args.photos], check=True)
        fill(database, args.vectors, seed=7)
        query_image = sorted(Path(args.photos).glob("*__tn_*"))[0]
        print(f"{args.vectors} vectors in {database.stat().st_size / 2**20:.0f} MiB of SQLite")

        build, build_peak = timed([*imgsim, "query", query_image, "-k", "10"])
        print(f"first query (builds and saves the HNSW graph): {build:.1f} s, peak {build_peak:.0f} MiB")
        times = [timed([*imgsim, "query", query_image, "-k", "10"])[0] for _ in range(args.queries)]
        times.sort()
        print(
            f"query end to end, {args.queries} runs: median {statistics.median(times) * 1000:.0f} ms, "
            f"min {times[0] * 1000:.0f} ms, max {times[-1] * 1000:.0f} ms"
        )
        if not args.skip_dupes:
            seconds, peak = timed([*imgsim, "-q", "dupes", "--json"])
            print(f"dupes over {args.vectors} vectors: {seconds:.1f} s, peak {peak:.0f} MiB")
        graph_files = [p for p in Path(scratch).iterdir() if p.name != database.name]
        for path in sorted(graph_files):
            if path.is_file():
                print(f"  {path.name}: {path.stat().st_size / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
