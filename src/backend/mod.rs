//! Ops. `cpu` is the reference implementation that every CUDA kernel is tested against; `cuda`
//! (feature `cuda`) holds the GPU kernels. One name per op everywhere: `backend::cpu::rmsnorm`,
//! `kernels/rmsnorm.cu`, `backend::cuda::rmsnorm`.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
