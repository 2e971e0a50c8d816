//! Duplicate groups among indexed images.
//!
//! Candidate pairs come from the HNSW index: each image's nearest
//! neighbours above a cosine floor, so memory grows with images x
//! neighbours, never with images squared. Each candidate pair is then
//! classified:
//!
//! - **identical**: the same file bytes (equal BLAKE3 fingerprints, found
//!   for all images, not only neighbours) or the same decoded pixels;
//! - **near-identical**: the pictures match pixel by pixel at matched
//!   resolution (see [`pixels`]): re-encoded, resized, thumbnail, converted
//!   or EXIF-rotated copies, brightness changes; or they match once one is
//!   scaled, rotated and shifted onto the other (see [`align`]): crops,
//!   tilts, caption bands;
//! - **similar**: cosine similarity of the embeddings at or above the
//!   similar threshold without a pixel match: the same scene in another
//!   shot, or a copy edited beyond both pixel checks.
//!
//! Groups are the connected components of the chosen tiers' links
//! (union-find).

pub mod align;
pub mod html;
pub mod pixels;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use rayon::prelude::*;

use crate::ann_cache::LiveIndex;
use crate::decode::{decode_file, DecodeOptions};
use crate::paths::display_path;
use crate::store::{Fingerprint, ImageRecord, Store, StoreError};
use pixels::Signature;

/// Default number of neighbours looked at per image.
pub const DEFAULT_NEIGHBOURS: usize = 10;

/// Default cosine similarity at or above which a pair without a pixel match
/// is similar.
pub const DEFAULT_SIMILAR: f32 = 0.85;

/// Default largest pixel residual (mean absolute difference in grey levels
/// at matched resolution) of a near-identical pair. Re-encoded, resized and
/// converted copies score under 1; burst frames of a static scene 1.5 and
/// up.
pub const DEFAULT_MAX_RESIDUAL: f32 = 1.2;

/// Factor by which a pair with a picture under [`pixels::SIGNATURE_SIDE`]
/// on its long side may exceed the maximum residual. Camera thumbnails score
/// up to 4.4 against their photos and 3 against the next burst frame, so the
/// best-pair rule decides between those.
const THUMBNAIL_FACTOR: f32 = 4.0;

/// Cosine similarity below which neighbours are not candidates at all. A
/// 120x90 thumbnail and its photo can be as low as 0.54 with the built-in
/// model.
const CANDIDATE_FLOOR: f32 = 0.5;

/// Returns the largest residual of a pair with a thumbnail for a given
/// maximum residual.
pub fn thumbnail_residual_limit(max_residual: f32) -> f32 {
    max_residual * THUMBNAIL_FACTOR
}

/// Residual above which two pictures do not line up at all: a crop, tilt
/// or rotation, or another view. Pictures that line up but differ more than
/// a copy (burst frames) score between the maximum and this.
const NOT_ALIGNED: f32 = 6.0;

/// Cosine similarity at or above which pictures that do not line up are
/// near-identical: edited copies (cropped, tilted, captioned). Set above
/// the 0.93 that a crop of one burst frame reaches against the next frame
/// on the calibration set.
const EDITED_SIMILARITY: f32 = 0.94;

/// Cosine similarity at or above which a pair that fails the pixel check
/// is searched for a crop, tilt or caption band. On the calibration set,
/// three quarters of the edited pairs found that way are above it.
const ALIGN_FLOOR: f32 = 0.8;

/// Cosine similarity at or above which a pair that fails the pixel check
/// is searched for a turn beyond a tilt. A copy turned by 20 to 25
/// degrees scores 0.59 to 0.82 against its photo on the calibration sets,
/// and links to the photo's group through its closest copy. Below this,
/// turned copies gained nothing on those sets, and each pair costs time.
const TURN_FLOOR: f32 = 0.6;

