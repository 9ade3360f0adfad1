//! Checkpoint weights: single or sharded safetensors, memory-mapped, widened to f32 on load.
//!
//! `WeightStore::open(dir)` reads `model.safetensors.index.json` when present (every shard it names
//! must exist and hold exactly the tensors the index assigns to it) or else `model.safetensors`.
//! Each file's header is validated up front, so a truncated file fails at open with its path.
//! Tensors are fetched by name with their expected shape; the store remembers what was taken, and
//! `finish` reports any tensor that the model did not use ("extra"), so a checkpoint for a
//! different architecture cannot load silently.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;

use crate::config::read_json;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    /// Byte offset of the data section (8 + header length).
    data_start: usize,
    meta: Metadata,
}

/// Where one tensor lives.
#[derive(Clone, Copy)]
struct Entry {
    shard: usize,
}

/// Where a model's tensors come from: a checkpoint (`WeightStore`) or a seeded random generator
/// (`RandomWeights`, for benches and profiling without a download). Model loaders only use this.
pub trait WeightSource {
    /// Fetch `name` as f32, checking its shape against `shape`.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor>;
    /// Whether the source has a tensor of that name (used to tell checkpoint layouts apart).
    fn contains(&self, name: &str) -> bool;
    /// Mark a tensor as deliberately unused.
    fn skip(&self, name: &str);
    /// The directory to name in errors.
    fn dir(&self) -> &Path;
}

impl WeightSource for WeightStore {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        WeightStore::get(self, name, shape)
    }
    fn contains(&self, name: &str) -> bool {
        WeightStore::contains(self, name)
    }
    fn skip(&self, name: &str) {
        WeightStore::skip(self, name)
    }
    fn dir(&self) -> &Path {
        WeightStore::dir(self)
    }
}

/// Random weights for any config: every tensor a model asks for exists, with values that depend
/// only on the seed and the tensor's name. Norm scales are near 1, biases near 0, other weights
/// uniform with std `1/sqrt(fan_in)`, so activations keep a sane scale through deep models.
/// Layout probes see the newest checkpoint layout.
pub struct RandomWeights {
    dir: PathBuf,
    seed: u64,
}

impl RandomWeights {
    pub fn new(dir: &Path, seed: u64) -> Self {
        RandomWeights { dir: dir.to_path_buf(), seed }
    }
}

impl WeightSource for RandomWeights {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        // FNV-1a of the name, mixed with the seed.
        let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)) ^ self.seed;
        let is_norm = name.contains("norm") && name.ends_with(".weight");
        let is_bias = name.ends_with(".bias") || name.ends_with("class_embedding") || name.ends_with("image_newline");
        let fan_in = if shape.len() >= 2 { shape[1..].iter().product::<usize>() } else { shape[0] };
        let (center, half_width) = if is_norm {
            (1.0f32, 0.1f32)
        } else if is_bias {
            (0.0, 0.1)
        } else {
            (0.0, (3.0 / fan_in as f32).sqrt())
        };
        let mut data = vec![0f32; n];
        data.par_chunks_mut(1 << 16).enumerate().for_each(|(ci, chunk)| {
            for (j, v) in chunk.iter_mut().enumerate() {
                // SplitMix64 of (name hash, element index).
                let mut z = h.wrapping_add((((ci << 16) + j) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                let u = (z >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
                *v = center + half_width * (2.0 * u - 1.0);
            }
        });
        Tensor::new(data, shape)
    }
    fn contains(&self, name: &str) -> bool {
        // Probes of the newest layout succeed; the older names do not exist.
        name.starts_with("model.") || name == "lm_head.weight"
    }
    fn skip(&self, _name: &str) {}
    fn dir(&self) -> &Path {
        &self.dir
    }
}

pub struct WeightStore {
    dir: PathBuf,
    shards: Vec<Shard>,
    entries: BTreeMap<String, Entry>,
    taken: Mutex<HashSet<String>>,
}

fn open_shard(path: &Path) -> Result<Shard> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the file is opened read-only and we never mutate it; a checkpoint rewritten while
    // being read is outside what this loader defends against, as in every mmap-based loader.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let (header_len, meta) = SafeTensors::read_metadata(&mmap[..]).map_err(|e| {
        Error::weights(path, format!("not a valid safetensors file (truncated or corrupt?): {e}"))
    })?;
    Ok(Shard { path: path.to_path_buf(), mmap, data_start: 8 + header_len, meta })
}

