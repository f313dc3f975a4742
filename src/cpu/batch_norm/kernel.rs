//! Training-mode batch normalization (optionally followed by ReLU) on `f32` NCHW slices:
//! two passes forward (statistics, then the normalized output), two backward (the two
//! per-channel sums, then the input gradient).
//!
//! burn's generic batch norm swaps the batch and channel axes and makes them contiguous for
//! every mean (two copies forward, two backward) and builds the rest from ~10 whole-tensor
//! elementwise operations, each a pass over memory with a fresh allocation; with ReLU after
//! it, two more. Here each pass reads the planes where they lie.

use rayon::prelude::*;

use super::super::fill;

/// `[n, c, h·w]` of the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planes {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
}

impl Planes {
    fn len(&self) -> usize {
        self.n * self.c * self.hw
    }
    /// Values per channel.
    fn m(&self) -> f64 {
        (self.n * self.hw) as f64
    }
    /// The `hw` values of image `i`, channel `ch`.
    fn plane<'a>(&self, t: &'a [f32], i: usize, ch: usize) -> &'a [f32] {
        let s = (i * self.c + ch) * self.hw;
        &t[s..s + self.hw]
    }
}

/// Σ f(a_k, b_k) over two equal-length slices with eight independent f32 accumulators (so
/// the loop vectorises), the total in f64: a plane is at most a few thousand values, and the
/// channel sum adds the planes in f64.
#[inline(always)]
fn plane_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (a8, b8) in ac.zip(bc) {
        for j in 0..8 {
            acc[j] += f(a8[j], b8[j]);
        }
    }
    let mut s: f64 = acc.iter().map(|&v| v as f64).sum();
    for (&a, &b) in ar.iter().zip(br) {
        s += f(a, b) as f64;
    }
    s
}

/// Batch statistics per channel: mean and biased variance (what burn's `batch_norm_train`
/// returns and feeds the running averages), the variance from a second pass around the mean.
pub fn stats(x: &[f32], p: Planes) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(x.len(), p.len());
    let per: Vec<(f32, f32)> = (0..p.c)
        .into_par_iter()
        .map(|ch| {
            let mean = (0..p.n)
                .map(|i| {
                    let v = p.plane(x, i, ch);
                    plane_sum(v, v, |a, _| a)
                })
                .sum::<f64>()
                / p.m();
            let m32 = mean as f32;
            let var = (0..p.n)
                .map(|i| {
                    let v = p.plane(x, i, ch);
                    plane_sum(v, v, |a, _| (a - m32) * (a - m32))
                })
                .sum::<f64>()
                / p.m();
            (m32, var as f32)
        })
        .collect();
    per.into_iter().unzip()
}

fn inv_std(var: f32, epsilon: f64) -> f32 {
    (1.0 / (var as f64 + epsilon).sqrt()) as f32
}

/// Channel `ch`'s `(a, b)` with `γ·(x − mean)/√(var + ε) + β = a·x + b`.
pub fn affine([gamma, beta, mean, var]: [&[f32]; 4], epsilon: f64, ch: usize) -> (f32, f32) {
    let a = gamma[ch] * inv_std(var[ch], epsilon);
    (a, beta[ch] - mean[ch] * a)
}

/// `y = γ·(x − mean)/√(var + ε) + β`, then `max(y, 0)` if `relu`.
pub fn normalize(x: &[f32], p: Planes, stats: [&[f32]; 4], epsilon: f64, relu: bool) -> Vec<f32> {
    assert_eq!(x.len(), p.len());
    fill::build(
        p.len(),
        p.hw,
        true,
        || (),
        |_, i, y| {
            let ab = affine(stats, epsilon, i % p.c);
            y.affine_rows(&x[i * p.hw..(i + 1) * p.hw], p.hw, |_| ab, relu)
        },
    )
}

