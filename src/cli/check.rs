//! `stic check`: the CUDA kernels against the CPU reference (`backend::cuda::check`); without
//! `--features cuda` it only says how to rebuild.

use std::process::ExitCode;

use super::args::CheckArgs;

/// `stic check`: exit 0 all passed, 1 a failure, 2 no CUDA device, 3 no CUDA support built in.
#[cfg(feature = "cuda")]
pub fn check(a: &CheckArgs) -> ExitCode {
    use stic::backend::cuda::{check, cuda_available, CudaDevice};
    if a.list {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{:<12} {:<18} shape", "op", "kernel");
        for c in check::checks().iter().filter(|c| a.op.as_deref().is_none_or(|f| c.op == f || c.kernel == f)) {
            // A closed pipe (`| head`) just ends the listing.
            if writeln!(out, "{:<12} {:<18} {}", c.op, c.kernel, c.shape).is_err() {
                break;
            }
        }
        return ExitCode::SUCCESS;
    }
    if !cuda_available() {
        println!("skipped: no CUDA device");
        return ExitCode::from(2);
    }
    let dev = match CudaDevice::new(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match check::run_checks(&dev, a.seed, a.op.as_deref(), &mut std::io::stdout().lock()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(not(feature = "cuda"))]
pub fn check(_: &CheckArgs) -> ExitCode {
    eprintln!("error: `stic check` tests the CUDA kernels: rebuild with `cargo build --release --features cuda`");
    ExitCode::from(3)
}
