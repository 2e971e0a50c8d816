//! `imgsim dupes`: duplicate groups among the indexed images, printed as
//! text, JSON or CSV, shown in an HTML page, and optionally moved aside.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use super::embed_output::csv_field;
use crate::ann::AnnParams;
use crate::ann_cache;
use crate::cli::{DupesArgs, GlobalArgs};
use crate::decode::DecodeOptions;
use crate::dupes::html::{render_page, Card, Section};
use crate::dupes::pixels::SIGNATURE_SIDE;
use crate::dupes::{find_groups, moved_path, DupesSettings, DupesSummary, Group};
use crate::exit::Status;
use crate::paths::{display_path, non_utf8_hex};
use crate::store::{lock_database, LockError};
use crate::store::{OpenMode, Store};

#[derive(Serialize)]
struct JsonOutput<'a> {
    model: String,
    summary: &'a DupesSummary,
    groups: Vec<JsonGroup>,
}

#[derive(Serialize)]
struct JsonGroup {
    group: usize,
    tier: &'static str,
    members: Vec<JsonMember>,
}

#[derive(Serialize)]
struct JsonMember {
    path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    path_hex: Option<String>,
    keeper: bool,
    tier: &'static str,
    similarity: f32,
    width: u32,
    height: u32,
    file_size: u64,
    format: String,
    /// Modification time, seconds since the Unix epoch.
    modified: i64,
}

pub fn run(global: &GlobalArgs, args: &DupesArgs) -> anyhow::Result<Status> {
    if let Some(html) = &args.html {
        super::check_output_path(html)?;
    }
    let database = global.database_path()?;
    super::configure_threads(global);
    // Moving files changes the database, so it needs the writer lock that
    // index runs take.
    let _lock = match (&args.move_to, args.apply) {
        (Some(_), true) => match lock_database(&database, crate::store::Wait::No) {
            Ok(lock) => Some(lock),
            Err(error @ LockError::Busy { .. }) => {
                eprintln!("error: {error}");
                return Ok(Status::Busy);
            }
            Err(error) => return Err(error.into()),
        },
        _ => None,
    };
    let mut store = match Store::open(&database, OpenMode::MustExist) {
        Err(error) if error.is_read_only() && !args.apply => {
            tracing::debug!("opening the database read-only: {error}");
            Store::open(&database, OpenMode::ReadOnly)?
        }
        result => result?,
    };
    let model = store
        .stored_model()?
        .context("the database has no images yet; run `imgsim index DIR` first")?;

    let settings = DupesSettings {
        neighbours: args.neighbours,
        ef_search: args.ef_search,
        similar: args.similar_threshold,
        max_residual: args.max_residual,
        include_similar: args.similar,
        keep: args.keep,
        decode: DecodeOptions::for_side(args.max_pixels, SIGNATURE_SIDE),
    };
    let params = AnnParams {
        ef_search: args.ef_search,
        ..ann_cache::saved_build_params(&store)?
    };
    let live = ann_cache::load_current(&mut store, model.dimension, &params)?;
    let (groups, summary) = find_groups(&store, &live, model.dimension, &settings)?;
    // Freeing a large graph takes seconds; the process frees it at exit.
    std::mem::forget(live);

    if args.json {
        print_json(&model.name, &summary, &groups)?;
    } else if args.csv {
        print_csv(&groups)?;
    } else {
        print_text(&groups)?;
    }
    if !global.quiet {
        eprintln!(
            "{} groups, {} duplicates among {} images ({} candidate pairs, {} compared by pixels, {} files unreadable)",
            summary.groups,
            summary.duplicates,
            summary.images,
            summary.candidate_pairs,
            summary.compared_pairs,
            summary.unreadable
        );
    }
    if let Some(html) = &args.html {
        write_html(html, &groups, &summary, &settings.decode)?;
        if !global.quiet {
            eprintln!("wrote {}", display_path(html));
        }
    }
    if let Some(dir) = &args.move_to {
        let failed = move_duplicates(&mut store, &groups, dir, args.apply, global.quiet)?;
        if failed > 0 {
            return Ok(Status::SomeFilesFailed);
        }
    }
    Ok(Status::Success)
}

