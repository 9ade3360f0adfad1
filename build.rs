//! Build script: compiles `kernels/*.cu` with nvcc when the `cuda` feature is on; does nothing
//! otherwise (the default build needs no CUDA toolkit and no GPU).
//!
//! nvcc is looked up in this order:
//!   1. `$NVCC` (must exist when set),
//!   2. `$CUDA_HOME/bin/nvcc`,
//!   3. `<repo>/.tools/cuda/nvidia/cu13/bin/nvcc` (what `scripts/install-cuda-toolkit.sh` makes),
//!   4. otherwise `scripts/install-cuda-toolkit.sh` is run (pip, from PyPI) and 3. is used.
//!
//! Each `kernels/NAME.cu` becomes `$OUT_DIR/kernels/NAME.fatbin` with SASS for sm_80 and sm_90a
//! plus compute_90 PTX (JIT-compiled by the driver on anything newer). `$OUT_DIR/kernels.rs` lists
//! them for `src/backend/cuda` as `KERNELS: &[(&str, &[u8])]`. ptxas's register/spill report
//! (`-Xptxas=-v`) for each kernel file is kept in `$OUT_DIR/kernels/NAME.ptxas.txt`, all of them
//! in `$OUT_DIR/ptxas-report.txt`; a kernel that spills gets a cargo warning.
//!
//! The same sources are also compiled for the emulated CUDA device (issue #14): `build/emu.rs`
//! rewrites and compiles them as host C++ with g++ and links `$OUT_DIR/emu/libstic_cuda_emu.so`
//! and `libstic_cublaslt_emu.so`, embedded as `EMU_CUDA_LIB` / `EMU_CUBLASLT_LIB` in kernels.rs.

#[path = "build/emu.rs"]
mod emu;

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// `-gencode` pairs: real SASS for A100-class (sm_80) and H100/H200 (sm_90a, which allows the
/// Hopper-only wgmma/TMA/setmaxnreg instructions), and compute_90 PTX as the forward-compatible
/// fallback that the driver JIT-compiles for GPUs newer than Hopper.
const GENCODE: &[&str] = &[
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90a,code=sm_90a",
    "-gencode=arch=compute_90,code=compute_90",
];

/// Flags for every kernel. No `--use_fast_math`: the kernels must match the CPU reference, so
/// denormals are kept and division / sqrt are IEEE-rounded (these are nvcc's defaults, spelled
/// out so that nobody "adds" them by accident). FMA contraction (`-fmad=true`) stays nvcc's default.
const FLAGS: &[&str] = &[
    "-fatbin",
    "-O3",
    "-std=c++17",
    "-lineinfo",
    "-Xptxas=-v",
    "-ftz=false",
    "-prec-div=true",
    "-prec-sqrt=true",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build/emu.rs");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    if let Err(e) = build_kernels() {
        // cargo shows a failed build script's stderr: nvcc's errors, without a Rust backtrace.
        eprintln!("\nbuilding the CUDA kernels failed:\n{e}");
        std::process::exit(1);
    }
}

