//! The emulated device's sanitizers (kernels/emu/sanitize.h) proven by planted bugs (issue #14
//! item 6): kernels/emu/tests/sanitize_test.cpp runs small kernels, each correct (must pass) and
//! with one bug (must fail with the right report: a missing __syncthreads before a tile is
//! reused, an off-by-one store past an allocation, a wrong ldmatrix lane address, a read of a
//! cp.async destination before its wait, a barrier in divergent code, and more); then again
//! with STIC_CUDA_EMU_SANITIZE=0, where the checks must be off. Built like the kernels
//! (tests/emu_cxx); a missing g++ or Boost.Context is a failure, never a skip.

mod emu_cxx;

#[test]
fn planted_bugs_are_reported_and_correct_kernels_pass() {
    let dir = std::env::temp_dir().join(format!("stic-emu-san-{}", std::process::id()));
    let exe = emu_cxx::build("sanitize_test", &dir);
    // Several OS threads even on a 1-core runner: the block pool is part of what is tested.
    let (ok, out) = emu_cxx::run(&exe, &[], &[("STIC_CUDA_EMU_THREADS", "3")]);
    println!("{out}");
    assert!(ok, "kernels/emu/tests/sanitize_test.cpp failed:\n{out}");
    assert!(out.contains(" checks, 0 failures") && out.contains("missing __syncthreads before a tile is reused reported"), "no summary line:\n{out}");
    let (ok, off) = emu_cxx::run(&exe, &["off"], &[("STIC_CUDA_EMU_SANITIZE", "0")]);
    println!("{off}");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok && off.contains(" checks, 0 failures") && off.contains("off-by-one store, sanitizer off passes"), "STIC_CUDA_EMU_SANITIZE=0 run failed:\n{off}");
}