fn tier_label(group: &Group) -> &'static str {
    group.tier.name()
}

fn print_text(groups: &[Group]) -> anyhow::Result<()> {
    for (number, group) in groups.iter().enumerate() {
        outln!(
            "group {} ({}, {} files)",
            number + 1,
            tier_label(group),
            group.members.len()
        )?;
        for member in &group.members {
            let record = &member.record;
            let mark = if member.keeper { "keep" } else { "    " };
            let similarity = if member.keeper {
                String::new()
            } else {
                format!("  {} {:.3}", member.tier.name(), member.similarity)
            };
            outln!(
                "  {mark}  {:>9}  {:>10}  {}{similarity}",
                format!("{}x{}", record.width, record.height),
                human_size(record.file_size),
                display_path(&record.path)
            )?;
        }
        outln!()?;
    }
    Ok(())
}

fn print_json(model: &str, summary: &DupesSummary, groups: &[Group]) -> anyhow::Result<()> {
    let output = JsonOutput {
        model: model.to_string(),
        summary,
        groups: groups
            .iter()
            .enumerate()
            .map(|(number, group)| JsonGroup {
                group: number + 1,
                tier: tier_label(group),
                members: group
                    .members
                    .iter()
                    .map(|member| JsonMember {
                        path: member.record.path.to_string_lossy().into_owned(),
                        path_hex: non_utf8_hex(&member.record.path),
                        keeper: member.keeper,
                        tier: member.tier.name(),
                        similarity: member.similarity,
                        width: member.record.width,
                        height: member.record.height,
                        file_size: member.record.file_size,
                        format: member.record.format.clone(),
                        modified: member.record.modified_ns.div_euclid(1_000_000_000),
                    })
                    .collect(),
            })
            .collect(),
    };
    outln!("{}", serde_json::to_string_pretty(&output)?)?;
    Ok(())
}

fn print_csv(groups: &[Group]) -> anyhow::Result<()> {
    outln!("group,tier,keeper,path,width,height,file_size,similarity,member_tier")?;
    for (number, group) in groups.iter().enumerate() {
        for member in &group.members {
            outln!(
                "{},{},{},{},{},{},{},{:.4},{}",
                number + 1,
                tier_label(group),
                member.keeper,
                csv_field(&display_path(&member.record.path)),
                member.record.width,
                member.record.height,
                member.record.file_size,
                member.similarity,
                member.tier.name()
            )?;
        }
    }
    Ok(())
}

fn human_size(bytes: u64) -> String {
    match bytes {
        0..=1023 => format!("{bytes} B"),
        1024..=1_048_575 => format!("{:.1} KB", bytes as f64 / 1024.0),
        _ => format!("{:.1} MB", bytes as f64 / 1_048_576.0),
    }
}

fn write_html(
    path: &Path,
    groups: &[Group],
    summary: &DupesSummary,
    options: &DecodeOptions,
) -> anyhow::Result<()> {
    let sections: Vec<Section> = groups
        .iter()
        .enumerate()
        .map(|(number, group)| Section {
            title: format!(
                "Group {}: {}, {} files",
                number + 1,
                tier_label(group),
                group.members.len()
            ),
            class: "group",
            attributes: vec![
                ("group", (number + 1).to_string()),
                ("tier", tier_label(group).to_string()),
            ],
            cards: group
                .members
                .iter()
                .map(|member| {
                    let record = &member.record;
                    let mut details = vec![format!(
                        "{}x{}, {}, {}",
                        record.width,
                        record.height,
                        human_size(record.file_size),
                        record.format
                    )];
                    if !member.keeper {
                        details.push(format!(
                            "{}, similarity {:.3}",
                            member.tier.name(),
                            member.similarity
                        ));
                    }
                    Card {
                        path: record.path.clone(),
                        badge: if member.keeper { "keep" } else { "duplicate" }.to_string(),
                        details,
                        attributes: vec![("keeper", member.keeper.to_string())],
                    }
                })
                .collect(),
        })
        .collect();
    let summary_line = format!(
        "{} groups, {} duplicates among {} indexed images",
        summary.groups, summary.duplicates, summary.images
    );
    let page = render_page("Duplicate images", &summary_line, &sections, options);
    write_atomically(path, page.as_bytes())
}

