//! Multi-head self-attention over unpadded sequences.
//!
//! The batch arrives as the tokens of every sequence one after another (no padding), so a
//! token attends to exactly the tokens of its own sequence and no mask is needed: a batch
//! of one long and many short sentences costs what its tokens cost, not `rows x longest`.

use std::ops::Range;

use rayon::prelude::*;

use crate::math;

/// Self-attention for every sequence and head.
///
/// `qkv` holds one row of `3 * hidden` per token: the query, key and value projections side
/// by side (biases added), as one fused matrix product makes them. `seqs` are the token
/// ranges of the sequences. `out` receives one row of `hidden`
/// per token: the heads' contexts side by side, `softmax(q k^T / sqrt(d)) v` per head.
///
/// # Panics
/// If `hidden` does not split into `heads`, or the slices do not hold the sequences' rows.
pub fn attention(qkv: &[f32], hidden: usize, seqs: &[Range<usize>], heads: usize, out: &mut [f32]) {
    assert!(
        heads > 0 && hidden > 0 && hidden.is_multiple_of(heads),
        "attention: rows of {hidden} do not split into {heads} heads"
    );
    let tokens = out.len() / hidden;
    assert!(
        qkv.len() == tokens * 3 * hidden
            && out.len() == tokens * hidden
            && seqs.iter().all(|s| s.end <= tokens),
        "attention: sequences outside the {tokens} tokens"
    );
    let d = hidden / heads;
    let head = Head { qkv, hidden, d };
    let work: usize = seqs.iter().map(|s| s.len() * s.len() * d * 2 * heads).sum();
    let units = seqs
        .iter()
        .flat_map(|s| (0..heads).map(move |h| (s.clone(), h)));
    if crate::parallel(work) {
        let units: Vec<(Range<usize>, usize)> = units.collect();
        let contexts: Vec<Vec<f32>> = units
            .par_iter()
            .map(|(seq, h)| head.context(seq.clone(), *h))
            .collect();
        for ((seq, h), ctx) in units.iter().zip(&contexts) {
            head.scatter(seq.clone(), *h, ctx, out);
        }
    } else {
        for (seq, h) in units {
            let ctx = head.context(seq.clone(), h);
            head.scatter(seq, h, &ctx, out);
        }
    }
}

/// What every (sequence, head) unit reads.
struct Head<'a> {
    qkv: &'a [f32],
    hidden: usize,
    /// Width of one head.
    d: usize,
}

impl Head<'_> {
    /// One head's context for one sequence: `len x d`, row-major.
    fn context(&self, seq: Range<usize>, h: usize) -> Vec<f32> {
        let (hidden, d) = (self.hidden, self.d);
        let mut ctx = vec![0f32; seq.len() * d];
        pulp::Arch::new().dispatch(HeadContext {
            qkv: self.qkv,
            seq,
            h,
            hidden,
            d,
            ctx: &mut ctx,
        });
        ctx
    }

    /// Writes one head's context into its columns of `out`.
    fn scatter(&self, seq: Range<usize>, h: usize, ctx: &[f32], out: &mut [f32]) {
        let (hidden, d) = (self.hidden, self.d);
        for (t, ctx_row) in seq.zip(ctx.chunks_exact(d)) {
            out[t * hidden + h * d..t * hidden + (h + 1) * d].copy_from_slice(ctx_row);
        }
    }
}

kernel!(HeadContext<'a> {
    qkv: &'a [f32],
    seq: Range<usize>,
    h: usize,
    hidden: usize,
    d: usize,
    ctx: &'a mut [f32],
} => head_context);

