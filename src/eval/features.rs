//! Frozen features at every tap from one forward pass per image, each tap average-pooled
//! to about `target_dim` dimensions (the literature's ~9k) and flattened.

use std::sync::Arc;

use burn::tensor::module::adaptive_avg_pool2d;
use burn::tensor::{Device, Tensor, TensorData};
use rand_chacha::ChaCha8Rng;

use crate::data::ImageSet;
use crate::data::augment::{AugmentConfig, Normalize, crop_image};
use crate::data::lab::InputTransform;
use crate::data::loader::{self, LoaderConfig, SampleMaker, SampleOut};
use crate::models::{Backbone, pool_grid};

pub use super::store::Features;
use super::store::{FeatureDtype, Sink};

/// The evaluation view of an image: the deterministic center crop, normalized.
pub struct EvalView {
    pub augment: AugmentConfig,
    /// What the backbone was trained on (RGB, or L only).
    pub input: InputTransform,
    pub norm: Normalize,
}

impl EvalView {
    /// The view a run's checkpoint is evaluated with: its crop, input transform and
    /// normalization, no flip.
    pub fn for_run(rc: &crate::run::RunConfig) -> Self {
        Self::new(
            rc.augment.crop,
            rc.image_size,
            rc.input,
            rc.normalize.clone(),
        )
    }

    /// The center `crop` of `image_size`-px images; no padding, unless the crop is larger
    /// than the images (training allows up to the image plus its padding): then just
    /// enough black border that the crop is centered on the image, as training saw it on
    /// average. (Without it the center offset underflowed and every input was black.)
    pub fn new(crop: usize, image_size: usize, input: InputTransform, norm: Normalize) -> Self {
        Self {
            augment: AugmentConfig {
                crop,
                pad: crop.saturating_sub(image_size).div_ceil(2),
                flip: false,
            },
            input,
            norm,
        }
    }
}

impl SampleMaker for EvalView {
    fn samples_per_image(&self) -> usize {
        1
    }
    fn input_shape(&self) -> [usize; 3] {
        [self.norm.mean.len(), self.augment.crop, self.augment.crop]
    }
    fn make(&self, set: &ImageSet, index: usize, _rng: &mut ChaCha8Rng, out: SampleOut<'_>) {
        let h = &set.header;
        let at = self.augment.center(h.h, h.w);
        let s = self.augment.crop;
        let mut rgb = vec![0.0; h.c * s * s];
        crop_image(set, index, &self.augment, at, &mut rgb);
        self.input.apply(&rgb, h.c, out.inputs);
        self.norm.apply(out.inputs);
        out.targets[0] = set.label(index).map_or(-1, i64::from);
    }
}

/// Pooled features of `set` at every tap of `backbone` (an inference copy), or at tap
/// number `only` (the others are still computed on the way, but neither pooled nor
/// stored), with a progress bar labelled `progress` when given. The rows go to memory, or
/// with `to` as they come into a tap file each in that folder (see [`super::store`]).
#[allow(clippy::too_many_arguments)]
pub fn extract(
    backbone: &Backbone,
    set: Arc<ImageSet>,
    view: Arc<EvalView>,
    target_dim: usize,
    batch_size: usize,
    dev: &Device,
    progress: Option<&str>,
    only: Option<usize>,
    to: Option<(&std::path::Path, FeatureDtype)>,
) -> anyhow::Result<Features> {
    let keep = |t: usize| only.is_none_or(|o| o == t);
    let taps: Vec<String> = backbone
        .tap_names()
        .into_iter()
        .enumerate()
        .filter(|(t, _)| keep(*t))
        .map(|(_, name)| name)
        .collect();
    let n = set.len();
    let cfg = LoaderConfig {
        batch_size,
        shuffle: false,
        drop_last: false,
        seed: 0,
        prefetch: 2,
    };
    let indices: Vec<usize> = (0..n).collect();
    let rx = loader::epoch(set.clone(), view, &indices, &cfg, 0);
    let bar = crate::util::progress::bar(
        n as u64,
        &format!("features {}", progress.unwrap_or_default()),
        progress.is_some(),
    );
    let mut sink = Sink::new(taps.len(), to);
    let mut dims = vec![0; taps.len()];
    let mut grids = vec![0; taps.len()];
    let mut labels = Vec::with_capacity(n);
    for batch in rx {
        let batch = batch?;
        labels.extend(batch.targets.iter().map(|&t| t.max(0) as u16));
        let b = batch.shape[0];
        let x = Tensor::<4>::from_data(TensorData::new(batch.inputs, batch.shape), dev);
        let maps = backbone.forward_all(x).into_iter().enumerate();
        for (t, map) in maps.filter(|(t, _)| keep(*t)).map(|(_, m)| m).enumerate() {
            let [_, c, h, _] = map.dims();
            let g = pool_grid(c, h, target_dim);
            let pooled = if g == h {
                map
            } else {
                adaptive_avg_pool2d(map, [g, g])
            };
            let flat: Vec<f32> = pooled
                .reshape([b, c * g * g])
                .into_data()
                .try_into_vec::<f32>()
                .expect("f32 features");
            dims[t] = c * g * g;
            grids[t] = g;
            sink.push(t, &taps[t], &flat)?;
        }
        bar.inc(b as u64);
    }
    bar.finish_and_clear();
    sink.finish(taps, dims, grids, labels)
}

