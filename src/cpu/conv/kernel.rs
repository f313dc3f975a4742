//! 2-D convolution on plain `f32` slices in NCHW layout: forward, input gradient and weight
//! gradient, each one GEMM per image on the `gemm` crate, parallel over the batch.
//!
//! Why not burn's path: Flex's forward converts every input to NHWC and its backward goes
//! through burn's generic transposes and `conv_transpose`, so a training step spent a third of
//! its time copying layouts (`BENCHMARKS.md`, profile). Here nothing is re-laid out: a 1×1
//! stride-1 convolution is a GEMM on the image as it lies (`W · x_n`), and the other shapes
//! unfold one image at a time into a buffer the worker thread keeps (im2col, rows ordered like
//! the weight's `[c, kh, kw]`), so the GEMMs read the weight and the gradients in place and
//! transposes are only strides.

use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use crate::cpu::fill::{self, Uninit, Written};

/// Shapes and hyper-parameters of one convolution (groups 1, dilation 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub batch: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: [usize; 2],
    pub pad: [usize; 2],
}

impl Geometry {
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad[0] - self.kh) / self.stride[0] + 1
    }
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad[1] - self.kw) / self.stride[1] + 1
    }
    fn out_hw(&self) -> usize {
        self.out_h() * self.out_w()
    }
    /// Rows of the unfolded image = columns of the weight matrix.
    fn k(&self) -> usize {
        self.c_in * self.kh * self.kw
    }
    fn in_len(&self) -> usize {
        self.c_in * self.h * self.w
    }
    fn out_len(&self) -> usize {
        self.c_out * self.out_hw()
    }
    /// The image itself is the unfolded matrix: no im2col needed.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == [1, 1] && self.pad == [0, 0]
    }
    /// Whether the shapes describe a convolution with at least one output position.
    pub fn valid(&self) -> bool {
        self.batch > 0
            && self.c_in > 0
            && self.c_out > 0
            && self.kh > 0
            && self.kw > 0
            && self.stride[0] > 0
            && self.stride[1] > 0
            && self.h + 2 * self.pad[0] >= self.kh
            && self.w + 2 * self.pad[1] >= self.kw
    }
}

/// Output positions `o` in `0..out` whose input index `o * stride + k - pad` falls inside
/// `0..size`, as a half-open range.
fn valid_range(size: usize, out: usize, stride: usize, k: usize, pad: usize) -> (usize, usize) {
    let lo = if k >= pad {
        0
    } else {
        (pad - k).div_ceil(stride)
    };
    let hi = if size + pad > k {
        (size + pad - k).div_ceil(stride)
    } else {
        0
    };
    let hi = hi.min(out);
    (lo.min(hi), hi)
}

/// Unfold one image `[c, h, w]` into `col` `[c·kh·kw, oh·ow]`; every entry is written.
fn im2col(x: &[f32], g: &Geometry, col: &mut [f32]) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let [sh, sw] = g.stride;
    let mut row = 0;
    for c in 0..g.c_in {
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ki in 0..g.kh {
            let (y0, y1) = valid_range(g.h, oh, sh, ki, g.pad[0]);
            for kj in 0..g.kw {
                let (x0, x1) = valid_range(g.w, ow, sw, kj, g.pad[1]);
                let dst = &mut col[row * oh * ow..(row + 1) * oh * ow];
                for oy in 0..oh {
                    let d = &mut dst[oy * ow..(oy + 1) * ow];
                    if oy < y0 || oy >= y1 {
                        d.fill(0.0);
                        continue;
                    }
                    let src = &plane[(oy * sh + ki - g.pad[0]) * g.w..][..g.w];
                    d[..x0].fill(0.0);
                    d[x1..].fill(0.0);
                    if sw == 1 {
                        let s0 = x0 + kj - g.pad[1];
                        d[x0..x1].copy_from_slice(&src[s0..s0 + (x1 - x0)]);
                    } else {
                        for (ox, v) in d[x0..x1].iter_mut().enumerate() {
                            *v = src[(x0 + ox) * sw + kj - g.pad[1]];
                        }
                    }
                }
                row += 1;
            }
        }
    }
}

