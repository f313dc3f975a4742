//! The standard augmentations (random crop with padding, horizontal flip) and per-channel
//! normalization, on HWC u8 sources into CHW f32 buffers.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// How one training image is cropped and flipped.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AugmentConfig {
    /// Side of the square crop fed to the network.
    pub crop: usize,
    /// Zero padding added on every side before the random crop (4 for 32×32 CIFAR).
    pub pad: usize,
    /// Flip horizontally with probability ½.
    pub flip: bool,
}

/// Per-channel mean/std in [0, 1] units.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Normalize {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalize {
    /// Normalize a CHW buffer in place.
    pub fn apply(&self, chw: &mut [f32]) {
        let plane = chw.len() / self.mean.len();
        for (ch, p) in chw.chunks_exact_mut(plane).enumerate() {
            let (m, inv) = (self.mean[ch], 1.0 / self.std[ch]);
            for v in p {
                *v = (*v - m) * inv;
            }
        }
    }
    /// Undo [`Normalize::apply`] (for previews).
    pub fn undo(&self, chw: &mut [f32]) {
        let plane = chw.len() / self.mean.len();
        for (ch, p) in chw.chunks_exact_mut(plane).enumerate() {
            for v in p {
                *v = *v * self.std[ch] + self.mean[ch];
            }
        }
    }
}

/// A crop placement: source offset of the crop's top-left corner in padded coordinates,
/// and whether to mirror it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Placement {
    pub oy: usize,
    pub ox: usize,
    pub flip: bool,
}

impl AugmentConfig {
    /// Draw a random placement for an `h × w` image.
    pub fn sample(&self, h: usize, w: usize, rng: &mut impl Rng) -> Placement {
        let range_y = h + 2 * self.pad - self.crop;
        let range_x = w + 2 * self.pad - self.crop;
        Placement {
            oy: rng.random_range(0..=range_y),
            ox: rng.random_range(0..=range_x),
            flip: self.flip && rng.random_bool(0.5),
        }
    }
    /// The deterministic center crop used for evaluation. A crop larger than the padded
    /// image starts at its corner (the rest is black) rather than underflowing.
    pub fn center(&self, h: usize, w: usize) -> Placement {
        Placement {
            oy: (h + 2 * self.pad).saturating_sub(self.crop) / 2,
            ox: (w + 2 * self.pad).saturating_sub(self.crop) / 2,
            flip: false,
        }
    }

    /// Refuse a crop that the padded `h × w` images cannot hold (random crops would have
    /// no valid position).
    pub fn check(&self, h: usize, w: usize) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.crop >= 1 && self.crop <= h.min(w) + 2 * self.pad,
            "a {0}×{0} crop does not fit {w}×{h} images with {1} px of padding (crop ≤ image side + 2 × padding)",
            self.crop,
            self.pad
        );
        Ok(())
    }
}

/// Crop image `index` of `set` at `at` into a CHW f32 buffer in [0, 1] (see [`crop_into`]).
pub fn crop_image(
    set: &crate::data::ImageSet,
    index: usize,
    cfg: &AugmentConfig,
    at: Placement,
    out: &mut [f32],
) {
    let h = &set.header;
    crop_into(
        set.image(index),
        (h.h, h.w, h.c),
        cfg.crop,
        cfg.pad,
        at,
        out,
    );
}

/// Crop (and maybe mirror) an HWC u8 image into a CHW f32 buffer of `crop × crop` in [0, 1];
/// pixels that fall in the padding are 0 (black), as torchvision pads.
pub fn crop_into(
    src: &[u8],
    (h, w, c): (usize, usize, usize),
    crop: usize,
    pad: usize,
    at: Placement,
    out: &mut [f32],
) {
    debug_assert_eq!(out.len(), c * crop * crop);
    for y in 0..crop {
        let sy = (y + at.oy) as isize - pad as isize;
        for x in 0..crop {
            let xx = if at.flip { crop - 1 - x } else { x };
            let sx = (xx + at.ox) as isize - pad as isize;
            let inside = sy >= 0 && sx >= 0 && (sy as usize) < h && (sx as usize) < w;
            for ch in 0..c {
                out[ch * crop * crop + y * crop + x] = if inside {
                    src[(sy as usize * w + sx as usize) * c + ch] as f32 * (1.0 / 255.0)
                } else {
                    0.0
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A 2×3 single-channel image, values 1..6 (row-major):
    //   1 2 3
    //   4 5 6
    const IMG: [u8; 6] = [1, 2, 3, 4, 5, 6];

    fn crop(c: usize, pad: usize, at: Placement) -> Vec<f32> {
        let mut out = vec![0.0; c * c];
        crop_into(&IMG, (2, 3, 1), c, pad, at, &mut out);
        out.iter().map(|v| (v * 255.0).round()).collect()
    }

    #[test]
    fn crop_with_padding_by_hand() {
        // Pad 1, crop 2 at padded (0,0): top-left is padding, then row 0 column 0.
        let at = Placement {
            oy: 0,
            ox: 0,
            flip: false,
        };
        assert_eq!(crop(2, 1, at), vec![0.0, 0.0, 0.0, 1.0]);
        // At padded (1,2): source rows 0..2, columns 1..3.
        let at = Placement {
            oy: 1,
            ox: 2,
            flip: false,
        };
        assert_eq!(crop(2, 1, at), vec![2.0, 3.0, 5.0, 6.0]);
        // Same, mirrored.
        let at = Placement {
            oy: 1,
            ox: 2,
            flip: true,
        };
        assert_eq!(crop(2, 1, at), vec![3.0, 2.0, 6.0, 5.0]);
    }

    #[test]
    fn normalize_and_undo() {
        let n = Normalize {
            mean: vec![0.5, 0.25],
            std: vec![0.5, 0.25],
        };
        let mut v = vec![1.0, 0.0, 0.5, 0.25];
        n.apply(&mut v);
        assert_eq!(v, vec![1.0, -1.0, 1.0, 0.0]);
        n.undo(&mut v);
        assert_eq!(v, vec![1.0, 0.0, 0.5, 0.25]);
    }

    #[test]
    fn sampled_crops_stay_in_range() {
        use rand::SeedableRng;
        let cfg = AugmentConfig {
            crop: 32,
            pad: 4,
            flip: true,
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for _ in 0..1000 {
            let p = cfg.sample(32, 32, &mut rng);
            assert!(p.oy <= 8 && p.ox <= 8);
        }
        assert_eq!(
            cfg.center(32, 32),
            Placement {
                oy: 4,
                ox: 4,
                flip: false
            }
        );
    }
}
