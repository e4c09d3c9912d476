//! The vector unit's fused multiply-add peak on one core, to read `linear_speed` against:
//! 24 independent chains of `mul_add` on registers (no memory), compiled for the best
//! instruction set pulp finds, as `linear`'s micro-kernel is. Prints GFLOP per second of
//! wall time and per second of the thread's CPU time (Linux schedstat), which holds still
//! on a machine shared with other work. `fma_peak [SECONDS]`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use tokio::time::Instant;

/// Independent accumulators: enough to cover the FMA latency times the FMA ports.
const CHAINS: usize = 24;

struct Peak {
    iters: u64,
}

impl pulp::WithSimd for Peak {
    type Output = f32;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) -> f32 {
        let a = std::hint::black_box(simd.splat_f32s(1.000_01));
        let b = std::hint::black_box(simd.splat_f32s(0.999_99));
        let mut acc = [simd.splat_f32s(0.0); CHAINS];
        for _ in 0..self.iters {
            for x in acc.iter_mut() {
                *x = simd.mul_add_e_f32s(a, b, *x);
            }
        }
        let mut sum = simd.splat_f32s(0.0);
        for x in acc {
            sum = simd.add_f32s(sum, x);
        }
        simd.reduce_sum_f32s(sum)
    }
}

/// Lanes of an `f32` vector at the level pulp picks.
struct Lanes;

impl pulp::WithSimd for Lanes {
    type Output = usize;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) -> usize {
        S::F32_LANES
    }
}

/// This thread's CPU time so far, in seconds (0 where Linux's schedstat is missing).
fn cpu_s() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |ns| ns / 1e9)
}

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .map_or(1.0, |s| s.parse().expect("SECONDS"));
    let arch = pulp::Arch::new();
    let lanes = arch.dispatch(Lanes);
    println!(
        "kernels: {}, {lanes} f32 lanes",
        sluice_kernels::cpu_kernels()
    );
    // Calibrate: iterations per second, then rounds of about `seconds / 4`.
    let iters = 10_000_000u64;
    let start = Instant::now();
    std::hint::black_box(arch.dispatch(Peak { iters }));
    let per_s = iters as f64 / start.elapsed().as_secs_f64();
    for _ in 0..4 {
        let iters = (per_s * seconds / 4.0) as u64;
        let (wall, cpu) = (Instant::now(), cpu_s());
        std::hint::black_box(arch.dispatch(Peak { iters }));
        let (wall, cpu) = (wall.elapsed().as_secs_f64(), cpu_s() - cpu);
        let flops = (iters * (CHAINS * lanes * 2) as u64) as f64;
        println!(
            "{:7.1} GFLOP/s, {:7.1} GFLOP/cpu-s",
            flops / wall / 1e9,
            flops / cpu / 1e9
        );
    }
}
