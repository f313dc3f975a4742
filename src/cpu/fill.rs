//! New output buffers written once, chunk by chunk, on the worker threads.
//!
//! `vec![0.0; n]` zero-fills the whole buffer on the calling thread before any kernel starts
//! (mimalloc's `calloc` of reused memory is a `memset`): in a NIN-96 training step that was
//! 7–8% of all samples, all of them on the main thread while the pool's threads waited
//! (`BENCHMARKS.md`). Here the buffer is allocated uninitialised and each chunk goes to a
//! worker as an [`Uninit`], which only a method that writes every value of it can turn into
//! the [`Written`] token the worker hands back; [`build`] checks each chunk's token before the
//! vector's length is set. A chunk that needs zeros (a GEMM's destination, a sum) is zeroed by
//! its worker, just before it is written again, while it is in that core's cache.

use std::marker::PhantomData;
use std::mem::MaybeUninit;

use rayon::prelude::*;

/// One chunk of a buffer under construction: nothing in it is initialised yet.
pub struct Uninit<'a>(&'a mut [MaybeUninit<f32>]);

/// Proof that a whole [`Uninit`] chunk was written: which chunk (its address and length),
/// and for how long it is borrowed, so that a token cannot outlive its chunk's build (one
/// kept from an earlier build, whose memory the allocator may hand out again, does not
/// compile; a token of a chunk from a leaked buffer, the only kind that lives long enough,
/// fails the address check).
#[must_use]
pub struct Written<'a> {
    addr: usize,
    len: usize,
    chunk: PhantomData<&'a ()>,
}

impl<'a> Uninit<'a> {
    fn token(&self) -> Written<'a> {
        Written {
            addr: self.0.as_ptr() as usize,
            len: self.0.len(),
            chunk: PhantomData,
        }
    }

    /// The chunk filled with zeros, to be written or summed into.
    pub fn zeroed(self) -> (&'a mut [f32], Written<'a>) {
        let token = self.token();
        for v in self.0.iter_mut() {
            v.write(0.0);
        }
        // SAFETY: every element was written just above; `MaybeUninit<f32>` has the layout of
        // `f32`, and the returned slice has the same address and length.
        let init = unsafe { &mut *(self.0 as *mut [MaybeUninit<f32>] as *mut [f32]) };
        (init, token)
    }

    /// `chunk[i] = f(x[i])`; `x` must have the chunk's length.
    #[inline(always)]
    pub fn map(self, x: &[f32], f: impl Fn(f32) -> f32) -> Written<'a> {
        assert_eq!(x.len(), self.0.len(), "source and chunk lengths");
        for (d, &v) in self.0.iter_mut().zip(x) {
            d.write(f(v));
        }
        self.token()
    }

    /// Row `r` of `x` (rows of `row` values, `x` the chunk's length) mapped by `v·a + b`
    /// with `(a, b) = ab(r)`, then `max(·, 0)` if `relu`.
    #[inline(always)]
    pub fn affine_rows(
        self,
        x: &[f32],
        row: usize,
        ab: impl Fn(usize) -> (f32, f32),
        relu: bool,
    ) -> Written<'a> {
        assert!(row > 0, "rows of no values");
        self.affine_blocks(x, x.len() / row, row, ab, relu)
    }

    /// The chunk as `n` blocks of `rows × len` values (`n = len(chunk) / (rows·len)`) from
    /// `x` (the chunk's length) laid out as `rows` rows of the `n` blocks' rows side by side,
    /// `[rows, n·len]`: how one GEMM over a group of images writes their outputs. Value `v`
    /// of row `r` is mapped by `v·a + b` with `(a, b) = ab(r)`, then `max(·, 0)` if `relu`.
    #[inline(always)]
    pub fn affine_blocks(
        self,
        x: &[f32],
        rows: usize,
        len: usize,
        ab: impl Fn(usize) -> (f32, f32),
        relu: bool,
    ) -> Written<'a> {
        assert_eq!(x.len(), self.0.len(), "source and chunk lengths");
        assert!(
            rows > 0 && len > 0 && x.len().is_multiple_of(rows * len),
            "{} values in blocks of {rows} rows of {len}",
            x.len()
        );
        let n = x.len() / (rows * len);
        for (b, block) in self.0.chunks_mut(rows * len).enumerate() {
            for (r, d) in block.chunks_mut(len).enumerate() {
                let (a, c) = ab(r);
                let x = &x[r * n * len + b * len..][..len];
                if relu {
                    d.iter_mut().zip(x).for_each(|(d, &v)| {
                        d.write((v * a + c).max(0.0));
                    });
                } else {
                    d.iter_mut().zip(x).for_each(|(d, &v)| {
                        d.write(v * a + c);
                    });
                }
            }
        }
        self.token()
    }

    /// `chunk[i] = f(a[i], b[i])`; `a` and `b` must have the chunk's length.
    #[inline(always)]
    pub fn map2(self, a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> Written<'a> {
        assert_eq!(a.len(), self.0.len(), "source and chunk lengths");
        assert_eq!(b.len(), self.0.len(), "source and chunk lengths");
        for ((d, &a), &b) in self.0.iter_mut().zip(a).zip(b) {
            d.write(f(a, b));
        }
        self.token()
    }
}

