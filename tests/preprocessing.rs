//! Model input descriptions end to end: small ONNX models written here
//! return the per-channel mean of their input tensor, so the vectors that
//! `imgsim embed` prints show the layout, channel order, size and
//! normalisation that reached the model.

mod common;

use std::path::{Path, PathBuf};

use imgsim::model::graph::{
    Dimension, TensorShapeProto, TensorTypeProto, TypeProto, ValueInfoProto,
};
use prost::Message;

#[derive(Clone, PartialEq, Message)]
struct Model {
    #[prost(int64, tag = "1")]
    ir_version: i64,
    #[prost(message, optional, tag = "7")]
    graph: Option<Graph>,
    #[prost(message, repeated, tag = "8")]
    opset_import: Vec<OperatorSet>,
}

#[derive(Clone, PartialEq, Message)]
struct OperatorSet {
    #[prost(string, tag = "1")]
    domain: String,
    #[prost(int64, tag = "2")]
    version: i64,
}

#[derive(Clone, PartialEq, Message)]
struct Graph {
    #[prost(message, repeated, tag = "1")]
    node: Vec<Node>,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(message, repeated, tag = "11")]
    input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, Message)]
struct Node {
    #[prost(string, repeated, tag = "1")]
    input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    output: Vec<String>,
    #[prost(string, tag = "4")]
    op_type: String,
    #[prost(message, repeated, tag = "5")]
    attribute: Vec<Attribute>,
}

#[derive(Clone, PartialEq, Message)]
struct Attribute {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(int64, tag = "3")]
    i: i64,
    #[prost(int64, repeated, tag = "8")]
    ints: Vec<i64>,
    /// AttributeProto.AttributeType: 2 is INT, 7 is INTS.
    #[prost(int32, tag = "20")]
    r#type: i32,
}

fn float_tensor(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: 1,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .enumerate()
                        .map(|(axis, &dim_value)| Dimension {
                            dim_value,
                            dim_param: dim_value.is_none().then(|| format!("axis{axis}")),
                        })
                        .collect(),
                }),
            }),
        }),
    }
}

