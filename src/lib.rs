//! imgsim finds visually similar photos in local folders.
//!
//! `index` walks folders, decodes each image, embeds it with MobileNetV2
//! through ONNX Runtime and stores the vectors in SQLite, with an HNSW
//! graph for nearest-neighbour search; `query` embeds one image and returns
//! the most similar indexed ones; `dupes` groups duplicates among them.
//! `ARCHITECTURE.md` maps the modules.

pub mod ann;
pub mod ann_cache;
pub mod cli;
pub mod commands;
pub mod decode;
pub mod dupes;
pub mod exit;
pub mod files;
pub mod model;
pub mod paths;
pub mod pipeline;
pub mod plan;
pub mod preprocess;
pub mod scan;
pub mod store;
