//! `imgsim model FILE`: the model's input and the preprocessing imgsim
//! would use for it, then the tensors that can serve as the embedding and
//! the one imgsim picks by default.

use anyhow::Context;

use crate::cli::{GlobalArgs, ModelArgs};
use crate::exit::Status;
use crate::model::graph::{candidates, first_input, read_graph, CandidateRole};
use crate::model::input::settings_for;

pub fn run(global: &GlobalArgs, args: &ModelArgs) -> anyhow::Result<Status> {
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("{}: cannot read the model", args.file.display()))?;
    let graph = read_graph(&bytes).with_context(|| args.file.display().to_string())?;

    let (settings, settings_file) = settings_for(
        Some(&args.file),
        global.input.preprocess.as_deref(),
        &global.input.settings(),
    )?;
    let (input_name, input_dims) = first_input(&graph).context("the model has no inputs")?;
    let input_dims = input_dims.unwrap_or_default();
    outln!("input: {input_name} {}", show_shape(&input_dims))?;
    let preprocessing =
        settings
            .resolve(&input_dims)
            .map_err(|message| crate::model::ModelError::Settings {
                name: args.file.display().to_string(),
                message: format!("input tensor {input_name}: {message}"),
            })?;
    let origin = match &settings_file {
        Some(path) => format!("settings from {}", path.display()),
        None => "no preprocessing file".to_string(),
    };
    outln!("preprocessing: {} ({origin})", preprocessing.describe())?;

    outln!("embedding candidates:")?;
    let found = candidates(&graph);
    let default = found
        .iter()
        .position(|c| c.role == CandidateRole::PoolingInput)
        .or_else(|| (!found.is_empty()).then_some(0));
    for (position, candidate) in found.iter().enumerate() {
        let shape = match &candidate.shape {
            Some(dims) => show_shape(dims),
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
        outln!("  {}  {shape}  {role}{marker}", candidate.name)?;
    }
    Ok(Status::Success)
}

fn show_shape(dims: &[Option<i64>]) -> String {
    let dims: Vec<String> = dims
        .iter()
        .map(|d| d.map_or("?".to_string(), |d| d.to_string()))
        .collect();
    format!("[{}]", dims.join(", "))
}
