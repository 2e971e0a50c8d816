//! `imgsim dupes` on real photos: thumbnails and their photos, copies made
//! by others, a 10,000-image database, moving duplicates aside, and the
//! HTML report rendered by a real browser.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde_json::Value;

fn dupes_json(database: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["dupes", "--json"];
    args.extend_from_slice(extra);
    let run = common::run(database, args);
    assert_eq!(run.status, 0, "{}", run.stderr);
    run.json()
}

/// Returns each group as the set of its members' file names.
fn group_names(output: &Value) -> Vec<BTreeSet<String>> {
    output["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|group| {
            group["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| file_name(m["path"].as_str().unwrap()))
                .collect()
        })
        .collect()
}

fn file_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn index_photos(database: &Path) {
    let (run, summary) = common::index(database, &[common::photos_dir()]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(summary["indexed"], 58);
}

#[test]
fn thumbnails_pair_with_their_photos_only() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("photos.db");
    index_photos(&database);
    let output = dupes_json(&database, &[]);

    let expected: BTreeSet<BTreeSet<String>> = common::photo_thumbnail_pairs()
        .iter()
        .map(|(photo, thumbnail)| {
            [photo, thumbnail]
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        })
        .collect();
    let found: BTreeSet<BTreeSet<String>> = group_names(&output).into_iter().collect();
    let missing: Vec<_> = expected.difference(&found).collect();
    let unexpected: Vec<_> = found.difference(&expected).collect();
    assert!(missing.is_empty(), "pairs not found: {missing:?}");
    assert!(unexpected.is_empty(), "wrong groups: {unexpected:?}");
    assert_eq!(output["summary"]["groups"], 29);
    assert_eq!(output["summary"]["duplicates"], 29);

    for group in output["groups"].as_array().unwrap() {
        assert_eq!(group["tier"], "near-identical", "{group}");
        let members = group["members"].as_array().unwrap();
        // The 640x480 photo is kept over its 120x90 thumbnail.
        assert_eq!(members[0]["keeper"], true);
        assert_eq!(
            members[0]["width"].as_u64().unwrap() * members[0]["height"].as_u64().unwrap(),
            640 * 480
        );
        assert!(!members[0]["path"].as_str().unwrap().contains("__tn_"));
        assert_eq!(members[1]["keeper"], false);
        let similarity = members[1]["similarity"].as_f64().unwrap();
        assert!((0.5..1.0).contains(&similarity), "{similarity}");
    }
}