/// Fold `col` `[c·kh·kw, oh·ow]` back onto one image `[c, h, w]`, adding overlaps (the adjoint
/// of [`im2col`]). `x` must start zeroed.
fn col2im(col: &[f32], g: &Geometry, x: &mut [f32]) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let [sh, sw] = g.stride;
    let mut row = 0;
    for c in 0..g.c_in {
        let plane = &mut x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ki in 0..g.kh {
            let (y0, y1) = valid_range(g.h, oh, sh, ki, g.pad[0]);
            for kj in 0..g.kw {
                let (x0, x1) = valid_range(g.w, ow, sw, kj, g.pad[1]);
                let src = &col[row * oh * ow..(row + 1) * oh * ow];
                for oy in y0..y1 {
                    let s = &src[oy * ow + x0..oy * ow + x1];
                    let dst = &mut plane[(oy * sh + ki - g.pad[0]) * g.w..][..g.w];
                    if sw == 1 {
                        let d0 = x0 + kj - g.pad[1];
                        for (d, v) in dst[d0..d0 + s.len()].iter_mut().zip(s) {
                            *d += v;
                        }
                    } else {
                        for (ox, v) in s.iter().enumerate() {
                            dst[(x0 + ox) * sw + kj - g.pad[1]] += v;
                        }
                    }
                }
                row += 1;
            }
        }
    }
}

