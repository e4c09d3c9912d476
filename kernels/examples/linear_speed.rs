//! GFLOP/s of `sluice_kernels::linear` on MiniLM's shapes (m tokens x n outputs x k
//! inputs), for tuning the micro-kernel: `linear_speed [SECONDS_PER_SHAPE]`. Thread count
//! from `RAYON_NUM_THREADS`. Besides wall-clock GFLOP/s it prints GFLOP per second of CPU
//! time the process's threads got (Linux: `/proc/self/task/*/schedstat`), which holds
//! still on a machine shared with other work where the wall-clock rate does not.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use sluice_kernels::{Epilogue, PackedMatrix, linear};
use tokio::time::Instant;

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .map_or(1.0, |s| s.parse().expect("SECONDS"));
    println!("kernels: {}", sluice_kernels::cpu_kernels());
    // One sentence (14 tokens) and a batch of 32; QKV, attention output, intermediate, output.
    for m in [14usize, 448] {
        for (n, k, epilogue) in [
            (1152, 384, Epilogue::Bias),
            (384, 384, Epilogue::Bias),
            (1536, 384, Epilogue::BiasGelu),
            (384, 1536, Epilogue::Bias),
        ] {
            let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
            let bias = vec![0.1f32; n];
            let packed = PackedMatrix::pack(&w, n, k);
            let mut out = vec![0f32; m * n];
            let cpu = cpu_ns();
            let start = Instant::now();
            let mut calls = 0u64;
            while start.elapsed() < Duration::from_secs_f64(seconds) {
                linear(&x, &packed, &bias, epilogue, &mut out);
                calls += 1;
            }
            let wall = start.elapsed().as_secs_f64();
            let cpu = (cpu_ns() - cpu) as f64 / 1e9;
            let flops = 2.0 * (m * n * k) as f64 * calls as f64;
            println!(
                "m={m:>4} n={n:>5} k={k:>5} {epilogue:?}: {:7.1} GFLOP/s, {:8.1} us/call, {:7.1} GFLOP/cpu-s",
                flops / wall / 1e9,
                wall * 1e6 / calls as f64,
                flops / cpu / 1e9
            );
        }
    }
}

/// CPU time of all the process's threads so far, in nanoseconds (0 where Linux's
/// schedstat is missing).
fn cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}
