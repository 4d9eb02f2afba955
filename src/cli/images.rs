//! `palpipe show-image` and `palpipe contact-sheet`: look at the store's image items.
//!
//! `show-image` writes one image item re-encoded as PNG; `contact-sheet` writes one
//! self-contained HTML page (images inlined as base64 data URIs) showing source images beside
//! the items derived from them (`items.parent_id`, e.g. Pick-a-Filter's colour-filtered
//! versions). Both only read the store. Image decoding lives in `src/embed/clip.rs`; how
//! derived images are made lives in `src/transform`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use arrow_array::{Array, LargeBinaryArray, RecordBatch, StringArray};
use base64::Engine as _;

use super::{CliError, Ctx};
use crate::store::{sql_list, sql_str, Store};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  palpipe show-image 3f2a9c1e --out /tmp/item.png\n\nFind image ids with:\n  palpipe sql \"SELECT item_id, source, parent_id FROM items WHERE kind = 'image' LIMIT 10\"\n\nExits 2 when the id is unknown (or matches several items) or the item is not an image,\n1 when its bytes do not decode."
)]
pub struct ShowImageArgs {
    /// The item id (or a unique prefix of one, at least 4 hex digits).
    #[arg(value_name = "ITEM_ID")]
    pub item_id: String,
    /// The PNG file to write (replaced if it exists).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  palpipe contact-sheet --out sheet.html\n  palpipe contact-sheet --out sheet.html --n 4 --where \"source = 'pickapic'\"\n\nA row per source image: the original first, then every image item whose parent_id is that\nimage, each captioned with its item id and source. Images are inlined as base64 data URIs,\nso the page is one file with no external references. Sources are taken in item_id order."
)]
pub struct ContactSheetArgs {
    /// The HTML file to write (replaced if it exists).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// At most this many source images (each with all its derived images).
    #[arg(long, default_value_t = 8)]
    pub n: usize,
    /// A SQL predicate over `items` choosing the source images, e.g. "source = 'pickapic'".
    #[arg(long = "where", value_name = "SQL")]
    pub filter: Option<String>,
}

/// One item's id, kind, source and bytes (bytes only when read).
struct Item {
    item_id: String,
    kind: String,
    source: String,
    parent_id: Option<String>,
    bytes: Option<Vec<u8>>,
}

fn str_col<'a>(b: &'a RecordBatch, name: &str) -> Option<&'a StringArray> {
    b.column_by_name(name)?
        .as_any()
        .downcast_ref::<StringArray>()
}

fn items_of(batches: &[RecordBatch]) -> Vec<Item> {
    let mut out = Vec::new();
    for b in batches {
        let Some(ids) = str_col(b, "item_id") else {
            continue;
        };
        let get = |c: Option<&StringArray>, i: usize| -> Option<String> {
            c.and_then(|a| (!a.is_null(i)).then(|| a.value(i).to_string()))
        };
        let bytes = b
            .column_by_name("bytes")
            .and_then(|a| a.as_any().downcast_ref::<LargeBinaryArray>());
        for i in 0..b.num_rows() {
            out.push(Item {
                item_id: ids.value(i).to_string(),
                kind: get(str_col(b, "kind"), i).unwrap_or_default(),
                source: get(str_col(b, "source"), i).unwrap_or_default(),
                parent_id: get(str_col(b, "parent_id"), i),
                bytes: bytes.and_then(|a| (!a.is_null(i)).then(|| a.value(i).to_vec())),
            });
        }
    }
    out
}