impl WeightStore {
    /// Open the weights of the checkpoint in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        if index.exists() {
            Self::open_sharded(dir, &index)
        } else if single.exists() {
            Self::from_files(dir, &[single])
        } else {
            Err(Error::weights(dir, "no model.safetensors or model.safetensors.index.json in this directory"))
        }
    }

    /// Open a given list of safetensors files (tensor names must be unique across them).
    pub fn from_files(dir: &Path, files: &[PathBuf]) -> Result<Self> {
        let shards = files.iter().map(|p| open_shard(p)).collect::<Result<Vec<_>>>()?;
        let mut entries = BTreeMap::new();
        for (i, s) in shards.iter().enumerate() {
            for name in s.meta.tensors().keys() {
                if let Some(prev) = entries.insert(name.clone(), Entry { shard: i }) {
                    return Err(Error::weights(
                        &s.path,
                        format!("tensor `{name}` is also in {}", shards[prev.shard].path.display()),
                    ));
                }
            }
        }
        Ok(WeightStore { dir: dir.to_path_buf(), shards, entries, taken: Mutex::new(HashSet::new()) })
    }

    fn open_sharded(dir: &Path, index: &Path) -> Result<Self> {
        let v = read_json(index)?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::config(index, "weight_map", "missing or not an object"))?;
        let mut files: Vec<String> = Vec::new();
        let mut expect: HashMap<String, String> = HashMap::new();
        for (name, file) in map {
            let file = file
                .as_str()
                .ok_or_else(|| Error::config(index, format!("weight_map.{name}"), "expected a file name"))?;
            if !files.iter().any(|f| f == file) {
                files.push(file.to_string());
            }
            expect.insert(name.clone(), file.to_string());
        }
        files.sort();
        let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
        for p in &paths {
            if !p.exists() {
                return Err(Error::weights(p, format!("shard listed in {} does not exist", index.display())));
            }
        }
        let store = Self::from_files(dir, &paths)?;
        for (name, file) in &expect {
            match store.entries.get(name) {
                None => {
                    return Err(Error::weights(
                        dir.join(file),
                        format!("tensor `{name}` is listed in {} but missing from the shard", index.display()),
                    ))
                }
                Some(e) if store.shards[e.shard].path != dir.join(file) => {
                    return Err(Error::weights(
                        &store.shards[e.shard].path,
                        format!("tensor `{name}` is here but the index assigns it to {file}"),
                    ))
                }
                _ => {}
            }
        }
        for (name, e) in &store.entries {
            if !expect.contains_key(name) {
                return Err(Error::weights(
                    &store.shards[e.shard].path,
                    format!("tensor `{name}` is not listed in {}", index.display()),
                ));
            }
        }
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The file a tensor lives in, or the checkpoint directory when it is absent (for errors).
    pub fn file_of(&self, name: &str) -> PathBuf {
        self.entries.get(name).map(|e| self.shards[e.shard].path.clone()).unwrap_or_else(|| self.dir.clone())
    }

    /// The stored shape of a tensor.
    pub fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        let e = self.entries.get(name)?;
        self.shards[e.shard].meta.tensors().get(name).map(|i| i.shape.clone())
    }

    /// Fetch `name` as f32, checking its shape against `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let e = self.entries.get(name).ok_or_else(|| {
            Error::weights(&self.dir, format!("missing tensor `{name}` (expected shape {shape:?})"))
        })?;
        let shard = &self.shards[e.shard];
        let info = shard.meta.tensors()[name];
        if info.shape != shape {
            return Err(Error::weights(
                &shard.path,
                format!("tensor `{name}` has shape {:?}, expected {shape:?}", info.shape),
            ));
        }
        let (a, b) = info.data_offsets;
        let bytes = &shard.mmap[shard.data_start + a..shard.data_start + b];
        let data = widen(bytes, info.dtype).map_err(|m| Error::weights(&shard.path, format!("tensor `{name}`: {m}")))?;
        self.taken.lock().unwrap().insert(name.to_string());
        Tensor::new(data, shape)
    }

    /// The stored bytes of a tensor, with its dtype and shape (for copying it unchanged).
    pub fn raw(&self, name: &str) -> Result<(Dtype, Vec<usize>, &[u8])> {
        let e = self.entries.get(name).ok_or_else(|| Error::weights(&self.dir, format!("missing tensor `{name}`")))?;
        let shard = &self.shards[e.shard];
        let info = shard.meta.tensors()[name];
        let (a, b) = info.data_offsets;
        Ok((info.dtype, info.shape.clone(), &shard.mmap[shard.data_start + a..shard.data_start + b]))
    }

    /// The safetensors files of the checkpoint.
    pub fn files(&self) -> Vec<PathBuf> {
        self.shards.iter().map(|s| s.path.clone()).collect()
    }

    /// Mark tensors as deliberately unused (e.g. CLIP's post-layernorm, which LLaVA never runs).
    pub fn skip(&self, name: &str) {
        self.taken.lock().unwrap().insert(name.to_string());
    }

    /// Error if any tensor in the checkpoint was neither taken nor skipped.
    pub fn finish(&self) -> Result<()> {
        let taken = self.taken.lock().unwrap();
        let extra: Vec<&String> = self.entries.keys().filter(|k| !taken.contains(*k)).collect();
        if let Some(first) = extra.first() {
            return Err(Error::weights(
                self.file_of(first),
                format!(
                    "{} unexpected tensor(s) that this model does not use, first `{first}`{}",
                    extra.len(),
                    if extra.len() > 1 { format!(", then `{}`", extra[1]) } else { String::new() }
                ),
            ));
        }
        Ok(())
    }
}

