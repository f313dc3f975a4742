//! 2-D convolution on plain `f32` slices in NCHW layout: forward, input gradient and weight
//! gradient, each one GEMM per image (per group of images where an image's output plane is
//! small, see [`MIN_COLUMNS`]), parallel over the batch. The forward and input-gradient
//! GEMMs run on our own ([`crate::cpu::gemm`], the weight packed once per batch) where the
//! CPU has AVX2 and FMA but no AVX-512 and the batch has enough output positions
//! ([`packs_weight`]), and so do the weight gradients of layers with enough output
//! channels ([`MIN_PACKED_GRAD_ROWS`]); the rest on the `gemm` crate.
//!
//! Why not burn's path: Flex's forward converts every input to NHWC and its backward goes
//! through burn's generic transposes and `conv_transpose`, so a training step spent a third of
//! its time copying layouts (`BENCHMARKS.md`, profile). Here nothing is re-laid out: a 1×1
//! stride-1 convolution is a GEMM on the image as it lies (`W · x_n`), and the other shapes
//! unfold one image (or group) at a time into a buffer the worker thread keeps (im2col, rows
//! ordered like the weight's `[c, kh, kw]`; on our GEMM, same-width convolutions are packed
//! from the images instead, [`Shifted`]), so the GEMMs read the weight and the gradients
//! in place, transposed by strides; only where a batch has many groups
//! ([`worth_transposing`]) is the weight copied transposed once per batch, and, on the
//! `gemm` crate, the weight gradient summed transposed and turned round once. Two shapes
//! take another road: kernels whose outer taps read only padding are cropped to the rest
//! ([`cropped`], in all three passes), and the input gradient of a "same" stride-1
//! convolution is the forward convolution of the output gradient with the kernel turned
//! round ([`transposed_convolution`]).

use std::ops::Range;

use gemm::Parallelism;
use rayon::prelude::*;

use crate::cpu::fill::{self, Uninit, Written};
use crate::cpu::gemm::{self as ours, Mat};

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
            && self.h > 0
            && self.w > 0
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

/// Output planes of at most this many positions are unfolded through [`tap_offsets`].
const SMALL_PLANE: usize = 16;

/// Marks an output position whose tap falls in the padding.
const OUTSIDE: usize = usize::MAX;

/// For each output position of a plane of at most [`SMALL_PLANE`], the offset in an image
/// `[c, h, w]` that tap `t` reads there, or [`OUTSIDE`].
fn tap_offsets(g: &Geometry, t: &Tap) -> [usize; SMALL_PLANE] {
    let ow = g.out_w();
    let mut offs = [OUTSIDE; SMALL_PLANE];
    for oy in t.ys.0..t.ys.1 {
        for ox in t.xs.0..t.xs.1 {
            let (iy, ix) = (
                oy * g.stride[0] + t.ki - g.pad[0],
                ox * g.stride[1] + t.kj - g.pad[1],
            );
            offs[oy * ow + ox] = (t.c * g.h + iy) * g.w + ix;
        }
    }
    offs
}

/// Whether an output plane is laid out like the input plane (stride 1, `ow == w`, the
/// "same" convolutions of most networks) and larger than [`SMALL_PLANE`]: then a tap reads
/// the input plane shifted by one offset, and its unfolded row is one copy of a span.
fn same_plane(g: &Geometry) -> bool {
    same_width(g) && g.out_hw() > SMALL_PLANE
}

/// Whether output rows are as wide as input rows at stride 1: then tap `(ki, kj)` of
/// channel `c` reads output position `p` at `p + c·h·w + (ki − pad_h)·w + kj − pad_w` of its
/// image, wherever that lies inside the image.
fn same_width(g: &Geometry) -> bool {
    g.stride == [1, 1] && g.out_w() == g.w
}

/// For a tap of a [`same_plane`] geometry: the positions `dst` of its unfolded row from the
/// first to the last one that reads inside the image, and where that span starts in the
/// input plane. `None` when the tap reads only padding.
struct ShiftedSpan {
    dst: Range<usize>,
    src: usize,
    /// The tap's output rows and columns that read inside the image ([`Tap`]'s), and the
    /// plane's width.
    ys: (usize, usize),
    xs: (usize, usize),
    ow: usize,
}

impl ShiftedSpan {
    fn new(g: &Geometry, t: &Tap) -> Option<Self> {
        let ((y0, y1), (x0, x1)) = (t.ys, t.xs);
        if y0 >= y1 || x0 >= x1 {
            return None;
        }
        let ow = g.out_w();
        // `valid_range` starts `ys`/`xs` where `o + k >= pad`, so these do not underflow.
        let src = (y0 + t.ki - g.pad[0]) * g.w + x0 + t.kj - g.pad[1];
        Some(Self {
            dst: y0 * ow + x0..(y1 - 1) * ow + x1,
            src,
            ys: t.ys,
            xs: t.xs,
            ow,
        })
    }

    /// Zero the entries of one image's unfolded row that the span runs over across row
    /// ends: each row's columns outside `xs`, which read the padding. Most are one or two
    /// values, so a plain loop rather than `fill`'s call. Inlined: it runs once per image and
    /// tap, and as a call AlexNet's forward passes took 5–8% longer.
    #[inline(always)]
    fn zero_wrapped(&self, row: &mut [f32]) {
        let ((y0, y1), (x0, x1)) = (self.ys, self.xs);
        for line in row.chunks_exact_mut(self.ow).take(y1).skip(y0) {
            for v in &mut line[..x0] {
                *v = 0.0;
            }
            for v in &mut line[x1..] {
                *v = 0.0;
            }
        }
    }
}

/// One row of the unfolded matrix: tap `(ki, kj)` of channel `c`, with the output rows `ys`
/// and columns `xs` where it reads inside the image ([`valid_range`]).
struct Tap {
    row: usize,
    c: usize,
    ki: usize,
    kj: usize,
    ys: (usize, usize),
    xs: (usize, usize),
}

/// The rows of `g`'s unfolded matrix in order (`[c, kh, kw]`, the weight's), the one walk
/// [`im2col`] and [`col2im`] share.
fn taps(g: &Geometry, rows: Range<usize>) -> impl Iterator<Item = Tap> + '_ {
    let (oh, ow) = (g.out_h(), g.out_w());
    rows.map(move |row| {
        let (c, ki, kj) = (row / (g.kh * g.kw), row / g.kw % g.kh, row % g.kw);
        Tap {
            row,
            c,
            ki,
            kj,
            ys: valid_range(g.h, oh, g.stride[0], ki, g.pad[0]),
            xs: valid_range(g.w, ow, g.stride[1], kj, g.pad[1]),
        }
    })
}

/// Unfold the images `x` (`n` of them, each `[c, h, w]`) into `col` `[c·kh·kw, n·oh·ow]`:
/// row `r` holds each image's `oh·ow` values in turn, rows ordered like the weight's
/// `[c, kh, kw]`; every entry is written. Row by row rather than image by image, so the
/// writes run along `col` even when each image's share of a row is a single value (a
/// ResNet's late stages on small inputs), and an image's channel, read by all `kh·kw` rows
/// of that channel, stays in cache.
fn im2col(x: &[f32], g: &Geometry, col: &mut [f32]) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let ohw = oh * ow;
    let [sh, sw] = g.stride;
    let n = x.len() / g.in_len();
    assert_eq!(x.len(), n * g.in_len());
    let ld = n * ohw;
    for t in taps(g, 0..g.k()) {
        let ((y0, y1), (x0, x1)) = (t.ys, t.xs);
        let images = x
            .chunks_exact(g.in_len())
            .zip(col[t.row * ld..][..ld].chunks_exact_mut(ohw));
        if ohw <= SMALL_PLANE {
            // Where each output position reads (the same in every image), then one tight
            // pass over the images: on planes this small the loops below spend their time
            // on bounds and ranges, not on values.
            let offs = tap_offsets(g, &t);
            for (image, dst) in images {
                for (d, &o) in dst.iter_mut().zip(&offs[..ohw]) {
                    *d = if o == OUTSIDE { 0.0 } else { image[o] };
                }
            }
            continue;
        }
        if same_plane(g) {
            let span = ShiftedSpan::new(g, &t);
            for (image, dst) in images {
                let plane = &image[t.c * g.h * g.w..(t.c + 1) * g.h * g.w];
                let Some(sp) = &span else {
                    dst.fill(0.0);
                    continue;
                };
                dst[..sp.dst.start].fill(0.0);
                dst[sp.dst.end..].fill(0.0);
                dst[sp.dst.clone()].copy_from_slice(&plane[sp.src..sp.src + sp.dst.len()]);
                // The copy ran on across row ends, into the neighbouring row.
                sp.zero_wrapped(dst);
            }
            continue;
        }
        for (image, dst) in images {
            let plane = &image[t.c * g.h * g.w..(t.c + 1) * g.h * g.w];
            for oy in 0..oh {
                let d = &mut dst[oy * ow..(oy + 1) * ow];
                if oy < y0 || oy >= y1 {
                    d.fill(0.0);
                    continue;
                }
                let src = &plane[(oy * sh + t.ki - g.pad[0]) * g.w..][..g.w];
                d[..x0].fill(0.0);
                d[x1..].fill(0.0);
                if sw == 1 {
                    let s0 = x0 + t.kj - g.pad[1];
                    d[x0..x1].copy_from_slice(&src[s0..s0 + (x1 - x0)]);
                } else {
                    for (ox, v) in d[x0..x1].iter_mut().enumerate() {
                        *v = src[(x0 + ox) * sw + t.kj - g.pad[1]];
                    }
                }
            }
        }
    }
}