#[test]
fn copies_from_imagededup_are_grouped_by_tier() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("ukbench.db");
    let (run, summary) = common::index(&database, &[common::imagededup_dir()]);
    assert_eq!(run.status, 3, "the corrupt file fails: {}", run.stderr);
    assert_eq!(summary["indexed"], 18);
    let output = dupes_json(&database, &[]);
    let groups = group_names(&output);

    let with = |name: &str| -> &BTreeSet<String> {
        groups
            .iter()
            .find(|g| g.contains(name))
            .unwrap_or_else(|| panic!("{name} is in no group: {groups:?}"))
    };
    let copies = with("ukbench09380.jpg");
    for name in [
        "ukbench09380_copy.bmp",
        "ukbench09380_copy.jpeg",
        "ukbench09380_copy.png",
        "ukbench09380_copy.webp",
    ] {
        assert!(copies.contains(name), "{name} missing from {copies:?}");
    }
    let edited = with("ukbench00120.jpg");
    // The turned copy (30 degrees, black corners, cosine similarity 0.78)
    // joins through the search for turns.
    for name in [
        "ukbench00120_gray.jpg",
        "ukbench00120_resize.jpg",
        "ukbench00120_rotation.jpg",
    ] {
        assert!(edited.contains(name), "{name} missing from {edited:?}");
    }

    // Byte-identical copies are identical-tier members.
    let tiers: HashMap<String, String> = output["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["members"].as_array().unwrap().iter())
        .map(|m| {
            (
                file_name(m["path"].as_str().unwrap()),
                m["tier"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for name in [
        "ukbench09380.jpg",
        "ukbench09380_copy.bmp",
        "ukbench09380_copy.jpeg",
        "ukbench09380_copy.png",
    ] {
        assert_eq!(tiers[name], "identical", "{name}");
    }

    for unrelated in [
        "ukbench01380.jpg",
        "ukbench08976.jpg",
        "ukbench08996.jpg",
        "ukbench09012.jpg",
        "ukbench09040.jpg",
        "ukbench09060.jpg",
        "ukbench09268.jpg",
        "ukbench09348.jpg",
    ] {
        assert!(
            groups.iter().all(|g| !g.contains(unrelated)),
            "{unrelated} was grouped: {groups:?}"
        );
    }
}

#[test]
fn text_and_csv_list_the_same_groups() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("ukbench.db");
    common::index(&database, &[common::imagededup_dir()]);
    let text = common::run(&database, ["dupes"]);
    assert_eq!(text.status, 0, "{}", text.stderr);
    let csv = common::run(&database, ["dupes", "--csv"]);
    assert_eq!(csv.status, 0, "{}", csv.stderr);
    let json = dupes_json(&database, &[]);

    let groups = json["groups"].as_array().unwrap();
    let members: usize = groups
        .iter()
        .map(|g| g["members"].as_array().unwrap().len())
        .sum();
    let lines: Vec<&str> = csv.stdout.lines().collect();
    assert_eq!(
        lines[0],
        "group,tier,keeper,path,width,height,file_size,similarity,member_tier"
    );
    assert_eq!(lines.len(), members + 1);
    assert_eq!(text.stdout.matches("  keep  ").count(), groups.len());
    assert!(text.stdout.starts_with("group 1 ("), "{}", text.stdout);
    assert!(
        text.stderr.contains(&format!("{} groups", groups.len())),
        "{}",
        text.stderr
    );
}

#[test]
fn move_to_is_a_dry_run_until_applied() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("photos");
    std::fs::create_dir(&folder).unwrap();
    let (photo, thumbnail) = common::photo_thumbnail_pairs()[0].clone();
    std::fs::copy(&photo, folder.join("photo.jpg")).unwrap();
    std::fs::copy(&thumbnail, folder.join("thumbnail.jpg")).unwrap();
    std::fs::copy(&photo, folder.join("copy.jpg")).unwrap();
    let (other, _) = common::photo_thumbnail_pairs()[10].clone();
    std::fs::copy(&other, folder.join("other.jpg")).unwrap();
    let database = dir.path().join("index.db");
    let (run, _) = common::index(&database, &[&folder]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    // Inside the indexed folder, so a later index run walks past it.
    let quarantine = folder.join("quarantine");

    let dry = common::run(
        &database,
        [
            "dupes".as_ref(),
            "--move-to".as_ref(),
            quarantine.as_os_str(),
        ],
    );
    assert_eq!(dry.status, 0, "{}", dry.stderr);
    assert!(
        dry.stderr.contains("dry run: 2 files would be moved"),
        "{}",
        dry.stderr
    );
    assert!(!quarantine.exists());
    assert!(folder.join("thumbnail.jpg").exists());

    let applied = common::run(
        &database,
        [
            "dupes".as_ref(),
            "--move-to".as_ref(),
            quarantine.as_os_str(),
            "--apply".as_ref(),
        ],
    );
    assert_eq!(applied.status, 0, "{}", applied.stderr);
    let canonical = folder.canonicalize().unwrap();
    assert!(folder.join("other.jpg").exists(), "other.jpg was moved");
    // Of the two byte-identical files (same pixels, size and modification
    // second), the first by path is kept; the other and the thumbnail move
    // under their full path.
    assert!(folder.join("copy.jpg").exists(), "copy.jpg was moved");
    assert!(!folder.join("photo.jpg").exists());
    assert!(!folder.join("thumbnail.jpg").exists());
    for name in ["photo.jpg", "thumbnail.jpg"] {
        let moved = common_moved(&quarantine, &canonical.join(name));
        assert!(moved.exists(), "{name} not at {}", moved.display());
    }
    let logs: Vec<PathBuf> = std::fs::read_dir(&quarantine)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    assert_eq!(logs.len(), 1);
    let log = std::fs::read_to_string(&logs[0]).unwrap();
    let entries: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 2);
    for entry in &entries {
        let to = PathBuf::from(entry["to"].as_str().unwrap());
        assert!(to.exists(), "{}", to.display());
        assert!(!Path::new(entry["from"].as_str().unwrap()).exists());
    }

    // The moved files are gone from the database too, and indexing the
    // folder again leaves the quarantine out.
    let after = dupes_json(&database, &[]);
    assert_eq!(after["summary"]["images"], 2);
    assert_eq!(after["summary"]["groups"], 0);
    let (run, summary) = common::index(&database, &[&folder]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(summary["indexed"], 0, "{}", run.stderr);
    assert_eq!(summary["total_in_database"], 2);
    assert!(quarantine.join(".imgsim-moved-aside").exists());
}

fn common_moved(dir: &Path, original: &Path) -> PathBuf {
    dir.join(original.strip_prefix("/").unwrap())
}

/// Deterministic pseudo-random unit vector.
fn random_unit(seed: u64, dimension: usize) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut vector: Vec<f32> = (0..dimension)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    vector.iter_mut().for_each(|v| *v /= norm);
    vector
}

#[test]
fn ten_thousand_images_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("large.db");
    // One real image creates the schema and records the model. A lighter
    // graph keeps the test quick; the planted pairs are far apart from all
    // other vectors, so any graph finds them.
    let (photo, _) = common::photo_thumbnail_pairs()[0].clone();
    let run = common::run(
        &database,
        [
            "index".as_ref(),
            "--hnsw-m".as_ref(),
            "12".as_ref(),
            "--ef-construction".as_ref(),
            "48".as_ref(),
            photo.as_os_str(),
        ],
    );
    assert_eq!(run.status, 0, "{}", run.stderr);

    // 4,000 random vectors, each with a near copy (cosine about 0.995), and
    // 2,000 loners; their files do not exist, so only embeddings decide.
    let dimension = 1280;
    let connection = rusqlite::Connection::open(&database).unwrap();
    connection.execute("DELETE FROM images", []).unwrap();
    let mut statement = connection
        .prepare(
            "INSERT INTO images (path, file_size, modified_ns, width, height, format, vector, indexed_at)
             VALUES (?1, 1000, 0, 640, 480, 'jpeg', ?2, 0)",
        )
        .unwrap();
    let transaction_start = connection.execute("BEGIN", []);
    transaction_start.unwrap();
    let to_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    for base in 0..4000u64 {
        let original = random_unit(base + 1, dimension);
        let noise = random_unit(base + 1_000_001, dimension);
        let mut copy: Vec<f32> = original
            .iter()
            .zip(&noise)
            .map(|(o, n)| o + 0.1 * n)
            .collect();
        let norm = copy.iter().map(|v| v * v).sum::<f32>().sqrt();
        copy.iter_mut().for_each(|v| *v /= norm);
        statement
            .execute(rusqlite::params![
                format!("/missing/{base:05}.jpg").into_bytes(),
                to_bytes(&original)
            ])
            .unwrap();
        statement
            .execute(rusqlite::params![
                format!("/missing/{base:05}_copy.jpg").into_bytes(),
                to_bytes(&copy)
            ])
            .unwrap();
    }
    for loner in 0..2000u64 {
        let vector = random_unit(loner + 5_000_001, dimension);
        statement
            .execute(rusqlite::params![
                format!("/missing/loner{loner:05}.jpg").into_bytes(),
                to_bytes(&vector)
            ])
            .unwrap();
    }
    connection.execute("COMMIT", []).unwrap();
    drop(statement);
    drop(connection);

    let mut command = common::imgsim(&database);
    command.args(["-q", "dupes", "--json"]);
    let (status, peak_kib, stdout) = common::run_with_peak_memory(command);
    assert_eq!(status, 0);
    let output: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(output["summary"]["images"], 10_000);
    assert_eq!(
        output["summary"]["unreadable"], 8_000,
        "only grouped files are read"
    );
    let groups = group_names(&output);
    assert_eq!(groups.len(), 4000);
    for group in &groups {
        let names: Vec<&String> = group.iter().collect();
        assert_eq!(names.len(), 2, "{group:?}");
        assert_eq!(
            names[0].replace(".jpg", "_copy.jpg"),
            *names[1],
            "{group:?}"
        );
    }
    // The vectors alone are 51 MB and the HNSW graph about as much again;
    // a 10,000 x 10,000 similarity matrix would be 400 MB.
    let peak_mib = peak_kib / 1024;
    assert!(peak_mib < 300, "peak memory {peak_mib} MiB");
}

/// Runs headless Chromium with the flags this machine needs (no sandbox as
/// root, no background network traffic) and returns its stdout.
fn chromium(profile: &Path, args: &[&std::ffi::OsStr]) -> String {
    let output = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--allow-file-access-from-files",
            "--virtual-time-budget=15000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium is installed (Debian package chromium)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Loads `page` in an iframe of a harness page and returns what the
/// rendered DOM shows: group count, image count and natural widths.
fn rendered(dir: &Path, page: &Path) -> Value {
    let harness = dir.join("harness.html");
    let script = r#"
      function check() {
        // The iframe's load event fires after all its images have loaded
        // or failed; a failed image has a natural width of 0.
        const doc = document.getElementById('page').contentDocument;
        const images = Array.from(doc.images);
        const widths = images.map(i => (i.complete ? i.naturalWidth : 0));
        document.getElementById('result').textContent = JSON.stringify({
          groups: doc.querySelectorAll('section[data-group]').length,
          results: doc.querySelectorAll('figure[data-rank]').length,
          keepers: doc.querySelectorAll('figure[data-keeper=true]').length,
          images: images.length,
          widths: widths,
        });
      }"#;
    std::fs::write(
        &harness,
        format!(
            "<!DOCTYPE html><html><body><pre id=\"result\">pending</pre>\
             <script>{script}</script>\
             <iframe id=\"page\" src=\"{}\" onload=\"check()\"></iframe></body></html>",
            page.file_name().unwrap().to_string_lossy()
        ),
    )
    .unwrap();
    let dom = chromium(
        &dir.join("profile"),
        &["--dump-dom".as_ref(), harness.as_os_str()],
    );
    let json = dom
        .split("<pre id=\"result\">")
        .nth(1)
        .and_then(|rest| rest.split("</pre>").next())
        .unwrap_or_else(|| panic!("no result in {dom}"));
    serde_json::from_str(&json.replace("&quot;", "\"")).unwrap_or_else(|e| panic!("{e}: {json}"))
}

fn screenshot(dir: &Path, page: &Path, name: &str) {
    let folder = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&folder).unwrap();
    let file = folder.join(name);
    chromium(
        &dir.join("profile"),
        &[
            format!("--screenshot={}", file.display()).as_ref(),
            "--window-size=1280,1600".as_ref(),
            page.as_os_str(),
        ],
    );
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert!(bytes.len() > 20_000, "screenshot of {} bytes", bytes.len());
}

#[test]
fn html_report_renders_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("photos.db");
    index_photos(&database);
    let page = dir.path().join("dupes.html");
    let run = common::run(
        &database,
        [
            "dupes".as_ref(),
            "-q".as_ref(),
            "--html".as_ref(),
            page.as_os_str(),
        ],
    );
    assert_eq!(run.status, 0, "{}", run.stderr);
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        !html.contains("src=\"file:"),
        "thumbnails are embedded, not linked"
    );
    assert_eq!(html.matches("src=\"data:image/jpeg;base64,").count(), 58);

    let shown = rendered(dir.path(), &page);
    assert_eq!(shown["groups"], 29, "{shown}");
    assert_eq!(shown["keepers"], 29, "{shown}");
    assert_eq!(shown["images"], 58, "{shown}");
    let widths = shown["widths"].as_array().unwrap();
    assert!(widths.iter().all(|w| w.as_u64().unwrap() > 0), "{shown}");
    screenshot(dir.path(), &page, "dupes.png");
}