/// A vector of `len` values built from chunks of `chunk` values (the last one shorter when
/// `len` is not a multiple of `chunk`): chunk `i` is written by `f(&mut state, i, chunk)`, where `state` comes from `init` once per
/// worker (a scratch buffer). In parallel over the chunks if `parallel`, else in order on the
/// calling thread.
pub fn build<S, I, F>(len: usize, chunk: usize, parallel: bool, init: I, f: F) -> Vec<f32>
where
    I: Fn() -> S + Sync + Send,
    F: for<'a> Fn(&mut S, usize, Uninit<'a>) -> Written<'a> + Sync + Send,
{
    if len == 0 {
        return Vec::new();
    }
    assert!(chunk > 0, "chunks of no values");
    let mut v = Vec::<f32>::with_capacity(len);
    let spare = &mut v.spare_capacity_mut()[..len];
    let one = |state: &mut S, i: usize, c: &mut [MaybeUninit<f32>]| {
        let (addr, n) = (c.as_ptr() as usize, c.len());
        let w = f(state, i, Uninit(c));
        // A token can only come from a method that wrote a whole chunk; this checks it is
        // this chunk's.
        assert!(
            w.addr == addr && w.len == n,
            "chunk {i} was not written in full"
        );
    };
    if parallel {
        spare
            .par_chunks_mut(chunk)
            .enumerate()
            .for_each_init(&init, |s, (i, c)| one(s, i, c));
    } else {
        let mut s = init();
        for (i, c) in spare.chunks_mut(chunk).enumerate() {
            one(&mut s, i, c);
        }
    }
    // SAFETY: the first `len` values are the chunks above, each of which was written in full
    // (its token was checked); a panic in `f` propagates before this line.
    unsafe { v.set_len(len) };
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_written_in_parallel_and_in_order() {
        let x: Vec<f32> = (0..12).map(|i| i as f32).collect();
        for parallel in [true, false] {
            let y = build(
                12,
                3,
                parallel,
                || (),
                |_, i, c| c.map(&x[i * 3..i * 3 + 3], |v| 2.0 * v + 1.0),
            );
            assert_eq!(y, x.iter().map(|v| 2.0 * v + 1.0).collect::<Vec<_>>());
            let z = build(
                12,
                4,
                parallel,
                || (),
                |_, i, c| {
                    let (s, w) = c.zeroed();
                    s[0] = i as f32;
                    w
                },
            );
            assert_eq!(z, [0., 0., 0., 0., 1., 0., 0., 0., 2., 0., 0., 0.]);
            let s = build(
                4,
                2,
                parallel,
                || (),
                |_, i, c| c.map2(&x[2 * i..2 * i + 2], &x[4..6], |a, b| a * b),
            );
            assert_eq!(s, [0.0, 5.0, 8.0, 15.0]);
            // Rows of 2: row r scaled by r + 1 and shifted by −3, then clipped at 0.
            let r = build(
                8,
                4,
                parallel,
                || (),
                |_, i, c| c.affine_rows(&x[4 * i..4 * i + 4], 2, |r| (r as f32 + 1.0, -3.0), true),
            );
            assert_eq!(r, [0.0, 0.0, 1.0, 3.0, 1.0, 2.0, 9.0, 11.0]);
            // Two blocks of 2 rows × 2 values from their rows side by side: source row 0 is
            // [0 1 | 2 3] (block 0's row 0, then block 1's), row 1 is [4 5 | 6 7]; row r is
            // scaled by r + 1 and shifted by 1, no clipping.
            let b = build(
                16,
                8,
                parallel,
                || (),
                |_, i, c| c.affine_blocks(&x[i..i + 8], 2, 2, |r| (r as f32 + 1.0, 1.0), false),
            );
            assert_eq!(
                b,
                [
                    1., 2., 9., 11., 3., 4., 13., 15., 2., 3., 11., 13., 4., 5., 15., 17.
                ]
            );
            // A last chunk shorter than the others: 5 values in chunks of 2.
            let t = build(
                5,
                2,
                parallel,
                || (),
                |_, i, c| {
                    let (s, w) = c.zeroed();
                    s.fill(i as f32);
                    w
                },
            );
            assert_eq!(t, [0., 0., 1., 1., 2.]);
        }
    }

    #[test]
    #[should_panic(expected = "was not written in full")]
    fn another_chunks_token_is_refused() {
        // Chunk 0 writes a chunk of its own instead of its own chunk. A token's lifetime is
        // its chunk's borrow, so only a leaked buffer's token can be handed back at all (a
        // local one does not compile); the address check refuses it.
        let _ = build(
            4,
            2,
            false,
            || (),
            |_, _, _c| {
                let other: &'static mut [MaybeUninit<f32>] =
                    Box::leak(Box::new([MaybeUninit::<f32>::uninit(); 2]));
                Uninit(other).map(&[1.0, 2.0], |v| v)
            },
        );
    }

    #[test]
    #[should_panic(expected = "source and chunk lengths")]
    fn a_short_source_is_refused() {
        let _ = build(4, 2, false, || (), |_, _, c| c.map(&[1.0], |v| v));
    }
}
