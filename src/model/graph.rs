//! Reading an ONNX model's graph, and adding a graph output to it, without
//! the full ONNX schema.
//!
//! Only the fields needed to find tap points are decoded: nodes (inputs,
//! outputs, operator type) and the graph's inputs, outputs and value
//! infos with their tensor shapes. Everything else, the weights included,
//! is skipped by the decoder. Field numbers are those of `onnx.proto` (ONNX
//! 1.x), which ONNX keeps stable across versions.

use prost::Message;

#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "13")]
    pub value_info: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TypeProto {
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TensorTypeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorTypeProto {
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Dimension {
    #[prost(int64, optional, tag = "1")]
    pub dim_value: Option<i64>,
    #[prost(string, optional, tag = "2")]
    pub dim_param: Option<String>,
}

/// ONNX's element type number for float32.
const FLOAT: i32 = 1;

/// A tensor of the graph that can serve as the embedding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    /// Known dimensions; `None` for a symbolic or unknown one (the batch).
    pub shape: Option<Vec<Option<i64>>>,
    /// The reason the tensor is a candidate.
    pub role: CandidateRole,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandidateRole {
    /// A graph output.
    Output,
    /// The input of a global pooling node that feeds a classifier: the
    /// feature map imgsim pools itself when it cuts the classifier off.
    PoolingInput,
}

#[derive(Debug, thiserror::Error)]
#[error("not an ONNX model: {0}")]
pub struct GraphError(#[from] prost::DecodeError);

/// Decodes the graph of an ONNX model.
pub fn read_graph(model: &[u8]) -> Result<GraphProto, GraphError> {
    Ok(ModelProto::decode(model)?.graph.unwrap_or_default())
}

/// Lists the graph outputs and the inputs of global pooling nodes
/// (GlobalAveragePool or ReduceMean) that lead to a classifier (Gemm,
/// MatMul, or a Conv as TensorFlow's 1x1 classifiers are converted) either
/// directly or through one Flatten, Reshape or Squeeze.
pub fn candidates(graph: &GraphProto) -> Vec<Candidate> {
    let mut found: Vec<Candidate> = graph
        .output
        .iter()
        .map(|output| Candidate {
            name: output.name.clone(),
            shape: shape_of(output),
            role: CandidateRole::Output,
        })
        .collect();
    for node in &graph.node {
        let pools = matches!(node.op_type.as_str(), "GlobalAveragePool" | "ReduceMean");
        if !pools || !feeds_classifier(graph, node) {
            continue;
        }
        let Some(input) = node.input.first() else {
            continue;
        };
        let shape = graph
            .value_info
            .iter()
            .chain(&graph.output)
            .find(|info| &info.name == input)
            .and_then(shape_of);
        found.push(Candidate {
            name: input.clone(),
            shape,
            role: CandidateRole::PoolingInput,
        });
    }
    found
}

/// Returns whether `node`'s output reaches a classifier directly or through
/// one reshaping node.
fn feeds_classifier(graph: &GraphProto, node: &NodeProto) -> bool {
    let is_classifier = |op: &str| matches!(op, "Gemm" | "MatMul" | "Conv");
    node.output.iter().any(|output| {
        consumers(graph, output).any(|next| match next.op_type.as_str() {
            op if is_classifier(op) => true,
            "Flatten" | "Reshape" | "Squeeze" => next.output.iter().any(|reshaped| {
                consumers(graph, reshaped).any(|last| is_classifier(&last.op_type))
            }),
            _ => false,
        })
    })
}

/// Nodes that take `tensor` as an input.
fn consumers<'a>(graph: &'a GraphProto, tensor: &'a str) -> impl Iterator<Item = &'a NodeProto> {
    graph
        .node
        .iter()
        .filter(move |node| node.input.iter().any(|input| input == tensor))
}

/// Returns the name and dimensions of the graph's first input, the image
/// tensor of an image model.
pub fn first_input(graph: &GraphProto) -> Option<(&str, Option<Vec<Option<i64>>>)> {
    let input = graph.input.first()?;
    Some((input.name.as_str(), shape_of(input)))
}

/// Returns the declared shape of graph output `name` for a batch of one
/// image, or `None` unless it is an output whose dimensions after the first
/// are all declared.
pub fn declared_shape(graph: &GraphProto, name: &str) -> Option<Vec<usize>> {
    let output = graph.output.iter().find(|output| output.name == name)?;
    let dims = shape_of(output)?;
    let (_, rest) = dims.split_first()?;
    let rest: Option<Vec<usize>> = rest
        .iter()
        .map(|dim| dim.and_then(|d| usize::try_from(d).ok()).filter(|&d| d > 0))
        .collect();
    Some([vec![1], rest?].concat())
}

fn shape_of(info: &ValueInfoProto) -> Option<Vec<Option<i64>>> {
    let shape = info.r#type.as_ref()?.tensor_type.as_ref()?.shape.as_ref()?;
    Some(shape.dim.iter().map(|dim| dim.dim_value).collect())
}

/// Returns the model with `tensor` added as a float32 graph output.
///
/// A protobuf message that appears twice is merged, and repeated fields are
/// appended, so appending a `ModelProto` whose graph has only this output
/// adds the output without decoding or re-encoding the original model.
pub fn with_extra_output(model: &[u8], tensor: &str) -> Vec<u8> {
    let extra = ModelProto {
        graph: Some(GraphProto {
            output: vec![ValueInfoProto {
                name: tensor.to_string(),
                r#type: Some(TypeProto {
                    tensor_type: Some(TensorTypeProto {
                        elem_type: FLOAT,
                        shape: None,
                    }),
                }),
            }],
            ..GraphProto::default()
        }),
    };
    let mut bytes = model.to_vec();
    bytes.extend(extra.encode_to_vec());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_model_has_embedding_output() {
        let graph = read_graph(crate::model::DEFAULT_MODEL_BYTES).unwrap();
        let found = candidates(&graph);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name, "embedding");
        assert_eq!(found[0].role, CandidateRole::Output);
        assert_eq!(
            found[0].shape.as_deref(),
            Some([None, Some(1280)].as_slice())
        );
        assert!(graph
            .node
            .iter()
            .any(|node| node.op_type == "GlobalAveragePool"));
    }

    #[test]
    fn extra_output_is_merged_into_graph() {
        let model = crate::model::DEFAULT_MODEL_BYTES;
        let graph = read_graph(model).unwrap();
        let pool = graph
            .node
            .iter()
            .find(|node| node.op_type == "GlobalAveragePool")
            .unwrap();
        let extended = with_extra_output(model, &pool.input[0]);
        let merged = read_graph(&extended).unwrap();
        assert_eq!(merged.node.len(), graph.node.len());
        let names: Vec<&str> = merged.output.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["embedding", pool.input[0].as_str()]);
    }

    #[test]
    fn declared_shape_needs_known_dimensions() {
        let graph = read_graph(crate::model::DEFAULT_MODEL_BYTES).unwrap();
        assert_eq!(declared_shape(&graph, "embedding"), Some(vec![1, 1280]));

        let pool = graph
            .node
            .iter()
            .find(|node| node.op_type == "GlobalAveragePool")
            .unwrap();
        assert_eq!(declared_shape(&graph, &pool.input[0]), None);

        let extended = with_extra_output(crate::model::DEFAULT_MODEL_BYTES, &pool.input[0]);
        let merged = read_graph(&extended).unwrap();
        assert_eq!(declared_shape(&merged, &pool.input[0]), None);
    }

    #[test]
    fn garbage_is_not_a_model() {
        assert!(read_graph(b"\xff\xff\xff\xff not protobuf").is_err());
    }
}
