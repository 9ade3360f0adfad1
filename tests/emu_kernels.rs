//! The project's kernels on the emulated CUDA device, without the driver: kernels/emu/tests/
//! kernels_smoke.cpp is linked with the objects build.rs compiled for the emulator
//! (`$OUT_DIR/emu/*.o`: every kernel, the generated registry, the sanitizer) and run. It calls
//! `add`, `rmsnorm` and `attention_fwd_d64` (mma.sync, ldmatrix, cp.async) through
//! `emu::registry()`'s trampolines and checks them against plain C++ loops, and checks the
//! registry against the fatbins. Feature `cuda` only (build.rs builds the
//! objects then); needs g++ and Boost.Context like the build.
#![cfg(feature = "cuda")]

use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn kernels_run_through_the_registry_trampolines() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Path::new(env!("OUT_DIR"));
    let emu = out.join("emu");
    let objs: Vec<PathBuf> = std::fs::read_dir(&emu)
        .unwrap_or_else(|e| panic!("{}: {e} (build.rs builds it with feature cuda)", emu.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.ends_with(".o") && !name.starts_with("driver_") && !name.starts_with("cublaslt_")
        })
        .collect();
    assert!(objs.iter().any(|p| p.ends_with("registry.o")), "no registry.o in {}", emu.display());
    let src = root.join("kernels/emu/tests/kernels_smoke.cpp");
    let dir = std::env::temp_dir().join(format!("stic-emu-kernels-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("kernels_smoke");
    let cc = Command::new("g++")
        .args(["-std=c++17", "-O2", "-ffp-contract=off", "-Wall", "-Wextra", "-o"])
        .arg(&exe)
        .arg(&src)
        .args(&objs)
        .arg("-lboost_context")
        .output()
        .unwrap_or_else(|e| panic!("cannot run g++: {e}"));
    assert!(cc.status.success(), "g++ failed on {}:\n{}", src.display(), String::from_utf8_lossy(&cc.stderr));
    let run = Command::new(&exe).arg(out.join("kernels")).output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&run.stderr));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(run.status.success(), "{} failed ({}):\n{stdout}", src.display(), run.status);
    assert!(stdout.contains(" checks, 0 failures"), "no summary line:\n{stdout}");
}
