//! Matrix products against weights packed once, at load.
//!
//! A linear layer computes `x W^T` for a small, changing `x` (the batch's tokens) and a
//! fixed `W`. A general matmul (gemm, as candle calls it) re-packs `W` on every call: for
//! one short sentence (14 rows) the packing costs as much as the arithmetic. Here `W` is
//! packed at load into panels of [`NR`] output columns laid out `k`-major, so the
//! micro-kernel streams one panel with unit stride while [`MR`] rows of `x` are broadcast
//! from registers: `MR x NR` accumulators (12 AVX-512 registers) and one fused multiply-add
//! per accumulator per `k`. The epilogue adds the bias and, where asked, applies GELU
//! before the single store.

use rayon::prelude::*;

use crate::math;

/// Output columns per panel: two AVX-512 registers, four AVX2 ones.
const NR: usize = 32;
/// Rows of `x` per micro-kernel call.
const MR: usize = 6;
/// Rows per thread from which a product splits by rows rather than by panels.
const ROW_SPLIT_MIN: usize = 4 * MR;

/// A weight matrix `W` (`n` outputs x `k` inputs, row-major as linear layers store it),
/// packed for [`linear`].
#[derive(Clone)]
pub struct PackedMatrix {
    n: usize,
    k: usize,
    /// `ceil(n / NR)` panels of `k x NR`; columns past `n` are zero.
    panels: Vec<f32>,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedMatrix({} x {})", self.n, self.k)
    }
}

impl PackedMatrix {
    /// Packs `w`, `n` rows of `k`.
    ///
    /// # Panics
    /// If `w` does not hold `n * k` values.
    pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(
            w.len(),
            n * k,
            "PackedMatrix::pack: {} values for {n} x {k}",
            w.len()
        );
        let count = n.div_ceil(NR);
        let mut panels = vec![0f32; count * k * NR];
        for (p, panel) in panels.chunks_exact_mut(k * NR).enumerate() {
            for c in 0..NR.min(n - p * NR) {
                let row = &w[(p * NR + c) * k..(p * NR + c + 1) * k];
                for (kk, v) in row.iter().enumerate() {
                    panel[kk * NR + c] = *v;
                }
            }
        }
        Self { n, k, panels }
    }

    /// Output width.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input width.
    pub fn k(&self) -> usize {
        self.k
    }
}

/// What happens to each output after the product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    /// `x W^T + b`.
    Bias,
    /// `gelu(x W^T + b)` (BERT's intermediate layer).
    BiasGelu,
}

/// `out = epilogue(x W^T + bias)`: `x` holds rows of `w.k()`, `out` the same number of
/// rows of `w.n()`, `bias` is `w.n()` long.
///
/// # Panics
/// If the lengths disagree.
pub fn linear(x: &[f32], w: &PackedMatrix, bias: &[f32], epilogue: Epilogue, out: &mut [f32]) {
    let (n, k) = (w.n, w.k);
    assert!(
        k > 0 && x.len().is_multiple_of(k) && out.len() == x.len() / k * n && bias.len() == n,
        "linear: {} inputs, {} outputs for {n} x {k}",
        x.len(),
        out.len()
    );
    let m = x.len() / k;
    let panels = n.div_ceil(NR);
    let threads = rayon::current_num_threads();
    if !crate::parallel(m * n * k / 4) || panels < 2 {
        panel_range(x, m, w, bias, epilogue, 0..panels, out, n);
        return;
    }
    if m >= ROW_SPLIT_MIN * threads {
        // Enough rows: each task takes whole rows (a multiple of MR) and writes them in
        // place, streaming every panel.
        let rows = m.div_ceil(threads).div_ceil(MR) * MR;
        out.par_chunks_mut(rows * n)
            .zip(x.par_chunks(rows * k))
            .for_each(|(out, x)| {
                panel_range(x, x.len() / k, w, bias, epilogue, 0..panels, out, n);
            });
        return;
    }
    // Few rows (one short sentence): split the panels (column blocks) across the pool; each task fills its own columns
    // in a buffer of its own, copied into place after.
    let per_task = panels.div_ceil(threads).max(1);
    let parts: Vec<(usize, Vec<f32>)> = (0..panels)
        .step_by(per_task)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|first| {
            let last = (first + per_task).min(panels);
            let width = (last * NR).min(n) - first * NR;
            let mut part = vec![0f32; m * width];
            panel_range(x, m, w, bias, epilogue, first..last, &mut part, width);
            (first * NR, part)
        })
        .collect();
    for (col, part) in parts {
        let width = part.len() / m;
        for (row, src) in part.chunks_exact(width).enumerate() {
            out[row * n + col..row * n + col + width].copy_from_slice(src);
        }
    }
}

