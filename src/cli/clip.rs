//! `stic clip-score`: CLIP image-text scores (`model::clip_model`).

use stic::image::load_image;
use stic::model::clip_model::clip_scores;
use stic::Result;

use super::args::ClipScoreArgs;

/// One score per `--text`: exp(logit_scale) * cos (100 * cos for the OpenAI checkpoints).
pub fn clip_score(a: &ClipScoreArgs) -> Result<()> {
    let img = load_image(&a.image)?;
    let scores = clip_scores(a.device, &a.clip, &img, &a.text)?;
    if a.json {
        println!("{}", serde_json::json!({ "scores": scores }));
    } else {
        for (t, s) in a.text.iter().zip(&scores) {
            println!("{s:.4}\t{t}");
        }
    }
    Ok(())
}