/// Largest mean residual, in grey levels, of an aligned pair (see
/// [`align`]). On the calibration set, burst frames of one scene line up
/// with a mean residual of 1.14 and up, as low as many edited pairs, so
/// the block residual below is what tells them apart.
const ALIGNED_MAX_RESIDUAL: f32 = 2.5;

/// Largest block residual of an aligned pair. Burst frames of a static
/// scene still differ where something moved: 4.98 and up on the
/// calibration set, while 91% of the edited pairs score 4.25 or less.
const ALIGNED_MAX_BLOCK: f32 = 4.25;

/// Largest mean residual of an aligned pair whose pictures still count as
/// lined up, so that a block above [`ALIGNED_MAX_BLOCK`] means one part
/// differs. A burst frame against a copy of the next frame with a caption
/// band scores up to 2.6 on the calibration sets. A mirrored copy, which
/// the alignment cannot map, scores far more.
const LINED_UP: f32 = 4.0;

/// Cosine similarity at or above which a pair that could not be compared by
/// pixels (a file missing or unreadable) is near-identical. Higher than
/// [`EDITED_SIMILARITY`] because burst frames reach 0.977, and without the
/// pixels nothing else separates them.
const UNVERIFIED_SIMILARITY: f32 = 0.985;

/// Factor by which a thumbnail pair may be worse than the best thumbnail
/// pair of its images. On the sample photos, a thumbnail's own photo beats
/// the next burst frame by 1.16 times or more.
const MARGIN_FACTOR: f32 = 1.1;

/// Vectors read from the database per step of the neighbour search.
const VECTORS_PER_STEP: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    Identical,
    NearIdentical,
    Similar,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Identical => "identical",
            Tier::NearIdentical => "near-identical",
            Tier::Similar => "similar",
        }
    }
}

/// Rule that picks the file to keep in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeepRule {
    /// Most pixels, then largest file, then oldest
    Pixels,
    /// Largest file, then most pixels, then oldest
    Size,
    /// Oldest modification time, then most pixels
    Oldest,
    /// Newest modification time, then most pixels
    Newest,
}

#[derive(Debug, Clone)]
pub struct DupesSettings {
    pub neighbours: usize,
    pub ef_search: usize,
    pub similar: f32,
    pub max_residual: f32,
    /// Link similar pairs into groups too.
    pub include_similar: bool,
    pub keep: KeepRule,
    pub decode: DecodeOptions,
}

/// One classified candidate pair, `first < second`.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub first: i64,
    pub second: i64,
    pub tier: Tier,
    pub similarity: f32,
    /// Pixel residual at matched resolution, when both pictures could be
    /// read and compared.
    pub residual: Option<f32>,
    /// Set when the pictures line up once aligned but one part differs, as
    /// in burst frames where something moved. Such a pair is never made
    /// near-identical by its embeddings alone.
    pub part_differs: bool,
}

#[derive(Debug, Clone)]
pub struct Member {
    pub record: ImageRecord,
    /// Strongest tier linking this image to another member.
    pub tier: Tier,
    /// Cosine similarity to the keeper (1 for the keeper).
    pub similarity: f32,
    pub keeper: bool,
}

#[derive(Debug, Clone)]
pub struct Group {
    /// Weakest tier among the links that hold the group together.
    pub tier: Tier,
    /// The keeper first, then the others by decreasing similarity.
    pub members: Vec<Member>,
}

/// Counts reported with the groups.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DupesSummary {
    pub images: usize,
    pub candidate_pairs: usize,
    pub compared_pairs: usize,
    /// Files that could not be read for the pixel check; their pairs fall
    /// back to the similar tier.
    pub unreadable: usize,
    /// Pairs searched for a crop, tilt or caption band (see [`align`]).
    pub aligned_pairs: usize,
    pub groups: usize,
    pub duplicates: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum DupesError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Finds duplicate groups among the images of `store`, searching `live`.
