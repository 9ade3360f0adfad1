//! The emulated sm_90a warpgroup instructions' unit tests (kernels/emu/tests/wgmma_test.cpp:
//! wgmma.mma_async m64nNk16 bf16 SS/RS, the shared-memory descriptors in every swizzle mode,
//! the warpgroup fragments, scale-d, fence/commit/wait and the read-before-wait check,
//! setmaxnreg's register pool; planted bugs: a wrong swizzle mode, an accumulator read before
//! wgmma.wait_group), written from the PTX ISA's tables, built and run like tests/emu_isa.rs
//! (instrumented, sanitizer on). A missing g++ or Boost.Context is a failure, never a skip.

mod emu_cxx;

#[test]
fn emulated_wgmma_and_setmaxnreg_match_the_isa_tables() {
    let dir = std::env::temp_dir().join(format!("stic-emu-wgmma-{}", std::process::id()));
    let exe = emu_cxx::build("wgmma_test", &dir);
    let (ok, out) = emu_cxx::run(&exe, &[], &[]);
    println!("{out}");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok, "kernels/emu/tests/wgmma_test.cpp failed:\n{out}");
    assert!(out.contains(" checks, 0 failures"), "no summary line:\n{out}");
}