/// Fills the columns of `panels` into `out` (rows of `stride`, starting at the first
/// panel's first column).
#[allow(clippy::too_many_arguments)]
fn panel_range(
    x: &[f32],
    m: usize,
    w: &PackedMatrix,
    bias: &[f32],
    epilogue: Epilogue,
    panels: std::ops::Range<usize>,
    out: &mut [f32],
    stride: usize,
) {
    pulp::Arch::new().dispatch(Panels {
        x,
        m,
        w,
        bias,
        epilogue,
        panels,
        out,
        stride,
    });
}

/// The arguments of [`panel_range`], handed to pulp.
struct Panels<'a> {
    x: &'a [f32],
    m: usize,
    w: &'a PackedMatrix,
    bias: &'a [f32],
    epilogue: Epilogue,
    panels: std::ops::Range<usize>,
    out: &'a mut [f32],
    stride: usize,
}

impl pulp::WithSimd for Panels<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let Panels {
            x,
            m,
            w,
            bias,
            epilogue,
            panels,
            out,
            stride,
        } = self;
        // Rows per block: MR x (NR / lanes) accumulators must fit the registers (12 of
        // AVX-512's 32; with AVX2's 16, three rows of four).
        let block = if NR / S::F32_LANES > 2 { 3 } else { MR };
        let first_col = panels.start * NR;
        for p in panels {
            let panel = &w.panels[p * w.k * NR..(p + 1) * w.k * NR];
            let cols = NR.min(w.n - p * NR);
            let bias = &bias[p * NR..p * NR + cols];
            let mut row = 0;
            while row < m {
                let rows = block.min(m - row);
                let x = &x[row * w.k..(row + rows) * w.k];
                let tile = Tile {
                    out: &mut *out,
                    stride,
                    row,
                    col: p * NR - first_col,
                    cols,
                    bias,
                    epilogue,
                };
                match rows {
                    6 => micro::<S, 6>(simd, x, w.k, panel, tile),
                    5 => micro::<S, 5>(simd, x, w.k, panel, tile),
                    4 => micro::<S, 4>(simd, x, w.k, panel, tile),
                    3 => micro::<S, 3>(simd, x, w.k, panel, tile),
                    2 => micro::<S, 2>(simd, x, w.k, panel, tile),
                    _ => micro::<S, 1>(simd, x, w.k, panel, tile),
                }
                row += rows;
            }
        }
    }
}

/// Where a micro-kernel's `R x NR` block goes.
struct Tile<'a> {
    out: &'a mut [f32],
    stride: usize,
    row: usize,
    col: usize,
    /// Valid columns of the panel (the last panel may be partial).
    cols: usize,
    bias: &'a [f32],
    epilogue: Epilogue,
}

/// Vector registers per panel row, at most: NR / lanes for AVX2 (8 lanes).
const MAX_VECTORS: usize = 4;