/// The one item `id` names (exactly, or as a unique hex prefix), with its bytes.
async fn find_item(store: &Store, id: &str) -> Result<Item, CliError> {
    let cols = ["item_id", "kind", "source", "parent_id", "bytes"];
    let exact = store
        .read("items", &cols, Some(&format!("item_id = {}", sql_str(id))))
        .await?;
    let mut found = items_of(&exact);
    let is_prefix = id.len() >= 4 && id.chars().all(|c| c.is_ascii_hexdigit());
    if found.is_empty() && is_prefix {
        // Ids first (small), bytes only for the one match.
        let filter = format!("item_id LIKE '{}%'", id.to_ascii_lowercase());
        let ids = items_of(&store.read("items", &["item_id"], Some(&filter)).await?);
        match ids.as_slice() {
            [] => {}
            [one] => {
                let f = format!("item_id = {}", sql_str(&one.item_id));
                found = items_of(&store.read("items", &cols, Some(&f)).await?);
            }
            many => {
                return Err(CliError::usage(anyhow::anyhow!(
                    "item id prefix '{id}' matches {} items (first: '{}', '{}')\nhint: give more digits",
                    many.len(),
                    many[0].item_id,
                    many[1].item_id
                )))
            }
        }
    }
    found.into_iter().next().ok_or_else(|| {
        CliError::usage(anyhow::anyhow!(
            "no item '{id}' in the store\nhint: list image items with: palpipe sql \"SELECT item_id, source FROM items WHERE kind = 'image'\""
        ))
    })
}

pub async fn show_image(ctx: &Ctx, a: ShowImageArgs) -> Result<(), CliError> {
    let store = ctx.existing_store().await?;
    let item = find_item(&store, &a.item_id).await?;
    if item.kind != "image" {
        return Err(CliError::usage(anyhow::anyhow!(
            "item '{}' is a {} item, not an image",
            item.item_id,
            if item.kind.is_empty() {
                "kindless"
            } else {
                item.kind.as_str()
            }
        )));
    }
    let Some(bytes) = &item.bytes else {
        return Err(CliError::failure(anyhow::anyhow!(
            "image item '{}' has no bytes",
            item.item_id
        )));
    };
    let img = crate::embed::clip::decode_image(bytes, &item.item_id).map_err(CliError::failure)?;
    img.save_with_format(&a.out, image::ImageFormat::Png)
        .map_err(|e| {
            CliError::failure(anyhow::anyhow!("cannot write '{}': {e}", a.out.display()))
        })?;
    outln!(
        "wrote {} ({}x{} PNG) from item {} ({})",
        a.out.display(),
        img.width(),
        img.height(),
        item.item_id,
        item.source
    )?;
    Ok(())
}