/// Fold the rows `rows` of an unfolded matrix `[c·kh·kw, n·oh·ow]`, held in `col`, back
/// onto the `n` images `x` (each `[c, h, w]`), adding overlaps: the adjoint of [`im2col`],
/// in its order. `x` must start zeroed before the first rows. `col` is scratch and may be
/// overwritten (the same-width path zeroes the padding entries inside each tap's span).
fn col2im(col: &mut [f32], g: &Geometry, rows: Range<usize>, x: &mut [f32]) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let ohw = oh * ow;
    let [sh, sw] = g.stride;
    let n = x.len() / g.in_len();
    assert_eq!(x.len(), n * g.in_len());
    let ld = n * ohw;
    for t in taps(g, rows.clone()) {
        let at = (t.row - rows.start) * ld;
        let ((y0, y1), (x0, x1)) = (t.ys, t.xs);
        if same_plane(g) {
            let Some(sp) = ShiftedSpan::new(g, &t) else {
                continue;
            };
            let images = x
                .chunks_exact_mut(g.in_len())
                .zip(col[at..][..ld].chunks_exact_mut(ohw));
            for (image, src) in images {
                // The entries that read the padding go nowhere: zeroed, so that one add
                // along the span (which runs on across row ends) leaves them out.
                sp.zero_wrapped(src);
                let plane = &mut image[t.c * g.h * g.w..(t.c + 1) * g.h * g.w];
                let dst = &mut plane[sp.src..sp.src + sp.dst.len()];
                for (d, v) in dst.iter_mut().zip(&src[sp.dst.clone()]) {
                    *d += v;
                }
            }
            continue;
        }
        let images = x
            .chunks_exact_mut(g.in_len())
            .zip(col[at..][..ld].chunks_exact(ohw));
        if ohw <= SMALL_PLANE {
            let offs = tap_offsets(g, &t);
            for (image, src) in images {
                for (v, &o) in src.iter().zip(&offs[..ohw]) {
                    if o != OUTSIDE {
                        image[o] += v;
                    }
                }
            }
            continue;
        }
        for (image, src) in images {
            let plane = &mut image[t.c * g.h * g.w..(t.c + 1) * g.h * g.w];
            for oy in y0..y1 {
                let s = &src[oy * ow + x0..oy * ow + x1];
                let dst = &mut plane[(oy * sh + t.ki - g.pad[0]) * g.w..][..g.w];
                if sw == 1 {
                    let d0 = x0 + t.kj - g.pad[1];
                    for (d, v) in dst[d0..d0 + s.len()].iter_mut().zip(s) {
                        *d += v;
                    }
                } else {
                    for (ox, v) in s.iter().enumerate() {
                        dst[(x0 + ox) * sw + t.kj - g.pad[1]] += v;
                    }
                }
            }
        }
    }
}

/// Which GEMM the convolutions call, in words, for `pretext bench`'s peak line.
pub fn gemm_name() -> &'static str {
    if our_gemm() {
        "ours, AVX2 (PRETEXT_GEMM=crate for the `gemm` crate's)"
    } else {
        "the `gemm` crate's"
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
    matmul([n, n, n], dst, false, Mat::rows(a, n), Mat::rows(b, n), par);
}

/// A GEMM the convolutions can be pinned to ([`pin_gemm`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gemm {
    /// [`crate::cpu::gemm`].
    Ours,
    /// The `gemm` crate's.
    Crate,
}

/// 0: not pinned; 1: ours; 2: the crate's.
static PINNED: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Pins every convolution product of the process to one GEMM from now on, whatever the
/// layer (`None`: back to the default rules, [`our_gemm`], [`packs_weight`] and
/// [`packs_grad_weight`], which pick per layer), so that a benchmark can time both in turns
/// in one run: on this project's noisy machines, runs of two processes minutes apart
/// differed by more than the GEMMs do. Panics for [`Gemm::Ours`] where the CPU lacks AVX2
/// or FMA.
pub fn pin_gemm(gemm: Option<Gemm>) {
    assert!(
        gemm != Some(Gemm::Ours) || ours::available(),
        "our GEMM runs only where the CPU has AVX2 and FMA"
    );
    let v = match gemm {
        None => 0,
        Some(Gemm::Ours) => 1,
        Some(Gemm::Crate) => 2,
    };
    PINNED.store(v, std::sync::atomic::Ordering::Relaxed);
}

/// The GEMM [`pin_gemm`] pinned, if any.
fn pinned() -> Option<Gemm> {
    match PINNED.load(std::sync::atomic::Ordering::Relaxed) {
        1 => Some(Gemm::Ours),
        2 => Some(Gemm::Crate),
        _ => None,
    }
}

/// Whether the convolutions' GEMMs may run on our own ([`crate::cpu::gemm`]): if pinned
/// ([`pin_gemm`]), as pinned; else where the CPU has AVX2 and FMA but no AVX-512
/// ([`ours::preferred`]), unless `PRETEXT_GEMM=crate` in the environment asks for the `gemm`
/// crate's everywhere (to compare the two in one build).
fn our_gemm() -> bool {
    static OURS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    match pinned() {
        Some(gemm) => gemm == Gemm::Ours,
        None => *OURS.get_or_init(|| {
            ours::preferred() && !std::env::var("PRETEXT_GEMM").is_ok_and(|v| v == "crate")
        }),
    }
}

/// Output positions over a batch (its columns, summed over every group's product) from
/// which a weight is packed for our GEMM. Packing costs about one pass over the weight, the
/// products `2·columns` FLOPs per weight value: at 1,024 columns the packing is ~1–2% of
/// them, at 128 (ResNet-18's 512-channel layer on 1×1 planes) ~12%, and there the `gemm`
/// crate, which reads the weight in place, ran its forward in 6.5–6.6 ms against our
/// 8.4–10.1 (`BENCHMARKS.md`), and still ran 1×1-plane forwards faster once [`Shifted`]'s
/// packing had been made cheaper. At 512 (2×2 planes at batch 128) ours ran ResNet-18's and
/// ResNet-50's forwards and input gradients there 3–26% faster, in turns in one process.
const MIN_PACKED_COLUMNS: usize = 512;

/// Whether every product is forced onto our GEMM (`Some(true)`) or the crate's, whatever
/// the layer: by a test (`tests::PACK`) or by [`pin_gemm`].
fn forced() -> Option<bool> {
    #[cfg(test)]
    if let Some(pack) = tests::PACK.get() {
        return Some(pack);
    }
    pinned().map(|gemm| gemm == Gemm::Ours)
}

/// Whether `g`'s weight is packed for our GEMM (see [`MIN_PACKED_COLUMNS`]).
fn packs_weight(g: &Geometry) -> bool {
    forced().unwrap_or_else(|| our_gemm() && g.batch * g.out_hw() >= MIN_PACKED_COLUMNS)
}

/// `dst[m, n] (+)= a[m, k] · b[k, n]`, `dst` row-major and contiguous.
fn matmul(
    [m, n, k]: [usize; 3],
    dst: &mut [f32],
    accumulate: bool,
    a: Mat,
    b: Mat,
    par: Parallelism,
) {
    if our_gemm() {
        ours::matmul([m, n, k], dst, accumulate, a, b, threads_of(par));
    } else {
        crate_matmul([m, n, k], dst, accumulate, a, b, par);
    }
}

/// Rayon threads a [`Parallelism`] asks for.
fn threads_of(par: Parallelism) -> usize {
    match par {
        Parallelism::Rayon(t) => t.max(1),
        _ => 1,
    }
}

/// [`matmul`] on the `gemm` crate.
fn crate_matmul(
    [m, n, k]: [usize; 3],
    dst: &mut [f32],
    accumulate: bool,
    a: Mat,
    b: Mat,
    par: Parallelism,
) {
    assert!(dst.len() >= m * n);
    a.check(m, k);
    b.check(k, n);
    // SAFETY: `dst` holds m·n elements and the operands' slices hold every element their
    // strides address (both asserted above); `dst` does not alias them (it is a `&mut`).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.s.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.s.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// A left operand `[m, k]` shared by every group's product in a batch (a convolution's
/// weight, or its transpose): packed once for our GEMM, or read in place by the `gemm` crate.
struct Left<'a> {
    k: usize,
    a: Operand<'a>,
}

enum Operand<'a> {
    Packed(ours::Packed),
    Plain(Mat<'a>),
}

impl<'a> Left<'a> {
    /// `g`'s weight (or its transpose) `a`, `[m, k]`.
    fn new(a: Mat<'a>, m: usize, k: usize, g: &Geometry) -> Self {
        Self::on(packs_weight(g), a, m, k)
    }

    /// On our GEMM if `ours`, else on the `gemm` crate.
    fn on(ours: bool, a: Mat<'a>, m: usize, k: usize) -> Self {
        a.check(m, k);
        let a = if ours {
            Operand::Packed(ours::Packed::new(a, m, k))
        } else {
            Operand::Plain(a)
        };
        Self { k, a }
    }

    /// `dst[rows.len(), n] = self[rows, :] · b[k, n]`; `rows` starts at a multiple of 6 (a
    /// packed panel's edge).
    fn product(&self, rows: Range<usize>, n: usize, dst: &mut [f32], b: Mat, par: Parallelism) {
        match &self.a {
            Operand::Packed(a) => ours::matmul_packed(a, rows, n, dst, false, b, threads_of(par)),
            Operand::Plain(a) => {
                let a = Mat {
                    s: &a.s[rows.start * a.rs..],
                    ..*a
                };
                crate_matmul([rows.len(), n, self.k], dst, false, a, b, par)
            }
        }
    }
}

/// Output columns a GEMM should have at least. Per image, a convolution's GEMM has one
/// column per output position; late in a network on small inputs that is few (a ResNet's
/// ImageNet stem on 32-pixel images leaves 8×8 down to 1×1), and a GEMM that thin re-reads
/// and re-packs the whole weight for a handful of columns: ResNet-18 trained at a third of
/// PyTorch's speed (`BENCHMARKS.md`). So such images are convolved in groups, side by side
/// in one GEMM of at least this many columns. 64 measured best of 32, 64, 128, 256 and 1024
/// (`BENCHMARKS.md`): from 128 up, NIN's and AlexNet's 8×8 layers are grouped too, and the
/// copies into and out of the group cost more than the wider GEMM gains.
const MIN_COLUMNS: usize = 64;

/// The weight gradient's GEMMs reduce over their columns (output positions) and add into
/// the whole gradient each time, `c_out × c·kh·kw` values read and written per GEMM: with
/// one 8×8 image per GEMM that traffic is as large as the products. Groups of at least this
/// many columns took 8–13% less time on AlexNet's 8×8 layers' weight gradients (128, 256,
/// 512 and 1024 measured, `BENCHMARKS.md`); the forward and input-gradient GEMMs, which write each
/// output once, keep [`MIN_COLUMNS`].
const MIN_WEIGHT_COLUMNS: usize = 256;

