//! Pixel helpers shared by the tile-based tasks (jigsaw, relative patch position): cutting
//! a tile out of an HWC u8 image with a per-channel offset, normalizing a tile on its own,
//! grayscale, and the down-then-up resampling against low-level shortcuts.

/// Copy the `side × side` tile whose top-left corner is at (`y`, `x`) of an HWC u8 image
/// into a CHW f32 buffer in [0, 1]. Channel `ch` is read shifted by `shift[ch]` (chromatic
/// aberration jitter); reads past the border are clamped to the edge.
pub fn cut(
    src: &[u8],
    (h, w, c): (usize, usize, usize),
    y: usize,
    x: usize,
    side: usize,
    shift: &[(isize, isize)],
    out: &mut [f32],
) {
    debug_assert_eq!(out.len(), c * side * side);
    for ch in 0..c {
        let (dy, dx) = shift.get(ch).copied().unwrap_or((0, 0));
        for ty in 0..side {
            let sy = (y as isize + ty as isize + dy).clamp(0, h as isize - 1) as usize;
            for tx in 0..side {
                let sx = (x as isize + tx as isize + dx).clamp(0, w as isize - 1) as usize;
                out[ch * side * side + ty * side + tx] = src[(sy * w + sx) * c + ch] as f32 / 255.0;
            }
        }
    }
}

/// Normalize each channel of a CHW tile to zero mean and unit standard deviation (a flat
/// channel only loses its mean: its std is floored so it stays finite).
pub fn normalize_each_channel(chw: &mut [f32], c: usize) {
    let plane = chw.len() / c;
    for p in chw.chunks_exact_mut(plane) {
        let mean = p.iter().sum::<f32>() / plane as f32;
        let var = p.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / plane as f32;
        let inv = 1.0 / var.sqrt().max(1e-2);
        p.iter_mut().for_each(|v| *v = (*v - mean) * inv);
    }
}

/// Replace every channel of a CHW image with its luma (ITU-R BT.601 weights).
pub fn grayscale(chw: &mut [f32], c: usize) {
    if c < 3 {
        return;
    }
    let plane = chw.len() / c;
    for p in 0..plane {
        let y = 0.299 * chw[p] + 0.587 * chw[plane + p] + 0.114 * chw[2 * plane + p];
        for ch in 0..c {
            chw[ch * plane + p] = y;
        }
    }
}

/// Box-average a square CHW image of `side` down to `small` and resample it back up
/// bilinearly (Doersch et al.'s countermeasure against fine-detail shortcuts).
pub fn down_up(chw: &mut [f32], side: usize, small: usize) {
    if small >= side || small == 0 {
        return;
    }
    let scale = side as f32 / small as f32;
    for p in chw.chunks_exact_mut(side * side) {
        let mut low = vec![0f32; small * small];
        for (i, l) in low.iter_mut().enumerate() {
            let (ly, lx) = (i / small, i % small);
            let (y0, y1) = (ly * side / small, ((ly + 1) * side).div_ceil(small));
            let (x0, x1) = (lx * side / small, ((lx + 1) * side).div_ceil(small));
            let mut s = 0.0;
            for y in y0..y1 {
                for x in x0..x1 {
                    s += p[y * side + x];
                }
            }
            *l = s / ((y1 - y0) * (x1 - x0)) as f32;
        }
        for y in 0..side {
            let fy = ((y as f32 + 0.5) / scale - 0.5).clamp(0.0, (small - 1) as f32);
            let (y0, wy) = (fy.floor() as usize, fy - fy.floor());
            let y1 = (y0 + 1).min(small - 1);
            for x in 0..side {
                let fx = ((x as f32 + 0.5) / scale - 0.5).clamp(0.0, (small - 1) as f32);
                let (x0, wx) = (fx.floor() as usize, fx - fx.floor());
                let x1 = (x0 + 1).min(small - 1);
                p[y * side + x] = low[y0 * small + x0] * (1.0 - wx) * (1.0 - wy)
                    + low[y0 * small + x1] * wx * (1.0 - wy)
                    + low[y1 * small + x0] * (1.0 - wx) * wy
                    + low[y1 * small + x1] * wx * wy;
            }
        }
    }
}

/// Stretch a normalized tile back into [0, 1] for a preview.
pub fn for_display(chw: &[f32]) -> Vec<f32> {
    let lo = chw.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = chw.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let span = (hi - lo).max(1e-6);
    chw.iter().map(|v| (v - lo) / span).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_with_channel_shift_and_clamping() {
        // 2×3 image, 2 channels: channel 0 = 10·(row·3+col), channel 1 = 100 + same.
        let mut src = vec![0u8; 12];
        for p in 0..6 {
            src[p * 2] = (10 * p) as u8;
            src[p * 2 + 1] = (100 + 10 * p) as u8;
        }
        let mut out = vec![0.0; 2 * 4];
        cut(&src, (2, 3, 2), 0, 1, 2, &[(0, 0), (0, 1)], &mut out);
        let q: Vec<u8> = out.iter().map(|v| (v * 255.0).round() as u8).collect();
        // Channel 0 at columns 1..3; channel 1 shifted right by 1: columns 2, 3→clamped 2.
        assert_eq!(q, vec![10, 20, 40, 50, 120, 120, 150, 150]);
    }

    #[test]
    fn per_channel_normalization_by_hand() {
        let mut t = vec![1.0, 3.0, 5.0, 5.0];
        normalize_each_channel(&mut t, 2);
        assert_eq!(t, vec![-1.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn down_up_of_a_constant_is_the_constant_and_of_a_ramp_is_smooth() {
        let mut flat = vec![0.25; 16];
        down_up(&mut flat, 4, 2);
        assert!(flat.iter().all(|v| (v - 0.25).abs() < 1e-6));
        // A 4×4 checkerboard averages to 0.5 everywhere at 2×2.
        let mut cb: Vec<f32> = (0..16).map(|i| ((i / 4 + i % 4) % 2) as f32).collect();
        down_up(&mut cb, 4, 2);
        assert!(cb.iter().all(|v| (v - 0.5).abs() < 1e-6));
    }
}
