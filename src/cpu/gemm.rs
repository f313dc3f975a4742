//! `dst (+)= a · b` in f32 for AVX2 + FMA machines: the GEMM under our convolutions
//! where the CPU has those instructions but no AVX-512 ([`preferred`]) and a layer's shapes
//! pay for the packing (`conv::kernel::packs_weight` and `packs_grad_weight`, or pinned by
//! `conv::kernel::pin_gemm`), the `gemm` crate's everywhere else.
//!
//! Why our own: on the project's 2-core AMD EPYC (Zen 3, AVX2, no AVX-512) the `gemm`
//! crate's 16×6 micro-kernel took 82% of AlexNet's convolution time (perf), at about two
//! thirds of the cores' FMA peak (90 GFLOP/s per core, measured by a loop of independent
//! FMAs). Its inner loop reaches the unpacked right operand through a stride held in a
//! register, an add per broadcast. AlexNet's layers ran at 46–97 GFLOP/s on two cores,
//! oneDNN's forward and input gradients at 122–157 (`BENCHMARKS.md`). This is the textbook
//! layout (Goto and van de Geijn, "Anatomy of high-performance matrix multiplication", 2008;
//! BLIS): both operands packed into panels, a 6×16 register tile of 12 accumulators,
//! constant offsets in the inner loop, unrolled by 4; alone, on packed panels in cache, it
//! ran at 80–94 GFLOP/s on one core ([`x86::UNROLL`]).
//!
//! Safety rests on slices: every operand is a slice whose extent is asserted against the
//! dimensions and strides before it is read, and the lengths the micro-kernel reads and
//! writes are asserted before each call.

use std::ops::Range;

use rayon::prelude::*;

/// Rows of the register tile (broadcast from the packed left operand).
const MR: usize = 6;
/// Columns of the register tile: two 8-lane vectors of the packed right operand.
pub const NR: usize = 16;
/// Depth of a packed block: a right panel `KC × NR` is 16 KiB, half of L1.
const KC: usize = 256;
/// Rows of a packed left block: `MC × KC` is 144 KiB, kept in L2 (512 KiB per core on the
/// EPYC) while every right panel streams past it.
const MC: usize = 144;
/// Columns of a packed right block (2 MiB at `KC`), in L3.
const NC: usize = 2048;

/// A matrix read from a slice: element `(i, j)` is `s[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub s: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major matrix of `cols` columns.
    pub fn rows(s: &'a [f32], cols: usize) -> Self {
        Self { s, rs: cols, cs: 1 }
    }
    /// The transpose of a row-major matrix of `cols` columns.
    pub fn transposed(s: &'a [f32], cols: usize) -> Self {
        Self::rows(s, cols).t()
    }
    /// This matrix's transpose.
    pub fn t(self) -> Self {
        Self {
            s: self.s,
            rs: self.cs,
            cs: self.rs,
        }
    }
    /// Asserts that a `rows × cols` matrix lies inside the slice.
    pub fn check(&self, rows: usize, cols: usize) {
        if rows > 0 && cols > 0 {
            // Checked: in release an overflow would wrap and pass the test below.
            let last = (rows - 1)
                .checked_mul(self.rs)
                .zip((cols - 1).checked_mul(self.cs))
                .and_then(|(a, b)| a.checked_add(b))
                .expect("a matrix's extent overflows usize");
            assert!(
                last < self.s.len(),
                "a {rows}×{cols} matrix with strides ({}, {}) needs {} values, the slice holds {}",
                self.rs,
                self.cs,
                last + 1,
                self.s.len()
            );
        }
    }
    fn at(&self, i: usize, j: usize) -> f32 {
        self.s[i * self.rs + j * self.cs]
    }
}

/// Whether this CPU runs [`matmul`] (AVX2 and FMA), checked once.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether [`matmul`] should be preferred to the `gemm` crate here: AVX2 and FMA but no
/// AVX-512F. With AVX-512 the crate runs 512-bit kernels (up to ~376 GFLOP/s on two cores
/// of the project's Intel machine, `BENCHMARKS.md`), twice the width of our tile.
pub fn preferred() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        available() && !std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `dst[m, n] (+)= a[m, k] · b[k, n]`, `dst` row-major and contiguous, on `threads` rayon
/// threads (split by rows of `dst`). Panics unless [`available`].
pub fn matmul(
    [m, n, k]: [usize; 3],
    dst: &mut [f32],
    accumulate: bool,
    a: Mat,
    b: Mat,
    threads: usize,
) {
    let a = Packed::new(a, m, k);
    matmul_packed(&a, 0..m, n, dst, accumulate, b, threads);
}