pub fn find_groups(
    store: &Store,
    live: &LiveIndex,
    dimension: usize,
    settings: &DupesSettings,
) -> Result<(Vec<Group>, DupesSummary), DupesError> {
    let images = store.all_images()?;
    let mut summary = DupesSummary {
        images: images.len(),
        ..DupesSummary::default()
    };
    let candidates = neighbour_pairs(store, live, dimension, settings)?;
    summary.candidate_pairs = candidates.len();

    let records: HashMap<i64, &ImageRecord> = images.iter().map(|(r, _)| (r.id, r)).collect();
    let involved: Vec<i64> = {
        let mut ids: Vec<i64> = candidates.keys().flat_map(|&(a, b)| [a, b]).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    };
    let signatures = read_signatures(&involved, &records, &settings.decode);
    summary.unreadable = involved.len() - signatures.len();

    let mut links = same_bytes_links(&images);
    let identical_pairs: HashSet<(i64, i64)> = links.iter().map(|l| (l.first, l.second)).collect();
    let mut compared = Vec::new();
    for (&(first, second), &similarity) in &candidates {
        if identical_pairs.contains(&(first, second)) {
            continue;
        }
        let pair = (signatures.get(&first), signatures.get(&second));
        let (tier, residual) = match pair {
            (Some(a), Some(b)) if a.pixel_hash == b.pixel_hash => {
                (Some(Tier::Identical), Some(0.0))
            }
            (Some(a), Some(b)) => {
                let residual = pixels::residual(a, b);
                summary.compared_pairs += usize::from(residual.is_some());
                (None, residual)
            }
            _ => (None, None),
        };
        compared.push(Link {
            first,
            second,
            tier: tier.unwrap_or(Tier::Similar),
            similarity,
            residual,
            part_differs: false,
        });
    }
    let small: HashSet<i64> = signatures
        .iter()
        .filter(|(_, signature)| signature.small)
        .map(|(&id, _)| id)
        .collect();
    classify(&mut compared, &small, settings);
    summary.aligned_pairs = align_edited(&mut compared, &signatures, settings);
    classify_unaligned(&mut compared);
    for link in &compared {
        tracing::debug!(
            "pair {} {}: similarity {:.3}, residual at matched size {}, {}",
            display_path(&records[&link.first].path),
            display_path(&records[&link.second].path),
            link.similarity,
            link.residual
                .map_or_else(|| "none".to_string(), |r| format!("{r:.2}")),
            link.tier.name()
        );
    }
    links.extend(
        compared
            .into_iter()
            .filter(|link| link.tier != Tier::Similar || link.similarity >= settings.similar),
    );

    let groups = build_groups(store, &records, &links, dimension, settings)?;
    summary.groups = groups.len();
    summary.duplicates = groups.iter().map(|g| g.members.len() - 1).sum();
    Ok((groups, summary))
}

/// Returns each image's neighbours above the candidate floor as pairs
/// (smaller id first) with their cosine similarity.
fn neighbour_pairs(
    store: &Store,
    live: &LiveIndex,
    dimension: usize,
    settings: &DupesSettings,
) -> Result<HashMap<(i64, i64), f32>, StoreError> {
    let mut pairs = HashMap::new();
    let mut after = i64::MIN;
    loop {
        let vectors = store.vectors_after(after, VECTORS_PER_STEP, dimension)?;
        let Some(&(last, _)) = vectors.last() else {
            break;
        };
        after = last;
        let found: Vec<Vec<(i64, i64, f32)>> = vectors
            .par_iter()
            .map(|(id, vector)| {
                live.search(
                    vector,
                    settings.neighbours + 1,
                    settings.ef_search.max(settings.neighbours + 1),
                )
                .into_iter()
                .filter(|n| n.id != *id && n.similarity >= CANDIDATE_FLOOR)
                .map(|n| (*id.min(&n.id), *id.max(&n.id), n.similarity))
                .collect()
            })
            .collect();
        for (first, second, similarity) in found.into_iter().flatten() {
            pairs.insert((first, second), similarity.min(1.0));
        }
    }
    Ok(pairs)
}