fn build_kernels() -> Result<(), String> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let kernel_dir = manifest.join("kernels");
    let install_script = manifest.join("scripts/install-cuda-toolkit.sh");

    for var in ["NVCC", "CUDA_HOME", "NVCC_CCBIN", "NVCC_PREPEND_FLAGS", "NVCC_APPEND_FLAGS"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    // A directory: cargo rescans it, so new or changed headers (*.cuh) rerun the build too.
    println!("cargo:rerun-if-changed={}", kernel_dir.display());
    println!("cargo:rerun-if-changed={}", install_script.display());

    let mut kernels: Vec<PathBuf> = match fs::read_dir(&kernel_dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cu"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("{}: {e}", kernel_dir.display())),
    };
    kernels.sort();
    for k in &kernels {
        println!("cargo:rerun-if-changed={}", k.display());
    }

    let nvcc = find_nvcc(&manifest, &install_script)?;
    let version = nvcc_version(&nvcc)?;

    let kout = out.join("kernels");
    fs::create_dir_all(&kout).map_err(|e| format!("{}: {e}", kout.display()))?;

    // Compile the kernel files in parallel, as many at once as cargo allows jobs.
    let jobs = env::var("NUM_JOBS").ok().and_then(|j| j.parse::<usize>().ok()).unwrap_or(1).max(1);
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<String, String>>>> = Mutex::new(vec![None; kernels.len()]);
    std::thread::scope(|s| {
        for _ in 0..jobs.min(kernels.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= kernels.len() {
                    break;
                }
                let r = compile(&nvcc, &kernels[i], &kernel_dir, &kout);
                results.lock().unwrap()[i] = Some(r);
            });
        }
    });
    let results = results.into_inner().unwrap();

    let mut errors = String::new();
    let mut report = format!("nvcc: {}\nflags: {} {}\n", nvcc.display(), FLAGS.join(" "), GENCODE.join(" "));
    for (k, r) in kernels.iter().zip(results) {
        match r.expect("every kernel is compiled") {
            Ok(log) => {
                let _ = writeln!(report, "\n== {} ==\n{}", k.display(), log.trim_end());
            }
            Err(e) => errors.push_str(&e),
        }
    }
    fs::write(out.join("ptxas-report.txt"), &report).map_err(|e| format!("ptxas-report.txt: {e}"))?;
    if !errors.is_empty() {
        return Err(errors);
    }

    // The Rust side: one (name, fatbin) entry per kernel file, in file-name order.
    let mut rs = String::from("// @generated by build.rs from kernels/*.cu\n");
    let _ = writeln!(rs, "/// nvcc that compiled the kernels: `{version}`.");
    let _ = writeln!(rs, "pub const NVCC_VERSION: &str = {version:?};");
    let _ = writeln!(rs, "/// The `-gencode` flags every kernel file was compiled with.");
    let _ = writeln!(rs, "pub const GENCODE: &str = {:?};", GENCODE.join(" "));
    let _ = writeln!(rs, "/// (kernel file stem, fatbin image) for every `kernels/*.cu`.");
    rs.push_str("pub const KERNELS: &[(&str, &[u8])] = &[\n");
    for k in &kernels {
        let stem = stem(k);
        let fatbin = kout.join(format!("{stem}.fatbin"));
        let _ = writeln!(rs, "    ({stem:?}, include_bytes!({:?})),", fatbin.display().to_string());
    }
    rs.push_str("];\n");
    rs.push_str(&emu::build(&manifest, &out, &kernels, jobs)?);
    fs::write(out.join("kernels.rs"), rs).map_err(|e| format!("kernels.rs: {e}"))?;
    build_nvtx_shim(&manifest, &nvcc)
}

/// `src/backend/cuda/nvtx.c`, the C shim over the header-only NVTX v3, compiled with the host C
/// compiler against the headers next to nvcc (`<toolkit>/include/nvtx3`, from the `nvidia-nvtx`
/// wheel or a regular toolkit). NVTX v3 dlopens the profiler's tool, hence `-ldl`.
fn build_nvtx_shim(manifest: &Path, nvcc: &Path) -> Result<(), String> {
    let src = manifest.join("src/backend/cuda/nvtx.c");
    println!("cargo:rerun-if-changed={}", src.display());
    let include = nvcc.parent().and_then(Path::parent).map(|d| d.join("include")).ok_or("nvcc has no parent directory")?;
    if !include.join("nvtx3/nvToolsExt.h").exists() {
        return Err(format!(
            "{}: no nvtx3/nvToolsExt.h (scripts/install-cuda-toolkit.sh installs it with nvcc; rerun it)",
            include.display()
        ));
    }
    cc::Build::new().file(&src).include(&include).warnings(true).try_compile("stic_nvtx").map_err(|e| format!("{}: {e}", src.display()))?;
    println!("cargo:rustc-link-lib=dl");
    Ok(())
}

fn stem(p: &Path) -> String {
    p.file_stem().unwrap().to_string_lossy().into_owned()
}