/// Images per GEMM for `g` on `threads` threads: enough for `min_columns`, but no more
/// than leaves every thread a group of its own.
fn group_size(g: &Geometry, threads: usize, min_columns: usize) -> usize {
    let want = min_columns.div_ceil(g.out_hw().max(1));
    // Rounded down, so that a batch of at least `threads` images makes at least `threads`
    // groups (rounded up, 6 images on 4 threads would make 3 groups of 2 and leave a thread
    // idle).
    want.min(g.batch / threads.max(1)).max(1)
}

/// `dst` `[rows, n·len]` from `src` `[n, rows, len]`: `n` images' rows side by side.
fn side_by_side(src: &[f32], n: usize, rows: usize, len: usize, dst: &mut Vec<f32>) {
    assert_eq!(src.len(), n * rows * len);
    dst.resize(n * rows * len, 0.0);
    for j in 0..n {
        for r in 0..rows {
            dst[(r * n + j) * len..][..len].copy_from_slice(&src[(j * rows + r) * len..][..len]);
        }
    }
}

/// A worker's buffers, kept across the groups of its share of the batch.
#[derive(Default)]
struct Scratch {
    /// The unfolded images.
    col: Vec<f32>,
    /// A group's GEMM output, before it is laid out image by image (and, in
    /// [`forward_affine`], mapped).
    out: Vec<f32>,
    /// A group's output gradients side by side.
    dy: Vec<f32>,
}

/// A new output of `g.batch` images of `chunk` values, built group by group (see
/// [`group_size`]): the chunk of images `range` is written by `f(range, the chunk, scratch
/// buffers, the GEMM's parallelism)`, in parallel over groups when there are enough of them
/// to keep every thread busy, else one group at a time with the GEMM itself parallel.
fn per_group<F>(g: &Geometry, chunk: usize, f: F) -> Vec<f32>
where
    F: for<'a> Fn(Range<usize>, Uninit<'a>, &mut Scratch, Parallelism) -> Written<'a> + Sync + Send,
{
    let threads = rayon::current_num_threads();
    let size = group_size(g, threads, MIN_COLUMNS);
    let parallel = threads > 1 && g.batch.div_ceil(size) >= threads;
    let par = if !parallel && threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    fill::build(
        g.batch * chunk,
        size * chunk,
        parallel,
        Scratch::default,
        |buf, i, out| f(i * size..((i + 1) * size).min(g.batch), out, buf, par),
    )
}

/// The kernel rows (or columns) from the first to the last that reads inside the image at
/// some output position (`0..0` if none does). Taps between them that read only padding
/// (at a stride larger than the image, e.g. taps 1 and 2 of 4 on a 1-pixel side with
/// padding 3 at stride 3) stay in: their products are zeros.
fn live_taps(size: usize, out: usize, stride: usize, k: usize, pad: usize) -> Range<usize> {
    let live = |&t: &usize| {
        let (lo, hi) = valid_range(size, out, stride, t, pad);
        lo < hi
    };
    match ((0..k).find(live), (0..k).rfind(live)) {
        (Some(a), Some(b)) => a..b + 1,
        _ => 0..0,
    }
}

/// `g` with its kernel cropped to the taps that ever read inside the image ([`live_taps`]),
/// and the cropped weight, where that drops taps and keeps every output position. Those
/// dropped read only padding, zeros, at every output position: the products they add are
/// zeros (for finite weights; an infinite or NaN weight there no longer makes the output
/// NaN, as it would not in the definition, which skips the padding). On a network's 1×1
/// planes (ResNet-18's and ResNet-50's last stage on 32-pixel inputs) a 3×3 convolution
/// with padding 1 is a 1×1 convolution, and the GEMM's depth a ninth. `None` where nothing
/// is dropped, where no tap reads the image, or where the cropped geometry's output size
/// differs (it pads both sides of an axis alike, as ours all do).
fn cropped(g: &Geometry, weight: &[f32]) -> Option<(Geometry, Vec<f32>)> {
    let (c, rows, cols) = crop(g)?;
    // One output channel's kernels per task: ResNet-18's last stage gathers 262,144
    // kernels (9.4 MB read at a stride of 9 values) on every forward call.
    let mut w = vec![0.0; g.c_out * c.k()];
    w.par_chunks_exact_mut(c.k())
        .zip(weight.par_chunks_exact(g.k()))
        .for_each(|(dst, src)| {
            for (full, kept) in kept_spans(g, &c, &rows, &cols) {
                dst[kept].copy_from_slice(&src[full]);
            }
        });
    Some((c, w))
}

/// For one output channel's kernels, each kept kernel row's span in `g`'s (`[c, kh, kw]`)
/// and in the cropped `c`'s: the one walk [`cropped`]'s gather and [`grad_weight`]'s
/// scatter share.
fn kept_spans<'a>(
    g: &'a Geometry,
    c: &'a Geometry,
    rows: &'a Range<usize>,
    cols: &'a Range<usize>,
) -> impl Iterator<Item = (Range<usize>, Range<usize>)> + 'a {
    (0..g.c_in).flat_map(move |ch| {
        rows.clone().enumerate().map(move |(i, ki)| {
            let full = (ch * g.kh + ki) * g.kw + cols.start;
            let kept = (ch * c.kh + i) * c.kw;
            (full..full + c.kw, kept..kept + c.kw)
        })
    })
}

/// [`cropped`]'s geometry, and the kernel rows and columns it keeps.
fn crop(g: &Geometry) -> Option<(Geometry, Range<usize>, Range<usize>)> {
    let rows = live_taps(g.h, g.out_h(), g.stride[0], g.kh, g.pad[0]);
    let cols = live_taps(g.w, g.out_w(), g.stride[1], g.kw, g.pad[1]);
    if (rows.len() == g.kh && cols.len() == g.kw) || rows.is_empty() || cols.is_empty() {
        return None;
    }
    // Every live tap reads inside the image somewhere, so none lies wholly past the padding
    // on the near side: `start ≤ pad`.
    let pad = [
        g.pad[0].checked_sub(rows.start)?,
        g.pad[1].checked_sub(cols.start)?,
    ];
    let c = Geometry {
        kh: rows.len(),
        kw: cols.len(),
        pad,
        ..*g
    };
    // Output position `o` of `c` reads input `o·s + (k − start) − (pad − start)`, `g`'s
    // own, as long as both have the same outputs.
    if !c.valid() || c.out_h() != g.out_h() || c.out_w() != g.out_w() {
        return None;
    }
    Some((c, rows, cols))
}

/// `y = conv(x, weight)`: x `[n, c, h, w]`, weight `[o, c, kh, kw]` → y `[n, o, oh, ow]`.
pub fn forward(x: &[f32], weight: &[f32], g: &Geometry) -> Vec<f32> {
    assert_eq!(x.len(), g.batch * g.in_len());
    assert_eq!(weight.len(), g.c_out * g.k());
    if let Some((g, weight)) = cropped(g, weight) {
        return forward(x, &weight, &g);
    }
    let weight = ForwardWeight::new(weight, g);
    per_group(g, g.out_len(), |images, y, scratch, par| {
        if images.len() == 1 {
            // One image's output is already laid out as the GEMM writes it.
            let (y, written) = y.zeroed();
            weight.product(x, g, images, y, &mut scratch.col, par);
            written
        } else {
            let n = images.len();
            scratch.out.resize(n * g.out_len(), 0.0);
            weight.product(x, g, images, &mut scratch.out, &mut scratch.col, par);
            y.affine_blocks(&scratch.out, g.c_out, g.out_hw(), |_| (1.0, 0.0), false)
        }
    })
}

/// The unfolded matrix `[c·kh·kw, n·oh·ow]` of the images `images` of `x`: one image of a
/// 1×1 stride-1 convolution as it lies, else unfolded into `col`.
fn unfolded<'a>(
    x: &'a [f32],
    g: &Geometry,
    images: Range<usize>,
    col: &'a mut Vec<f32>,
) -> &'a [f32] {
    let x = &x[images.start * g.in_len()..images.end * g.in_len()];
    if images.len() == 1 && g.pointwise() {
        return x;
    }
    col.resize(g.k() * images.len() * g.out_hw(), 0.0);
    im2col(x, g, col);
    col
}

/// The output gradients `[c_out, n·oh·ow]` of the images `images` of `dy`, side by side:
/// one image's as they lie, else copied into `buf`.
fn dy_side_by_side<'a>(
    dy: &'a [f32],
    g: &Geometry,
    images: Range<usize>,
    buf: &'a mut Vec<f32>,
) -> &'a [f32] {
    let n = images.len();
    let dy = &dy[images.start * g.out_len()..images.end * g.out_len()];
    if n == 1 {
        return dy;
    }
    side_by_side(dy, n, g.c_out, g.out_hw(), buf);
    buf
}

/// Whether [`Shifted`] packs `g`'s unfolded images for our GEMM: a [`same_width`]
/// geometry whose panels of [`ours::NR`] (16) columns are made of whole output rows, or
/// lie inside one: rows of 16, 32… values (a panel is part of one row), or of 8, 4, 2 or 1
/// (a panel is 2, 4, 8 or 16 whole rows, of one image or of several side by side; a
/// product whose columns are not a whole number of panels unfolds its images instead).
/// Not a 1×1 convolution, whose image is its unfolded matrix as it lies: there is no im2col
/// pass to save, and `pack_b`'s plain copies cost less than the taps' bookkeeping.
fn packs_shifted(g: &Geometry) -> bool {
    let rows = g.w.is_multiple_of(ours::NR) || ours::NR.is_multiple_of(g.w);
    same_width(g) && rows && !g.pointwise()
}

/// A row of the unfolded matrix ([`Tap`]) as [`Shifted`] reads it, worked out once per
/// convolution: in a [`same_width`] geometry the tap reads output position `r` of an image
/// at `r + off` of that image, where its kernel position's mask ([`ShiftPlan::masks`]) is
/// set.
#[derive(Clone, Copy, Debug)]
struct ShiftTap {
    /// `c·h·w + (ki − pad_h)·w + kj − pad_w`.
    off: isize,
    /// Where the masks of the tap's kernel position `(ki, kj)` start in
    /// [`ShiftPlan::masks`]: `(ki·kw + kj)·oh·ow`.
    mask: usize,
}