/// Decodes the images `ids` in parallel and returns their signatures;
/// files that cannot be read are left out.
fn read_signatures(
    ids: &[i64],
    records: &HashMap<i64, &ImageRecord>,
    options: &DecodeOptions,
) -> HashMap<i64, Signature> {
    ids.par_iter()
        .filter_map(|id| {
            let record = records.get(id)?;
            // A decoder panic on one file must not end the run.
            let decoded = std::panic::catch_unwind(|| decode_file(&record.path, options));
            match decoded {
                Ok(Ok(decoded)) => Some((*id, Signature::of(&decoded.pixels))),
                Ok(Err(error)) => {
                    tracing::warn!("{error}; its pairs are compared by embedding only");
                    None
                }
                Err(_) => {
                    tracing::warn!(
                        "{}: decoder failed; its pairs are compared by embedding only",
                        display_path(&record.path)
                    );
                    None
                }
            }
        })
        .collect()
}

/// Marks as near-identical the pairs that are still similar but line up
/// once one picture is scaled, rotated and shifted onto the other (see
/// [`align`]), flags those that line up but differ in one part, and
/// returns how many pairs were searched. Pairs at or above
/// [`ALIGN_FLOOR`] are searched for every transform, those down to
/// [`TURN_FLOOR`] only for turns, since each search takes about 20 ms of
/// CPU.
// NOTE: the cost grows with the pairs above the floors. A real archive of
// 100,000 photos with many bursts may spend minutes here; that was not
// measured, since the 100,000-vector bench has no image files.
fn align_edited(
    links: &mut [Link],
    signatures: &HashMap<i64, Signature>,
    settings: &DupesSettings,
) -> usize {
    let searched: Vec<&mut Link> = links
        .iter_mut()
        .filter(|link| {
            link.tier == Tier::Similar
                && link.similarity >= TURN_FLOOR
                && link.residual.is_some_and(|r| r > settings.max_residual)
        })
        .collect();
    let count = searched.len();
    searched.into_par_iter().for_each(|link| {
        let (Some(a), Some(b)) = (signatures.get(&link.first), signatures.get(&link.second)) else {
            return;
        };
        // The picture with fewer pixels is mapped onto the other: a crop
        // lies inside its source.
        let (smaller, larger) = if a.width * a.height <= b.width * b.height {
            (a, b)
        } else {
            (b, a)
        };
        let search = if link.similarity >= ALIGN_FLOOR {
            align::Search::Everything
        } else {
            align::Search::TurnsOnly
        };
        if let Some((found, mirrored)) = align_or_mirror(smaller, larger, search) {
            tracing::debug!(
                "pair {} {}: aligned{} at scale {:.3}, {:.2} degrees, residual {:.2}, block {:.2}",
                link.first,
                link.second,
                if mirrored { " mirrored" } else { "" },
                found.scale,
                found.angle,
                found.residual,
                found.block_residual
            );
            if found.residual <= ALIGNED_MAX_RESIDUAL && found.block_residual <= ALIGNED_MAX_BLOCK {
                link.tier = Tier::NearIdentical;
            } else if found.residual <= LINED_UP {
                link.part_differs = true;
            }
        }
    });
    count
}

/// Aligns `smaller` onto `larger` and, when they do not line up, tries
/// again with `smaller` mirrored, since a mirrored copy lines up only once
/// mirrored back. Mirroring is left out of the search for turns alone, and
/// burst frames mostly line up at the first try. Returns the better
/// alignment and whether it was mirrored.
fn align_or_mirror(
    smaller: &Signature,
    larger: &Signature,
    search: align::Search,
) -> Option<(align::Alignment, bool)> {
    let found = align::align(smaller, larger, search);
    let lined_up = found.is_some_and(|found| found.residual <= LINED_UP);
    if search == align::Search::TurnsOnly || lined_up {
        return found.map(|found| (found, false));
    }
    let mirrored = align::align(&smaller.mirrored(), larger, search);
    match (found, mirrored) {
        (Some(found), Some(mirrored)) if mirrored.residual < found.residual => {
            Some((mirrored, true))
        }
        (None, Some(mirrored)) => Some((mirrored, true)),
        (found, _) => found.map(|found| (found, false)),
    }
}

