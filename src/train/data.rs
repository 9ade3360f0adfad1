//! Training data: DPO's `prefs.jsonl` and LLaVA's SFT JSON, read and checked, images loaded.
//!
//! - `prefs.jsonl`: one `{"image", "prompt", "chosen", "rejected"}` per line, image paths
//!   relative to the file; each line has a stable key ([`pair_key`]) for the reference cache.
//! - SFT data: LLaVA's instruction-tuning JSON; the loss covers the gpt turns only.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::generate::Pipeline;
use crate::image::load_image;

use super::Pair;

/// One line of `prefs.jsonl`.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct PrefLine {
    pub image: String,
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
}

/// Read `prefs.jsonl`; image paths are resolved against the file's directory.
pub fn read_prefs(path: &Path) -> Result<Vec<(PathBuf, PrefLine)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let p: PrefLine = serde_json::from_str(line)
            .map_err(|e| Error::config(path, format!("line {}", i + 1), format!("expected {{image, prompt, chosen, rejected}}: {e}")))?;
        out.push((base.join(&p.image), p));
    }
    if out.is_empty() {
        return Err(Error::config(path, "<file>", "no preference pairs"));
    }
    Ok(out)
}

/// The pairs of `prefs.jsonl` with their prompts formatted for `pipe`'s model, images loaded,
/// and each line's key (see [`pair_key`]).
pub fn read_pairs<B: crate::backend::Backend>(pipe: &Pipeline<B>, data: &Path) -> Result<(Vec<Pair>, Vec<String>)> {
    let lines = read_prefs(data)?;
    let pairs: Vec<Pair> = lines
        .iter()
        .map(|(img, p)| {
            Ok(Pair {
                prompt: pipe.format_prompt(&p.prompt, 1, false),
                images: vec![load_image(img)?],
                chosen: p.chosen.clone(),
                rejected: p.rejected.clone(),
            })
        })
        .collect::<Result<_>>()?;
    Ok((pairs, lines.iter().map(|(_, p)| pair_key(p)).collect()))
}

/// A stable key of a preference line (FNV-1a 64 over its fields), so a cached reference log-prob
/// is reused only for the very pair it was computed for.
pub fn pair_key(p: &PrefLine) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for field in [&p.image, &p.prompt, &p.chosen, &p.rejected] {
        for b in field.bytes().chain([0xff]) {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// One conversation of LLaVA's instruction-tuning JSON.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct LlavaExample {
    #[serde(default)]
    pub id: serde_json::Value,
    pub image: Option<String>,
    pub conversations: Vec<LlavaTurn>,
}

#[derive(Clone, Debug, serde::Deserialize)]
pub struct LlavaTurn {
    pub from: String,
    pub value: String,
}

/// One example of LLaVA's SFT JSON: its image (if any) and its (human, gpt) turns.
pub type Conversation = (Option<PathBuf>, Vec<(String, String)>);

/// Read LLaVA's SFT JSON (a list of {id, image, conversations: [{from: human|gpt, value}]}) into
/// (image path, [(human, gpt)] turns); images are resolved against `image_folder`.
pub fn read_llava_json(path: &Path, image_folder: &Path) -> Result<Vec<Conversation>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let items: Vec<LlavaExample> = serde_json::from_str(&text).map_err(|e| Error::Json { path: path.to_path_buf(), source: e })?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, ex)| {
            let field = format!("[{i}] (id {})", ex.id);
            if ex.conversations.is_empty() || ex.conversations.len() % 2 != 0 {
                return Err(Error::config(path, field, "conversations must alternate human/gpt turns"));
            }
            let mut turns = Vec::new();
            for c in ex.conversations.chunks(2) {
                if c[0].from != "human" || c[1].from != "gpt" {
                    return Err(Error::config(path, &field, format!("expected a human then a gpt turn, got {} then {}", c[0].from, c[1].from)));
                }
                turns.push((c[0].value.clone(), c[1].value.clone()));
            }
            Ok((ex.image.map(|im| image_folder.join(im)), turns))
        })
        .collect()
}

/// LLaVA's SFT JSON with every example's images loaded.
#[allow(clippy::type_complexity)]
pub fn read_sft_data(data: &Path, image_folder: &Path) -> Result<(Vec<Conversation>, Vec<Vec<crate::image::RgbImage>>)> {
    let examples = read_llava_json(data, image_folder)?;
    let images = examples.iter().map(|(p, _)| p.iter().map(|p| load_image(p)).collect::<Result<Vec<_>>>()).collect::<Result<_>>()?;
    Ok((examples, images))
}
