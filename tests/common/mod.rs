//! Shared helpers for the integration tests: fixture paths and reading the reference outputs that
//! scripts/gen_fixtures.py recorded from transformers.
#![allow(dead_code)]

use std::path::PathBuf;

use safetensors::SafeTensors;

/// `tests/fixtures`, or `$STIC_FIXTURES` when set (test binaries carried to another machine,
/// where the build's absolute path does not exist: scripts/gpu-run.sh sets it).
pub fn fixtures() -> PathBuf {
    match std::env::var_os("STIC_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures"),
    }
}

/// Run the `stic` binary: (success, stdout, stderr). `$STIC_BIN` overrides the binary (the one
/// carried next to the test binaries to another machine by scripts/gpu-run.sh).
pub fn stic(args: &[&str]) -> (bool, String, String) {
    let bin = std::env::var("STIC_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_stic").to_string());
    let out = std::process::Command::new(&bin).args(args).output().unwrap_or_else(|e| panic!("{bin}: {e}"));
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The CUDA device as `open(0)` makes it (a `CudaDevice`, or the `Cuda` backend), or `None` after
/// printing `skipped: no CUDA device` when this machine has none. With `STIC_REQUIRE_CUDA=1` (set
/// where a device is expected: scripts/gpu-run.sh, the emulated CI step) a missing device fails
/// the test instead.
#[cfg(feature = "cuda")]
pub fn cuda<T>(open: impl FnOnce(usize) -> stic::Result<T>) -> Option<T> {
    if !stic::backend::cuda::cuda_available() {
        assert!(std::env::var("STIC_REQUIRE_CUDA").as_deref() != Ok("1"), "no CUDA device, and STIC_REQUIRE_CUDA=1 expects one");
        // Straight to the stdout handle: libtest captures `println!` of passing tests.
        use std::io::Write;
        let _ = writeln!(std::io::stdout().lock(), "skipped: no CUDA device");
        return None;
    }
    Some(open(0).expect("a CUDA device is present but could not be opened"))
}

pub fn read_json(rel: &str) -> serde_json::Value {
    let p = fixtures().join(rel);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// All tensors of a safetensors file (`rel` to the fixtures, or an absolute path), as (shape, f32
/// data); u8 tensors are widened, f64 ones (the optimiser's step counts) narrowed.
pub fn read_tensors(rel: &str) -> std::collections::HashMap<String, (Vec<usize>, Vec<f32>)> {
    let p = fixtures().join(rel);
    let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let data: Vec<f32> = match v.dtype() {
                safetensors::Dtype::F32 => v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                safetensors::Dtype::U8 => v.data().iter().map(|&b| b as f32).collect(),
                safetensors::Dtype::F64 => v.data().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
                d => panic!("{name}: unexpected dtype {d:?}"),
            };
            (name, (v.shape().to_vec(), data))
        })
        .collect()
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

pub fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// max |a - b| / (1 + |b|)
pub fn max_rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs() / (1.0 + y.abs())).fold(0.0, f32::max)
}

/// `stic train-sft` on the SFT fixture (tests/fixtures/sft/llava.json: no warmup, seed 3, quiet)
/// from `model` into `out` with `extra` options; (success, stderr).
pub fn train_sft_fixture(model: &std::path::Path, out: &std::path::Path, extra: &[&str]) -> (bool, String) {
    let data = fixtures().join("sft/llava.json");
    let mut a = vec!["train-sft", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()];
    a.extend_from_slice(&["--warmup-ratio", "0", "--seed", "3", "--quiet"]);
    a.extend_from_slice(extra);
    let (ok, _, err) = stic(&a);
    (ok, err)
}

/// A scratch copy of a fixture directory, for tests that damage files.
pub fn scratch_copy(rel: &str, tag: &str) -> PathBuf {
    let src = fixtures().join(rel);
    let dst = std::env::temp_dir().join(format!("stic-test-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

/// Edit `dir`/config.json in place.
pub fn edit_config(dir: &std::path::Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&p, cfg.to_string()).unwrap();
}

/// One generation request per fixture case: its templated prompt and its image.
pub fn case_requests(cases: &[serde_json::Value]) -> Vec<stic::generate::Request> {
    cases
        .iter()
        .map(|c| stic::generate::Request {
            prompt: c["templated"].as_str().unwrap().to_string(),
            images: vec![stic::image::load_image(&fixtures().join(c["image"].as_str().unwrap())).unwrap()],
        })
        .collect()
}

/// A scratch copy of the tiny LLaVA-NeXT fixture whose decoder has head dim 64 (2 heads, 1 kv
/// head; the training attention kernels take head dims 64 and 128, the fixture's is 8), for
/// `--random-weights` runs (tests/cuda_train.rs, tests/cuda_cli.rs).
pub fn tiny64(tag: &str) -> std::path::PathBuf {
    tiny64_of("llava_next_tiny", tag)
}

/// [`tiny64`] of the fixture `rel` (`llava15_tiny`: no image_newline, whose size is the text's).
pub fn tiny64_of(rel: &str, tag: &str) -> std::path::PathBuf {
    let dir = scratch_copy(rel, tag);
    edit_config(&dir, |c| {
        let t = &mut c["text_config"];
        t["hidden_size"] = 128.into();
        t["num_attention_heads"] = 2.into();
        t["num_key_value_heads"] = 1.into();
        t["head_dim"] = 64.into();
        t["intermediate_size"] = 256.into();
    });
    dir
}

/// Logits [V] at the last row of the embeddings `x` [T, C] (one prefill), on any backend.
pub fn last_logits<B: stic::backend::Backend>(pipe: &stic::generate::Pipeline<B>, x: B::Tensor) -> Vec<f32> {
    use stic::backend::Rows;
    let dec = &pipe.model.decoder;
    let be = pipe.model.backend();
    let t = x.n_rows();
    let mut cache = stic::model::KvCache::new(be, &dec.cfg, 1, t).unwrap();
    let h = dec.forward(x, &[0], &[t], &mut cache).unwrap();
    let last = be.embedding(&h, None, &[t as u32 - 1]).unwrap();
    be.logits_host(&dec.logits(&last).unwrap()).unwrap().data().to_vec()
}