/// `$NVCC`, then `$CUDA_HOME/bin/nvcc`, then the repo-local toolkit, installing it if absent.
fn find_nvcc(manifest: &Path, install_script: &Path) -> Result<PathBuf, String> {
    if let Some(p) = env::var_os("NVCC").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() { Ok(p) } else { Err(format!("$NVCC={} does not exist", p.display())) };
    }
    if let Some(home) = env::var_os("CUDA_HOME").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(home).join("bin/nvcc");
        if p.is_file() {
            return Ok(p);
        }
        println!("cargo:warning=$CUDA_HOME/bin/nvcc ({}) not found; using the repo-local toolkit", p.display());
    }
    let local = manifest.join(".tools/cuda/nvidia/cu13/bin/nvcc");
    if local.is_file() {
        return Ok(local);
    }
    println!("cargo:warning=no nvcc found: running scripts/install-cuda-toolkit.sh (pip, from PyPI)");
    let o = Command::new("bash")
        .arg(install_script)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", install_script.display()))?;
    if !o.status.success() {
        return Err(format!(
            "{} failed ({}):\n{}{}",
            install_script.display(),
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    if local.is_file() {
        Ok(local)
    } else {
        Err(format!("{} succeeded but {} is missing", install_script.display(), local.display()))
    }
}

fn nvcc_version(nvcc: &Path) -> Result<String, String> {
    let o = Command::new(nvcc).arg("--version").output().map_err(|e| format!("cannot run {}: {e}", nvcc.display()))?;
    if !o.status.success() {
        return Err(format!("{} --version failed:\n{}", nvcc.display(), String::from_utf8_lossy(&o.stderr)));
    }
    let s = String::from_utf8_lossy(&o.stdout);
    // "Cuda compilation tools, release 13.0, V13.0.88"
    Ok(s.lines().find(|l| l.contains("release")).unwrap_or(s.trim()).trim().to_string())
}

/// Compiles one kernel file to a fatbin; returns nvcc's output (the ptxas report).
fn compile(nvcc: &Path, src: &Path, include: &Path, kout: &Path) -> Result<String, String> {
    let stem = stem(src);
    let fatbin = kout.join(format!("{stem}.fatbin"));
    let mut cmd = Command::new(nvcc);
    cmd.args(FLAGS).args(GENCODE).arg("-I").arg(include).arg("-o").arg(&fatbin).arg(src);
    let o = cmd.output().map_err(|e| format!("cannot run {}: {e}", nvcc.display()))?;
    let log = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let _ = fs::write(kout.join(format!("{stem}.ptxas.txt")), &log);
    if !o.status.success() {
        return Err(format!("nvcc failed on {} ({}):\n{:?}\n{}\n", src.display(), o.status, cmd, log));
    }
    // Surface what deserves attention on every build: spills and compiler warnings (once each;
    // nvcc repeats a front-end warning for every -gencode).
    let mut seen = std::collections::HashSet::new();
    let mut func = String::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            func = rest.split('\'').next().unwrap_or("").to_string();
            if let Some(arch) = line.split("for '").nth(1) {
                func = format!("{func} ({})", arch.trim_end_matches(['\'', '.']));
            }
        }
        if line.contains("bytes spill stores") && !line.contains(" 0 bytes spill stores") {
            println!("cargo:warning={stem}.cu: {func}: {}", line.trim());
        }
        if line.contains("warning") && seen.insert(line.trim().to_string()) {
            println!("cargo:warning={stem}.cu: {}", line.trim());
        }
    }
    check_register_budgets(&stem, &log)?;
    Ok(log)
}

/// A register assumption a kernel states, checked against ptxas's report of every build.
struct RegisterBudget {
    /// Kernel file stem and entry function.
    file: &'static str,
    func: &'static str,
    /// The target it applies to (`sm_90a`), or None for every target.
    arch: Option<&'static str>,
    /// The exact register count at entry the kernel relies on, if any.
    regs: Option<u32>,
    /// Why (the kernel's own statement).
    why: &'static str,
}