/// `(Σ g, Σ g·(x − m))` over one plane: both sums in one pass, each with [`plane_sum`]'s
/// eight f32 lanes, its order and its f64 total.
#[inline(always)]
fn grad_sums(g: &[f32], x: &[f32], m: f32) -> (f64, f64) {
    assert_eq!(g.len(), x.len());
    let (mut ag, mut agx) = ([0f32; 8], [0f32; 8]);
    let (gc, xc) = (g.chunks_exact(8), x.chunks_exact(8));
    let (gr, xr) = (gc.remainder(), xc.remainder());
    for (g8, x8) in gc.zip(xc) {
        // Fixed-size arrays: no bounds checks, so the lanes vectorise.
        let g8: &[f32; 8] = g8.try_into().expect("8 values");
        let x8: &[f32; 8] = x8.try_into().expect("8 values");
        for j in 0..8 {
            ag[j] += g8[j];
            agx[j] += g8[j] * (x8[j] - m);
        }
    }
    let lanes = |a: [f32; 8]| a.iter().map(|&v| v as f64).sum::<f64>();
    let (mut sg, mut sgx) = (lanes(ag), lanes(agx));
    for (&g, &x) in gr.iter().zip(xr) {
        sg += g as f64;
        sgx += (g * (x - m)) as f64;
    }
    (sg, sgx)
}

/// ReLU's mask on the upstream gradient `dy` at input `x`: `dy` where the forward's
/// output `max(x·a + b, 0)` ([`normalize`]'s, with the same `(a, b)`) is positive, that is
/// where `x·a + b > 0`, computed as it computed it. A bit mask rather than a select, which
/// compiled to a branch per lane.
#[inline(always)]
fn relu_gate(dy: f32, x: f32, (a, b): (f32, f32)) -> f32 {
    let open = x * a + b > 0.0;
    f32::from_bits(dy.to_bits() & 0u32.wrapping_sub(u32::from(open)))
}