/// Scale every row of an `n × d` matrix to unit L2 norm (zero rows stay zero).
pub fn l2_normalize(data: &mut [f32], d: usize) {
    for row in data.chunks_exact_mut(d) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            let inv = 1.0 / norm;
            row.iter_mut().for_each(|v| *v *= inv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::loader::make_one;
    use rand::SeedableRng;

    #[test]
    fn a_crop_larger_than_the_image_is_centered_with_a_black_border() {
        // One 2×2 image (values 1..4 in every channel), evaluated with a 4×4 crop: a 1-px
        // black border around the image, worked out by hand.
        let px: Vec<u8> = [1u8, 2, 3, 4].iter().flat_map(|&v| [v; 3]).collect();
        let set = ImageSet::unlabelled(2, 2, 3, px);
        let norm = Normalize {
            mean: vec![0.0; 3],
            std: vec![1.0 / 255.0; 3],
        };
        let view = EvalView::new(4, 2, InputTransform::Rgb, norm);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let (x, t, _) = make_one(&view, &set, 0, &mut rng);
        let plane: Vec<f32> = x[..16].iter().map(|v| v.round()).collect();
        #[rustfmt::skip]
        let want = [
            0.0, 0.0, 0.0, 0.0,
            0.0, 1.0, 2.0, 0.0,
            0.0, 3.0, 4.0, 0.0,
            0.0, 0.0, 0.0, 0.0,
        ];
        assert_eq!(plane, want);
        assert_eq!(&x[16..32], &x[..16], "every channel");
        assert_eq!(t, vec![-1], "unlabelled");
        // The usual case stays a plain center crop without padding.
        let norm = Normalize {
            mean: vec![0.0; 3],
            std: vec![1.0; 3],
        };
        assert_eq!(
            EvalView::new(28, 32, InputTransform::Rgb, norm).augment.pad,
            0
        );
    }

    /// Five labelled 8×8 images, features of a small NIN: the rows do not depend on how the
    /// set is batched, row i is image i alone, labels follow the rows, and each tap is
    /// pooled to the grid `pool_grid` chooses.
    #[test]
    fn features_are_per_image_whatever_the_batching() {
        let dev = Device::flex();
        dev.seed(5);
        let mut cfg = crate::models::BackboneConfig::new(crate::models::Arch::Nin, 8);
        cfg.width = 8;
        cfg.blocks = 2;
        let backbone = cfg.init(&dev);
        let pixels: Vec<u8> = (0..5 * 8 * 8 * 3).map(|i| (i * 37 % 251) as u8).collect();
        let header = crate::data::cache::Header {
            n: 5,
            h: 8,
            w: 8,
            c: 3,
            labels: Some(vec![2, 0, 1, 2, 0]),
            classes: vec!["a".into(), "b".into(), "c".into()],
            sources: (0..5).map(|i| format!("img{i}")).collect(),
            skipped: vec![],
            skipped_small: 0,
            fingerprint: 0,
            holdout: None,
        };
        let set = Arc::new(ImageSet::from_parts(header, pixels));
        let norm = Normalize {
            mean: vec![0.5; 3],
            std: vec![0.25; 3],
        };
        let view = Arc::new(EvalView::new(8, 8, InputTransform::Rgb, norm));
        let run = |set: Arc<ImageSet>, batch: usize| {
            extract(
                &backbone,
                set,
                view.clone(),
                64,
                batch,
                &dev,
                None,
                None,
                None,
            )
            .unwrap()
        };
        let whole = run(set.clone(), 5);
        let pairs = run(set.clone(), 2);
        assert_eq!(whole.labels, vec![2, 0, 1, 2, 0]);
        assert_eq!(pairs.labels, whole.labels);
        assert_eq!(whole.taps, vec!["block1", "block2"]);
        let close = |a: &[f32], b: &[f32]| {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(a, b)| (a - b).abs() <= 1e-5 * a.abs().max(1.0))
        };
        let all = |f: &Features, t: usize| {
            let mut v = vec![];
            f.read(t, 0..f.n, &mut v).unwrap();
            v
        };
        for t in 0..2 {
            let d = whole.dims[t];
            let (w, p) = (all(&whole, t), all(&pairs, t));
            assert_eq!(w.len(), 5 * d);
            let c = backbone.tap_channels()[t];
            assert_eq!(whole.dims[t], c * whole.grids[t] * whole.grids[t]);
            assert!(close(&w, &p), "tap {t}: batching");
            let third = all(&run(Arc::new(set.subset(&[3])), 1), t);
            assert!(close(&w[3 * d..4 * d], &third), "tap {t}: image 3 alone");
            assert!(
                !close(&w[3 * d..4 * d], &w[2 * d..3 * d]),
                "tap {t}: rows differ"
            );
        }
    }
}
