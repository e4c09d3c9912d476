//! Row-wise kernels: each output row depends on one input row (and shared vectors), so a
//! large input splits into blocks of rows across the pool.

use std::ops::Range;

use rayon::prelude::*;

use crate::math;

/// Runs `f(first_row, rows_of_out)` over `out` (rows of `width`), in blocks across the pool
/// when `rows * width * cost` is large enough to pay for the hand-off.
fn for_row_blocks<F>(out: &mut [f32], width: usize, cost: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    let rows = out.len() / width.max(1);
    if width == 0 || rows == 0 {
        return;
    }
    if crate::parallel(rows * width * cost) {
        let block = rows.div_ceil(rayon::current_num_threads() * 4).max(1);
        out.par_chunks_mut(block * width)
            .enumerate()
            .for_each(|(i, chunk)| f(i * block, chunk));
    } else {
        f(0, out);
    }
}

/// `out = layer_norm(input + residual)` row by row (BERT's "add and norm"); all of
/// `input`, `residual` and `out` hold rows of `gamma.len()`.
///
/// # Panics
/// If the slices' lengths disagree.
pub fn residual_layer_norm(
    input: &[f32],
    residual: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: &mut [f32],
) {
    let width = gamma.len();
    assert!(
        input.len() == out.len()
            && residual.len() == out.len()
            && beta.len() == width
            && width > 0
            && out.len().is_multiple_of(width),
        "residual_layer_norm: mismatched lengths (rows of {width})"
    );
    for_row_blocks(out, width, 8, |first, out| {
        let range = first * width..first * width + out.len();
        let (input, residual) = (&input[range.clone()], &residual[range]);
        pulp::Arch::new().dispatch(AddNorm {
            out,
            input,
            residual,
            gamma,
            beta,
            eps,
            width,
        });
    });
}

kernel!(AddNorm<'a> {
    out: &'a mut [f32],
    input: &'a [f32],
    residual: &'a [f32],
    gamma: &'a [f32],
    beta: &'a [f32],
    eps: f32,
    width: usize,
} => add_norm_rows);

#[inline(always)]
fn add_norm_rows(
    out: &mut [f32],
    input: &[f32],
    residual: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    width: usize,
) {
    let mut sum = vec![0f32; width];
    for ((o_row, i_row), r_row) in out
        .chunks_exact_mut(width)
        .zip(input.chunks_exact(width))
        .zip(residual.chunks_exact(width))
    {
        for ((s, i), r) in sum.iter_mut().zip(i_row).zip(r_row) {
            *s = i + r;
        }
        math::layer_norm(&sum, gamma, beta, eps, o_row);
    }
}

/// A token id, position or type id outside its embedding table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutOfRange {
    /// `input_ids`, `position_ids` or `token_type_ids`.
    pub what: &'static str,
    /// The offending value.
    pub value: u32,
    /// The table's row count.
    pub rows: usize,
}

impl std::fmt::Display for OutOfRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} holds {}, outside the embedding table's {} rows",
            self.what, self.value, self.rows
        )
    }
}

impl std::error::Error for OutOfRange {}

/// An embedding table: `rows` of `width`, row-major.
#[derive(Debug, Clone, Copy)]
pub struct Table<'a> {
    /// The rows.
    pub data: &'a [f32],
    /// `input_ids`, `position_ids` or `token_type_ids`: what indexes it, for errors.
    pub indexed_by: &'static str,
}

