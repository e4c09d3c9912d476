//! sluice-kernels: the vectorized CPU kernels of the model server's transformer encoder.
//!
//! Owns the arithmetic of a BERT-style encoder on the CPU, fused so each pass reads its
//! input once: linear layers against weights packed once at load (bias and GELU in the
//! epilogue), embedding lookup with layer norm, residual + layer norm, multi-head
//! self-attention over unpadded sequences, and mean pooling. The kernels take and return
//! plain row-major `f32` slices.
//!
//! Each kernel is written once as plain loops shaped for the vectorizer (lane-wise
//! accumulators instead of serial reductions, polynomial `exp` and `erf` instead of libm
//! calls) and compiled for every instruction set `pulp` knows; the best one the CPU has
//! (AVX-512, AVX2 + FMA, or scalar) is chosen at run time, without `unsafe` here. Large
//! inputs are split across rayon's pool; small ones (one short sentence) stay on the
//! calling thread, where a hand-off would cost more than the work.
//!
//! Not here: loading weights, tokenization, the model around them (`sluice-model-server`).

/// Declares a kernel entry: a struct of the kernel's arguments whose `with_simd` (always
/// inlined into the function pulp compiled for the chosen instruction set) calls `$body`
/// directly, so `$body`'s loops are vectorized with that instruction set.
///
/// Why not a closure: `pulp::Arch::dispatch(|| ...)` compiles the closure as a function of
/// its own, without the target features, and calls it (measured here: the kernels ran
/// scalar SSE code). A direct call from `with_simd` to an `#[inline(always)]` function is
/// inlined.
macro_rules! kernel {
    ($name:ident<$lt:lifetime> { $($field:ident : $ty:ty),* $(,)? } => $body:path) => {
        struct $name<$lt> {
            $($field: $ty),*
        }

        impl<$lt> pulp::WithSimd for $name<$lt> {
            type Output = ();

            #[inline(always)]
            fn with_simd<S: pulp::Simd>(self, _simd: S) {
                $body($(self.$field),*)
            }
        }
    };
}

mod attention;
mod math;
mod matmul;
mod rows;

pub use attention::attention;
pub use matmul::{Epilogue, PackedMatrix, linear};
pub use rows::{OutOfRange, Table, embed_layer_norm, mean_pool, residual_layer_norm};

use std::fmt;

/// The instruction set the kernels run with on this CPU, and the CPU's features that
/// matter for inference (what an operator wants to see at start-up and in metadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuKernels {
    /// `x86-64-v4 (AVX-512)`, `x86-64-v3 (AVX2, FMA)` or `scalar`.
    pub level: &'static str,
    /// Detected features among AVX2, FMA, AVX-512F/BW/VNNI/BF16 and AMX.
    pub features: Vec<&'static str>,
}

impl fmt::Display for CpuKernels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.level)?;
        if !self.features.is_empty() {
            write!(f, "; cpu has {}", self.features.join(" "))?;
        }
        Ok(())
    }
}

/// What the kernels run with here, detected once per process (it reads `/proc/cpuinfo`,
/// and `GET /v2` reports it on every call).
pub fn cpu_kernels() -> &'static CpuKernels {
    static DETECTED: std::sync::OnceLock<CpuKernels> = std::sync::OnceLock::new();
    DETECTED.get_or_init(detect)
}

fn detect() -> CpuKernels {
    let level = match pulp::Arch::new() {
        #[cfg(target_arch = "x86_64")]
        pulp::Arch::V4(_) => "x86-64-v4 (AVX-512)",
        #[cfg(target_arch = "x86_64")]
        pulp::Arch::V3(_) => "x86-64-v3 (AVX2, FMA)",
        #[allow(unreachable_patterns)]
        _ => "scalar",
    };
    CpuKernels {
        level,
        features: detected_features(),
    }
}

#[cfg(target_arch = "x86_64")]
fn detected_features() -> Vec<&'static str> {
    let mut found = Vec::new();
    if std::arch::is_x86_feature_detected!("avx2") {
        found.push("avx2");
    }
    if std::arch::is_x86_feature_detected!("fma") {
        found.push("fma");
    }
    if std::arch::is_x86_feature_detected!("avx512f") {
        found.push("avx512f");
    }
    if std::arch::is_x86_feature_detected!("avx512bw") {
        found.push("avx512bw");
    }
    if std::arch::is_x86_feature_detected!("avx512vnni") {
        found.push("avx512vnni");
    }
    if std::arch::is_x86_feature_detected!("avx512bf16") {
        found.push("avx512bf16");
    }
    // AMX has no stable detection macro yet; Linux lists it among the CPU flags.
    if std::fs::read_to_string("/proc/cpuinfo")
        .is_ok_and(|info| info.split_whitespace().any(|flag| flag == "amx_tile"))
    {
        found.push("amx");
    }
    found
}

#[cfg(not(target_arch = "x86_64"))]
fn detected_features() -> Vec<&'static str> {
    Vec::new()
}

/// Work (multiply-adds or element operations) below which a kernel stays on the calling
/// thread: a rayon hand-off costs a few microseconds, as much as this much work.
const PARALLEL_MIN_WORK: usize = 1 << 18;

fn parallel(work: usize) -> bool {
    work >= PARALLEL_MIN_WORK && rayon::current_num_threads() > 1
}