/// A left operand `[m, k]` packed once, for products that reuse it (a convolution's weight,
/// the same for every image of a batch): panels of [`MR`] rows, each column by column
/// over the whole depth (`data[panel][p][r]`), rows past `m` zero. Packing per product cost
/// 18% of an AlexNet layer's time: one image's 8×8 plane gives a product of 64 columns, and
/// the weight it packs is as large as a sixth of the product's work.
pub struct Packed {
    data: Vec<f32>,
    m: usize,
    k: usize,
}

impl Packed {
    pub fn new(a: Mat, m: usize, k: usize) -> Self {
        a.check(m, k);
        let mut data = vec![0.0; m.div_ceil(MR) * MR * k];
        if k > 0 {
            // In parallel over panels: a large weight on small planes (ResNet-18's 512
            // channels on 1×1) is packed in about the time of its products.
            data.par_chunks_mut(MR * k)
                .enumerate()
                .for_each(|(ps, panel)| pack_panel(a, ps * MR, MR.min(m - ps * MR), k, panel));
        }
        Self { data, m, k }
    }
    /// Rows `MR·ps..` of the packed matrix, depth `p0..p0+kc`.
    fn panel(&self, ps: usize, p0: usize, kc: usize) -> &[f32] {
        &self.data[ps * MR * self.k + p0 * MR..][..kc * MR]
    }
}

/// `panel` ← rows `r0..r0+rows` of `a` (at most [`MR`]), columns `0..k`, column by column;
/// rows past `rows` are left as they are (zero).
fn pack_panel(a: Mat, r0: usize, rows: usize, k: usize, panel: &mut [f32]) {
    if a.rs == 1 {
        // Each column's MR values lie side by side (a transposed view).
        for (p, out) in panel.chunks_exact_mut(MR).enumerate() {
            let at = r0 + p * a.cs;
            if rows == MR {
                // A fixed-size copy, inlined: a `memcpy` call per 24 bytes took longer.
                let out: &mut [f32; MR] = out.try_into().expect("MR values");
                *out = a.s[at..at + MR].try_into().expect("MR values");
            } else {
                out[..rows].copy_from_slice(&a.s[at..at + rows]);
            }
        }
    } else if a.cs == 1 {
        // Row-major: the panel's rows, read side by side.
        let lines: Vec<&[f32]> = (0..rows).map(|r| &a.s[(r0 + r) * a.rs..][..k]).collect();
        for (p, out) in panel.chunks_exact_mut(MR).enumerate() {
            for (o, line) in out.iter_mut().zip(&lines) {
                *o = line[p];
            }
        }
    } else {
        for r in 0..rows {
            for (p, v) in panel.iter_mut().skip(r).step_by(MR).enumerate() {
                *v = a.at(r0 + r, p);
            }
        }
    }
}

/// A right operand `[k, n]` that packs its own blocks for [`matmul_right`]: one that is
/// never laid out whole (a convolution's unfolded images, packed from the images).
pub trait Right: Sync {
    /// `pb` ← rows `p0..p0+kc`, columns `j0..j0+nc` as panels of [`NR`] columns, each row
    /// by row (`pb[panel][p][c]`), the columns past `nc` zero; `pb` holds
    /// `nc.next_multiple_of(NR)·kc` values.
    fn pack(&self, p0: usize, kc: usize, j0: usize, nc: usize, pb: &mut [f32]);
}

impl Right for Mat<'_> {
    fn pack(&self, p0: usize, kc: usize, j0: usize, nc: usize, pb: &mut [f32]) {
        pack_b(*self, p0, kc, j0, nc, pb)
    }
}