/// Links every pair of images with the same file fingerprint.
fn same_bytes_links(images: &[(ImageRecord, Option<Fingerprint>)]) -> Vec<Link> {
    let mut by_fingerprint: HashMap<&Fingerprint, Vec<i64>> = HashMap::new();
    for (record, fingerprint) in images {
        if let Some(fingerprint) = fingerprint {
            by_fingerprint
                .entry(fingerprint)
                .or_default()
                .push(record.id);
        }
    }
    let mut links = Vec::new();
    for ids in by_fingerprint.values().filter(|ids| ids.len() > 1) {
        // A chain is enough to join them into one group.
        for window in ids.windows(2) {
            links.push(Link {
                first: window[0].min(window[1]),
                second: window[0].max(window[1]),
                tier: Tier::Identical,
                similarity: 1.0,
                residual: Some(0.0),
                part_differs: false,
            });
        }
    }
    links
}

/// Marks compared pairs near-identical when their residual is at most the
/// maximum. A pair with a small picture (a thumbnail, compared at its low
/// resolution where resampling differences weigh more) may reach
/// [`THUMBNAIL_FACTOR`] times the maximum, but only when it is the best
/// such pair of both its images, within [`MARGIN_FACTOR`]. So a thumbnail
/// joins its own photo, not the next burst frame.
fn classify(links: &mut [Link], small: &HashSet<i64>, settings: &DupesSettings) {
    let is_small = |link: &Link| small.contains(&link.first) || small.contains(&link.second);
    let mut best: HashMap<i64, f32> = HashMap::new();
    for link in links.iter().filter(|l| is_small(l)) {
        if let Some(residual) = link.residual.filter(|&r| r > settings.max_residual) {
            for id in [link.first, link.second] {
                let entry = best.entry(id).or_insert(f32::INFINITY);
                *entry = entry.min(residual);
            }
        }
    }
    for link in links.iter_mut() {
        let Some(residual) = link.residual else {
            continue;
        };
        if link.tier == Tier::Identical {
            continue;
        }
        let best_of_both = || {
            [link.first, link.second]
                .iter()
                .all(|id| best.get(id).is_none_or(|&b| residual <= b * MARGIN_FACTOR))
        };
        let thumbnail_match = is_small(link)
            && residual <= thumbnail_residual_limit(settings.max_residual)
            && best_of_both();
        if residual <= settings.max_residual || thumbnail_match {
            link.tier = Tier::NearIdentical;
        }
    }
}

/// Marks near-identical, by their embeddings alone, the similar pairs whose
/// pixels could not be lined up (a mirrored copy, a large rotation) or not
/// read: at [`EDITED_SIMILARITY`], or [`UNVERIFIED_SIMILARITY`] without
/// pixels. Pairs that line up but differ in one part stay similar, since a
/// caption copy of one burst frame and the next frame reach a cosine of
/// 0.95 on the calibration set.
fn classify_unaligned(links: &mut [Link]) {
    for link in links.iter_mut().filter(|link| !link.part_differs) {
        let enough = match link.residual {
            Some(residual) if residual <= NOT_ALIGNED => continue,
            Some(_) => EDITED_SIMILARITY,
            None => UNVERIFIED_SIMILARITY,
        };
        if link.tier == Tier::Similar && link.similarity >= enough {
            link.tier = Tier::NearIdentical;
        }
    }
}