/// `data:image/…;base64,…` for encoded image bytes, or None when the format is unknown.
pub fn data_uri(bytes: &[u8]) -> Option<String> {
    let format = image::guess_format(bytes).ok()?;
    Some(format!(
        "data:{};base64,{}",
        format.to_mime_type(),
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One captioned image cell.
fn figure(html: &mut String, item: &Item, role: &str) {
    let id = escape(&item.item_id);
    let short = escape(&item.item_id.chars().take(12).collect::<String>());
    let _ = write!(html, "<figure class=\"{role}\">");
    match item.bytes.as_deref().and_then(data_uri) {
        Some(uri) => {
            let _ = write!(html, "<img src=\"{uri}\" alt=\"{id}\">");
        }
        None => {
            let _ = write!(html, "<div class=\"bad\">no decodable image</div>");
        }
    }
    let _ = writeln!(
        html,
        "<figcaption><code title=\"{id}\">{short}</code><br>{}{}</figcaption></figure>",
        escape(&item.source),
        if role == "original" {
            " (original)"
        } else {
            ""
        }
    );
}

pub async fn contact_sheet(ctx: &Ctx, a: ContactSheetArgs) -> Result<(), CliError> {
    if a.n == 0 {
        return Err(CliError::usage(anyhow::anyhow!("--n must be at least 1")));
    }
    let store = ctx.existing_store().await?;
    // Derived images, without their bytes: parent → children.
    let derived = items_of(
        &store
            .read(
                "items",
                &["item_id", "kind", "source", "parent_id"],
                Some("parent_id IS NOT NULL AND kind = 'image'"),
            )
            .await?,
    );
    let mut children: BTreeMap<String, Vec<Item>> = BTreeMap::new();
    for d in derived {
        if let Some(p) = d.parent_id.clone() {
            children.entry(p).or_default().push(d);
        }
    }
    if children.is_empty() {
        return Err(CliError::failure(anyhow::anyhow!(
            "no image item in the store has a parent (items.parent_id), so there is nothing to show beside an original\nhint: derived images come from a colour-filter (Pick-a-Filter) stage"
        )));
    }
    // Source images (ids only) passing --where, in id order, that have derived images.
    let filter = match &a.filter {
        Some(w) => format!("kind = 'image' AND ({w})"),
        None => "kind = 'image'".to_string(),
    };
    let sources = store
        .read("items", &["item_id"], Some(&filter))
        .await
        .map_err(|e| match &a.filter {
            Some(w) => CliError::usage(anyhow::anyhow!("--where '{w}': {e}")),
            None => e.into(),
        })?;
    let mut chosen: Vec<String> = items_of(&sources)
        .into_iter()
        .map(|i| i.item_id)
        .filter(|id| children.contains_key(id))
        .collect();
    chosen.sort();
    chosen.truncate(a.n);
    if chosen.is_empty() {
        return Err(CliError::failure(anyhow::anyhow!(
            "no source image with derived images matches --where '{}'",
            a.filter.as_deref().unwrap_or("")
        )));
    }
    let mut html = String::new();
    let _ = writeln!(
        html,
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>palpipe contact sheet</title>\n<style>\nbody {{ font-family: sans-serif; margin: 1.5em; }}\n.row {{ display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; border-bottom: 1px solid #ddd; padding: 10px 0; }}\nfigure {{ margin: 0; width: 160px; }}\nfigure img {{ width: 160px; height: auto; image-rendering: pixelated; }}\nfigure.original img {{ outline: 3px solid #333; }}\nfigcaption {{ font-size: 12px; word-break: break-all; }}\n.bad {{ width: 160px; height: 160px; background: #fee; display: flex; align-items: center; justify-content: center; font-size: 12px; }}\n</style></head><body>\n<h1>Contact sheet: {} source images and their derived versions</h1>\n<p>Store <code>{}</code>{}. Each row: the original (outlined), then every image whose <code>parent_id</code> is it.</p>",
        chosen.len(),
        escape(&store.root().display().to_string()),
        a.filter
            .as_deref()
            .map(|w| format!(", sources where <code>{}</code>", escape(w)))
            .unwrap_or_default()
    );
    let mut n_derived = 0;
    for source in &chosen {
        let kids = &children[source];
        let mut ids: Vec<String> = vec![source.clone()];
        ids.extend(kids.iter().map(|k| k.item_id.clone()));
        let list = sql_list(&ids);
        let mut rows = items_of(
            &store
                .read(
                    "items",
                    &["item_id", "kind", "source", "parent_id", "bytes"],
                    Some(&format!("item_id IN ({list})")),
                )
                .await?,
        );
        let Some(pos) = rows.iter().position(|r| &r.item_id == source) else {
            continue;
        };
        let original = rows.remove(pos);
        rows.sort_by(|x, y| (&x.source, &x.item_id).cmp(&(&y.source, &y.item_id)));
        html.push_str("<div class=\"row\">\n");
        figure(&mut html, &original, "original");
        for r in &rows {
            figure(&mut html, r, "derived");
        }
        html.push_str("</div>\n");
        n_derived += rows.len();
    }
    html.push_str("</body></html>\n");
    std::fs::write(&a.out, html).map_err(|e| {
        CliError::failure(anyhow::anyhow!("cannot write '{}': {e}", a.out.display()))
    })?;
    outln!(
        "wrote {}: {} source images, {n_derived} derived images",
        a.out.display(),
        chosen.len()
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_uri_and_escape() {
        let mut png = Vec::new();
        image::DynamicImage::new_rgb8(2, 2)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let uri = data_uri(&png).unwrap();
        assert!(
            uri.starts_with("data:image/png;base64,iVBORw0KGgo"),
            "{uri}"
        );
        assert_eq!(data_uri(b"not an image"), None);
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