#[test]
fn query_html_shows_query_and_results() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("photos.db");
    index_photos(&database);
    let (photo, thumbnail) = common::photo_thumbnail_pairs()[5].clone();
    let page = dir.path().join("query.html");
    let run = common::run(
        &database,
        [
            "query".as_ref(),
            thumbnail.as_os_str(),
            "-k".as_ref(),
            "6".as_ref(),
            "--json".as_ref(),
            "--html".as_ref(),
            page.as_os_str(),
        ],
    );
    assert_eq!(run.status, 0, "{}", run.stderr);
    let results = run.json()["results"].as_array().unwrap().clone();
    // The thumbnail itself is indexed too, so it comes first; its photo is
    // next, re-ranked by pixels at the thumbnail's resolution.
    assert_eq!(results[0]["path"], thumbnail.to_str().unwrap());
    assert_eq!(results[1]["path"], photo.to_str().unwrap());
    assert!(results[1]["pixel_residual"].as_f64().unwrap() < 4.8);

    let shown = rendered(dir.path(), &page);
    assert_eq!(shown["results"], 6, "{shown}");
    assert_eq!(shown["images"], 7, "{shown}");
    let widths = shown["widths"].as_array().unwrap();
    assert!(widths.iter().all(|w| w.as_u64().unwrap() > 0), "{shown}");
    screenshot(dir.path(), &page, "query.png");
}