/// `dst[rows.len(), n] (+)= a[rows, :] · b[k, n]` for a packed `a` (see [`matmul`]); `rows`
/// must start at a multiple of 6 (a panel's edge).
pub fn matmul_packed(
    a: &Packed,
    rows: Range<usize>,
    n: usize,
    dst: &mut [f32],
    accumulate: bool,
    b: Mat,
    threads: usize,
) {
    b.check(a.k, n);
    matmul_right(a, rows, n, dst, accumulate, &b, threads)
}

/// [`matmul_packed`] for a right operand `[a.k, n]` that packs itself.
pub fn matmul_right(
    a: &Packed,
    rows: Range<usize>,
    n: usize,
    dst: &mut [f32],
    accumulate: bool,
    b: &impl Right,
    threads: usize,
) {
    let (m, k) = (rows.len(), a.k);
    assert!(
        rows.end <= a.m && rows.start.is_multiple_of(MR),
        "rows {rows:?} of a packed {}-row matrix",
        a.m
    );
    let len = m.checked_mul(n).expect("dst's size overflows usize");
    assert!(dst.len() >= len);
    // Every product's tile starts inside `dst` and ends `(MR−1)·n + NR` values on at most:
    // the bound [`kernel`] checks, which must not overflow.
    assert!(n.checked_mul(MR).is_some(), "dst's rows overflow usize");
    assert!(
        available(),
        "our GEMM runs only where the CPU has AVX2 and FMA"
    );
    if m == 0 || n == 0 {
        return;
    }
    let dst = &mut dst[..len];
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return;
    }
    let panel0 = rows.start / MR;
    // Enough rows per thread to keep each one's packing of `b` small beside its products.
    let parts = threads.min(m.div_ceil(2 * MR)).max(1);
    if parts == 1 {
        return serial(a, panel0, [m, n], dst, accumulate, b);
    }
    let per = m.div_ceil(parts).next_multiple_of(MR);
    dst.par_chunks_mut(per * n)
        .enumerate()
        .for_each(|(p, part)| {
            serial(
                a,
                panel0 + p * per / MR,
                [part.len() / n, n],
                part,
                accumulate,
                b,
            )
        });
}

thread_local! {
    /// A thread's packed right block, kept across products rather than allocated and zeroed
    /// for each: a convolution runs one product per group of images.
    static PANEL_B: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`matmul_packed`] on the calling thread, for the `m` rows of `a` from panel `panel0`.
fn serial(
    a: &Packed,
    panel0: usize,
    [m, n]: [usize; 2],
    dst: &mut [f32],
    accumulate: bool,
    b: &impl Right,
) {
    let k = a.k;
    PANEL_B.with_borrow_mut(|pb| {
        // Every value a product reads is packed first: no need to clear.
        let need = NC.min(n.next_multiple_of(NR)) * KC.min(k);
        pb.resize(pb.len().max(need), 0.0);
        let pb = &mut pb[..];
        for j0 in (0..n).step_by(NC) {
            let nc = NC.min(n - j0);
            for p0 in (0..k).step_by(KC) {
                let kc = KC.min(k - p0);
                let add = accumulate || p0 > 0;
                let pb = &mut pb[..nc.next_multiple_of(NR) * kc];
                b.pack(p0, kc, j0, nc, pb);
                // A block of `MC` rows stays in L2 while every right panel streams past it.
                for i0 in (0..m).step_by(MC) {
                    let mc = MC.min(m - i0);
                    for (js, panel_b) in pb.chunks_exact(NR * kc).enumerate() {
                        let j = j0 + js * NR;
                        let cols = NR.min(n - j);
                        for i in (i0..i0 + mc).step_by(MR) {
                            let panel_a = a.panel(panel0 + i / MR, p0, kc);
                            let rows = MR.min(m - i);
                            let tile = &mut dst[i * n + j..];
                            tile_product(kc, panel_a, panel_b, tile, n, [rows, cols], add);
                        }
                    }
                }
            }
        }
    })
}

