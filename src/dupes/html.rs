//! Self-contained HTML pages for duplicate groups and query results: one
//! file with inline CSS and every thumbnail embedded as a small JPEG data
//! URI, so it can be opened, mailed or archived without the photos.

use std::fmt::Write as _;
use std::io::Cursor;
use std::path::Path;

use base64::Engine as _;
use image::codecs::jpeg::JpegEncoder;

use crate::decode::{decode_file, DecodeOptions};
use crate::paths::display_path;

/// Long side of embedded thumbnails, in pixels.
const THUMBNAIL_SIDE: u32 = 200;

/// JPEG quality of embedded thumbnails.
const THUMBNAIL_QUALITY: u8 = 80;

/// One picture on the page with the lines shown under it.
pub struct Card {
    pub path: std::path::PathBuf,
    /// Short label shown on the picture, such as "keep" or "#3".
    pub badge: String,
    pub details: Vec<String>,
    /// Data attributes of the card, such as ("rank", "3").
    pub attributes: Vec<(&'static str, String)>,
}

/// A titled row of cards: one duplicate group, or the query and its
/// results.
pub struct Section {
    pub title: String,
    pub class: &'static str,
    pub attributes: Vec<(&'static str, String)>,
    pub cards: Vec<Card>,
}

/// Renders the page. Thumbnails are made from the files in parallel; a
/// file that cannot be read gets a placeholder instead of a picture.
pub fn render_page(
    title: &str,
    summary: &str,
    sections: &[Section],
    options: &DecodeOptions,
) -> String {
    use rayon::prelude::*;
    let paths: Vec<&Path> = sections
        .iter()
        .flat_map(|s| s.cards.iter().map(|c| c.path.as_path()))
        .collect();
    let thumbnails: Vec<Option<String>> = paths
        .par_iter()
        .map(|path| thumbnail_data_uri(path, options))
        .collect();
    let mut thumbnails = thumbnails.into_iter();

    let mut page = String::new();
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n<p class=\"summary\">{}</p>\n",
        escape(title),
        escape(title),
        escape(summary)
    );
    for section in sections {
        let _ = write!(
            page,
            "<section class=\"{}\"{}>\n<h2>{}</h2>\n<div class=\"cards\">\n",
            section.class,
            attributes(&section.attributes),
            escape(&section.title)
        );
        for card in &section.cards {
            let picture = match thumbnails.next().flatten() {
                Some(uri) => format!(
                    "<img src=\"{uri}\" alt=\"{}\">",
                    escape(&file_name(&card.path))
                ),
                None => "<div class=\"missing\">cannot read file</div>".to_string(),
            };
            let _ = write!(
                page,
                "<figure class=\"card\"{}>\n<div class=\"frame\">{picture}<span class=\"badge\">{}</span></div>\n<figcaption>\n<div class=\"path\">{}</div>\n",
                attributes(&card.attributes),
                escape(&card.badge),
                escape(&display_path(&card.path).to_string())
            );
            for line in &card.details {
                let _ = writeln!(page, "<div>{}</div>", escape(line));
            }
            page.push_str("</figcaption>\n</figure>\n");
        }
        page.push_str("</div>\n</section>\n");
    }
    page.push_str("</body>\n</html>\n");
    page
}

/// Returns a JPEG data URI of the image scaled to fit [`THUMBNAIL_SIDE`],
/// or `None` when the file cannot be decoded.
pub fn thumbnail_data_uri(path: &Path, options: &DecodeOptions) -> Option<String> {
    let decoded = std::panic::catch_unwind(|| decode_file(path, options))
        .ok()?
        .ok()?;
    let (width, height) = fit(decoded.pixels.width(), decoded.pixels.height());
    let thumbnail = image::imageops::thumbnail(&decoded.pixels, width, height);
    let mut bytes = Cursor::new(Vec::new());
    JpegEncoder::new_with_quality(&mut bytes, THUMBNAIL_QUALITY)
        .encode_image(&thumbnail)
        .ok()?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes.into_inner());
    Some(format!("data:image/jpeg;base64,{encoded}"))
}

/// Returns the thumbnail size of a `width` x `height` image: the long side
/// [`THUMBNAIL_SIDE`] at most, aspect ratio kept, never enlarged.
fn fit(width: u32, height: u32) -> (u32, u32) {
    let long = width.max(height).max(1);
    if long <= THUMBNAIL_SIDE {
        return (width.max(1), height.max(1));
    }
    let scale =
        |v: u32| ((u64::from(v) * u64::from(THUMBNAIL_SIDE) / u64::from(long)) as u32).max(1);
    (scale(width), scale(height))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn attributes(pairs: &[(&'static str, String)]) -> String {
    pairs
        .iter()
        .map(|(name, value)| format!(" data-{name}=\"{}\"", escape(value)))
        .collect()
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            _ => escaped.push(c),
        }
    }
    escaped
}

const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:1.5rem;background:#f6f6f4;color:#222}
h1{font-size:1.4rem;margin:0 0 .3rem}
.summary{color:#555;margin:0 0 1.5rem}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.8rem 1rem;margin:0 0 1.2rem}
section h2{font-size:1rem;margin:0 0 .6rem}
section[data-tier=identical] h2{color:#0a6}
section[data-tier=near-identical] h2{color:#06c}
section[data-tier=similar] h2{color:#a60}
.cards{display:flex;flex-wrap:wrap;gap:.8rem}
.card{margin:0;width:210px;font-size:.78rem}
.frame{position:relative;height:200px;display:flex;align-items:center;justify-content:center;background:#eee;border-radius:4px;overflow:hidden}
.frame img{max-width:200px;max-height:200px}
.badge{position:absolute;top:4px;left:4px;background:rgba(0,0,0,.65);color:#fff;padding:1px 6px;border-radius:3px}
.card[data-keeper=true] .frame{outline:3px solid #0a6}
.missing{color:#a00}
.path{word-break:break-all;font-weight:600;margin:.3rem 0 .15rem}
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn thumbnail_fits_without_enlarging() {
        assert_eq!(fit(4000, 3000), (200, 150));
        assert_eq!(fit(90, 120), (90, 120));
        assert_eq!(fit(10000, 10), (200, 1));
    }

    #[test]
    fn unreadable_file_gets_placeholder() {
        let sections = [Section {
            title: "group 1".to_string(),
            class: "group",
            attributes: vec![("group", "1".to_string())],
            cards: vec![Card {
                path: "/nonexistent/<b>.jpg".into(),
                badge: "keep".to_string(),
                details: vec!["640x480".to_string()],
                attributes: vec![("keeper", "true".to_string())],
            }],
        }];
        let page = render_page(
            "Duplicates",
            "1 group",
            &sections,
            &DecodeOptions::default(),
        );
        assert!(page.contains("cannot read file"));
        assert!(page.contains("/nonexistent/&lt;b&gt;.jpg"));
        assert!(page.contains("data-group=\"1\""));
        assert!(!page.contains("<img"));
    }
}