/// A row-major matrix view for [`matmul`]: element (i, j) is at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
struct View {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

impl View {
    fn rows(s: &[f32], cols: usize) -> Self {
        Self {
            ptr: s.as_ptr(),
            rs: cols as isize,
            cs: 1,
        }
    }
    /// The transpose of a row-major `[rows, cols]` matrix.
    fn transposed(s: &[f32], cols: usize) -> Self {
        Self {
            ptr: s.as_ptr(),
            rs: 1,
            cs: cols as isize,
        }
    }
}

/// `dst = a · b` for square row-major `n × n` matrices on `threads` rayon threads: the
/// GEMM our convolutions run, alone, for `pretext bench`'s measure of the machine's peak.
pub fn square_product(n: usize, a: &[f32], b: &[f32], dst: &mut [f32], threads: usize) {
    assert!(a.len() >= n * n && b.len() >= n * n);
    let par = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    matmul(
        [n, n, n],
        dst,
        false,
        View::rows(a, n),
        View::rows(b, n),
        par,
    );
}

/// `dst[m, n] (+)= a[m, k] · b[k, n]`, `dst` row-major and contiguous.
fn matmul(
    [m, n, k]: [usize; 3],
    dst: &mut [f32],
    accumulate: bool,
    a: View,
    b: View,
    par: Parallelism,
) {
    assert!(dst.len() >= m * n);
    // SAFETY: `dst` holds m·n elements (checked above) and does not alias the inputs (it is a
    // `&mut`); every caller builds `a` and `b` from slices that hold the m·k and k·n elements
    // addressed by their strides.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.ptr,
            a.cs,
            a.rs,
            b.ptr,
            b.cs,
            b.rs,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// A worker's buffers, kept across the images of its share of the batch.
#[derive(Default)]
struct Scratch {
    /// The unfolded image.
    col: Vec<f32>,
    /// One image's GEMM output, before the affine map of [`forward_affine`].
    out: Vec<f32>,
}

/// A new output of `batch` chunks of `chunk` values, chunk `i` written by `f(i, the chunk,
/// scratch buffers, the GEMM's parallelism)`: in parallel over images when there are enough
/// of them to keep every thread busy, else one image at a time with the GEMM itself parallel.
fn per_image<F>(batch: usize, chunk: usize, f: F) -> Vec<f32>
where
    F: for<'a> Fn(usize, Uninit<'a>, &mut Scratch, Parallelism) -> Written<'a> + Sync + Send,
{
    let threads = rayon::current_num_threads();
    let parallel = threads > 1 && batch >= threads;
    let par = if !parallel && threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    fill::build(
        batch * chunk,
        chunk,
        parallel,
        Scratch::default,
        |buf, i, out| f(i, out, buf, par),
    )
}

/// `y = conv(x, weight)`: x `[n, c, h, w]`, weight `[o, c, kh, kw]` → y `[n, o, oh, ow]`.
pub fn forward(x: &[f32], weight: &[f32], g: &Geometry) -> Vec<f32> {
    assert_eq!(x.len(), g.batch * g.in_len());
    assert_eq!(weight.len(), g.c_out * g.k());
    per_image(g.batch, g.out_len(), |i, y_i, scratch, par| {
        let (y_i, written) = y_i.zeroed();
        image_product(x, weight, g, i, y_i, &mut scratch.col, par);
        written
    })
}

/// `out = W · unfold(x_i)`: image `i`'s convolution into `out` (`[c_out, oh·ow]`).
fn image_product(
    x: &[f32],
    weight: &[f32],
    g: &Geometry,
    i: usize,
    out: &mut [f32],
    col: &mut Vec<f32>,
    par: Parallelism,
) {
    let (ohw, k) = (g.out_hw(), g.k());
    let x_i = &x[i * g.in_len()..(i + 1) * g.in_len()];
    let rhs = if g.pointwise() {
        x_i
    } else {
        col.resize(k * ohw, 0.0);
        im2col(x_i, g, col);
        col
    };
    matmul(
        [g.c_out, ohw, k],
        out,
        false,
        View::rows(weight, k),
        View::rows(rhs, ohw),
        par,
    );
}

/// `y = act(a_o · conv(x, weight) + b_o)` for each output channel `o`, `(a_o, b_o) =
/// ab(o)`, `act` ReLU if `relu`: a convolution and the inference batch norm after it in one
/// pass per image. The GEMM writes into the worker's scratch, which the affine map reads
/// back while it is in cache, writing the output once: the unfused pair zero-fills the
/// convolution's output, writes it, and reads it back from memory for a second new tensor.
pub fn forward_affine(
    x: &[f32],
    weight: &[f32],
    g: &Geometry,
    ab: impl Fn(usize) -> (f32, f32) + Sync + Send,
    relu: bool,
) -> Vec<f32> {
    assert_eq!(x.len(), g.batch * g.in_len());
    assert_eq!(weight.len(), g.c_out * g.k());
    per_image(g.batch, g.out_len(), |i, y_i, scratch, par| {
        // Every value is written by the GEMM before it is read.
        scratch.out.resize(g.out_len(), 0.0);
        image_product(x, weight, g, i, &mut scratch.out, &mut scratch.col, par);
        y_i.affine_rows(&scratch.out, g.out_hw(), &ab, relu)
    })
}

/// `dL/dx` from `dL/dy`: per image `Wᵀ · dy_n`, folded back with [`col2im`].
pub fn grad_input(weight: &[f32], dy: &[f32], g: &Geometry) -> Vec<f32> {
    assert_eq!(dy.len(), g.batch * g.out_len());
    assert_eq!(weight.len(), g.c_out * g.k());
    let (ohw, k) = (g.out_hw(), g.k());
    per_image(g.batch, g.in_len(), |i, dx_i, scratch, par| {
        let col = &mut scratch.col;
        let (dx_i, written) = dx_i.zeroed();
        let dy_i = View::rows(&dy[i * g.out_len()..(i + 1) * g.out_len()], ohw);
        let wt = View::transposed(weight, k);
        if g.pointwise() {
            matmul([k, ohw, g.c_out], dx_i, false, wt, dy_i, par);
        } else {
            col.resize(k * ohw, 0.0);
            matmul([k, ohw, g.c_out], col, false, wt, dy_i, par);
            col2im(col, g, dx_i);
        }
        written
    })
}

/// `dL/dW` from `dL/dy`: `Σ_n dy_n · unfold(x_n)ᵀ`. The batch is split into one slice per
/// thread, each summing into its own copy of the gradient; the copies are added at the end.
pub fn grad_weight(x: &[f32], dy: &[f32], g: &Geometry) -> Vec<f32> {
    assert_eq!(x.len(), g.batch * g.in_len());
    assert_eq!(dy.len(), g.batch * g.out_len());
    let (ohw, k) = (g.out_hw(), g.k());
    let len = g.c_out * k;
    let threads = rayon::current_num_threads().max(1);
    let parts = threads.min(g.batch);
    let per = g.batch.div_ceil(parts);
    let inner = if parts == 1 && threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    let partial = |range: std::ops::Range<usize>| {
        let mut dw = vec![0.0; len];
        let mut col = Vec::new();
        for (j, i) in range.enumerate() {
            let x_i = &x[i * g.in_len()..(i + 1) * g.in_len()];
            let unfolded = if g.pointwise() {
                x_i
            } else {
                col.resize(k * ohw, 0.0);
                im2col(x_i, g, &mut col);
                &col
            };
            matmul(
                [g.c_out, k, ohw],
                &mut dw,
                j > 0,
                View::rows(&dy[i * g.out_len()..(i + 1) * g.out_len()], ohw),
                View::transposed(unfolded, ohw),
                inner,
            );
        }
        dw
    };
    let mut parts: Vec<Vec<f32>> = (0..parts)
        .into_par_iter()
        .map(|p| partial(p * per..((p + 1) * per).min(g.batch)))
        .collect();
    let mut dw = parts.swap_remove(0);
    for p in parts {
        for (a, b) in dw.iter_mut().zip(p) {
            *a += b;
        }
    }
    dw
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct 7-loop convolution, the definition itself.
    fn naive(x: &[f32], w: &[f32], g: &Geometry) -> Vec<f32> {
        let (oh, ow) = (g.out_h(), g.out_w());
        let mut y = vec![0.0; g.batch * g.out_len()];
        for n in 0..g.batch {
            for o in 0..g.c_out {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut s = 0.0;
                        for c in 0..g.c_in {
                            for ki in 0..g.kh {
                                for kj in 0..g.kw {
                                    let iy = (oy * g.stride[0] + ki) as isize - g.pad[0] as isize;
                                    let ix = (ox * g.stride[1] + kj) as isize - g.pad[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    s += x[((n * g.c_in + c) * g.h + iy as usize) * g.w
                                        + ix as usize]
                                        * w[((o * g.c_in + c) * g.kh + ki) * g.kw + kj];
                                }
                            }
                        }
                        y[((n * g.c_out + o) * oh + oy) * ow + ox] = s;
                    }
                }
            }
        }
        y
    }