/// `g`'s unfolded rows as [`Shifted`] reads them.
struct ShiftPlan {
    taps: Vec<ShiftTap>,
    /// Per kernel position `(ki, kj)` and output position `r` of a plane, all bits set where
    /// the tap reads inside the image there, none where it reads the padding: `[kh·kw,
    /// oh·ow]`. Shared by every channel's taps, so it stays in cache (37 KB for a 3×3 kernel
    /// on 32×32 planes).
    masks: Vec<u32>,
    /// Output positions read at a time ([`segment`]).
    segment: usize,
}

/// Positions of one image that [`Shifted`] copies at a time: the largest power of two up to
/// 16 that divides an output plane, so that a panel's 16 columns are whole segments and no
/// segment crosses from one image to the next. In a [`same_width`] geometry a tap reads a
/// segment's positions from consecutive values of its image: one copy and one mask.
fn segment(g: &Geometry) -> usize {
    let ohw = g.out_hw();
    (ohw & ohw.wrapping_neg()).min(ours::NR)
}

fn shift_plan(g: &Geometry) -> ShiftPlan {
    assert!(same_width(g));
    let signed = |v: usize| isize::try_from(v).expect("an image's size fits isize");
    let (ohw, ow, kk) = (g.out_hw(), g.out_w(), g.kh * g.kw);
    let rows = taps(g, 0..g.k())
        .map(|t| ShiftTap {
            off: signed(t.c * g.h * g.w + t.ki * g.w + t.kj) - signed(g.pad[0] * g.w + g.pad[1]),
            mask: (t.row % kk) * ohw,
        })
        .collect();
    // The first channel's taps are every kernel position once, in order.
    let masks = taps(g, 0..kk)
        .flat_map(|t| {
            (0..ohw).map(move |r| {
                let (oy, ox) = (r / ow, r % ow);
                let inside = (t.ys.0..t.ys.1).contains(&oy) && (t.xs.0..t.xs.1).contains(&ox);
                if inside { u32::MAX } else { 0 }
            })
        })
        .collect();
    ShiftPlan {
        taps: rows,
        masks,
        segment: segment(g),
    }
}

/// The unfolded matrix `[c·kh·kw, n·oh·ow]` of the images `x` ([`im2col`]'s) for a
/// [`packs_shifted`] geometry, packed by our GEMM straight from the images a block at a
/// time ([`ours::Right`]), never laid out whole. A tap reads the input plane shifted by one
/// offset, so a panel's row is 16 neighbouring values of one image (or, on planes of 8, 4,
/// 2 or 1 positions, runs of the plane from as many images), the columns that fall in the
/// padding masked to zero. Laid out, an unfolded 32×32 image has 4 KiB rows (2.3 MB for
/// ResNet-18's 64 channels): im2col wrote it out of L2 and `pack_b` read it back, each row a
/// page from the last, and waited on those reads for half its time (perf).
struct Shifted<'a> {
    x: &'a [f32],
    g: &'a Geometry,
    plan: &'a ShiftPlan,
}

impl ours::Right for Shifted<'_> {
    fn pack(&self, p0: usize, kc: usize, j0: usize, nc: usize, pb: &mut [f32]) {
        let taps = &self.plan.taps[p0..p0 + kc];
        for (js, panel) in pb.chunks_exact_mut(ours::NR * kc).enumerate() {
            let q = j0 + js * ours::NR;
            // Every product's columns are whole images, a whole number of panels
            // ([`ForwardWeight::product`]), and its blocks start at multiples of 16
            // columns: no partial panel, and no segment across an image's end.
            assert!(
                q.is_multiple_of(ours::NR) && q + ours::NR <= j0 + nc,
                "a partial panel"
            );
            match self.plan.segment {
                16 => self.panel::<16>(taps, q, panel),
                8 => self.panel::<8>(taps, q, panel),
                4 => self.panel::<4>(taps, q, panel),
                2 => self.panel::<2>(taps, q, panel),
                1 => self.panel::<1>(taps, q, panel),
                s => unreachable!("segments of {s}"),
            }
        }
    }
}

impl Shifted<'_> {
    /// The panel of columns `q..q + 16`, rows `taps`, made of segments of `S` positions
    /// ([`segment`]), each in one image. Per segment, the image and position are worked out
    /// once and every tap is then one copy and one mask: with the tap's row and column
    /// ranges checked per run of one output row, as before, the packing took a quarter of
    /// ResNet-18's 3×3 forwards on 8×8 and 4×4 planes (perf).
    fn panel<const S: usize>(&self, taps: &[ShiftTap], q: usize, panel: &mut [f32]) {
        const NR: usize = ours::NR;
        let g = self.g;
        let ohw = g.out_hw();
        assert!(
            NR.is_multiple_of(S) && ohw.is_multiple_of(S),
            "segments of {S} on planes of {ohw}"
        );
        assert_eq!(panel.len(), NR * taps.len());
        for seg in 0..NR / S {
            let (image, r) = ((q + seg * S) / ohw, (q + seg * S) % ohw);
            // Where the segment's first position lies in `x`, which each tap offsets.
            let at = isize::try_from(image * g.in_len() + r).expect("x's length fits isize");
            for (t, out) in taps.iter().zip(panel.chunks_exact_mut(NR)) {
                let out: &mut [f32; S] = (&mut out[seg * S..][..S]).try_into().expect("S values");
                let mask: &[u32; S] = self.plan.masks[t.mask + r..][..S]
                    .try_into()
                    .expect("S masks");
                let start = at + t.off;
                let src = usize::try_from(start)
                    .ok()
                    .and_then(|s| self.x.get(s..s + S));
                if let Some(src) = src {
                    // Lane `i` reads `x[start + i]`; lanes in the padding read a
                    // neighbouring row, channel or image, masked off.
                    let src: &[f32; S] = src.try_into().expect("S values");
                    for ((o, v), m) in out.iter_mut().zip(src).zip(mask) {
                        *o = f32::from_bits(v.to_bits() & m);
                    }
                } else {
                    // At the very start or end of `x`: lane by lane, only the lanes inside
                    // the image (which lie inside `x`).
                    for (i, (o, &m)) in out.iter_mut().zip(mask).enumerate() {
                        *o = if m == 0 {
                            0.0
                        } else {
                            self.x[(start + i as isize) as usize]
                        };
                    }
                }
            }
        }
    }
}

/// A forward convolution's weight, and where [`Shifted`] packs its right operand, the
/// taps it reads with (once per call rather than per group of images: on 8×8 planes a
/// group's product has 64 columns, four panels per tap, and the taps' divisions cost as
/// much as the panels' copies).
struct ForwardWeight<'a> {
    weight: Left<'a>,
    shifts: Option<ShiftPlan>,
}

impl<'a> ForwardWeight<'a> {
    fn new(weight: &'a [f32], g: &Geometry) -> Self {
        let weight = Left::new(Mat::rows(weight, g.k()), g.c_out, g.k(), g);
        let shifts =
            (matches!(weight.a, Operand::Packed(_)) && packs_shifted(g)).then(|| shift_plan(g));
        Self { weight, shifts }
    }

    /// `out = W · [unfold(x_i) …]` for the images `images` side by side: `out` is
    /// `[c_out, n·oh·ow]`, image `j`'s positions in columns `j·oh·ow..`. Every value of
    /// `out` is written (the GEMM does not read it).
    fn product(
        &self,
        x: &[f32],
        g: &Geometry,
        images: Range<usize>,
        out: &mut [f32],
        col: &mut Vec<f32>,
        par: Parallelism,
    ) {
        let cols = images.len() * g.out_hw();
        if let (Operand::Packed(w), Some(plan)) = (&self.weight.a, &self.shifts)
            && cols.is_multiple_of(ours::NR)
        {
            let x = &x[images.start * g.in_len()..images.end * g.in_len()];
            let b = Shifted { x, g, plan };
            ours::matmul_right(w, 0..g.c_out, cols, out, false, &b, threads_of(par));
            return;
        }
        let rhs = unfolded(x, g, images, col);
        self.weight
            .product(0..g.c_out, cols, out, Mat::rows(rhs, cols), par);
    }
}

/// `y = act(a_o · conv(x, weight) + b_o)` for each output channel `o`, `(a_o, b_o) =
/// ab(o)`, `act` ReLU if `relu`: a convolution and the inference batch norm after it in one
/// pass per group of images. The GEMM writes into the worker's scratch, which the affine map
/// reads back while it is in cache, writing the output once: the unfused pair zero-fills the
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
    if let Some((g, weight)) = cropped(g, weight) {
        return forward_affine(x, &weight, &g, ab, relu);
    }
    let weight = ForwardWeight::new(weight, g);
    per_group(g, g.out_len(), |images, y, scratch, par| {
        // Every value is written by the GEMM before it is read.
        scratch.out.resize(images.len() * g.out_len(), 0.0);
        weight.product(x, g, images, &mut scratch.out, &mut scratch.col, par);
        y.affine_blocks(&scratch.out, g.c_out, g.out_hw(), &ab, relu)
    })
}

/// Values of the unfolded input gradient computed at a time before they are folded back
/// (256 KiB, in a core's 2 MiB L2 with room for the weights' panel). The whole of it for one
/// 16×16 AlexNet image is 1.6 MB (1,600 rows × 256 positions), which the GEMM wrote out and
/// [`col2im`] read back from further away: in slices, the input gradients of AlexNet's 8×8
/// layers took 4–9% less time (`BENCHMARKS.md`).
const FOLD_CHUNK: usize = 65536;

/// `dL/dx` from `dL/dy`: per group of images `Wᵀ · [dy_i …]`, folded back with [`col2im`].
pub fn grad_input(weight: &[f32], dy: &[f32], g: &Geometry) -> Vec<f32> {
    grad_input_folding(weight, dy, g, FOLD_CHUNK)
}