/// `R` rows of `x` times one panel, accumulated in vector registers (`mul_add_e`: fused
/// where the CPU has FMA), then the epilogue and one store.
#[inline(always)]
fn micro<S: pulp::Simd, const R: usize>(
    simd: S,
    x: &[f32],
    k: usize,
    panel: &[f32],
    tile: Tile<'_>,
) {
    let rows: [&[f32]; R] = std::array::from_fn(|r| &x[r * k..(r + 1) * k]);
    let (panel, _) = panel.as_chunks::<NR>();
    let mut acc = [[0f32; NR]; R];
    let vectors = NR / S::F32_LANES;
    if NR.is_multiple_of(S::F32_LANES) && vectors <= MAX_VECTORS {
        let zero = simd.splat_f32s(0.0);
        let mut vacc = [[zero; MAX_VECTORS]; R];
        for (kk, w) in panel.iter().enumerate().take(k) {
            let (wv, _) = S::as_simd_f32s(w);
            for (a, row) in vacc.iter_mut().zip(&rows) {
                let xv = simd.splat_f32s(row[kk]);
                for (a, w) in a.iter_mut().zip(wv).take(vectors) {
                    *a = simd.mul_add_e_f32s(xv, *w, *a);
                }
            }
        }
        for (dst, a) in acc.iter_mut().zip(&vacc) {
            let (dst, _) = S::as_mut_simd_f32s(dst);
            for (d, a) in dst.iter_mut().zip(a).take(vectors) {
                *d = *a;
            }
        }
    } else {
        // No vector unit (pulp's scalar level): plain multiply-adds.
        for (kk, w) in panel.iter().enumerate().take(k) {
            for (a, row) in acc.iter_mut().zip(&rows) {
                let xv = row[kk];
                for (a, w) in a.iter_mut().zip(w) {
                    *a += xv * w;
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let start = (tile.row + r) * tile.stride + tile.col;
        let dst = &mut tile.out[start..start + tile.cols];
        match tile.epilogue {
            Epilogue::Bias => {
                for ((d, a), b) in dst.iter_mut().zip(acc).zip(tile.bias) {
                    *d = a + b;
                }
            }
            Epilogue::BiasGelu => {
                for ((d, a), b) in dst.iter_mut().zip(acc).zip(tile.bias) {
                    *d = math::gelu(a + b);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], w: &[f32], bias: &[f32], n: usize, k: usize) -> Vec<f64> {
        let m = x.len() / k;
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = f64::from(bias[j])
                    + (0..k)
                        .map(|kk| f64::from(x[i * k + kk]) * f64::from(w[j * k + kk]))
                        .sum::<f64>();
            }
        }
        out
    }

    fn check(m: usize, n: usize, k: usize) {
        let x: Vec<f32> = (0..m * k).map(|i| ((i as f32) * 0.37).sin()).collect();
        let w: Vec<f32> = (0..n * k).map(|i| ((i as f32) * 0.11).cos()).collect();
        let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
        let packed = PackedMatrix::pack(&w, n, k);
        let want = reference(&x, &w, &bias, n, k);
        let mut out = vec![f32::NAN; m * n];
        linear(&x, &packed, &bias, Epilogue::Bias, &mut out);
        for (i, (g, r)) in out.iter().zip(&want).enumerate() {
            assert!(
                (f64::from(*g) - r).abs() < 1e-3 * (1.0 + r.abs()),
                "{m}x{n}x{k} [{i}]: {g} vs {r}"
            );
        }
        linear(&x, &packed, &bias, Epilogue::BiasGelu, &mut out);
        for (g, r) in out.iter().zip(&want) {
            let r = *r as f32;
            assert!((g - math::gelu(r)).abs() < 1e-3 * (1.0 + r.abs()));
        }
    }

    /// `x W^T + b` for `m x n x k` on one instruction-set level and on one thread,
    /// against the f64 reference: the AVX2 and scalar micro-kernels run nowhere else on
    /// an AVX-512 machine.
    fn check_on<S: pulp::Simd>(simd: S, m: usize, n: usize, k: usize) {
        let x: Vec<f32> = (0..m * k).map(|i| ((i as f32) * 0.37).sin()).collect();
        let w: Vec<f32> = (0..n * k).map(|i| ((i as f32) * 0.11).cos()).collect();
        let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
        let packed = PackedMatrix::pack(&w, n, k);
        let want = reference(&x, &w, &bias, n, k);
        for epilogue in [Epilogue::Bias, Epilogue::BiasGelu] {
            let mut out = vec![f32::NAN; m * n];
            simd.vectorize(Panels {
                x: &x,
                m,
                w: &packed,
                bias: &bias,
                epilogue,
                panels: 0..n.div_ceil(NR),
                out: &mut out,
                stride: n,
            });
            for (i, (g, r)) in out.iter().zip(&want).enumerate() {
                let r = match epilogue {
                    Epilogue::Bias => *r,
                    Epilogue::BiasGelu => f64::from(math::gelu(*r as f32)),
                };
                assert!(
                    (f64::from(*g) - r).abs() < 1e-3 * (1.0 + r.abs()),
                    "{m}x{n}x{k} {epilogue:?} [{i}]: {g} vs {r}"
                );
            }
        }
    }

    #[test]
    fn every_tile_height_matches_on_each_instruction_set() {
        // 1..=13 rows: each tile height of AVX-512 (6) and AVX2 (3) and a remainder after
        // full tiles; 40 and 70 columns leave partial panels; k = 1536 is MiniLM's widest.
        let mut shapes: Vec<(usize, usize, usize)> = (1..=13).map(|m| (m, 40, 9)).collect();
        shapes.extend([(7, 70, 193), (5, 32, 1536)]);
        for (m, n, k) in shapes {
            check_on(pulp::Scalar::new(), m, n, k);
            #[cfg(target_arch = "x86_64")]
            if let Some(simd) = pulp::x86::V3::try_new() {
                check_on(simd, m, n, k);
            }
            #[cfg(target_arch = "x86_64")]
            if let Some(simd) = pulp::x86::V4::try_new() {
                check_on(simd, m, n, k);
            }
        }
    }

    #[test]
    fn matches_a_plain_product_for_every_row_and_column_remainder() {
        // Rows 1..=7 cover each micro-kernel height and a second block; 40 and 70 columns
        // leave partial panels.
        for m in 1..=7 {
            check(m, 40, 9);
        }
        check(3, 70, 33);
    }

    #[test]
    fn large_products_split_across_the_pool_and_agree() {
        // Many rows: split by rows. Few rows, much work: split by panels.
        check(50, 200, 384);
        check(6, 1100, 384);
    }
}
