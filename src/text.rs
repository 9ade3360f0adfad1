//! Tokenizer (HF `tokenizer.json` through the `tokenizers` crate) and chat templates.
//!
//! Templates (see shared reference llava.md):
//! - Mistral (llava-v1.6-mistral): `[INST] <image>\n{prompt} [/INST]`, BOS first.
//! - Vicuna (llava-1.5, HF): `USER: <image>\n{prompt} ASSISTANT:`, BOS first.
//!
//! The template is chosen from the decoder family: Mistral decoders use the Mistral template,
//! LLaMA/Vicuna decoders the Vicuna one.

use std::path::{Path, PathBuf};

use crate::config::TextArch;
use crate::error::{Error, Result};

pub const IMAGE_TOKEN: &str = "<image>";

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::Tokenizer { path: path.to_path_buf(), msg: "file not found".into() });
        }
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::Tokenizer { path: path.to_path_buf(), msg: e.to_string() })?;
        Ok(Tokenizer { inner, path: path.to_path_buf() })
    }

    /// Token ids of `text`; `add_special_tokens` prepends BOS as the tokenizer's post-processor says.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| Error::Tokenizer { path: self.path.clone(), msg: format!("encode: {e}") })?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer { path: self.path.clone(), msg: format!("decode: {e}") })
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChatTemplate {
    Mistral,
    Vicuna,
}

impl ChatTemplate {
    pub fn for_decoder(arch: TextArch) -> Self {
        match arch {
            TextArch::Mistral => ChatTemplate::Mistral,
            TextArch::Llama => ChatTemplate::Vicuna,
        }
    }

    /// Wrap a user prompt. When the prompt has no `<image>` and `with_image` is set, the image goes
    /// first, on its own line, as in both models' training data.
    pub fn apply(self, prompt: &str, with_image: bool) -> String {
        let body = if with_image && !prompt.contains(IMAGE_TOKEN) { format!("{IMAGE_TOKEN}\n{prompt}") } else { prompt.to_string() };
        match self {
            ChatTemplate::Mistral => format!("[INST] {body} [/INST]"),
            ChatTemplate::Vicuna => format!("USER: {body} ASSISTANT:"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        assert_eq!(ChatTemplate::Mistral.apply("Hi?", true), "[INST] <image>\nHi? [/INST]");
        assert_eq!(ChatTemplate::Vicuna.apply("Hi?", true), "USER: <image>\nHi? ASSISTANT:");
        assert_eq!(ChatTemplate::Vicuna.apply("<image> x", true), "USER: <image> x ASSISTANT:");
    }
}