/// [`grad_input`], folding back slices of `max(⌈fold / columns⌉, 16)` rows rounded up to a
/// multiple of 6, at most all of them; the last slice may be shorter.
fn grad_input_folding(weight: &[f32], dy: &[f32], g: &Geometry, fold: usize) -> Vec<f32> {
    assert_eq!(dy.len(), g.batch * g.out_len());
    assert_eq!(weight.len(), g.c_out * g.k());
    // The taps [`cropped`] drops add only to the padding, which has no gradient: on 1×1
    // planes ResNet-18's last 3×3 layers ran all nine taps' products to keep one.
    if let Some((g, weight)) = cropped(g, weight) {
        return grad_input_folding(&weight, dy, &g, fold);
    }
    if let Some((t, turned)) = transposed_convolution(g, weight) {
        return forward(dy, &turned, &t);
    }
    let (ohw, k) = (g.out_hw(), g.k());
    // `Wᵀ` packed once per batch for our GEMM. For the `gemm` crate, laid out row-major
    // where there are enough groups: it ran AlexNet's input-gradient products 18–45% faster
    // (one thread, alone) from a row-major left operand than through a transposed view of
    // `W`, and the whole input gradients of its 8×8 layers took 12–26% less time
    // (`BENCHMARKS.md`).
    let threads = rayon::current_num_threads();
    let w_t = (!packs_weight(g) && worth_transposing(g, group_size(g, threads, MIN_COLUMNS)))
        .then(|| transpose(weight, g.c_out, k));
    let w_t = match &w_t {
        Some(t) => Left::new(Mat::rows(t, g.c_out), k, g.c_out, g),
        None => Left::new(Mat::transposed(weight, k), k, g.c_out, g),
    };
    per_group(g, g.in_len(), |images, dx, scratch, par| {
        let n = images.len();
        let cols = n * ohw;
        let (dx, written) = dx.zeroed();
        let pointwise_image = n == 1 && g.pointwise();
        let dy = dy_side_by_side(dy, g, images, &mut scratch.dy);
        if pointwise_image {
            w_t.product(0..k, ohw, dx, Mat::rows(dy, ohw), par);
        } else {
            // The unfolded gradient a slice of rows at a time, each folded back while it is
            // still in cache; slices start at a packed panel's edge (a multiple of 6 rows).
            let per = fold.div_ceil(cols).max(16).next_multiple_of(6).min(k);
            let col = &mut scratch.col;
            col.resize(per * cols, 0.0);
            for r0 in (0..k).step_by(per) {
                let rows = r0..(r0 + per).min(k);
                let chunk = &mut col[..rows.len() * cols];
                w_t.product(rows.clone(), cols, chunk, Mat::rows(dy, cols), par);
                col2im(chunk, g, rows, dx);
            }
        }
        written
    })
}

/// The input gradient of a stride-1 convolution as a forward convolution of the output
/// gradient: `dx[c, y, x] = Σ_{o, i, j} dy[o, y − i + p_h, x − j + p_w] · w[o, c, i, j]` is
/// `dy` convolved with the kernel turned round (`w'[c, o, i, j] = w[o, c, kh−1−i,
/// kw−1−j]`) and padded by `k − 1 − p`, whose output planes are the input's. Where the
/// output rows are as wide as the input rows ([`same_width`]: the "same" convolutions), that
/// forward packs its right operand from the planes ([`Shifted`]) and writes each value once,
/// where the unfolded gradient is written by the GEMM and folded back by [`col2im`]. Its
/// padding multiplies weights by zeros where the definition skips the terms: for finite
/// weights the same, but an infinite weight makes the border's gradient NaN (as the forward
/// does with its own padding). `None`
/// for other geometries, for 1×1 convolutions (whose input gradient is one GEMM already),
/// where the forward would not pack ([`packs_weight`], [`packs_shifted`]), and where the
/// layer widens more than twofold: the forward packs `c_out·kh·kw` unfolded rows per
/// position for `c_in` output channels to share, and on AlexNet's 64→192 5×5 layer on
/// 16×16 planes it took 7% longer than the GEMM and fold (165.3 against 154.6 ms, in turns
/// in one process), where on 48→96 5×5 it took 7% less, on 96→96 3×3 on 8×8 27% less, on
/// ResNet-18's 64 and 128 channels on 8×8 and 4×4 33–38% less.
fn transposed_convolution(g: &Geometry, weight: &[f32]) -> Option<(Geometry, Vec<f32>)> {
    if g.stride != [1, 1] || !same_width(g) || g.pointwise() || 2 * g.c_in < g.c_out {
        return None;
    }
    let pad = [
        (g.kh - 1).checked_sub(g.pad[0])?,
        (g.kw - 1).checked_sub(g.pad[1])?,
    ];
    let t = Geometry {
        c_in: g.c_out,
        h: g.out_h(),
        w: g.out_w(),
        c_out: g.c_in,
        pad,
        ..*g
    };
    if !t.valid() || t.out_h() != g.h || t.out_w() != g.w || !packs_weight(&t) || !packs_shifted(&t)
    {
        return None;
    }
    let kk = g.kh * g.kw;
    let mut w = vec![0.0; weight.len()];
    // One input channel's kernels per task, each read from every output channel's.
    w.par_chunks_exact_mut(g.c_out * kk)
        .enumerate()
        .for_each(|(c, dst)| {
            for (o, kernel) in dst.chunks_exact_mut(kk).enumerate() {
                let src = &weight[(o * g.c_in + c) * kk..][..kk];
                for (d, s) in kernel.iter_mut().zip(src.iter().rev()) {
                    *d = *s;
                }
            }
        });
    Some((t, w))
}

/// Output channels from which a weight gradient runs on our GEMM (where [`packs_weight`]).
/// Ours packs each group's unfolded images, `k × columns` values, for `2·c_out` FLOPs per
/// value; the `gemm` crate reads them in place. Measured in turns in one process
/// (`conv_layers … ab`, ours ÷ crate, `BENCHMARKS.md`): 1.14 and 1.19 on 64 channels
/// (AlexNet's first layer, ResNet-18's on 32×32), 1.01 on 128, 0.76–0.92 from 192 up.
const MIN_PACKED_GRAD_ROWS: usize = 192;

/// Whether `g`'s weight gradient runs on our GEMM (see [`MIN_PACKED_GRAD_ROWS`]).
fn packs_grad_weight(g: &Geometry) -> bool {
    forced().unwrap_or_else(|| packs_weight(g) && g.c_out >= MIN_PACKED_GRAD_ROWS)
}

