//! A seeded, parallel batch loader. A producer thread builds the next batches (images in
//! parallel on rayon's pool) while the model trains on the current one. Every image draws
//! its randomness from (seed, epoch, position), so a batch is the same whatever the thread
//! count or scheduling, and a resumed run sees the same data as an uninterrupted one.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::ImageSet;

/// Where one source image's share of a batch goes.
pub struct SampleOut<'a> {
    /// `samples_per_image × c·h·w` network inputs.
    pub inputs: &'a mut [f32],
    /// `targets_per_image` integer targets.
    pub targets: &'a mut [i64],
    /// `aux_per_image` float targets (reconstruction targets, loss weights).
    pub aux: &'a mut [f32],
}

/// What a data set image becomes inside a batch: `samples` network inputs, integer targets
/// (one per input for rotation, one per image for jigsaw, several per image for sampled
/// pixels) and optional float targets.
pub trait SampleMaker: Send + Sync + 'static {
    /// Inputs produced per source image (4 for rotation, 9 tiles for jigsaw).
    fn samples_per_image(&self) -> usize;
    /// Shape of one network input, `[c, h, w]`.
    fn input_shape(&self) -> [usize; 3];
    /// Integer targets per source image.
    fn targets_per_image(&self) -> usize {
        self.samples_per_image()
    }
    /// Float targets per source image.
    fn aux_per_image(&self) -> usize {
        0
    }
    /// Fill `out` for image `index`.
    fn make(&self, set: &ImageSet, index: usize, rng: &mut ChaCha8Rng, out: SampleOut<'_>);
}

/// One image's sample in fresh buffers: (inputs, targets, aux). For previews and tests.
pub fn make_one<M: SampleMaker + ?Sized>(
    maker: &M,
    set: &ImageSet,
    index: usize,
    rng: &mut ChaCha8Rng,
) -> (Vec<f32>, Vec<i64>, Vec<f32>) {
    let [c, h, w] = maker.input_shape();
    let mut inputs = vec![0.0; maker.samples_per_image() * c * h * w];
    let mut targets = vec![0; maker.targets_per_image()];
    let mut aux = vec![0.0; maker.aux_per_image()];
    let out = SampleOut {
        inputs: &mut inputs,
        targets: &mut targets,
        aux: &mut aux,
    };
    maker.make(set, index, rng, out);
    (inputs, targets, aux)
}

/// Up to 8 image indices spread evenly over `set`, for preview sheets.
pub fn preview_indices(set: &ImageSet) -> Vec<usize> {
    let n = set.len().min(8);
    (0..n).map(|i| i * set.len() / n).collect()
}

/// A batch ready for the network.
#[derive(Clone, Debug)]
pub struct Batch {
    pub inputs: Vec<f32>,
    /// `[samples, c, h, w]`
    pub shape: [usize; 4],
    pub targets: Vec<i64>,
    /// Float targets, `aux_per_image` per source image.
    pub aux: Vec<f32>,
    /// Source images in this batch (inputs may be several per image).
    pub images: usize,
    /// Data set indices of the source images.
    pub indices: Vec<usize>,
}

#[derive(Clone, Debug)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub shuffle: bool,
    pub drop_last: bool,
    pub seed: u64,
    /// Batches prepared ahead of the model.
    pub prefetch: usize,
}

/// Seed for image `pos` of `epoch`: a SplitMix64 mix so nearby inputs give unrelated streams.
pub fn mix_seed(seed: u64, epoch: u64, pos: u64) -> u64 {
    let mut z =
        seed ^ epoch.wrapping_mul(0x9E3779B97F4A7C15) ^ pos.wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    z ^ (z >> 31)
}

/// The order of `indices` in `epoch`.
pub fn epoch_order(indices: &[usize], cfg: &LoaderConfig, epoch: u64) -> Vec<usize> {
    let mut order = indices.to_vec();
    if cfg.shuffle {
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix_seed(
            cfg.seed,
            epoch,
            u64::MAX,
        )));
    }
    order
}

/// Number of batches one epoch over `n` images yields.
pub fn batches_per_epoch(n: usize, cfg: &LoaderConfig) -> usize {
    if cfg.drop_last {
        n / cfg.batch_size
    } else {
        n.div_ceil(cfg.batch_size)
    }
}

/// Build one batch from the data set positions `idx` (`first` = position of idx[0] in
/// the epoch order, for seeding).
pub fn build_batch<M: SampleMaker + ?Sized>(
    set: &ImageSet,
    maker: &M,
    idx: &[usize],
    seed: u64,
    epoch: u64,
    first: usize,
) -> Batch {
    let k = maker.samples_per_image();
    let [c, h, w] = maker.input_shape();
    let per = c * h * w;
    let (nt, na) = (maker.targets_per_image(), maker.aux_per_image());
    // Chunks of at least one element keep the three iterators in step when a maker has
    // no targets or aux; the padding is cut off afterwards.
    let (ct, ca) = (nt.max(1), na.max(1));
    let mut inputs = vec![0f32; idx.len() * k * per];
    let mut targets = vec![0i64; idx.len() * ct];
    let mut aux = vec![0f32; idx.len() * ca];
    inputs
        .par_chunks_mut(k * per)
        .zip(targets.par_chunks_mut(ct))
        .zip(aux.par_chunks_mut(ca))
        .enumerate()
        .for_each(|(j, ((inp, tgt), ax))| {
            let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(seed, epoch, (first + j) as u64));
            let out = SampleOut {
                inputs: inp,
                targets: &mut tgt[..nt],
                aux: &mut ax[..na],
            };
            maker.make(set, idx[j], &mut rng, out);
        });
    targets.truncate(idx.len() * nt);
    aux.truncate(idx.len() * na);
    Batch {
        inputs,
        shape: [idx.len() * k, c, h, w],
        targets,
        aux,
        images: idx.len(),
        indices: idx.to_vec(),
    }
}

/// Batches of one epoch, produced on a background thread. `skip` batches at the start are
/// not built (used when resuming mid-epoch is not needed; kept for symmetry with `len`).
pub fn epoch<M: SampleMaker>(
    set: Arc<ImageSet>,
    maker: Arc<M>,
    indices: &[usize],
    cfg: &LoaderConfig,
    epoch: u64,
) -> Receiver<Batch> {
    let order = epoch_order(indices, cfg, epoch);
    let (tx, rx) = sync_channel(cfg.prefetch.max(1));
    let cfg = cfg.clone();
    std::thread::spawn(move || {
        let nb = batches_per_epoch(order.len(), &cfg);
        for b in 0..nb {
            let start = b * cfg.batch_size;
            let end = (start + cfg.batch_size).min(order.len());
            let batch = build_batch(&set, &*maker, &order[start..end], cfg.seed, epoch, start);
            if tx.send(batch).is_err() {
                return; // consumer stopped early
            }
        }
    });
    rx
}
