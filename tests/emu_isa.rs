//! The emulated CUDA device's unit tests (kernels/emu/tests/isa_test.cpp: fibers, barriers, warp
//! collectives, bf16/half, mma, ldmatrix, cp.async, atomics, written from the PTX ISA's tables),
//! compiled with the host's g++ like the kernels (instrumented for the sanitizer, linked with
//! kernels/emu/sanitize.cpp and Boost.Context: tests/emu_cxx) and run. Needs no CUDA toolkit; a
//! missing g++ or Boost.Context is a failure, never a skip.

mod emu_cxx;

#[test]
fn emulated_device_matches_the_isa_tables() {
    let dir = std::env::temp_dir().join(format!("stic-emu-isa-{}", std::process::id()));
    let exe = emu_cxx::build("isa_test", &dir);
    let (ok, out) = emu_cxx::run(&exe, &[], &[]);
    println!("{out}");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok, "kernels/emu/tests/isa_test.cpp failed:\n{out}");
    assert!(out.contains(" checks, 0 failures"), "no summary line:\n{out}");
}