/// `dL/dW` from `dL/dy`: `Σ_n dy_n · unfold(x_n)ᵀ`, one GEMM per group of images. The batch
/// is split into one slice per thread, each summing into its own copy of the gradient; the
/// copies are added at the end.
pub fn grad_weight(x: &[f32], dy: &[f32], g: &Geometry) -> Vec<f32> {
    assert_eq!(x.len(), g.batch * g.in_len());
    assert_eq!(dy.len(), g.batch * g.out_len());
    // The taps [`cropped`] drops read only the padding, zeros: their gradients are zeros
    // (for finite `dy`; an infinite or NaN one there no longer makes them NaN), the others
    // the cropped convolution's.
    if let Some((c, rows, cols)) = crop(g) {
        let small = grad_weight(x, dy, &c);
        let mut dw = vec![0.0; g.c_out * g.k()];
        dw.par_chunks_exact_mut(g.k())
            .zip(small.par_chunks_exact(c.k()))
            .for_each(|(dst, src)| {
                for (full, kept) in kept_spans(g, &c, &rows, &cols) {
                    dst[full].copy_from_slice(&src[kept]);
                }
            });
        return dw;
    }
    let (ohw, k) = (g.out_hw(), g.k());
    let len = g.c_out * k;
    let threads = rayon::current_num_threads().max(1);
    let parts = threads.min(g.batch);
    let per = g.batch.div_ceil(parts);
    let size = group_size(g, threads, MIN_WEIGHT_COLUMNS);
    // Read here, on the calling thread (the tests choose per thread).
    let ours = packs_grad_weight(g);
    // On the `gemm` crate, the sum is built transposed, and turned round once at the end,
    // where it pays.
    let transposed = !ours && worth_transposing(g, size);
    let inner = if parts == 1 && threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    let partial = |range: Range<usize>| {
        let mut dw = vec![0.0; len];
        let mut s = Scratch::default();
        for (j, first) in range.clone().step_by(size).enumerate() {
            let images = first..(first + size).min(range.end);
            let cols = images.len() * ohw;
            let dy = dy_side_by_side(dy, g, images.clone(), &mut s.dy);
            let unfolded = unfolded(x, g, images, &mut s.col);
            let (unfolded, dy) = (Mat::rows(unfolded, cols), Mat::rows(dy, cols));
            if ours {
                // `dy` packed (`c_out` rows, as deep as the group's positions), the
                // unfolded images packed by our GEMM's blocks as it goes.
                let a = ours::Packed::new(dy, g.c_out, cols);
                ours::matmul_packed(
                    &a,
                    0..g.c_out,
                    k,
                    &mut dw,
                    j > 0,
                    unfolded.t(),
                    threads_of(inner),
                );
                continue;
            }
            // `dWᵀ = unfold(x) · dyᵀ`, `[k, c_out]`, is the same products, which the `gemm`
            // crate runs 4–19% faster on these shapes (a long `k` by a short reduction over
            // positions; measured in `BENCHMARKS.md`).
            let (dims, a, b) = if transposed {
                ([k, g.c_out, cols], unfolded, dy.t())
            } else {
                ([g.c_out, k, cols], dy, unfolded.t())
            };
            crate_matmul(dims, &mut dw, j > 0, a, b, inner);
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
    if transposed {
        transpose(&dw, k, g.c_out)
    } else {
        dw
    }
}

/// Whether the weight-sized operand of a batch's GEMMs is worth one transpose: the transpose
/// costs about one pass over the weight, the faster orientation saves a little on each GEMM,
/// one per group of images. Measured (`BENCHMARKS.md`): AlexNet's 8×8 layers, 128 groups,
/// gain 12–26% on their input gradients; ResNet-18's last layer on 1×1 planes, 2 groups of 64
/// images, lost more in the transposes than its GEMMs took; 8 groups lost a little.
fn worth_transposing(g: &Geometry, group: usize) -> bool {
    g.batch.div_ceil(group) >= 16
}

/// The transpose `[cols, rows]` of a row-major `[rows, cols]` matrix, in tiles of 8×8, so
/// that a tile's strided writes stay in a few cache lines: element by element, the writes
/// of a 512-channel 3×3 weight each touched a new line, and the transpose took longer than
/// the GEMMs of that layer on 1×1 planes. Tiles of 8 measured faster than 16 and 32.
fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 8;
    assert_eq!(src.len(), rows * cols);
    let mut dst = vec![0.0; src.len()];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                let row = &src[r * cols..(r + 1) * cols];
                for c in c0..(c0 + TILE).min(cols) {
                    dst[c * rows + r] = row[c];
                }
            }
        }
    }
    dst
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition's 7 loops: `f(x index, w index, y index)` for every product of an
    /// input and a weight that a convolution output sums (padding reads none).
    fn products(g: &Geometry, mut f: impl FnMut(usize, usize, usize)) {
        let (oh, ow) = (g.out_h(), g.out_w());
        for n in 0..g.batch {
            for o in 0..g.c_out {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let yi = ((n * g.c_out + o) * oh + oy) * ow + ox;
                        for c in 0..g.c_in {
                            for ki in 0..g.kh {
                                for kj in 0..g.kw {
                                    let iy = (oy * g.stride[0] + ki) as isize - g.pad[0] as isize;
                                    let ix = (ox * g.stride[1] + kj) as isize - g.pad[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    let xi =
                                        ((n * g.c_in + c) * g.h + iy as usize) * g.w + ix as usize;
                                    f(xi, ((o * g.c_in + c) * g.kh + ki) * g.kw + kj, yi);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Direct convolution, the definition itself.
    fn naive(x: &[f32], w: &[f32], g: &Geometry) -> Vec<f32> {
        let mut y = vec![0.0; g.batch * g.out_len()];
        products(g, |xi, wi, yi| y[yi] += x[xi] * w[wi]);
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

    thread_local! {
        /// Whether the thread's convolutions run every product on our GEMM ([`packs_weight`],
        /// [`packs_grad_weight`]), when set: the test geometries are too small for the rules
        /// to pick it.
        pub(super) static PACK: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
    }

    /// `f` under pools of 1 to 4 threads: with 3 images of at most 20 output positions each,
    /// one group of 3 on 1 thread, single images on more (see [`group_size`]). Each pool
    /// runs `f` with the weight read in place by the `gemm` crate, then packed for our GEMM
    /// where the CPU runs it.
    fn on_pools(f: impl Fn(usize) + Sync) {
        for threads in [1, 2, 3, 4] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for pack in [false, ours::available()] {
                pool.install(|| {
                    // `f` runs on this thread, where the convolutions choose their GEMM.
                    PACK.set(Some(pack));
                    f(threads);
                    PACK.set(None);
                });
            }
        }
    }

    #[test]
    fn forward_matches_the_definition() {
        on_pools(|threads| {
            for (k, s, p) in CASES {
                let g = geometry(k, s, p);
                let x = values(g.batch * g.in_len(), 1);
                let w = values(g.c_out * g.k(), 2);
                let want = naive(&x, &w, &g);
                let got = forward(&x, &w, &g);
                for (a, b) in got.iter().zip(&want) {
                    assert!(
                        (a - b).abs() < 1e-5,
                        "k{k} s{s} p{p} t{threads}: {a} vs {b}"
                    );
                }
                // The same convolution fused with a per-channel affine map and ReLU.
                let ab = |o: usize| (o as f32 - 1.0, 0.25);
                let fused = forward_affine(&x, &w, &g, ab, true);
                for (i, (a, b)) in fused.iter().zip(&want).enumerate() {
                    let (m, c) = ab(i / g.out_hw() % g.c_out);
                    let b = (b * m + c).max(0.0);
                    assert!(
                        (a - b).abs() < 1e-5,
                        "fused k{k} s{s} p{p} t{threads}: {a} vs {b}"
                    );
                }
            }
        });
    }

    /// Forward (plain and fused), input and weight gradients of `g` against the definition,
    /// the gradients by the adjoint identity as above.
    fn check_against_definition(g: &Geometry, what: &str) {
        let x = values(g.batch * g.in_len(), 6);
        let w = values(g.c_out * g.k(), 7);
        let r = values(g.batch * g.out_len(), 8);
        let want = naive(&x, &w, g);
        for (a, b) in forward(&x, &w, g).iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{what}: {a} vs {b}");
        }
        let ab = |o: usize| (0.5 - o as f32, -0.125);
        let fused = forward_affine(&x, &w, g, ab, false);
        for (i, (a, b)) in fused.iter().zip(&want).enumerate() {
            let (m, c) = ab(i / g.out_hw() % g.c_out);
            assert!((a - (b * m + c)).abs() < 1e-5, "fused {what}");
        }
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(a, b)| a * b).sum::<f32>();
        let dx = grad_input(&w, &r, g);
        for i in 0..x.len() {
            let mut e = vec![0.0; x.len()];
            e[i] = 1.0;
            let want = dot(&naive(&e, &w, g), &r);
            assert!((dx[i] - want).abs() < 1e-4, "dx {what} at {i}");
        }
        let dw = grad_weight(&x, &r, g);
        for i in 0..w.len() {
            let mut e = vec![0.0; w.len()];
            e[i] = 1.0;
            let want = dot(&naive(&x, &e, g), &r);
            assert!((dw[i] - want).abs() < 1e-4, "dw {what} at {i}");
        }
    }

    /// The input gradient as a forward convolution ([`transposed_convolution`]), by hand:
    /// channels swapped, each kernel turned round, the padding `k − 1 − p`; not taken for
    /// strides, 1×1 kernels, or a layer that more than doubles its channels.
    #[test]
    fn input_gradients_turned_round_by_hand() {
        if !ours::available() {
            return;
        }
        PACK.set(Some(true));
        let g = Geometry {
            batch: 1,
            c_in: 2,
            h: 16,
            w: 16,
            c_out: 3,
            kh: 3,
            kw: 1,
            stride: [1, 1],
            pad: [1, 0],
        };
        let w: Vec<f32> = (0..g.c_out * g.k()).map(|v| v as f32).collect();
        let (t, turned) = transposed_convolution(&g, &w).expect("a same-width convolution");
        assert_eq!((t.c_in, t.c_out, t.h, t.w, t.pad), (3, 2, 16, 16, [1, 0]));
        // Input channel 0's kernels for output channels 0, 1, 2, then channel 1's.
        let want: Vec<f32> = [0, 6, 12, 3, 9, 15]
            .iter()
            .flat_map(|&s| (s..s + 3).rev().map(|v| v as f32))
            .collect();
        assert_eq!(turned, want);
        let strided = Geometry {
            stride: [2, 2],
            ..g
        };
        let pointwise = Geometry {
            kh: 1,
            kw: 1,
            pad: [0, 0],
            ..g
        };
        let widening = Geometry { c_out: 5, ..g };
        for g in [strided, pointwise, widening] {
            let w = vec![0.0; g.c_out * g.k()];
            assert!(transposed_convolution(&g, &w).is_none(), "{g:?}");
        }
        PACK.set(None);
    }

    /// Kernels cropped to the taps that read inside the image ([`cropped`]), by hand: a
    /// 3×3 kernel with padding 1 on a 1×1 image is its centre, on a 2×2 image at stride 2
    /// its lower right 2×2; nothing is cropped where every tap reads the image somewhere.
    #[test]
    fn kernels_cropped_by_hand() {
        let g = |h: usize, w: usize, stride: usize| Geometry {
            batch: 1,
            c_in: 2,
            h,
            w,
            c_out: 1,
            kh: 3,
            kw: 3,
            stride: [stride, stride],
            pad: [1, 1],
        };
        let w: Vec<f32> = (0..18).map(|v| v as f32).collect();
        let (c, cw) = cropped(&g(1, 1, 1), &w).expect("a 1×1 image crops");
        assert_eq!((c.kh, c.kw, c.pad, c.stride), (1, 1, [0, 0], [1, 1]));
        assert_eq!(cw, [4.0, 13.0]);
        let (c, cw) = cropped(&g(2, 2, 2), &w).expect("a 2×2 image at stride 2 crops");
        assert_eq!((c.kh, c.kw, c.pad), (2, 2, [0, 0]));
        assert_eq!(cw, [4.0, 5.0, 7.0, 8.0, 13.0, 14.0, 16.0, 17.0]);
        // Rows only: a 1×4 image.
        let (c, cw) = cropped(&g(1, 4, 1), &w).expect("a single row crops");
        assert_eq!((c.kh, c.kw, c.pad), (1, 3, [0, 1]));
        assert_eq!(cw, [3.0, 4.0, 5.0, 12.0, 13.0, 14.0]);
        assert!(cropped(&g(2, 2, 1), &w).is_none());
        assert!(cropped(&g(4, 4, 2), &w).is_none());
    }

    /// Every small geometry along one axis (sides 1–4, kernels 1–5, strides 1–3, padding
    /// 0–3), cropped or not, forward, fused (with ReLU) and both gradients against the
    /// definition (the dropped taps' weight gradients zeros), on both axes, the other axis a
    /// 3×3 kernel with padding 1 on 3 pixels (not cropped) or on 1 (cropped too), on 1–4
    /// threads and both GEMMs.
    #[test]
    fn cropped_kernels_match_the_definition() {
        let crops = std::sync::atomic::AtomicUsize::new(0);
        on_pools(|threads| {
            for (side, k, stride, pad) in (1..=4).flat_map(|a| {
                (1..=5).flat_map(move |b| {
                    (1..=3).flat_map(move |c| (0..=3).map(move |d| (a, b, c, d)))
                })
            }) {
                for (rows, other) in [(true, 3), (false, 3), (true, 1), (false, 1)] {
                    let along = |on: usize, off: usize| if rows { [on, off] } else { [off, on] };
                    let [h, w] = along(side, other);
                    let [kh, kw] = along(k, 3);
                    let g = Geometry {
                        batch: 2,
                        c_in: 2,
                        h,
                        w,
                        c_out: 3,
                        kh,
                        kw,
                        stride: along(stride, 1),
                        pad: along(pad, 1),
                    };
                    if !g.valid() {
                        continue;
                    }
                    let x = values(g.batch * g.in_len(), 3);
                    let wt = values(g.c_out * g.k(), 4);
                    if cropped(&g, &wt).is_some() {
                        crops.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    let want = naive(&x, &wt, &g);
                    for (a, b) in forward(&x, &wt, &g).iter().zip(&want) {
                        assert!((a - b).abs() < 1e-5, "{g:?} t{threads}: {a} vs {b}");
                    }
                    let ab = |o: usize| (o as f32 - 1.0, 0.25);
                    let fused = forward_affine(&x, &wt, &g, ab, true);
                    for (i, (a, b)) in fused.iter().zip(&want).enumerate() {
                        let (m, c) = ab(i / g.out_hw() % g.c_out);
                        let b = (b * m + c).max(0.0);
                        assert!((a - b).abs() < 1e-5, "fused {g:?} t{threads}: {a} vs {b}");
                    }
                    let r = values(g.batch * g.out_len(), 5);
                    let (dx_want, dw_want) = naive_grads(&x, &wt, &r, &g);
                    let (dx, dw) = (grad_input(&wt, &r, &g), grad_weight(&x, &r, &g));
                    assert_eq!((dx.len(), dw.len()), (dx_want.len(), dw_want.len()));
                    for (a, b) in dx.iter().zip(&dx_want) {
                        assert!((a - b).abs() < 1e-4, "dx {g:?} t{threads}: {a} vs {b}");
                    }
                    for (a, b) in dw.iter().zip(&dw_want) {
                        assert!((a - b).abs() < 1e-4, "dw {g:?} t{threads}: {a} vs {b}");
                    }
                }
            }
        });
        // Per pool and GEMM: the geometries with a side of 1 on the other axis all crop.
        let crops = crops.into_inner();
        assert!(crops > 8 * 200, "{crops} geometries cropped");
    }

    /// Small planes in groups: height and width with their own kernel, stride and padding,
    /// a 1×1 output (3×3 kernel on a 1×1 image, 8 of 9 taps in the padding: cropped to its
    /// centre forward ([`cropped`]), whole in the gradients), a plane of
    /// exactly 16 positions, and a 1×1 convolution of 18 (the general path, grouped). 9
    /// images under 1 to 4 threads: on 2 threads groups of 4, 4 and 1, the first thread's 5
    /// images cut into two groups whose weight gradients it sums; on 4 threads groups of 2
    /// and a last one of 1.
    #[test]
    fn small_planes_in_groups_match_the_definition() {
        // (h, w, kh, kw, stride, pad)
        let shapes = [
            (3, 7, 3, 1, [2, 3], [1, 0]),
            (1, 1, 3, 3, [1, 1], [1, 1]),
            (2, 2, 3, 3, [2, 2], [1, 1]),
            (1, 16, 1, 3, [1, 1], [0, 1]),
            (2, 9, 1, 1, [1, 1], [0, 0]),
        ];
        on_pools(|threads| {
            for (h, w, kh, kw, stride, pad) in shapes {
                let g = Geometry {
                    batch: 9,
                    c_in: 2,
                    h,
                    w,
                    c_out: 3,
                    kh,
                    kw,
                    stride,
                    pad,
                };
                assert!(g.out_hw() <= 18 && group_size(&g, threads, MIN_COLUMNS) > 1);
                check_against_definition(&g, &format!("{g:?} on {threads} threads"));
            }
        });
    }

    /// Stride-1 planes whose width the convolution keeps: each tap's unfolded row is one
    /// shifted span ([`ShiftedSpan`]). Heights that shrink, kernels and paddings per axis,
    /// taps up to 3 columns into the padding, and taps that read only padding (a 5-row
    /// kernel with padding 2 on a 2-row image: its first row's taps read rows −2 and −1,
    /// its last row's rows 2 and 3; cropped to the middle three forward ([`cropped`]),
    /// whole in the gradients).
    #[test]
    fn same_width_planes_match_the_definition() {
        // (h, w, kh, kw, pad)
        let shapes = [
            (6, 7, 3, 3, [0, 1]),
            (2, 10, 5, 5, [2, 2]),
            (5, 5, 5, 1, [2, 0]),
            (3, 9, 1, 7, [0, 3]),
            (4, 5, 1, 5, [0, 2]),
            // Rows of whole panels, or of half panels in planes of whole ones: our GEMM's
            // forward packs these from the images ([`Shifted`]).
            (2, 16, 3, 3, [1, 1]),
            (3, 32, 5, 5, [1, 2]),
            (4, 8, 3, 3, [1, 1]),
            (6, 8, 5, 3, [2, 1]),
            // Rows of 4, 2 and 1, several to a panel, of one image (4×4) or of several side
            // by side. On 8 images a product is a group of 4 or 2 images on 4×4 planes (1–2
            // or 3–4 threads), every one whole panels; of 8, 4 or 2 on the others (1, 2 or
            // 3–4 threads), packed from the images where that fills whole panels (groups
            // of 8 or 4 on 2×2 and 4×1, of 8 on 3×2), else unfolded.
            (4, 4, 3, 3, [1, 1]),
            (2, 2, 3, 3, [1, 1]),
            (3, 2, 3, 1, [1, 0]),
            (4, 1, 3, 1, [1, 0]),
        ];
        on_pools(|threads| {
            for (h, w, kh, kw, pad) in shapes {
                let g = Geometry {
                    batch: if w < 8 { 8 } else { 5 },
                    c_in: 2,
                    h,
                    w,
                    c_out: 3,
                    kh,
                    kw,
                    stride: [1, 1],
                    pad,
                };
                assert!(same_width(&g), "{g:?}");
                assert_eq!(
                    packs_shifted(&g),
                    [1, 2, 4, 8, 16, 32].contains(&w),
                    "{g:?}"
                );
                check_against_definition(&g, &format!("{g:?} on {threads} threads"));
            }
        });
    }

    #[test]
    fn an_empty_image_is_not_a_valid_geometry() {
        // Padding covers the kernel, yet there is no image to unfold: burn's path takes it.
        let mut g = geometry(1, 1, 1);
        assert!(g.valid());
        g.h = 0;
        assert!(!g.valid());
        g.h = 5;
        g.w = 0;
        assert!(!g.valid());
    }

    #[test]
    fn group_sizes_by_hand() {
        let layer = |side: usize, batch: usize| Geometry {
            batch,
            c_in: 8,
            h: side,
            w: side,
            c_out: 8,
            kh: 3,
            kw: 3,
            stride: [1, 1],
            pad: [1, 1],
        };
        // 1×1 outputs: 64 images wanted, at most half the batch on 2 threads.
        assert_eq!(group_size(&layer(1, 128), 2, MIN_COLUMNS), 64);
        assert_eq!(group_size(&layer(1, 100), 2, MIN_COLUMNS), 50);
        assert_eq!(group_size(&layer(1, 100), 1, MIN_COLUMNS), 64);
        // 4×4 outputs: 4 images make 64 columns; 8×8 and larger stay one image per GEMM.
        assert_eq!(group_size(&layer(4, 128), 2, MIN_COLUMNS), 4);
        assert_eq!(group_size(&layer(8, 128), 2, MIN_COLUMNS), 1);
        assert_eq!(group_size(&layer(32, 128), 2, MIN_COLUMNS), 1);
        // 3×3 outputs: 8 images; an odd batch of 7 on 2 threads allows 3 (groups of 3, 3
        // and 1: every thread has one), 6 images on 4 threads 1 each.
        assert_eq!(group_size(&layer(3, 128), 2, MIN_COLUMNS), 8);
        assert_eq!(group_size(&layer(3, 7), 2, MIN_COLUMNS), 3);
        assert_eq!(group_size(&layer(3, 6), 4, MIN_COLUMNS), 1);
        // Fewer images than threads: one at a time (the GEMM itself is then parallel).
        assert_eq!(group_size(&layer(1, 3), 4, MIN_COLUMNS), 1);
        // The weight gradient's groups of 256 columns: 4 images of 8×8, 16 of 4×4; 16×16
        // planes stay one image per GEMM.
        assert_eq!(group_size(&layer(8, 128), 2, MIN_WEIGHT_COLUMNS), 4);
        assert_eq!(group_size(&layer(4, 128), 2, MIN_WEIGHT_COLUMNS), 16);
        assert_eq!(group_size(&layer(16, 128), 2, MIN_WEIGHT_COLUMNS), 1);
    }

    /// Gradients by the adjoint identity: for L = Σ y·r (r random), dL/dx·e and dL/dW·e equal
    /// the forward's change along a unit direction e, computed exactly since conv is linear.
    #[test]
    fn gradients_are_the_adjoints_of_forward() {
        on_pools(|threads| {
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
                    assert!(
                        (dx[i] - want).abs() < 1e-4,
                        "dx k{k} s{s} p{p} t{threads} at {i}"
                    );
                }
                for i in 0..w.len() {
                    let mut e = vec![0.0; w.len()];
                    e[i] = 1.0;
                    let want = dot(&naive(&x, &e, &g), &r);
                    assert!(
                        (dw[i] - want).abs() < 1e-4,
                        "dw k{k} s{s} p{p} t{threads} at {i}"
                    );
                }
            }
        });
    }

    /// Planes of more than [`SMALL_PLANE`] positions that are strided or change width: the
    /// row-by-row unfold and fold, under 1 to 4 threads.
    const GENERAL: [Geometry; 3] = [
        // 7×7 → 5×5 (no padding), 9×9 → 5×5 (stride 2), and per-axis everything: 6×9 →
        // 6×3 with a 3×5 kernel, strides 1 and 2, paddings 1 and 0.
        general(7, 7, [3, 3], [1, 1], [0, 0]),
        general(9, 9, [3, 3], [2, 2], [1, 1]),
        general(6, 9, [3, 5], [1, 2], [1, 0]),
    ];

    const fn general(
        h: usize,
        w: usize,
        k: [usize; 2],
        stride: [usize; 2],
        pad: [usize; 2],
    ) -> Geometry {
        Geometry {
            batch: 3,
            c_in: 2,
            h,
            w,
            c_out: 3,
            kh: k[0],
            kw: k[1],
            stride,
            pad,
        }
    }

    #[test]
    fn general_planes_match_the_definition() {
        on_pools(|threads| {
            for g in GENERAL {
                assert!(!same_plane(&g) && g.out_hw() > SMALL_PLANE, "{g:?}");
                check_against_definition(&g, &format!("{g:?} on {threads} threads"));
            }
        });
    }

    /// The weight gradient's two shapes the other tests miss, on our GEMM and the crate's:
    /// one image (the batch is not split, the GEMM itself runs on every thread: 25 output
    /// channels give our GEMM up to 3 row parts), and groups deeper than one `KC` block
    /// (6×10 planes in groups of 5, 300 columns, on 1 thread; 7 images, so the second
    /// group adds a shorter one into the first's sum).
    #[test]
    fn weight_gradients_of_one_image_and_of_deep_groups_match_the_definition() {
        let g = |batch, h, w| Geometry {
            batch,
            c_in: 2,
            h,
            w,
            c_out: 25,
            kh: 3,
            kw: 3,
            stride: [1, 1],
            pad: [1, 1],
        };
        on_pools(|threads| {
            check_against_definition(&g(1, 5, 4), &format!("one image on {threads} threads"));
            if threads == 1 {
                let deep = g(7, 6, 10);
                assert_eq!(
                    group_size(&deep, 1, MIN_WEIGHT_COLUMNS) * deep.out_hw(),
                    300
                );
                check_against_definition(&deep, "groups of 300 columns");
            }
        });
    }

    /// The input gradient folded back 18 rows at a time (the least slice, 16 rounded up to
    /// a packed panel's edge) against the definition, on every unfold path: small planes,
    /// same-width planes and the general one, with enough input channels for 41 to 50 rows:
    /// three slices, the last one shorter.
    #[test]
    fn input_gradients_folded_in_slices_match_the_definition() {
        let cases = CASES.into_iter().filter(|&(k, ..)| k > 2);
        let more_channels = |g: Geometry| Geometry {
            c_in: g.c_in.max(40 / (g.kh * g.kw) + 1),
            ..g
        };
        let shapes: Vec<Geometry> = cases
            .map(|(k, s, p)| geometry(k, s, p))
            .chain(GENERAL)
            .map(more_channels)
            .collect();
        on_pools(|threads| {
            for g in &shapes {
                assert!(g.k() > 36, "{g:?}");
                let x = values(g.batch * g.in_len(), 14);
                let w = values(g.c_out * g.k(), 9);
                let r = values(g.batch * g.out_len(), 10);
                let (want, _) = naive_grads(&x, &w, &r, g);
                let dx = grad_input_folding(&w, &r, g, 1);
                for (i, (a, b)) in dx.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() < 1e-4,
                        "dx {g:?} t{threads} at {i}: {a} vs {b}"
                    );
                }
            }
        });
    }

    /// `dL/dx` and `dL/dW` of `L = Σ y·r` straight from the definition: every product of
    /// the forward loops sends `r` back to its input and its weight.
    fn naive_grads(x: &[f32], w: &[f32], r: &[f32], g: &Geometry) -> (Vec<f32>, Vec<f32>) {
        let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
        products(g, |xi, wi, yi| {
            dx[xi] += w[wi] * r[yi];
            dw[wi] += x[xi] * r[yi];
        });
        (dx, dw)
    }

    /// Batches of 64 and 65 images of 8×8: at stride 1, enough groups that the input
    /// gradient reads a row-major copy of `Wᵀ` and the weight gradient is summed transposed
    /// ([`worth_transposing`]; on the `gemm` crate's turn of [`on_pools`]), under 1 to 4 threads (65 on 4: parts of 17, 17, 17, 14).
    /// Seven output channels, so that the forward's packed weight has a whole panel of 6 rows
    /// (full register tiles) and a partial one.
    #[test]
    fn transposed_gradients_match_the_definition() {
        // (kernel, stride, padding): a same-width plane, a wider kernel, a strided one.
        let shapes = [(3, 1, 1), (5, 1, 2), (3, 2, 1)];
        for ((k, s, p), batch) in shapes.into_iter().flat_map(|c| [(c, 64), (c, 65)]) {
            let g = Geometry {
                batch,
                c_in: 2,
                h: 8,
                w: 8,
                c_out: 7,
                kh: k,
                kw: k,
                stride: [s, s],
                pad: [p, p],
            };
            let x = values(g.batch * g.in_len(), 11);
            let w = values(g.c_out * g.k(), 12);
            let r = values(g.batch * g.out_len(), 13);
            let (want_dx, want_dw) = naive_grads(&x, &w, &r, &g);
            let want_y = naive(&x, &w, &g);
            on_pools(|threads| {
                for (i, (a, b)) in forward(&x, &w, &g).iter().zip(&want_y).enumerate() {
                    assert!(
                        (a - b).abs() < 1e-4,
                        "y k{k} s{s} t{threads} at {i}: {a} vs {b}"
                    );
                }
                if s == 1 {
                    // Without packing, the copy of `Wᵀ` is the left operand.
                    assert!(worth_transposing(&g, group_size(&g, threads, MIN_COLUMNS)));
                    assert!(worth_transposing(
                        &g,
                        group_size(&g, threads, MIN_WEIGHT_COLUMNS)
                    ));
                }
                // Folded back whole, and 18 rows at a time (rows 18.. of `Wᵀ`, copied or packed).
                for fold in [FOLD_CHUNK, 1] {
                    let dx = grad_input_folding(&w, &r, &g, fold);
                    for (i, (a, b)) in dx.iter().zip(&want_dx).enumerate() {
                        let what = format!("dx k{k} s{s} t{threads} fold {fold} at {i}");
                        assert!((a - b).abs() < 1e-4, "{what}: {a} vs {b}");
                    }
                }
                let dw = grad_weight(&x, &r, &g);
                for (i, (a, b)) in dw.iter().zip(&want_dw).enumerate() {
                    let tol = 1e-4 * b.abs().max(1.0);
                    assert!(
                        (a - b).abs() < tol,
                        "dw k{k} s{s} t{threads} at {i}: {a} vs {b}"
                    );
                }
            });
        }
    }

    /// [`Shifted`]'s packed blocks are the packed blocks of [`im2col`]'s matrix, value for
    /// value, for blocks of rows and columns as our GEMM asks for them (columns from and in
    /// multiples of 16): deep unfolded matrices (past one `KC` block of 256 rows), taps
    /// reading before the first value of `x` and past its last, padding on one side only,
    /// kernels of one row or one column, rows of 1, 2, 4, 8 (several to a panel), 16 and 32.
    #[test]
    fn shifted_blocks_pack_like_the_laid_out_matrix() {
        use ours::Right;
        let shapes = [
            // (c, h, w, kh, kw, pad)
            (30, 2, 16, 3, 3, [1, 1]),
            (2, 3, 32, 5, 5, [1, 2]),
            (20, 8, 8, 3, 3, [1, 1]),
            (3, 6, 8, 5, 3, [2, 1]),
            (2, 4, 8, 1, 5, [0, 2]),
            (3, 4, 16, 3, 1, [0, 0]),
            (2, 3, 16, 1, 3, [0, 1]),
            // Rows of 4, 2 and 1: a panel is four, eight or sixteen of them, from one image
            // or (on 2×2, 3×2 and 4×1 planes) several.
            (3, 4, 4, 3, 3, [1, 1]),
            (5, 2, 2, 3, 3, [1, 1]),
            (2, 3, 2, 3, 3, [2, 1]),
            (2, 4, 1, 3, 1, [1, 0]),
        ];
        for (c_in, h, w, kh, kw, pad) in shapes {
            // The output plane (stride 1, the width kept).
            let ohw: usize = (h + 2 * pad[0] + 1 - kh) * w;
            // The fewest images that make at least 48 columns, a whole number of panels.
            let batch = (1..)
                .find(|b| (b * ohw).is_multiple_of(16) && b * ohw >= 48)
                .expect("a batch");
            let g = Geometry {
                batch,
                c_in,
                h,
                w,
                c_out: 1,
                kh,
                kw,
                stride: [1, 1],
                pad,
            };
            assert!(packs_shifted(&g), "{g:?}");
            assert_eq!(g.out_hw(), ohw);
            assert!((g.batch * ohw).is_multiple_of(16), "{g:?}");
            let x = values(g.batch * g.in_len(), 4);
            let (k, n) = (g.k(), g.batch * g.out_hw());
            let mut col = vec![f32::NAN; k * n];
            im2col(&x, &g, &mut col);
            let laid_out = Mat::rows(&col, n);
            let plan = shift_plan(&g);
            let shifted = Shifted {
                x: &x,
                g: &g,
                plan: &plan,
            };
            let depths = [(0, k), (0, k.min(7)), (k / 2, k - k / 2), (k - 1, 1)];
            let spans = [(0, n), (0, 16), (16, n - 16), (n - 16, 16), (32, 16)];
            for (p0, kc) in depths {
                for (j0, nc) in spans {
                    let len = nc * kc;
                    let (mut want, mut got) = (vec![f32::NAN; len], vec![f32::NAN; len]);
                    laid_out.pack(p0, kc, j0, nc, &mut want);
                    shifted.pack(p0, kc, j0, nc, &mut got);
                    // Bit for bit, NaN (a value never written) included.
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "{g:?} rows {p0}+{kc} cols {j0}+{nc}"
                    );
                }
            }
        }
    }

    /// A shared left operand gives the same products packed for our GEMM as read in place by
    /// the `gemm` crate, over row slices starting at panel edges (as the input gradient
    /// folds), both orientations, on 1 and 2 threads.
    #[test]
    fn a_packed_left_operand_matches_the_crates_products() {
        if !ours::available() {
            return;
        }
        let (m, k, n) = (50, 37, 45);
        let w: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 24.0)
            .collect();
        for transposed in [false, true] {
            // `w` as `[m, k]`, or as the transpose of a `[k, m]` matrix.
            let a = if transposed {
                Mat::transposed(&w, m)
            } else {
                Mat::rows(&w, k)
            };
            let (packed, plain) = (Left::on(true, a, m, k), Left::on(false, a, m, k));
            for par in [Parallelism::None, Parallelism::Rayon(2)] {
                for rows in [0..m, 0..6, 12..30, 48..50] {
                    let mut got = vec![f32::NAN; rows.len() * n];
                    let mut want = vec![f32::NAN; rows.len() * n];
                    packed.product(rows.clone(), n, &mut got, Mat::rows(&b, n), par);
                    plain.product(rows.clone(), n, &mut want, Mat::rows(&b, n), par);
                    for (g, w) in got.iter().zip(&want) {
                        assert!(
                            (g - w).abs() < 1e-4 * (1.0 + w.abs()),
                            "{rows:?}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_transpose_by_hand() {
        // [[1, 2, 3], [4, 5, 6]] → [[1, 4], [2, 5], [3, 6]].
        let t = transpose(&[1., 2., 3., 4., 5., 6.], 2, 3);
        assert_eq!(t, vec![1., 4., 2., 5., 3., 6.]);
        // Across tile edges: 33 × 70, element (r, c) = 100·r + c.
        let (rows, cols) = (33, 70);
        let m: Vec<f32> = (0..rows * cols)
            .map(|i| (i / cols * 100 + i % cols) as f32)
            .collect();
        let t = transpose(&m, rows, cols);
        for c in 0..cols {
            for r in 0..rows {
                assert_eq!(t[c * rows + r], (100 * r + c) as f32);
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