/// f32 values to little-endian bytes of `dtype` (F32, F16 or BF16; round to nearest even).
pub fn narrow(x: &[f32], dtype: Dtype) -> std::result::Result<Vec<u8>, String> {
    match dtype {
        Dtype::F32 => Ok(x.iter().flat_map(|v| v.to_le_bytes()).collect()),
        Dtype::F16 => Ok(x.iter().flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes()).collect()),
        Dtype::BF16 => Ok(x.iter().flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes()).collect()),
        other => Err(format!("unsupported dtype {other:?} (expected F32, F16 or BF16)")),
    }
}

/// Little-endian f32/f16/bf16 bytes to f32. Bytes in an mmap may be unaligned, so they are read
/// as byte chunks rather than cast.
pub fn widen(bytes: &[u8], dtype: Dtype) -> std::result::Result<Vec<f32>, String> {
    const CHUNK: usize = 1 << 16;
    match dtype {
        Dtype::F32 => {
            let mut out = vec![0f32; bytes.len() / 4];
            out.par_chunks_mut(CHUNK).zip(bytes.par_chunks(CHUNK * 4)).for_each(|(o, b)| {
                for (x, c) in o.iter_mut().zip(b.chunks_exact(4)) {
                    *x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            });
            Ok(out)
        }
        Dtype::F16 | Dtype::BF16 => {
            let mut out = vec![0f32; bytes.len() / 2];
            let bf = dtype == Dtype::BF16;
            out.par_chunks_mut(CHUNK).zip(bytes.par_chunks(CHUNK * 2)).for_each(|(o, b)| {
                for (x, c) in o.iter_mut().zip(b.chunks_exact(2)) {
                    let bits = u16::from_le_bytes([c[0], c[1]]);
                    *x = if bf { half::bf16::from_bits(bits).to_f32() } else { half::f16::from_bits(bits).to_f32() };
                }
            });
            Ok(out)
        }
        other => Err(format!("unsupported dtype {other:?} (expected F32, F16 or BF16)")),
    }
}

/// A safetensors file of f32 tensors (name, shape, data), with HF's `format: pt` metadata; `path`
/// names the file in errors. The one f32 writer of models trained here (the world's init, CLIP,
/// optimiser states).
pub fn f32_safetensors<'a>(tensors: impl Iterator<Item = (&'a str, &'a [usize], &'a [f32])>, path: &Path) -> Result<Vec<u8>> {
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> =
        tensors.map(|(n, s, d)| (n.to_string(), s.to_vec(), d.iter().flat_map(|v| v.to_le_bytes()).collect())).collect();
    let views = owned
        .iter()
        .map(|(n, s, b)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).map_err(|e| Error::weights(path, format!("`{n}`: {e}")))?;
            Ok((n.clone(), v))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta: std::collections::HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::serialize(views, Some(meta)).map_err(|e| Error::weights(path, e.to_string()))
}

/// Write `bytes` to `path` through `path.tmp` and a rename, so that a crash never leaves a torn
/// file (the one atomic write of every writer: stage markers, summaries, checkpoints, models).
pub fn write_atomic(path: &Path, bytes: impl AsRef<[u8]>) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