    fn geometry(k: usize, stride: usize, pad: usize) -> Geometry {
        Geometry {
            batch: 3,
            c_in: 2,
            h: 5,
            w: 4,
            c_out: 3,
            kh: k,
            kw: k,
            stride: [stride, stride],
            pad: [pad, pad],
        }
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32 * 2654435761).wrapping_add(seed) >> 16) % 17) as f32 / 8.0 - 1.0)
            .collect()
    }

    #[test]
    fn a_known_3x3_sum_with_padding() {
        // All-ones 1×1×3×3 image and kernel, padding 1: each output sums the 3×3 window's
        // in-image cells: corners 4, edges 6, center 9.
        let g = Geometry {
            batch: 1,
            c_in: 1,
            h: 3,
            w: 3,
            c_out: 1,
            kh: 3,
            kw: 3,
            stride: [1, 1],
            pad: [1, 1],
        };
        let y = forward(&[1.0; 9], &[1.0; 9], &g);
        assert_eq!(y, vec![4., 6., 4., 6., 9., 6., 4., 6., 4.]);
    }

    /// (kernel, stride, padding) cases for the checks below.
    const CASES: [(usize, usize, usize); 7] = [
        (1, 1, 0),
        (1, 2, 0),
        (3, 1, 1),
        (3, 2, 1),
        (5, 1, 2),
        (2, 2, 0),
        (3, 1, 0),
    ];

    #[test]
    fn forward_matches_the_definition() {
        for (k, s, p) in CASES {
            let g = geometry(k, s, p);
            let x = values(g.batch * g.in_len(), 1);
            let w = values(g.c_out * g.k(), 2);
            let want = naive(&x, &w, &g);
            let got = forward(&x, &w, &g);
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "k{k} s{s} p{p}: {a} vs {b}");
            }
        }
    }

    /// Gradients by the adjoint identity: for L = Σ y·r (r random), dL/dx·e and dL/dW·e equal
    /// the forward's change along a unit direction e, computed exactly since conv is linear.
    #[test]
    fn gradients_are_the_adjoints_of_forward() {
        for (k, s, p) in CASES {
            let g = geometry(k, s, p);
            let x = values(g.batch * g.in_len(), 3);
            let w = values(g.c_out * g.k(), 4);
            let r = values(g.batch * g.out_len(), 5);
            let dx = grad_input(&w, &r, &g);
            let dw = grad_weight(&x, &r, &g);
            let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(a, b)| a * b).sum::<f32>();
            for i in 0..x.len() {
                let mut e = vec![0.0; x.len()];
                e[i] = 1.0;
                let want = dot(&naive(&e, &w, &g), &r);
                assert!((dx[i] - want).abs() < 1e-4, "dx k{k} s{s} p{p} at {i}");
            }
            for i in 0..w.len() {
                let mut e = vec![0.0; w.len()];
                e[i] = 1.0;
                let want = dot(&naive(&x, &e, &g), &r);
                assert!((dw[i] - want).abs() < 1e-4, "dw k{k} s{s} p{p} at {i}");
            }
        }
    }

    #[test]
    fn valid_ranges_by_hand() {
        // size 4, pad 1, stride 1, k offset 0: o=0 reads -1 (out), o=1..4 read 0..3.
        assert_eq!(valid_range(4, 4, 1, 0, 1), (1, 4));
        // k offset 2: o reads o+1; o=3 reads 4 (out).
        assert_eq!(valid_range(4, 4, 1, 2, 1), (0, 3));
        // stride 2, pad 1, k 0, size 5 → out 3: o=0 reads -1, o=1 → 1, o=2 → 3.
        assert_eq!(valid_range(5, 3, 2, 0, 1), (1, 3));
    }
}