/// Joins linked images into groups, picks each group's keeper and orders
/// the groups by their keeper's path.
fn build_groups(
    store: &Store,
    records: &HashMap<i64, &ImageRecord>,
    links: &[Link],
    dimension: usize,
    settings: &DupesSettings,
) -> Result<Vec<Group>, StoreError> {
    let grouped: Vec<&Link> = links
        .iter()
        .filter(|l| l.tier != Tier::Similar || settings.include_similar)
        .collect();
    let mut sets = UnionFind::default();
    for link in &grouped {
        sets.union(link.first, link.second);
    }
    let mut components: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    let mut ids: Vec<i64> = grouped.iter().flat_map(|l| [l.first, l.second]).collect();
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        let root = sets.find(id);
        components.entry(root).or_default().push(id);
    }
    let mut member_tier: HashMap<i64, Tier> = HashMap::new();
    let mut group_tier: HashMap<i64, Tier> = HashMap::new();
    for link in &grouped {
        for id in [link.first, link.second] {
            let tier = member_tier.entry(id).or_insert(link.tier);
            *tier = (*tier).min(link.tier);
        }
        let root = sets.find(link.first);
        let tier = group_tier.entry(root).or_insert(link.tier);
        *tier = (*tier).max(link.tier);
    }

    let mut groups = Vec::with_capacity(components.len());
    for (root, ids) in components {
        let mut members: Vec<&ImageRecord> = ids
            .iter()
            .filter_map(|id| records.get(id).copied())
            .collect();
        if members.len() < 2 {
            continue;
        }
        // A file that is gone is never the one to keep.
        let present: HashMap<i64, bool> =
            members.iter().map(|r| (r.id, r.path.is_file())).collect();
        members.sort_by(|a, b| {
            present[&b.id]
                .cmp(&present[&a.id])
                .then_with(|| keep_order(a, b, settings.keep))
        });
        let keeper = members[0].id;
        let vectors = store.vectors_by_ids(&ids, dimension)?;
        let similarity_to_keeper = |id: i64| match (vectors.get(&keeper), vectors.get(&id)) {
            (Some(k), Some(v)) => k.iter().zip(v).map(|(a, b)| a * b).sum::<f32>().min(1.0),
            _ => 0.0,
        };
        let mut members: Vec<Member> = members
            .into_iter()
            .map(|record| Member {
                tier: member_tier[&record.id],
                similarity: if record.id == keeper {
                    1.0
                } else {
                    similarity_to_keeper(record.id)
                },
                keeper: record.id == keeper,
                record: record.clone(),
            })
            .collect();
        members[1..].sort_by(|a, b| {
            b.similarity
                .total_cmp(&a.similarity)
                .then_with(|| a.record.path.cmp(&b.record.path))
        });
        groups.push(Group {
            tier: group_tier[&root],
            members,
        });
    }
    groups.sort_by(|a, b| a.members[0].record.path.cmp(&b.members[0].record.path));
    Ok(groups)
}

/// Orders group members so the one to keep comes first.
fn keep_order(a: &ImageRecord, b: &ImageRecord, rule: KeepRule) -> std::cmp::Ordering {
    let pixels = |r: &ImageRecord| u64::from(r.width) * u64::from(r.height);
    let by_pixels = pixels(b).cmp(&pixels(a));
    let by_size = b.file_size.cmp(&a.file_size);
    // Whole seconds, so copies made within the same second are ordered by
    // the next rule instead.
    let seconds = |r: &ImageRecord| r.modified_ns.div_euclid(1_000_000_000);
    let by_oldest = seconds(a).cmp(&seconds(b));
    let order = match rule {
        KeepRule::Pixels => by_pixels.then(by_size).then(by_oldest),
        KeepRule::Size => by_size.then(by_pixels).then(by_oldest),
        KeepRule::Oldest => by_oldest.then(by_pixels),
        KeepRule::Newest => by_oldest.reverse().then(by_pixels),
    };
    order.then_with(|| a.path.cmp(&b.path))
}

/// Disjoint sets over image ids, with path halving.
#[derive(Default)]
struct UnionFind {
    parent: HashMap<i64, i64>,
}