/// BERT's embedding layer: `out[t] = layer_norm(word[ids[t]] + position[positions[t]] +
/// token_type[types[t]])`, for every token `t`; tables hold rows of `gamma.len()`.
///
/// # Errors
/// An index outside its table.
#[allow(clippy::too_many_arguments)]
pub fn embed_layer_norm(
    word: Table<'_>,
    position: Table<'_>,
    token_type: Table<'_>,
    ids: &[u32],
    positions: &[u32],
    types: &[u32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: &mut [f32],
) -> Result<(), OutOfRange> {
    let width = gamma.len();
    assert!(
        width > 0
            && beta.len() == width
            && out.len() == ids.len() * width
            && positions.len() == ids.len()
            && types.len() == ids.len(),
        "embed_layer_norm: mismatched lengths"
    );
    for (table, indices) in [(word, ids), (position, positions), (token_type, types)] {
        let rows = table.data.len() / width;
        if let Some(&value) = indices.iter().find(|&&i| i as usize >= rows) {
            return Err(OutOfRange {
                what: table.indexed_by,
                value,
                rows,
            });
        }
    }
    fn row(table: &[f32], i: u32, width: usize) -> &[f32] {
        let start = i as usize * width;
        &table[start..start + width]
    }
    // Once per batch, a small share of the time: plain loops, no dispatch.
    for_row_blocks(out, width, 8, |first, out| {
        let mut sum = vec![0f32; width];
        for (t, o_row) in out.chunks_exact_mut(width).enumerate() {
            let t = first + t;
            let (w, p, ty) = (
                row(word.data, ids[t], width),
                row(position.data, positions[t], width),
                row(token_type.data, types[t], width),
            );
            for (((s, a), b), c) in sum.iter_mut().zip(w).zip(p).zip(ty) {
                *s = a + b + c;
            }
            math::layer_norm(&sum, gamma, beta, eps, o_row);
        }
    });
    Ok(())
}

/// Mean of each sequence's rows of `hidden` (rows of `width`) into one row of `out`,
/// scaled to unit length with `normalize` (sentence-transformers' mean pooling).
///
/// # Panics
/// If a sequence reaches past `hidden` or `out` does not hold one row per sequence.
pub fn mean_pool(
    hidden: &[f32],
    width: usize,
    seqs: &[Range<usize>],
    normalize: bool,
    out: &mut [f32],
) {
    assert!(
        out.len() == seqs.len() * width && seqs.iter().all(|s| s.end * width <= hidden.len()),
        "mean_pool: sequences outside the hidden states"
    );
    // Once per batch, a small share of the time: plain loops, no dispatch.
    for (seq, o_row) in seqs.iter().zip(out.chunks_exact_mut(width)) {
        o_row.fill(0.0);
        for t in seq.clone() {
            for (o, h) in o_row.iter_mut().zip(&hidden[t * width..(t + 1) * width]) {
                *o += h;
            }
        }
        let count = (seq.len() as f32).max(1e-9);
        let mut scale = 1.0 / count;
        if normalize {
            let norm = math::sum_sq_dev(o_row, 0.0).sqrt() * scale;
            scale /= norm.max(1e-12);
        }
        for o in o_row.iter_mut() {
            *o *= scale;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer_norm_reference(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32) -> Vec<f32> {
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = x
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        x.iter()
            .zip(gamma)
            .zip(beta)
            .map(|((&v, &g), &b)| {
                ((f64::from(v) - mean) / (var + f64::from(eps)).sqrt() * f64::from(g)
                    + f64::from(b)) as f32
            })
            .collect()
    }

    fn pattern(n: usize, seed: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 + seed) * 0.731).sin() * 2.0)
            .collect()
    }

    #[test]
    fn add_and_norm_matches_a_plain_layer_norm_in_every_block_split() {
        let width = 384;
        // 700 rows pass the parallel threshold; 3 rows stay on the caller.
        for rows in [3usize, 700] {
            let (input, residual) = (pattern(rows * width, 1.0), pattern(rows * width, 2.0));
            let (gamma, beta) = (pattern(width, 4.0), pattern(width, 5.0));
            let mut out = vec![0f32; rows * width];
            residual_layer_norm(&input, &residual, &gamma, &beta, 1e-12, &mut out);
            for r in [0, rows / 2, rows - 1] {
                let x: Vec<f32> = (0..width)
                    .map(|c| input[r * width + c] + residual[r * width + c])
                    .collect();
                let want = layer_norm_reference(&x, &gamma, &beta, 1e-12);
                for (g, w) in out[r * width..(r + 1) * width].iter().zip(&want) {
                    assert!((g - w).abs() < 1e-4, "row {r}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn embeddings_sum_three_tables_and_refuse_an_id_outside_them() {
        let width = 4;
        let word = pattern(10 * width, 1.0);
        let position = pattern(5 * width, 2.0);
        let token_type = pattern(2 * width, 3.0);
        let (gamma, beta) = (vec![1.0; width], vec![0.0; width]);
        let table = |data, indexed_by| Table { data, indexed_by };
        let mut out = vec![0f32; 2 * width];
        embed_layer_norm(
            table(&word, "input_ids"),
            table(&position, "position_ids"),
            table(&token_type, "token_type_ids"),
            &[7, 2],
            &[0, 1],
            &[0, 1],
            &gamma,
            &beta,
            1e-12,
            &mut out,
        )
        .unwrap();
        let x: Vec<f32> = (0..width)
            .map(|c| word[2 * width + c] + position[width + c] + token_type[width + c])
            .collect();
        let want = layer_norm_reference(&x, &gamma, &beta, 1e-12);
        for (g, w) in out[width..].iter().zip(&want) {
            assert!((g - w).abs() < 1e-5);
        }
        let err = embed_layer_norm(
            table(&word, "input_ids"),
            table(&position, "position_ids"),
            table(&token_type, "token_type_ids"),
            &[7, 10],
            &[0, 1],
            &[0, 0],
            &gamma,
            &beta,
            1e-12,
            &mut out,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "input_ids holds 10, outside the embedding table's 10 rows"
        );
    }

    #[test]
    fn mean_pool_averages_each_sequence_and_normalizes() {
        let hidden = vec![1.0, 0.0, 3.0, 0.0, 0.0, 2.0];
        let mut out = vec![0f32; 4];
        mean_pool(&hidden, 2, &[0..2, 2..3], false, &mut out);
        assert_eq!(out, [2.0, 0.0, 0.0, 2.0]);
        mean_pool(&hidden, 2, &[0..2, 2..3], true, &mut out);
        assert_eq!(out, [1.0, 0.0, 0.0, 1.0]);
    }
}