#[test]
fn html_output_never_replaces_a_photo() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("photos");
    std::fs::create_dir(&folder).unwrap();
    let (photo, thumbnail) = common::photo_thumbnail_pairs()[1].clone();
    std::fs::copy(&photo, folder.join("photo.jpg")).unwrap();
    std::fs::copy(&thumbnail, folder.join("thumbnail.jpg")).unwrap();
    let disguised = folder.join("report.html");
    std::fs::copy(&photo, &disguised).unwrap();
    let database = dir.path().join("index.db");
    common::index(
        &database,
        &[folder.join("photo.jpg"), folder.join("thumbnail.jpg")],
    );
    let original = std::fs::read(&photo).unwrap();

    for target in [folder.join("photo.jpg"), disguised.clone()] {
        let run = common::run(
            &database,
            ["dupes".as_ref(), "--html".as_ref(), target.as_os_str()],
        );
        assert_eq!(run.status, 1, "{}", run.stderr);
        assert!(run.stderr.contains("refusing to"), "{}", run.stderr);
        assert_eq!(
            std::fs::read(&target).unwrap(),
            original,
            "{} changed",
            target.display()
        );
        let query = folder.join("thumbnail.jpg");
        let run = common::run(
            &database,
            [
                "query".as_ref(),
                query.as_os_str(),
                "--html".as_ref(),
                target.as_os_str(),
            ],
        );
        assert_eq!(run.status, 1, "{}", run.stderr);
        assert_eq!(
            std::fs::read(&target).unwrap(),
            original,
            "{} changed",
            target.display()
        );
    }
}