/// `pb` ← rows `p0..p0+kc`, columns `j0..j0+nc` of `b`, as panels of [`NR`] columns, each
/// row by row (`pb[panel][p][c]`); columns past `nc` are zero.
fn pack_b(b: Mat, p0: usize, kc: usize, j0: usize, nc: usize, pb: &mut [f32]) {
    assert_eq!(
        pb.len(),
        nc.next_multiple_of(NR) * kc,
        "a packed block's size"
    );
    if b.cs == 1 {
        // Row by row, each row's 16 values to its panel in turn, so that the reads run
        // along each row. Panel by panel, each of a panel's `kc` rows was read 16 values at a
        // time at the row stride (4 KiB on a 1×1 convolution's 32×32 planes): NIN-96's 1×1
        // layers on 32×32 took 1.4–1.7× as long in their forward (`BENCHMARKS.md`).
        for p in 0..kc {
            let row = &b.s[(p0 + p) * b.rs + j0..][..nc];
            let (whole, rest) = row.split_at(nc - nc % NR);
            for (js, src) in whole.chunks_exact(NR).enumerate() {
                // A fixed-size copy, inlined: a `memcpy` call per 64 bytes took longer.
                let out: &mut [f32; NR] = (&mut pb[(js * kc + p) * NR..][..NR])
                    .try_into()
                    .expect("NR values");
                *out = src.try_into().expect("NR values");
            }
            if !rest.is_empty() {
                let out = &mut pb[(whole.len() / NR * kc + p) * NR..][..NR];
                out[..rest.len()].copy_from_slice(rest);
                out[rest.len()..].fill(0.0);
            }
        }
        return;
    }
    for (js, panel) in pb.chunks_exact_mut(NR * kc).enumerate() {
        let c0 = js * NR;
        let cols = NR.min(nc - c0);
        if cols < NR {
            panel.fill(0.0);
        }
        if b.rs == 1 {
            // Each column lies contiguous (a transposed view).
            for c in 0..cols {
                let at = p0 + (j0 + c0 + c) * b.cs;
                for (p, &v) in b.s[at..at + kc].iter().enumerate() {
                    panel[p * NR + c] = v;
                }
            }
        } else {
            for p in 0..kc {
                for c in 0..cols {
                    panel[p * NR + c] = b.at(p0 + p, j0 + c0 + c);
                }
            }
        }
    }
}

/// The `rows × cols` tile at the start of `c` (row stride `ldc`) (+)= one packed left panel
/// times one packed right panel, `kc` deep. A partial tile (at the matrix's edge) is
/// computed whole into a buffer and its valid part added or copied.
fn tile_product(
    kc: usize,
    pa: &[f32],
    pb: &[f32],
    c: &mut [f32],
    ldc: usize,
    [rows, cols]: [usize; 2],
    add: bool,
) {
    if rows == MR && cols == NR {
        kernel(kc, pa, pb, c, ldc, add);
        return;
    }
    let mut tmp = [0.0f32; MR * NR];
    kernel(kc, pa, pb, &mut tmp, NR, false);
    for (r, line) in tmp.chunks_exact(NR).take(rows).enumerate() {
        let out = &mut c[r * ldc..r * ldc + cols];
        if add {
            for (o, v) in out.iter_mut().zip(line) {
                *o += v;
            }
        } else {
            out.copy_from_slice(&line[..cols]);
        }
    }
}