impl UnionFind {
    fn find(&mut self, id: i64) -> i64 {
        let mut current = id;
        loop {
            let parent = *self.parent.entry(current).or_insert(current);
            if parent == current {
                return current;
            }
            let grandparent = *self.parent.entry(parent).or_insert(parent);
            self.parent.insert(current, grandparent);
            current = grandparent;
        }
    }

    fn union(&mut self, a: i64, b: i64) {
        let (root_a, root_b) = (self.find(a), self.find(b));
        if root_a != root_b {
            // The smaller id becomes the root, so results do not depend on
            // the order links arrive in.
            self.parent.insert(root_a.max(root_b), root_a.min(root_b));
        }
    }
}

/// Destination of a moved file: its absolute path re-rooted under `dir`,
/// so every file keeps a distinct, recognisable place.
pub fn moved_path(dir: &std::path::Path, path: &std::path::Path) -> PathBuf {
    let relative: PathBuf = path
        .components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .collect();
    dir.join(relative)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: i64, width: u32, height: u32, size: u64, modified: i64) -> ImageRecord {
        ImageRecord {
            id,
            path: PathBuf::from(format!("/photos/{id}.jpg")),
            file_size: size,
            modified_ns: modified,
            width,
            height,
            format: "jpeg".to_string(),
            animated: false,
        }
    }

    #[test]
    fn keeper_rules_order_members() {
        // Modification times in nanoseconds; the rules compare whole seconds.
        let big = record(1, 640, 480, 50_000, 30_000_000_000);
        let heavy = record(2, 320, 240, 90_000, 20_000_000_000);
        let old = record(3, 320, 240, 10_000, 10_000_000_000);
        let first = |rule| {
            let mut all = [&big, &heavy, &old];
            all.sort_by(|a, b| keep_order(a, b, rule));
            all[0].id
        };
        assert_eq!(first(KeepRule::Pixels), 1);
        assert_eq!(first(KeepRule::Size), 2);
        assert_eq!(first(KeepRule::Oldest), 3);
        assert_eq!(first(KeepRule::Newest), 1);
    }

    #[test]
    fn union_find_joins_chains() {
        let mut sets = UnionFind::default();
        sets.union(5, 3);
        sets.union(3, 9);
        sets.union(20, 21);
        assert_eq!(sets.find(9), 3);
        assert_eq!(sets.find(5), 3);
        assert_eq!(sets.find(21), 20);
        assert_ne!(sets.find(20), sets.find(3));
    }

    fn link(first: i64, second: i64, residual: f32) -> Link {
        Link {
            first,
            second,
            tier: Tier::Similar,
            similarity: 0.9,
            residual: Some(residual),
            part_differs: false,
        }
    }

    #[test]
    fn margin_keeps_thumbnail_with_its_own_photo() {
        let settings = DupesSettings {
            neighbours: 10,
            ef_search: 64,
            similar: 0.85,
            max_residual: 1.2,
            include_similar: false,
            keep: KeepRule::Pixels,
            decode: DecodeOptions::default(),
        };
        // 1 and 2 are burst frames; 11 and 12 their thumbnails; 3 is a
        // re-encoded copy of 1.
        let mut links = vec![
            link(1, 11, 2.4),
            link(2, 12, 2.5),
            link(1, 12, 2.8),
            link(2, 11, 2.85),
            link(1, 2, 1.6),
            link(1, 3, 0.4),
        ];
        let small = HashSet::from([11, 12]);
        classify(&mut links, &small, &settings);
        let near: Vec<(i64, i64)> = links
            .iter()
            .filter(|l| l.tier == Tier::NearIdentical)
            .map(|l| (l.first, l.second))
            .collect();
        assert_eq!(near, [(1, 11), (2, 12), (1, 3)]);
    }

    #[test]
    fn moved_path_keeps_absolute_path_under_folder() {
        assert_eq!(
            moved_path("/quarantine".as_ref(), "/home/me/a/b.jpg".as_ref()),
            PathBuf::from("/quarantine/home/me/a/b.jpg")
        );
    }
}