/// The gradients of [`normalize`] with the batch's own statistics: `(dx, dγ, dβ)`. With
/// ReLU (`beta` given), the upstream gradient is masked where the forward clipped, found
/// again from `x`: reading the forward's output for it was two of the seven passes over
/// memory (`BENCHMARKS.md`). Two passes over the planes: the per-channel sums, then `dx`,
/// each reading `dy` and `x` once.
pub fn backward(
    x: &[f32],
    dy: &[f32],
    p: Planes,
    [gamma, mean, var]: [&[f32]; 3],
    beta: Option<&[f32]>,
    epsilon: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    assert_eq!(x.len(), p.len());
    assert_eq!(dy.len(), p.len());
    // The forward's `(a, b)` per channel where it ended in ReLU.
    let ab = |ch: usize| beta.map(|beta| affine([gamma, beta, mean, var], epsilon, ch));
    // Per channel: Σ g and Σ g·(x − mean).
    let sums: Vec<(f64, f64)> = (0..p.c)
        .into_par_iter()
        .map_init(Vec::new, |gated: &mut Vec<f32>, ch| {
            let ab = ab(ch);
            (0..p.n).fold((0.0, 0.0), |(sg, sgx), i| {
                let (dy, x, m) = (p.plane(dy, i, ch), p.plane(x, i, ch), mean[ch]);
                let (g, gx) = match ab {
                    // The masked plane first, into a buffer that stays in L1: with the
                    // mask inside the sums' loop, LLVM made each lane's masked add a
                    // branch, and inside NIN-96 training steps these sums took twice the
                    // time of the old code's (which read the forward's output), though
                    // the kernel had looked faster timed alone (`BENCHMARKS.md`).
                    Some(ab) => {
                        gated.clear();
                        gated.extend(dy.iter().zip(x).map(|(&d, &x)| relu_gate(d, x, ab)));
                        grad_sums(gated, x, m)
                    }
                    None => grad_sums(dy, x, m),
                };
                (sg + g, sgx + gx)
            })
        })
        .collect();
    let m = p.m();
    let dx = fill::build(
        p.len(),
        p.hw,
        true,
        || (),
        |_, i, dx| {
            let (img, ch) = (i / p.c, i % p.c);
            let (xv, dyv) = (p.plane(x, img, ch), p.plane(dy, img, ch));
            let is = inv_std(var[ch], epsilon);
            let (sg, sgx) = sums[ch];
            // dx = γ·is·(g − Σg/m − (x − mean)·is²·Σg(x − mean)/m)
            let a = gamma[ch] * is;
            let c0 = (sg / m) as f32;
            let c1 = (sgx / m) as f32 * is * is;
            let mu = mean[ch];
            match ab(ch) {
                Some(ab) => dx.map2(dyv, xv, |d, x| {
                    a * (relu_gate(d, x, ab) - c0 - (x - mu) * c1)
                }),
                None => dx.map2(dyv, xv, |g, x| a * (g - c0 - (x - mu) * c1)),
            }
        },
    );
    let dgamma = sums
        .iter()
        .zip(var)
        .map(|(&(_, sgx), &v)| sgx as f32 * inv_std(v, epsilon))
        .collect();
    let dbeta = sums.iter().map(|&(sg, _)| sg as f32).collect();
    (dx, dgamma, dbeta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_and_output_by_hand() {
        // n = 2, c = 1, hw = 2: values 1, 3 | 5, 7 → mean 4, biased var (9+1+1+9)/4 = 5.
        let p = Planes { n: 2, c: 1, hw: 2 };
        let x = [1.0, 3.0, 5.0, 7.0];
        let (mean, var) = stats(&x, p);
        assert_eq!((mean[0], var[0]), (4.0, 5.0));
        // γ = 2, β = 1, ε = 0 → y = 2·(x − 4)/√5 + 1; with ReLU the two below 0 clip.
        let s = 5f32.sqrt();
        let y = normalize(&x, p, [&[2.0], &[1.0], &mean, &var], 0.0, false);
        let want = [-6.0 / s + 1.0, -2.0 / s + 1.0, 2.0 / s + 1.0, 6.0 / s + 1.0];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6);
        }
        let y = normalize(&x, p, [&[2.0], &[1.0], &mean, &var], 0.0, true);
        assert_eq!(y[0], 0.0);
        assert!(y[1] > 0.0 || want[1] <= 0.0);
    }

    #[test]
    fn channels_are_separate() {
        // n = 1, c = 2, hw = 3: channel 0 = 0,1,2 (mean 1), channel 1 = 10,10,10 (var 0).
        let p = Planes { n: 1, c: 2, hw: 3 };
        let (mean, var) = stats(&[0.0, 1.0, 2.0, 10.0, 10.0, 10.0], p);
        assert_eq!(mean, vec![1.0, 10.0]);
        assert!((var[0] - 2.0 / 3.0).abs() < 1e-7);
        assert_eq!(var[1], 0.0);
    }

    /// The backward's ReLU mask, found again from `x`, is the forward's: with ReLU it gives
    /// bit for bit what it gives without on the upstream gradient zeroed where the forward's
    /// output is not positive. On planes of 19 values (two lanes of 8 and a remainder), with
    /// values on both sides of the clip, exactly on it (β = 0 and x the mean: output 0), a
    /// plane constant but for its first value, and a channel whose statistics are NaN (one
    /// NaN input: its outputs all clip).
    #[test]
    fn the_relu_mask_is_the_forwards() {
        let p = Planes { n: 3, c: 4, hw: 19 };
        let mut x: Vec<f32> = (0..p.len())
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        // Channel 2: a constant plane in image 0 (its first value becomes the mean below).
        // Channel 1: one NaN, in image 2.
        x[2 * p.hw..3 * p.hw].fill(0.75);
        x[(2 * p.c + 1) * p.hw + 5] = f32::NAN;
        let dy: Vec<f32> = (0..p.len())
            .map(|i| ((i * 53 % 19) as f32 - 9.0) / 5.0)
            .collect();
        let gamma = [1.5f32, -0.7, 0.3, 2.0];
        let eps = 1e-5;
        for beta in [[0.0f32; 4], [0.2, -0.4, 0.0, 1.0]] {
            let (m, v) = stats(&x, p);
            // The mean itself in every channel: `x·a + b` is then (about) β, and exactly 0
            // where β is 0 (`b = β − mean·a`, the same rounded product).
            for ch in 0..p.c {
                x[ch * p.hw] = m[ch];
            }
            let y = normalize(&x, p, [&gamma, &beta, &m, &v], eps, true);
            let clipped = y.iter().filter(|&&y| y <= 0.0 || y.is_nan()).count();
            assert!(
                clipped > p.len() / 4 && clipped < 3 * p.len() / 4,
                "{clipped} clipped"
            );
            let gated: Vec<f32> = dy
                .iter()
                .zip(&y)
                .map(|(&d, &y)| if y > 0.0 { d } else { 0.0 })
                .collect();
            let with = backward(&x, &dy, p, [&gamma, &m, &v], Some(&beta), eps);
            let without = backward(&x, &gated, p, [&gamma, &m, &v], None, eps);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&with.0), bits(&without.0), "dx, β {beta:?}");
            assert_eq!(bits(&with.1), bits(&without.1), "dγ, β {beta:?}");
            assert_eq!(bits(&with.2), bits(&without.2), "dβ, β {beta:?}");
        }
    }

    /// Gradients against central differences of L = Σ r·y on a small random case.
    #[test]
    fn gradients_match_finite_differences() {
        let p = Planes { n: 3, c: 2, hw: 5 };
        let x: Vec<f32> = (0..p.len())
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let r: Vec<f32> = (0..p.len())
            .map(|i| ((i * 53 % 19) as f32 - 9.0) / 5.0)
            .collect();
        let gamma = [1.5f32, -0.7];
        let beta = [0.2f32, 0.4];
        let eps = 1e-5;
        for relu in [false, true] {
            let loss = |x: &[f32], gamma: &[f32], beta: &[f32]| -> f64 {
                let (m, v) = stats(x, p);
                let y = normalize(x, p, [gamma, beta, &m, &v], eps, relu);
                y.iter().zip(&r).map(|(a, b)| (a * b) as f64).sum()
            };
            let (m, v) = stats(&x, p);
            let (dx, dg, db) = backward(&x, &r, p, [&gamma, &m, &v], relu.then_some(&beta), eps);
            let h = 1e-2f32;
            for i in 0..x.len() {
                let (mut a, mut b) = (x.clone(), x.clone());
                a[i] += h;
                b[i] -= h;
                let fd = (loss(&a, &gamma, &beta) - loss(&b, &gamma, &beta)) / (2.0 * h as f64);
                assert!(
                    (dx[i] as f64 - fd).abs() < 2e-2,
                    "dx[{i}] relu={relu}: {} vs {fd}",
                    dx[i]
                );
            }
            for ch in 0..2 {
                let (mut a, mut b) = (gamma, gamma);
                a[ch] += h;
                b[ch] -= h;
                let fd = (loss(&x, &a, &beta) - loss(&x, &b, &beta)) / (2.0 * h as f64);
                assert!((dg[ch] as f64 - fd).abs() < 2e-2, "dγ[{ch}] relu={relu}");
                let (mut a, mut b) = (beta, beta);
                a[ch] += h;
                b[ch] -= h;
                let fd = (loss(&x, &gamma, &a) - loss(&x, &gamma, &b)) / (2.0 * h as f64);
                assert!((db[ch] as f64 - fd).abs() < 2e-2, "dβ[{ch}] relu={relu}");
            }
        }
    }
}
