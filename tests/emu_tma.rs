//! The emulated sm_90 mbarrier and TMA (kernels/emu/sm90_tma.h) and the emulated
//! cuTensorMapEncodeTiled (kernels/emu/driver/tensormap.cpp, included by the test TU):
//! kernels/emu/tests/tma_test.cpp, written from the PTX ISA's mbarrier / cp.async.bulk.tensor
//! sections and the Driver API's requirements, built like tests/emu_isa.rs (instrumented, linked
//! with sanitize.cpp and Boost.Context: tests/emu_cxx) and run. It includes the planted bug "wrong
//! mbarrier parity" (caught as a read of pending bytes, or as a hang). Needs no CUDA toolkit; a
//! missing g++ or Boost.Context is a failure, never a skip.

mod emu_cxx;

#[test]
fn mbarrier_and_tma_follow_the_isa() {
    let dir = std::env::temp_dir().join(format!("stic-emu-tma-{}", std::process::id()));
    let exe = emu_cxx::build("tma_test", &dir);
    let (ok, out) = emu_cxx::run(&exe, &[], &[]);
    println!("{out}");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok, "kernels/emu/tests/tma_test.cpp failed:\n{out}");
    assert!(out.contains("tma_test: ") && out.contains(" checks, 0 failures"), "no summary line:\n{out}");
    assert!(out.contains("ok: wrong parity passes too early reported") && out.contains("ok: wrong parity hangs reported"), "the planted wrong-parity bug was not caught both ways:\n{out}");
}