/// What the kernels assume of ptxas (issue #15 (h)). Every listed kernel must also not spill.
/// - attention_hopper.cu: `__launch_bounds__(384, 1)` caps the kernel at 65536 / 384 = 170,
///   rounded down to 168 registers (the allocation granule is 8); `setmaxnreg.dec 40` (producer
///   warpgroup) and `setmaxnreg.inc 232` (two consumer warpgroups) redistribute exactly that:
///   128 x 40 + 256 x 232 = 64,512 <= 65,536. A different count at entry breaks the budget.
/// - attention_train.cu `attention_bwd_d128`: 255 registers (the most a thread can have) with no
///   min-blocks bound; a spill there would be silent local-memory traffic in the hottest loop.
const REGISTER_BUDGETS: &[RegisterBudget] = &[
    RegisterBudget { file: "attention_hopper", func: "attention_fwd_hopper_d64", arch: Some("sm_90a"), regs: Some(168), why: "setmaxnreg.dec 40 / .inc 232 redistribute a 168-register entry budget (kernels/attention_hopper.cu)" },
    RegisterBudget { file: "attention_hopper", func: "attention_fwd_hopper_d128", arch: Some("sm_90a"), regs: Some(168), why: "setmaxnreg.dec 40 / .inc 232 redistribute a 168-register entry budget (kernels/attention_hopper.cu)" },
    RegisterBudget { file: "attention_train", func: "attention_bwd_d128", arch: None, regs: None, why: "255 registers with no min-blocks bound must not spill (kernels/attention_train.cu)" },
];

/// Per (entry function, target) of a ptxas `-v` log: the registers used and the spill bytes
/// (stores + loads).
fn ptxas_entries(log: &str) -> Vec<(String, String, Option<u32>, Option<u64>)> {
    let mut out: Vec<(String, String, Option<u32>, Option<u64>)> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let func = rest.split('\'').next().unwrap_or("").to_string();
            let arch = line.split("for '").nth(1).unwrap_or("").trim_end_matches(['\'', '.']).to_string();
            out.push((func, arch, None, None));
        } else if let Some(e) = out.last_mut() {
            let num_before = |key: &str| -> Option<u64> { line.split(key).next()?.split_whitespace().last()?.parse().ok() };
            if line.contains("bytes spill stores") {
                e.3 = Some(num_before(" bytes spill stores").unwrap_or(0) + num_before(" bytes spill loads").unwrap_or(0));
            }
            if let Some(rest) = line.split("Used ").nth(1) {
                e.2 = rest.split_whitespace().next().and_then(|n| n.parse().ok());
            }
        }
    }
    out
}

/// Fails the build when ptxas's report for `stem` departs from a [`REGISTER_BUDGETS`] entry.
fn check_register_budgets(stem: &str, log: &str) -> Result<(), String> {
    let entries = ptxas_entries(log);
    let mut errors = String::new();
    for b in REGISTER_BUDGETS.iter().filter(|b| b.file == stem) {
        let mut seen = false;
        for (func, arch, regs, spill) in &entries {
            if func != b.func || b.arch.is_some_and(|a| a != arch) {
                continue;
            }
            seen = true;
            if let (Some(want), Some(got)) = (b.regs, regs) {
                if want != *got {
                    errors.push_str(&format!("kernels/{stem}.cu: {func} ({arch}): ptxas gives {got} registers at entry, the kernel assumes {want}: {}\n", b.why));
                }
            }
            if b.regs.is_some() && regs.is_none() {
                errors.push_str(&format!("kernels/{stem}.cu: {func} ({arch}): no register count in ptxas's report\n"));
            }
            if spill.unwrap_or(0) > 0 {
                errors.push_str(&format!("kernels/{stem}.cu: {func} ({arch}): ptxas spills {} bytes (stores + loads): {}\n", spill.unwrap_or(0), b.why));
            }
        }
        if !seen {
            errors.push_str(&format!("kernels/{stem}.cu: no ptxas report for {}{} (is -Xptxas=-v still passed?)\n", b.func, b.arch.map(|a| format!(" on {a}")).unwrap_or_default()));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("ptxas's register report departs from what the kernels assume (issue #15 (h)):\n{errors}"))
    }
}