/// One head's context for one sequence into `ctx` (`len x d`).
#[inline(always)]
fn head_context(
    qkv: &[f32],
    seq: Range<usize>,
    h: usize,
    hidden: usize,
    d: usize,
    ctx: &mut [f32],
) {
    let len = seq.len();
    let scale = 1.0 / (d as f32).sqrt();
    // Gather this head's slices: q scaled, k transposed (d x len) so each score
    // row is a run of multiply-adds over contiguous keys.
    let mut q = vec![0f32; len * d];
    let mut kt = vec![0f32; d * len];
    let mut v = vec![0f32; len * d];
    for (i, t) in seq.clone().enumerate() {
        let row = &qkv[t * 3 * hidden..(t + 1) * 3 * hidden];
        let (rq, rk, rv) = (
            &row[h * d..(h + 1) * d],
            &row[hidden + h * d..hidden + (h + 1) * d],
            &row[2 * hidden + h * d..2 * hidden + (h + 1) * d],
        );
        for ((o, x), c) in q[i * d..(i + 1) * d].iter_mut().zip(rq).zip(0..) {
            *o = x * scale;
            kt[c * len + i] = rk[c];
        }
        v[i * d..(i + 1) * d].copy_from_slice(rv);
    }
    let mut scores = vec![0f32; len];
    for (i, ctx_row) in ctx.chunks_exact_mut(d).enumerate() {
        scores.fill(0.0);
        for (qc, k_row) in q[i * d..(i + 1) * d].iter().zip(kt.chunks_exact(len)) {
            for (s, k) in scores.iter_mut().zip(k_row) {
                *s += qc * k;
            }
        }
        let top = math::max(&scores);
        for s in scores.iter_mut() {
            *s = math::exp(*s - top);
        }
        let inv = 1.0 / math::sum(&scores);
        for (p, v_row) in scores.iter().zip(v.chunks_exact(d)) {
            let p = p * inv;
            for (c, x) in ctx_row.iter_mut().zip(v_row) {
                *c += p * x;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Padded, masked attention the way the reference BERT computes it, in f64.
    fn reference(qkv: &[f32], seq: Range<usize>, heads: usize, hidden: usize) -> Vec<f64> {
        let d = hidden / heads;
        let at =
            |t: usize, part: usize, c: usize| f64::from(qkv[t * 3 * hidden + part * hidden + c]);
        let mut out = vec![0f64; seq.len() * hidden];
        for h in 0..heads {
            for (i, ti) in seq.clone().enumerate() {
                let scores: Vec<f64> = seq
                    .clone()
                    .map(|tj| {
                        (0..d)
                            .map(|c| at(ti, 0, h * d + c) * at(tj, 1, h * d + c))
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let top = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - top).exp()).collect();
                let z: f64 = exps.iter().sum();
                for c in 0..d {
                    out[i * hidden + h * d + c] = seq
                        .clone()
                        .zip(&exps)
                        .map(|(tj, e)| e / z * at(tj, 2, h * d + c))
                        .sum();
                }
            }
        }
        out
    }

    fn run(seqs: &[Range<usize>], heads: usize, hidden: usize) {
        let tokens = seqs.iter().map(|s| s.end).max().unwrap();
        let qkv: Vec<f32> = (0..tokens * 3 * hidden)
            .map(|i| ((i as f32) * 0.618).sin())
            .collect();
        let mut out = vec![f32::NAN; tokens * hidden];
        attention(&qkv, hidden, seqs, heads, &mut out);
        for seq in seqs {
            let want = reference(&qkv, seq.clone(), heads, hidden);
            let got = &out[seq.start * hidden..seq.end * hidden];
            for (g, w) in got.iter().zip(&want) {
                assert!((f64::from(*g) - w).abs() < 1e-5, "{g} vs {w} in {seq:?}");
            }
        }
    }

    #[test]
    fn matches_padded_reference_attention_for_sequences_of_different_lengths() {
        // A token never sees another sequence's tokens: each range is checked against the
        // reference computed on that range alone.
        run(&[0..1, 1..15, 15..18], 4, 32);
    }

    #[test]
    fn long_batches_take_the_parallel_path_and_agree() {
        // 2 x 120 tokens, 12 heads of 32: above the parallel threshold.
        run(&[0..120, 120..240], 12, 384);
    }
}
