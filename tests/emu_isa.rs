//! The emulated CUDA device's unit tests (kernels/emu/tests/isa_test.cpp: fibers, barriers, warp
//! collectives, bf16/half, mma, ldmatrix, cp.async, atomics, written from the PTX ISA's tables),
//! compiled with the host's g++ (instrumented for the sanitizer, like the kernels) against
//! Boost.Context and kernels/emu/sanitize.cpp, and run. Needs no CUDA toolkit; a missing
//! g++ or Boost.Context is a failure, never a skip.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn emulated_device_matches_the_isa_tables() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("kernels/emu/tests/isa_test.cpp");
    let dir = std::env::temp_dir().join(format!("stic-emu-isa-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("isa_test");
    let install = "install them with `apt-get install g++ libboost-context-dev`";
    // Instrumented like the kernels (kernels/emu/sanitize.h): the sanitizer hooks come from
    // sanitize.cpp, compiled without instrumentation; -z defs proves none is missing.
    let san = root.join("kernels/emu/sanitize.cpp");
    let san_obj = dir.join("sanitize.o");
    let out = Command::new("g++")
        .args(["-std=c++17", "-O2", "-fPIC", "-Wall", "-Wextra", "-c", "-o"])
        .arg(&san_obj)
        .arg(&san)
        .output()
        .unwrap_or_else(|e| panic!("cannot run g++ ({e}): the emulator's tests need g++ and Boost.Context; {install}"));
    assert!(out.status.success(), "g++ failed on {}:\n{}", san.display(), String::from_utf8_lossy(&out.stderr));
    let out = Command::new("g++")
        .args(["-std=c++17", "-O2", "-ffp-contract=off", "-fno-tree-vectorize", "-Wall", "-Wextra"])
        .args(["-fsanitize=thread", "--param=tsan-instrument-func-entry-exit=0", "-Wno-tsan", "-Wl,-z,defs", "-o"])
        .arg(&exe)
        .arg(&src)
        .arg(&san_obj)
        .arg("-lboost_context")
        .output()
        .unwrap_or_else(|e| panic!("cannot run g++ ({e}): the emulator's tests need g++ and Boost.Context; {install}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let hint = if stderr.contains("boost/context") || stderr.contains("lboost_context") { format!("Boost.Context is missing: {install}\n") } else { String::new() };
        panic!("{hint}g++ failed on {}:\n{stderr}", src.display());
    }
    let run = Command::new(&exe).output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&run.stderr));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(run.status.success(), "kernels/emu/tests/isa_test.cpp failed ({}):\n{stdout}", run.status);
    assert!(stdout.contains(" checks, 0 failures"), "no summary line:\n{stdout}");
}