/// Writes a model that averages its input over the axes `spatial` with
/// ReduceMean (opset 13), giving [N, 3].
fn write_channel_mean_model(path: &Path, input_dims: &[Option<i64>], spatial: [i64; 2]) {
    let model = Model {
        ir_version: 8,
        opset_import: vec![OperatorSet {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(Graph {
            name: "channel_mean".to_string(),
            node: vec![Node {
                input: vec!["image".to_string()],
                output: vec!["mean".to_string()],
                op_type: "ReduceMean".to_string(),
                attribute: vec![
                    Attribute {
                        name: "axes".to_string(),
                        ints: spatial.to_vec(),
                        r#type: 7,
                        ..Attribute::default()
                    },
                    Attribute {
                        name: "keepdims".to_string(),
                        i: 0,
                        r#type: 2,
                        ..Attribute::default()
                    },
                ],
            }],
            input: vec![float_tensor("image", input_dims)],
            output: vec![float_tensor("mean", &[None, Some(3)])],
        }),
    };
    std::fs::write(path, model.encode_to_vec()).unwrap();
}

/// Writes a uniformly coloured PNG.
fn write_uniform_png(path: &Path, rgb: [u8; 3]) {
    image::RgbImage::from_pixel(37, 23, image::Rgb(rgb))
        .save(path)
        .unwrap();
}

struct Setup {
    dir: tempfile::TempDir,
    image: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("colour.png");
        write_uniform_png(&image, [200, 100, 50]);
        Setup { dir, image }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `imgsim embed` on the image with `args` and returns its one row.
    fn embed(&self, model: &Path, args: &[&str]) -> Vec<f64> {
        let output = self.path("out.jsonl");
        let mut command = common::imgsim(&self.path("unused.db"));
        command
            .arg("embed")
            .arg(&self.image)
            .arg("-o")
            .arg(&output)
            .arg("--normalize")
            .arg("false")
            .arg("--model")
            .arg(model)
            .args(args);
        let run: common::Run = command.output().unwrap().into();
        assert_eq!(run.status, 0, "{}", run.stderr);
        let line = std::fs::read_to_string(&output).unwrap();
        let row: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        row["vector"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    }
}

/// Compares within 1e-4 relative: ReduceMean sums thousands of float32
/// values, so its rounding grows with the values' size.
fn assert_close(actual: &[f64], expected: [f64; 3]) {
    assert_eq!(actual.len(), 3);
    for (channel, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= 1e-4 * e.abs().max(1.0),
            "channel {channel}: {a} vs {e} (row {actual:?})"
        );
    }
}

#[test]
fn default_preprocessing_maps_pixels_to_unit_range() {
    let setup = Setup::new();
    let model = setup.path("nchw.onnx");
    write_channel_mean_model(&model, &[None, Some(3), Some(224), Some(224)], [2, 3]);
    let row = setup.embed(&model, &[]);
    assert_close(
        &row,
        [
            (200.0 - 127.5) / 127.5,
            (100.0 - 127.5) / 127.5,
            (50.0 - 127.5) / 127.5,
        ],
    );
}

#[test]
fn nhwc_bgr_with_mean_and_std_from_options() {
    let setup = Setup::new();
    let model = setup.path("nhwc.onnx");
    write_channel_mean_model(&model, &[None, Some(96), Some(128), Some(3)], [1, 2]);
    let row = setup.embed(
        &model,
        &[
            "--channels",
            "bgr",
            "--mean",
            "0.1,0.2,0.3",
            "--std",
            "0.5,0.25,0.125",
        ],
    );
    // Channels come blue first; mean and std are in tensor order.
    assert_close(
        &row,
        [
            (50.0 / 255.0 - 0.1) / 0.5,
            (100.0 / 255.0 - 0.2) / 0.25,
            (200.0 / 255.0 - 0.3) / 0.125,
        ],
    );
}

#[test]
fn sidecar_file_sets_preprocessing() {
    let setup = Setup::new();
    let model = setup.path("dynamic.onnx");
    write_channel_mean_model(&model, &[None, Some(3), None, None], [2, 3]);
    std::fs::write(
        setup.path("dynamic.preprocess.toml"),
        "# Caffe-style input\nsize = [64, 48]\nchannels = \"bgr\"\n\
         scale = 1.0\noffset = [-104.0, -117.0, -124.0]\n",
    )
    .unwrap();
    let row = setup.embed(&model, &[]);
    assert_close(&row, [50.0 - 104.0, 100.0 - 117.0, 200.0 - 124.0]);

    // Options override the file: here the scale and offset as a whole.
    let row = setup.embed(&model, &["--scale", "0.00392156862745098"]);
    assert_close(&row, [50.0 / 255.0, 100.0 / 255.0, 200.0 / 255.0]);

    let listing = common::run(
        &setup.path("unused.db"),
        ["model".as_ref(), model.as_os_str()],
    );
    assert_eq!(listing.status, 0, "{}", listing.stderr);
    assert!(
        listing.stdout.contains(
            "preprocessing: rgb8 exif-oriented, alpha over white, stretch to 64x48 bilinear, \
             (p-[104,117,124])/[1,1,1], bgr, nchw (settings from "
        ),
        "{}",
        listing.stdout
    );
}

#[test]
fn invalid_preprocessing_is_reported() {
    let setup = Setup::new();
    let model = setup.path("fixed.onnx");
    write_channel_mean_model(&model, &[None, Some(3), Some(224), Some(224)], [2, 3]);
    let cases: [(&[&str], &str); 3] = [
        (&["--input-size", "256"], "the model takes 224x224"),
        (
            &["--layout", "nhwc"],
            "layout nhwc needs 3 channels at axis 3",
        ),
        (
            &["--scale", "2", "--mean", "0.5"],
            "either scale and offset or mean and std",
        ),
    ];
    for (args, message) in cases {
        let mut command = common::imgsim(&setup.path("unused.db"));
        command
            .args(["embed", "-o"])
            .arg(setup.path("never.npy"))
            .arg(&setup.image)
            .arg("--model")
            .arg(&model)
            .args(args);
        let run: common::Run = command.output().unwrap().into();
        assert_eq!(run.status, 2, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(message), "{args:?}: {}", run.stderr);
        assert!(
            run.stderr.contains("settings do not fit the model"),
            "{args:?}: {}",
            run.stderr
        );
        assert!(
            !run.stderr.contains("unsupported"),
            "{args:?}: {}",
            run.stderr
        );
    }

    std::fs::write(setup.path("fixed.preprocess.toml"), "sise = 224\n").unwrap();
    let mut command = common::imgsim(&setup.path("unused.db"));
    command
        .args(["embed", "-o"])
        .arg(setup.path("never.npy"))
        .arg(&setup.image)
        .arg("--model")
        .arg(&model);
    let run: common::Run = command.output().unwrap().into();
    assert_eq!(run.status, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("fixed.preprocess.toml: invalid preprocessing file"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("sise"), "{}", run.stderr);
}

#[test]
fn database_records_preprocessing_and_rejects_other() {
    let setup = Setup::new();
    let model = setup.path("nchw.onnx");
    write_channel_mean_model(&model, &[None, Some(3), Some(224), Some(224)], [2, 3]);
    let database = setup.path("index.db");
    let folder = setup.path("images");
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(&setup.image, folder.join("a.png")).unwrap();

    let index = |extra: &[&str]| -> common::Run {
        let mut command = common::imgsim(&database);
        command
            .arg("index")
            .arg(&folder)
            .arg("--model")
            .arg(&model)
            .args(extra);
        command.output().unwrap().into()
    };
    let run = index(&["--mean", "0.5", "--std", "0.25"]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let connection = rusqlite::Connection::open(&database).unwrap();
    let recorded: String = connection
        .query_row("SELECT preprocessing FROM model", [], |row| row.get(0))
        .unwrap();
    assert_eq!(
        recorded,
        "rgb8 exif-oriented, alpha over white, stretch to 224x224 bilinear, \
         (p-127.5)/63.75, nchw"
    );

    let run = index(&[]);
    assert_eq!(run.status, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("the preprocessing differs"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("(p-127.5)/63.75"), "{}", run.stderr);
}