/// Writes `bytes` to `<path>.partial` and renames it into place.
pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut partial = path.as_os_str().to_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let mut file = std::fs::File::create(&partial)
        .with_context(|| format!("{}: cannot create", partial.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&partial, path).with_context(|| format!("{}: cannot write", path.display()))
}

#[derive(Serialize)]
struct MoveRecord {
    from: String,
    to: String,
}

/// Moves every non-keeper to `dir` under its full path, or only prints the
/// plan when `apply` is false; returns the number of files not moved.
/// Groups whose keeper file is gone are skipped, so a group never loses its
/// last copy. Moves are logged to a JSON-lines file in
/// `dir` before their rows are deleted from the database. Existing files are
/// never overwritten.
fn move_duplicates(
    store: &mut Store,
    groups: &[Group],
    dir: &Path,
    apply: bool,
    quiet: bool,
) -> anyhow::Result<usize> {
    let mut skipped = 0;
    let mut moves: Vec<(PathBuf, PathBuf)> = Vec::new();
    for group in groups {
        let keeper = &group.members[0].record.path;
        if !keeper.is_file() {
            eprintln!(
                "{}: the file to keep is missing; its group is left as it is",
                display_path(keeper)
            );
            skipped += group.members.len() - 1;
            continue;
        }
        moves.extend(
            group.members[1..]
                .iter()
                .map(|m| (m.record.path.clone(), moved_path(dir, &m.record.path))),
        );
    }
    if !apply {
        for (from, to) in &moves {
            eprintln!("would move {} -> {}", display_path(from), display_path(to));
        }
        eprintln!(
            "dry run: {} files would be moved; add --apply to move them",
            moves.len()
        );
        return Ok(0);
    }
    // The database must take the deletions, so check it before any file
    // moves.
    store.check_writable()?;
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let marker = dir.join(crate::scan::MOVED_ASIDE_MARKER);
    std::fs::write(
        &marker,
        "imgsim dupes --move-to moved duplicates here; imgsim index leaves this folder out \
         unless it is named as a root.\n",
    )
    .with_context(|| format!("{}: cannot write", marker.display()))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let log_path = dir.join(format!("imgsim-moves-{stamp}.jsonl"));
    let mut log = std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("{}: cannot create the move log", log_path.display()))?;
    let mut moved = Vec::new();
    let mut failed = 0;
    for (from, to) in &moves {
        match move_file(from, to) {
            Ok(()) => {
                let record = MoveRecord {
                    from: from.to_string_lossy().into_owned(),
                    to: to.to_string_lossy().into_owned(),
                };
                writeln!(log, "{}", serde_json::to_string(&record)?)?;
                log.sync_data()?;
                if !quiet {
                    eprintln!("moved {} -> {}", display_path(from), display_path(to));
                }
                moved.push(from.clone());
            }
            Err(error) => {
                failed += 1;
                eprintln!(
                    "{}: not moved to {}: {error:#}",
                    display_path(from),
                    display_path(to)
                );
            }
        }
    }
    store
        .delete_paths(&moved)
        .context("files were moved (see the log) but the database was not updated; run `imgsim index` on their folders")?;
    eprintln!(
        "moved {} files into {} ({} failed, {} skipped); log: {}",
        moved.len(),
        display_path(dir),
        failed,
        skipped,
        display_path(&log_path)
    );
    Ok(failed)
}

/// Moves one file, creating the destination's folders. A hard link then
/// an unlink moves it without ever replacing an existing file (linking
/// fails when the destination exists); across file systems it is copied,
/// synced and removed instead.
fn move_file(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::hard_link(from, to) {
        Ok(()) => {
            std::fs::remove_file(from)?;
            Ok(())
        }
        Err(error) if error.raw_os_error() == Some(libc::EXDEV) => {
            let mut source = std::fs::File::open(from)?;
            let mut target = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(to)?;
            std::io::copy(&mut source, &mut target)?;
            target.set_modified(source.metadata()?.modified()?)?;
            target.sync_all()?;
            std::fs::remove_file(from)?;
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}
