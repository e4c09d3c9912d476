//! Branch-free scalar building blocks that the vectorizer turns into SIMD: `exp`, `erf`,
//! GELU, and reductions with one accumulator per lane (a serial float sum cannot be
//! vectorized without changing its rounding; a lane-wise one can).
//!
//! Everything here is `#[inline(always)]` so it is compiled inside the kernel that
//! `pulp` dispatched with the CPU's instruction set.

/// Lanes of the reduction accumulators: one AVX-512 register, two AVX2 ones.
pub(crate) const LANES: usize = 16;

/// `e^x` to about 2 ulp over the range softmax and GELU use (Cody-Waite range reduction
/// and a degree-6 polynomial); `x` is clamped to [-87, 88], so it never overflows to
/// infinity or falls into subnormals.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^n: n is within [-126, 127] after the clamp, a normal float's exponent.
    let bits = ((n as i32 + 127) << 23) as u32;
    p * f32::from_bits(bits)
}

/// The error function as a rational function of `x` clamped to [-4, 4] (beyond which
/// `erf` is +-1 in `f32`): an odd degree-13 numerator over an even degree-8 denominator,
/// the approximation Eigen and XLA use. One division and no `exp`, so the GELU epilogue
/// costs a few multiply-adds per element.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = x
        * (-1.609_603_3e-2
            + x2 * (-2.954_6e-3
                + x2 * (-7.349_906_3e-4
                    + x2 * (-5.692_506_4e-5
                        + x2 * (-2.101_024e-6 + x2 * (2.770_681_4e-8 + x2 * -2.726_142_3e-10))))));
    let q = -1.426_474e-2
        + x2 * (-7.373_329e-3
            + x2 * (-1.682_827e-3 + x2 * (-2.133_740_6e-4 + x2 * -1.456_607_2e-5)));
    p / q
}

/// GELU as BERT defines it: `x * Φ(x) = 0.5 x (1 + erf(x / √2))`.
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// Sum of `x`, accumulated lane by lane.
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (a, v) in acc.iter_mut().zip(chunk) {
            *a += v;
        }
    }
    let mut total: f32 = chunks.remainder().iter().sum();
    for a in acc {
        total += a;
    }
    total
}

/// Sum of `(x - mean)^2`, accumulated lane by lane.
#[inline(always)]
pub(crate) fn sum_sq_dev(x: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (a, v) in acc.iter_mut().zip(chunk) {
            let d = v - mean;
            *a += d * d;
        }
    }
    let mut total: f32 = chunks
        .remainder()
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum();
    for a in acc {
        total += a;
    }
    total
}

/// Largest element of `x` (`-inf` for an empty slice), lane by lane.
#[inline(always)]
pub(crate) fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (a, v) in acc.iter_mut().zip(chunk) {
            *a = if *v > *a { *v } else { *a };
        }
    }
    let mut best = f32::NEG_INFINITY;
    for v in chunks.remainder().iter().chain(acc.iter()) {
        best = if *v > best { *v } else { best };
    }
    best
}

/// Layer norm of `x` into `out`: `(x - mean) / sqrt(var + eps) * gamma + beta`.
#[inline(always)]
pub(crate) fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len() as f32;
    let mean = sum(x) / n;
    let var = sum_sq_dev(x, mean) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for (((o, v), g), b) in out.iter_mut().zip(x).zip(gamma).zip(beta) {
        *o = (v - mean) * inv * g + b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libm's `erf`, for comparing against: the series is accurate to f64 for |x| < 3,
    /// where the approximation's error is largest.
    fn erf_reference(x: f64) -> f64 {
        if x.abs() > 4.0 {
            return x.signum();
        }
        let mut term = x;
        let mut total = x;
        let x2 = x * x;
        for n in 1..200 {
            term *= -x2 / n as f64;
            total += term / (2 * n + 1) as f64;
        }
        total * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn exp_matches_std_to_a_few_ulp() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = x.exp();
            let got = exp(x);
            let rel = ((got - want) / want).abs();
            assert!(rel < 5e-7, "exp({x}) = {got}, std says {want} (rel {rel})");
            x += 0.0137;
        }
        assert_eq!(exp(0.0), 1.0);
        // Clamped: no infinity, no NaN, no subnormal.
        assert!(exp(1000.0).is_finite());
        assert!(exp(-1000.0) > 0.0);
    }

    #[test]
    fn erf_and_gelu_are_close_to_the_exact_functions() {
        let mut x = -6.0f32;
        while x < 6.0 {
            let want = erf_reference(f64::from(x));
            let got = f64::from(erf(x));
            assert!((got - want).abs() < 5e-7, "erf({x}) = {got}, want {want}");
            let g = f64::from(gelu(x));
            let g_want = 0.5 * f64::from(x) * (1.0 + erf_reference(f64::from(x) / 2f64.sqrt()));
            assert!((g - g_want).abs() < 1e-6, "gelu({x}) = {g}, want {g_want}");
            x += 0.0071;
        }
        assert_eq!(erf(0.0), 0.0);
    }

    #[test]
    fn reductions_agree_with_serial_ones() {
        let x: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let serial: f32 = x.iter().sum();
        assert!((sum(&x) - serial).abs() < 1e-5);
        let m = serial / 37.0;
        let serial_sq: f32 = x.iter().map(|v| (v - m) * (v - m)).sum();
        assert!((sum_sq_dev(&x, m) - serial_sq).abs() < 1e-5);
        assert_eq!(max(&x), x.iter().copied().fold(f32::NEG_INFINITY, f32::max));
        assert_eq!(max(&[]), f32::NEG_INFINITY);
    }
}
