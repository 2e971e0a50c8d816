//! `imgsim model FILE`: the tensors of an ONNX model that can serve as the
//! embedding, and the one imgsim picks by default.

use anyhow::Context;

use crate::cli::ModelArgs;
use crate::exit::Status;
use crate::model::graph::{candidates, read_graph, CandidateRole};

pub fn run(args: &ModelArgs) -> anyhow::Result<Status> {
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("{}: cannot read the model", args.file.display()))?;
    let graph = read_graph(&bytes).with_context(|| args.file.display().to_string())?;
    let found = candidates(&graph);
    let default = found
        .iter()
        .position(|c| c.role == CandidateRole::PoolingInput)
        .or_else(|| (!found.is_empty()).then_some(0));
    for (position, candidate) in found.iter().enumerate() {
        let shape = match &candidate.shape {
            Some(dims) => {
                let dims: Vec<String> = dims
                    .iter()
                    .map(|d| d.map_or("?".to_string(), |d| d.to_string()))
                    .collect();
                format!("[{}]", dims.join(", "))
            }
            None => "[shape unknown]".to_string(),
        };
        let role = match candidate.role {
            CandidateRole::Output => "graph output",
            CandidateRole::PoolingInput => "input of a global pooling layer before a classifier",
        };
        let marker = if Some(position) == default {
            "  (default)"
        } else {
            ""
        };
        outln!("{}  {shape}  {role}{marker}", candidate.name)?;
    }
    Ok(Status::Success)
}