#[test]
fn group_with_missing_keeper_is_not_moved() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("photos");
    std::fs::create_dir(&folder).unwrap();
    let (photo, thumbnail) = common::photo_thumbnail_pairs()[2].clone();
    std::fs::copy(&photo, folder.join("photo.jpg")).unwrap();
    std::fs::copy(&photo, folder.join("copy.jpg")).unwrap();
    std::fs::copy(&thumbnail, folder.join("thumbnail.jpg")).unwrap();
    let database = dir.path().join("index.db");
    let (run, _) = common::index(&database, &[&folder]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    // Both full-size files were indexed; one of them is the keeper. Delete
    // whichever is kept: the other full-size copy becomes the keeper.
    let before = dupes_json(&database, &[]);
    let keeper = before["groups"][0]["members"][0]["path"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::remove_file(&keeper).unwrap();
    let after = dupes_json(&database, &[]);
    let new_keeper = after["groups"][0]["members"][0]["path"].as_str().unwrap();
    assert_ne!(new_keeper, keeper);
    assert!(Path::new(new_keeper).is_file());

    // With every full-size file gone, the thumbnail is kept, never moved.
    std::fs::remove_file(new_keeper).unwrap();
    let quarantine = dir.path().join("quarantine");
    let run = common::run(
        &database,
        [
            "dupes".as_ref(),
            "--move-to".as_ref(),
            quarantine.as_os_str(),
            "--apply".as_ref(),
        ],
    );
    assert!(folder.join("thumbnail.jpg").is_file(), "{}", run.stderr);
}

#[test]
fn captioned_copy_is_near_identical() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("photos");
    std::fs::create_dir(&folder).unwrap();
    let pairs = common::photo_thumbnail_pairs();
    // The source and the next burst frame of the same scene, which must
    // stay out of the group.
    let source = image::open(&pairs[0].0).unwrap().to_rgb8();
    std::fs::copy(&pairs[1].0, folder.join("next_frame.jpg")).unwrap();
    source.save(folder.join("original.png")).unwrap();
    let mut captioned = source.clone();
    let (width, height) = captioned.dimensions();
    for y in height - height / 8..height {
        for x in 0..width {
            captioned.put_pixel(x, y, image::Rgb([0, 0, 0]));
        }
    }
    // A few white strokes stand in for the caption text.
    for y in height - height / 12..height - height / 12 + 6 {
        for x in (20..width / 2).filter(|x| x % 9 < 5) {
            captioned.put_pixel(x, y, image::Rgb([255, 255, 255]));
        }
    }
    captioned.save(folder.join("captioned.png")).unwrap();

    let database = dir.path().join("index.db");
    let (run, _) = common::index(&database, &[&folder]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let output = dupes_json(&database, &[]);
    let groups = group_names(&output);
    let expected: BTreeSet<String> = ["captioned.png", "original.png"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(groups, vec![expected], "{output}");
    assert_eq!(output["groups"][0]["tier"], "near-identical");
    // The caption pair and the next frame's two pairs fail the pixel
    // check and are searched; only the caption pair lines up.
    assert_eq!(output["summary"]["aligned_pairs"], 3, "{output}");
}

/// Returns `picture` turned by `degrees` about its centre, bilinear, with
/// black where nothing of it lands, as a photo editor's straighten tool
/// leaves it.
fn tilted(picture: &image::RgbImage, degrees: f32) -> image::RgbImage {
    let (width, height) = picture.dimensions();
    let (sin, cos) = degrees.to_radians().sin_cos();
    let (centre_x, centre_y) = ((width - 1) as f32 / 2.0, (height - 1) as f32 / 2.0);
    image::RgbImage::from_fn(width, height, |x, y| {
        let (dx, dy) = (x as f32 - centre_x, y as f32 - centre_y);
        let (sx, sy) = (
            centre_x + cos * dx - sin * dy,
            centre_y + sin * dx + cos * dy,
        );
        if sx < 0.0 || sy < 0.0 || sx >= (width - 1) as f32 || sy >= (height - 1) as f32 {
            return image::Rgb([0, 0, 0]);
        }
        let (x0, y0) = (sx as u32, sy as u32);
        let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
        let channel = |c: usize| {
            let at = |x: u32, y: u32| f32::from(picture.get_pixel(x, y)[c]);
            let top = at(x0, y0) * (1.0 - fx) + at(x0 + 1, y0) * fx;
            let bottom = at(x0, y0 + 1) * (1.0 - fx) + at(x0 + 1, y0 + 1) * fx;
            (top * (1.0 - fy) + bottom * fy).round() as u8
        };
        image::Rgb([channel(0), channel(1), channel(2)])
    })
}

#[test]
fn aligned_copies_join_burst_frames_apart() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("photos");
    std::fs::create_dir(&folder).unwrap();
    // Two frames of a burst of a still scene: they differ only where a
    // rider moved, and their embeddings are as close as a copy's.
    let photo = |name: &str| common::photos_dir().join(name);
    let frame = image::open(photo("Speedway__P1040434.JPG"))
        .unwrap()
        .to_rgb8();
    let next = image::open(photo("Speedway__P1040435.JPG"))
        .unwrap()
        .to_rgb8();
    frame.save(folder.join("frame.png")).unwrap();
    tilted(&frame, 4.0)
        .save(folder.join("frame_tilted.png"))
        .unwrap();
    let (width, height) = frame.dimensions();
    image::imageops::crop_imm(
        &frame,
        width / 16,
        height / 25,
        width * 7 / 8,
        height * 9 / 10,
    )
    .to_image()
    .save(folder.join("frame_cropped.png"))
    .unwrap();
    next.save(folder.join("next.png")).unwrap();
    let mut captioned = next.clone();
    for y in 0..height / 10 {
        for x in 0..width {
            captioned.put_pixel(x, y, image::Rgb([255, 255, 255]));
        }
    }
    captioned.save(folder.join("next_captioned.png")).unwrap();

    let database = dir.path().join("index.db");
    let (run, _) = common::index(&database, &[&folder]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let output = dupes_json(&database, &[]);
    let mut groups = group_names(&output);
    groups.sort();
    let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        groups,
        vec![
            set(&["frame.png", "frame_cropped.png", "frame_tilted.png"]),
            set(&["next.png", "next_captioned.png"]),
        ],
        "{output}"
    );
}

#[test]
fn mirrored_copy_joins_its_frame_not_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("photos");
    std::fs::create_dir(&folder).unwrap();
    let photo = |name: &str| common::photos_dir().join(name);
    for name in ["Speedway__P1040434.JPG", "Speedway__P1040435.JPG"] {
        std::fs::copy(photo(name), folder.join(name)).unwrap();
    }
    // The next frame and this mirrored copy have a cosine similarity of
    // 0.95, above the rule for pictures that do not line up.
    let frame = image::open(photo("Speedway__P1040434.JPG"))
        .unwrap()
        .to_rgb8();
    image::imageops::flip_horizontal(&frame)
        .save(folder.join("mirrored.png"))
        .unwrap();

    let database = dir.path().join("index.db");
    let (run, _) = common::index(&database, &[&folder]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let output = dupes_json(&database, &[]);
    let expected: BTreeSet<String> = ["Speedway__P1040434.JPG", "mirrored.png"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(group_names(&output), vec![expected], "{output}");
}

#[test]
fn flat_pictures_of_other_colours_stay_apart() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("flat");
    std::fs::create_dir(&folder).unwrap();
    for (name, colour) in [
        ("red.png", [200, 0, 0]),
        ("blue.png", [0, 0, 200]),
        ("green.png", [0, 160, 0]),
    ] {
        image::RgbImage::from_pixel(640, 480, image::Rgb(colour))
            .save(folder.join(name))
            .unwrap();
    }
    let database = dir.path().join("index.db");
    let (run, _) = common::index(&database, &[&folder]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let output = dupes_json(&database, &[]);
    assert_eq!(
        group_names(&output),
        Vec::<BTreeSet<String>>::new(),
        "{output}"
    );
}
