//! Builds a C++ test of the emulated CUDA device (kernels/emu/tests/*.cpp) the way build.rs
//! builds the kernels: the test TU instrumented with `g++ -fsanitize=thread
//! --param=tsan-instrument-func-entry-exit=0` (so g++ calls the `__tsan_*` hooks before every
//! memory access), kernels/emu/sanitize.cpp compiled without instrumentation (it defines those
//! hooks), linked WITHOUT the tsan runtime and with `-z defs` (a hook missing from sanitize.cpp
//! fails the link). A missing g++ or Boost.Context is a failure, never a skip.

use std::path::{Path, PathBuf};
use std::process::Command;

const INSTALL: &str = "install them with `apt-get install g++ libboost-context-dev`";

fn gxx(args: &[&str], files: &[&Path], what: &Path) {
    let out = Command::new("g++")
        .args(args)
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("cannot run g++ ({e}): the emulator's tests need g++ and Boost.Context; {INSTALL}"));
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let hint = if stderr.contains("boost/context") || stderr.contains("lboost_context") { format!("Boost.Context is missing: {INSTALL}\n") } else { String::new() };
        panic!("{hint}g++ failed on {}:\n{stderr}", what.display());
    }
}

/// Compiles `kernels/emu/tests/<name>.cpp` into `<dir>/<name>` and returns the executable.
pub fn build(name: &str, dir: &Path) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let emu = root.join("kernels/emu");
    let src = emu.join("tests").join(format!("{name}.cpp"));
    let san = emu.join("sanitize.cpp");
    let (san_o, test_o, exe) = (dir.join("sanitize.o"), dir.join(format!("{name}.o")), dir.join(name));
    std::fs::create_dir_all(dir).unwrap();
    gxx(&["-std=c++17", "-O2", "-fPIC", "-Wall", "-Wextra", "-c", "-o", san_o.to_str().unwrap()], &[&san], &san);
    let kernel_flags = ["-std=c++17", "-O2", "-ffp-contract=off", "-fno-tree-vectorize", "-Wall", "-Wextra", "-fsanitize=thread", "--param=tsan-instrument-func-entry-exit=0", "-Wno-tsan"];
    let mut args: Vec<&str> = kernel_flags.to_vec();
    args.extend(["-c", "-o", test_o.to_str().unwrap()]);
    gxx(&args, &[&src], &src);
    gxx(&["-Wl,-z,defs", "-o", exe.to_str().unwrap(), test_o.to_str().unwrap(), san_o.to_str().unwrap(), "-lboost_context"], &[], &src);
    exe
}

/// Runs `exe` with `args` and extra environment; returns (success, stdout + stderr).
pub fn run(exe: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(exe).args(args).envs(env.iter().copied()).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}