/// `c[MR][NR]` (row stride `ldc`) (+)= `pa[kc][MR] · pb[kc][NR]` on the micro-kernel, after
/// asserting what it relies on: the CPU's AVX2 and FMA, and the lengths it reads and writes.
fn kernel(kc: usize, pa: &[f32], pb: &[f32], c: &mut [f32], ldc: usize, add: bool) {
    assert!(
        available(),
        "our GEMM runs only where the CPU has AVX2 and FMA"
    );
    assert!(pa.len() >= kc * MR && pb.len() >= kc * NR);
    let tile = ldc.checked_mul(MR - 1).and_then(|v| v.checked_add(NR));
    assert!(
        tile.is_some_and(|t| c.len() >= t),
        "a tile outside its matrix"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2 and FMA were detected, and every length `x86::kernel` reads and writes is
    // asserted just above.
    unsafe {
        x86::kernel(kc, pa, pb, c, ldc, add)
    };
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("`available` is false off x86-64");
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// Depth steps per turn of the micro-kernel's loop. Alone on packed panels in cache (a
    /// `KC`-deep right panel in L1, 24 left panels streaming from L2), the loop of one step
    /// ran at 62–79 GFLOP/s on one core of the EPYC, unrolled by 2, 4 or 8 at 76–94 (by 4:
    /// 80–94) in the same process, and whole inference passes ran 1.02–1.09× as fast
    /// (`BENCHMARKS.md`).
    const UNROLL: usize = 4;

    /// One depth step of the 6×16 tile: `acc += a[0..6]ᵀ · b[0..16]`. A macro rather than
    /// a function so that its intrinsics are compiled inside the `avx2,fma` kernel.
    macro_rules! step {
        ($acc:ident, $a:expr, $b:expr) => {{
            let (a, b) = ($a, $b);
            let b0 = _mm256_loadu_ps(b);
            let b1 = _mm256_loadu_ps(b.add(8));
            for (i, row) in $acc.iter_mut().enumerate() {
                let ai = _mm256_broadcast_ss(&*a.add(i));
                row[0] = _mm256_fmadd_ps(ai, b0, row[0]);
                row[1] = _mm256_fmadd_ps(ai, b1, row[1]);
            }
        }};
    }

    /// `c[MR][NR]` (row stride `ldc`) (+)= `pa[kc][MR] · pb[kc][NR]`.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `pa` holds `kc·MR` values, `pb` `kc·NR`, and `c`
    /// `(MR−1)·ldc + NR`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn kernel(kc: usize, pa: &[f32], pb: &[f32], c: &mut [f32], ldc: usize, add: bool) {
        debug_assert!(pa.len() >= kc * MR && pb.len() >= kc * NR);
        debug_assert!(c.len() >= (MR - 1) * ldc + NR);
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        let (mut a, mut b) = (pa.as_ptr(), pb.as_ptr());
        // SAFETY: the loop reads `kc·MR` values from `pa` and `kc·NR` from `pb`, the tile
        // `MR` rows of `NR` at stride `ldc` from `c`: the caller's contract.
        unsafe {
            // The tile's rows are read or written only after the loop: fetched now, they
            // arrive while it runs. A weight gradient's tile lies in a matrix of a few MiB,
            // out of L2, and its loads at the end took 16% of the kernel's time (perf).
            let cp = c.as_mut_ptr();
            for i in 0..MR {
                let p = cp.add(i * ldc) as *const i8;
                _mm_prefetch::<_MM_HINT_T0>(p);
                _mm_prefetch::<_MM_HINT_T0>(p.add(4 * NR - 4));
            }
            for _ in 0..kc / UNROLL {
                for u in 0..UNROLL {
                    step!(acc, a.add(u * MR), b.add(u * NR));
                }
                a = a.add(UNROLL * MR);
                b = b.add(UNROLL * NR);
            }
            for _ in 0..kc % UNROLL {
                step!(acc, a, b);
                a = a.add(MR);
                b = b.add(NR);
            }
            for (i, row) in acc.iter().enumerate() {
                let p = cp.add(i * ldc);
                if add {
                    _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), row[0]));
                    _mm256_storeu_ps(p.add(8), _mm256_add_ps(_mm256_loadu_ps(p.add(8)), row[1]));
                } else {
                    _mm256_storeu_ps(p, row[0]);
                    _mm256_storeu_ps(p.add(8), row[1]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, in f64.
    fn naive([m, n, k]: [usize; 3], a: Mat, b: Mat) -> Vec<f64> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| a.at(i, p) as f64 * b.at(p, j) as f64).sum();
            }
        }
        out
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 500.0 - 1.0
            })
            .collect()
    }

    /// Every orientation of both operands, accumulating or not, on 1–3 threads, with
    /// dimensions that leave partial tiles and cross every block edge (`KC`, `MC`, `NR`).
    #[test]
    fn products_match_the_definition() {
        if !available() {
            return;
        }
        let shapes = [
            [1, 1, 1],
            [6, 16, 1],
            [7, 17, 3],
            [13, 40, 257],
            [MC + 7, 2 * NR + 5, 2 * KC + 1],
            [150, 33, 600],
            [5, NC + 3, 9],
        ];
        for [m, n, k] in shapes {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let (sa, sb) = (values(m * k, 1), values(k * n, 2));
                let a = if ta {
                    Mat::transposed(&sa, m)
                } else {
                    Mat::rows(&sa, k)
                };
                let b = if tb {
                    Mat::transposed(&sb, k)
                } else {
                    Mat::rows(&sb, n)
                };
                let want = naive([m, n, k], a, b);
                for threads in 1..=3 {
                    for accumulate in [false, true] {
                        let start = values(m * n, 3);
                        let mut dst = start.clone();
                        matmul([m, n, k], &mut dst, accumulate, a, b, threads);
                        for (idx, (&got, &w)) in dst.iter().zip(&want).enumerate() {
                            let w = w + if accumulate { start[idx] as f64 } else { 0.0 };
                            assert!(
                                (got as f64 - w).abs()
                                    <= 1e-4 * (1.0 + w.abs()) * (k as f64).sqrt(),
                                "{m}×{n}×{k} ta {ta} tb {tb} threads {threads} acc {accumulate}: [{idx}] {got} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// `pack_b`'s layout, entry by entry, for each orientation of `b`, into a buffer left
    /// full of NaN by an earlier product: rows `1..4`, columns `2..23` of a 5×25 matrix (one
    /// whole panel and one of 5 columns), and of its transpose; and a block of a strided
    /// view (every other row and column).
    #[test]
    fn right_blocks_pack_panel_by_panel_with_zeros_past_the_edge() {
        let s = values(5 * 25, 7);
        let strided = Mat {
            s: &s,
            rs: 50,
            cs: 2,
        };
        let cases: [(Mat, [usize; 4]); 3] = [
            (Mat::rows(&s, 25), [1, 3, 2, 21]),
            (Mat::transposed(&s, 5), [1, 3, 2, 21]),
            (strided, [0, 2, 1, 11]),
        ];
        for (b, [p0, kc, j0, nc]) in cases {
            let mut pb = vec![f32::NAN; nc.next_multiple_of(NR) * kc];
            pack_b(b, p0, kc, j0, nc, &mut pb);
            for (i, &v) in pb.iter().enumerate() {
                let (panel, p, c) = (i / (NR * kc), i / NR % kc, i % NR);
                let col = panel * NR + c;
                let want = if col < nc {
                    b.at(p0 + p, j0 + col)
                } else {
                    0.0
                };
                assert_eq!(
                    v.to_bits(),
                    want.to_bits(),
                    "strides ({}, {}) at {i}",
                    b.rs,
                    b.cs
                );
            }
        }
    }

    #[test]
    fn a_general_stride_and_an_empty_depth() {
        if !available() {
            return;
        }
        // Every other value of a row-major 4×10 matrix: strides (10, 2).
        let sa = values(40, 5);
        let a = Mat {
            s: &sa,
            rs: 10,
            cs: 2,
        };
        let sb = values(5 * 3, 6);
        let b = Mat::rows(&sb, 3);
        let mut dst = vec![0.0; 12];
        matmul([4, 3, 5], &mut dst, false, a, b, 1);
        let want = naive([4, 3, 5], a, b);
        for (g, w) in dst.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-5);
        }
        let mut dst = vec![7.0; 12];
        matmul([4, 3, 0], &mut dst, false, a, b, 2);
        assert!(dst.iter().all(|&v| v == 0.0));
    }

    /// Sizes whose products wrap in `usize` (in release, unchecked) are refused rather than
    /// let through to the micro-kernel's raw stores: 10 rows of `n` columns wrap to 48.
    #[test]
    #[should_panic(expected = "overflows")]
    fn sizes_that_overflow_are_refused() {
        let n = (((1u128 << 64) + 24) / 5) as usize;
        let (a, b) = (vec![0.0; 10], [1.0]);
        let mut dst = vec![0.0; 48];
        let b = Mat {
            s: &b,
            rs: 1,
            cs: 0,
        };
        matmul([10, n, 1], &mut dst, false, Mat::rows(&a, 1), b, 1);
    }

    #[test]
    #[should_panic(expected = "needs")]
    fn an_operand_shorter_than_its_strides_is_refused() {
        let s = vec![0.0; 10];
        let mut dst = vec![0.0; 9];
        matmul(
            [3, 3, 4],
            &mut dst,
            false,
            Mat::rows(&s, 4),
            Mat::rows(&s, 3),
            1,
        );
    }
}
