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

/// Batches of one epoch, produced on a background thread: `Ok` batches in order, then
/// the end. A failure of the producer (a panicking [`SampleMaker`], a thread that stopped
/// early) is an `Err` item, never a quietly shorter epoch: a run that took a short epoch
/// for a whole one would log and checkpoint it as if nothing happened.
pub fn epoch<M: SampleMaker>(
    set: Arc<ImageSet>,
    maker: Arc<M>,
    indices: &[usize],
    cfg: &LoaderConfig,
    epoch: u64,
) -> EpochBatches {
    let order = epoch_order(indices, cfg, epoch);
    let expected = batches_per_epoch(order.len(), cfg);
    let cfg = cfg.clone();
    spawn(expected, cfg.prefetch, epoch, move |send| {
        for b in 0..expected {
            let start = b * cfg.batch_size;
            let end = (start + cfg.batch_size).min(order.len());
            if !send(build_batch(
                &set,
                &*maker,
                &order[start..end],
                cfg.seed,
                epoch,
                start,
            )) {
                break;
            }
        }
        Ok(())
    })
}

/// Run `produce` on a background thread, handing its batches to the returned iterator
/// (`prefetch` ahead). `produce` gets a `send` that returns false once the consumer has
/// gone (then it should stop); an `Err` it returns, or a panic, becomes the epoch's last
/// item, naming the batch it failed at. Every batch source (random access, shard streams)
/// shares this, so none can end an epoch short without saying so.
pub fn spawn(
    expected: usize,
    prefetch: usize,
    epoch: u64,
    produce: impl FnOnce(&mut dyn FnMut(Batch) -> bool) -> Result<(), String> + Send + 'static,
) -> EpochBatches {
    let (tx, rx) = sync_channel(prefetch.max(1));
    std::thread::spawn(move || {
        let mut sent = 0usize;
        let outcome = {
            let mut send = |batch: Batch| {
                sent += 1;
                tx.send(Ok(batch)).is_ok()
            };
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| produce(&mut send)))
        };
        let why = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(why)) => why,
            Err(payload) => payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into()),
        };
        let _ = tx.send(Err(format!(
            "the data loader failed building batch {} of {expected} (epoch {}): {why}",
            sent + 1,
            epoch + 1
        )));
    });
    EpochBatches {
        rx,
        received: 0,
        expected,
        done: false,
    }
}

/// Where a training run's images come from.
#[derive(Clone)]
pub enum Source {
    /// Images of a decoded set, by index (random access: any subset, any order).
    Images {
        set: Arc<ImageSet>,
        indices: Arc<Vec<usize>>,
    },
    /// Tar shards read front to back (see [`super::shards::Stream`]).
    Shards(Arc<super::shards::Stream>),
}

impl Source {
    /// Source images in one epoch.
    pub fn len(&self) -> usize {
        match self {
            Source::Images { indices, .. } => indices.len(),
            Source::Shards(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The batches of `epoch`.
    pub fn epoch<M: SampleMaker>(
        &self,
        maker: Arc<M>,
        cfg: &LoaderConfig,
        epoch_index: u64,
    ) -> EpochBatches {
        match self {
            Source::Images { set, indices } => epoch(set.clone(), maker, indices, cfg, epoch_index),
            Source::Shards(s) => s.epoch(maker, cfg, epoch_index),
        }
    }
}

/// The batches of one epoch (see [`epoch`]).
pub struct EpochBatches {
    rx: Receiver<Result<Batch, String>>,
    received: usize,
    expected: usize,
    done: bool,
}

impl EpochBatches {
    /// Batches the epoch will yield.
    pub fn len(&self) -> usize {
        self.expected
    }
    pub fn is_empty(&self) -> bool {
        self.expected == 0
    }
}

impl Iterator for EpochBatches {
    type Item = anyhow::Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.rx.recv() {
            Ok(Ok(batch)) => {
                self.received += 1;
                Some(Ok(batch))
            }
            Ok(Err(why)) => {
                self.done = true;
                Some(Err(anyhow::anyhow!(why)))
            }
            Err(_) => {
                self.done = true;
                (self.received < self.expected).then(|| {
                    Err(anyhow::anyhow!(
                        "the data loader stopped after {} of {} batches",
                        self.received,
                        self.expected
                    ))
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One float input per image (its index); panics on image `bad`.
    struct Fragile {
        bad: usize,
    }
    impl SampleMaker for Fragile {
        fn samples_per_image(&self) -> usize {
            1
        }
        fn input_shape(&self) -> [usize; 3] {
            [1, 1, 1]
        }
        fn make(&self, _: &ImageSet, index: usize, rng: &mut ChaCha8Rng, out: SampleOut<'_>) {
            assert!(index != self.bad, "image {index} is bad");
            // The image's own random stream shows in its input.
            out.inputs[0] = index as f32 + rand::Rng::random::<f32>(rng);
            out.targets[0] = index as i64;
        }
    }

    fn cfg(batch_size: usize, shuffle: bool) -> LoaderConfig {
        LoaderConfig {
            batch_size,
            shuffle,
            drop_last: true,
            seed: 3,
            prefetch: 2,
        }
    }

    #[test]
    fn a_panicking_sample_maker_is_an_error_not_a_short_epoch() {
        let set = Arc::new(ImageSet::unlabelled(1, 1, 1, vec![0; 10]));
        let indices: Vec<usize> = (0..10).collect();
        let items: Vec<anyhow::Result<Batch>> = epoch(
            set,
            Arc::new(Fragile { bad: 5 }),
            &indices,
            &cfg(2, false),
            0,
        )
        .collect();
        // Batches 1 and 2 arrive, batch 3 (images 4, 5) fails, and nothing follows it.
        assert_eq!(items.len(), 3);
        assert!(items[0].is_ok() && items[1].is_ok());
        let e = items[2].as_ref().unwrap_err().to_string();
        assert!(
            e.contains("batch 3 of 5") && e.contains("image 5 is bad"),
            "{e}"
        );
    }

    #[test]
    fn batches_are_the_same_whatever_the_thread_count() {
        let set = Arc::new(ImageSet::unlabelled(1, 1, 1, vec![0; 37]));
        let indices: Vec<usize> = (0..37).collect();
        let maker = Fragile { bad: usize::MAX };
        let cfg = cfg(8, true);
        // Batches are built on the calling thread's rayon pool, in parallel over images.
        let run = |threads: usize| -> Vec<(Vec<f32>, Vec<i64>)> {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let order = epoch_order(&indices, &cfg, 2);
            pool.install(|| {
                (0..batches_per_epoch(order.len(), &cfg))
                    .map(|b| {
                        let at = b * cfg.batch_size;
                        let idx = &order[at..at + cfg.batch_size];
                        let batch = build_batch(&set, &maker, idx, cfg.seed, 2, at);
                        (batch.inputs, batch.targets)
                    })
                    .collect()
            })
        };
        let one = run(1);
        assert_eq!(
            one.len(),
            4,
            "37 images, batches of 8, the last partial one dropped"
        );
        assert_eq!(one, run(2));
        assert_eq!(one, run(3));
        // And the background loader gives the very same batches.
        let loaded: Vec<(Vec<f32>, Vec<i64>)> =
            epoch(set.clone(), Arc::new(maker), &indices, &cfg, 2)
                .map(|b| {
                    let b = b.unwrap();
                    (b.inputs, b.targets)
                })
                .collect();
        assert_eq!(one, loaded);
        // Shuffled: not the identity order.
        assert_ne!(one[0].1, (0..8).collect::<Vec<i64>>());
    }
}
