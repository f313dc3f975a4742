//! Time estimates said before long work starts (`run`, `study`). A few seconds of
//! measurement on this machine — the network's training and inference steps on synthetic
//! batches, and the evaluation's own probes, kNN and k-means on synthetic features of the
//! network's tap sizes — scaled to the work planned (each part grows linearly in what it
//! does: inputs, rows × epochs, train × test pairs, test rows). It is an estimate and says
//! so: the data pipeline, a task's own head and other load on the machine are not in it.

use std::time::Instant;

use anyhow::Result;
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::EvalConfig;
use super::store::Features;
use super::{cluster, knn, linear};
use crate::models::{BackboneConfig, pool_grid};

/// What one network costs on this machine.
#[derive(Clone, Debug)]
pub struct Calibration {
    /// Training steps of the backbone with a linear head, in network inputs per second.
    pub train_inputs_per_s: f64,
    /// Inference, in network inputs per second.
    pub infer_inputs_per_s: f64,
    /// Seconds per train row and epoch of the linear probes of every tap together.
    probe_row_epoch: f64,
    /// Seconds per (train row, test row) pair of kNN over every tap.
    knn_pair: f64,
    /// Seconds per test row of k-means over every tap.
    kmeans_row: f64,
    /// The seconds the measurement took.
    pub seconds: f64,
    /// The network's layers (taps).
    pub taps: usize,
}

/// Rows of the synthetic feature sets (big enough that per-call overheads are small).
const TRAIN_ROWS: usize = 512;
const TEST_ROWS: usize = 256;

/// Measure `backbone` (at its input size) and the evaluation `eval` on `classes` classes.
pub fn calibrate(
    backbone: &BackboneConfig,
    eval: &EvalConfig,
    classes: usize,
    dev: &Device,
) -> Result<Calibration> {
    let t0 = Instant::now();
    // Warm-up first everywhere: a process's first steps pay for page faults and buffers
    // (measured cold, a NIN-32 trained at 460 inputs/s where it then ran at 670).
    let row = crate::commands::bench::measure(backbone, 32, 2, 3, dev);

    // The taps as the evaluation pools them.
    let net = backbone.init(dev).valid();
    let s = backbone.input_size;
    let taps = net.forward_all(Tensor::<4>::zeros([1, backbone.in_channels, s, s], dev));
    let (mut dims, mut grids) = (vec![], vec![]);
    for t in &taps {
        let [_, c, h, w] = t.dims();
        let g = pool_grid(c, h.min(w), eval.probe_dim);
        dims.push(c * g * g);
        grids.push(g);
    }
    let classes = classes.max(2);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut synthetic = |n: usize| {
        let data = dims
            .iter()
            .map(|&d| (0..n * d).map(|_| rng.random::<f32>()).collect())
            .collect();
        let labels = (0..n).map(|i| (i % classes) as u16).collect();
        Features::in_memory(net.tap_names(), dims.clone(), grids.clone(), data, labels)
    };
    let (train, test) = (synthetic(TRAIN_ROWS), synthetic(TEST_ROWS));

    let mut probe = eval.probe.clone();
    probe.epochs = 1;
    probe.sweep = None;
    // Each part twice, timed the second time (see the warm-up above).
    let timed = |f: &dyn Fn() -> Result<()>| -> Result<f64> {
        f()?;
        let t = Instant::now();
        f()?;
        Ok(t.elapsed().as_secs_f64())
    };
    let probe_row_epoch =
        timed(&|| linear::evaluate(&train, &test, classes, &probe, dev, false).map(|_| ()))?
            / TRAIN_ROWS as f64;
    let knn_pair = timed(&|| {
        for tap in 0..dims.len() {
            knn::evaluate(&train, &test, tap, classes, &eval.knn, dev)?;
        }
        Ok(())
    })? / (TRAIN_ROWS * TEST_ROWS) as f64;
    let kmeans_row = timed(&|| {
        for tap in 0..dims.len() {
            cluster::evaluate(&test, tap, classes, &eval.kmeans, dev)?;
        }
        Ok(())
    })? / TEST_ROWS as f64;
    Ok(Calibration {
        train_inputs_per_s: row.train_images_per_s,
        infer_inputs_per_s: row.infer_images_per_s,
        probe_row_epoch,
        knn_pair,
        kmeans_row,
        seconds: t0.elapsed().as_secs_f64(),
        taps: dims.len(),
    })
}

impl Calibration {
    /// Training on `inputs` network inputs (images × inputs per image × epochs).
    pub fn training(&self, inputs: f64) -> f64 {
        inputs / self.train_inputs_per_s
    }

    /// One evaluation (`eval`) of one network on `train` / `test` images: their features,
    /// the probes (and the sweep's, when one is asked for), kNN and k-means.
    pub fn evaluation(&self, eval: &EvalConfig, train: usize, test: usize) -> f64 {
        let (train, test) = (train as f64, test as f64);
        // The sweep trains every setting of its grid on the train rows outside the
        // validation split, before the final probes.
        let sweep = eval.probe.sweep.as_ref().map_or(0.0, |s| {
            (s.lrs.len() * s.weight_decays.len()) as f64 * (1.0 - s.val_fraction)
        });
        // Each non-linear probe runs the frozen network on every sample and trains its
        // head: counted as inference plus a whole training step per sample (an upper
        // bound: the head is smaller than the network), then the test images.
        let heads: f64 = eval
            .heads
            .kinds
            .iter()
            .map(|&k| {
                let samples = train * eval.heads.epochs_of(k) as f64;
                let layers = eval.heads.layers.as_ref().map_or(self.taps, Vec::len) as f64;
                layers
                    * (samples / self.infer_inputs_per_s
                        + self.training(samples)
                        + test / self.infer_inputs_per_s)
            })
            .sum();
        (train + test) / self.infer_inputs_per_s
            + self.probe_row_epoch * train * eval.probe.epochs as f64 * (1.0 + sweep)
            + self.knn_pair * train * test
            + self.kmeans_row * test
            + heads
    }

    /// One fine-tuning: `epochs` over `labelled` images, then the test images.
    pub fn finetuning(&self, labelled: usize, epochs: usize, test: usize) -> f64 {
        self.training((labelled * epochs) as f64) + test as f64 / self.infer_inputs_per_s
    }
}

/// Seconds as a person reads them: "45 s", "12 min", "1.5 h".
pub fn duration(seconds: f64) -> String {
    if seconds < 90.0 {
        format!("{seconds:.0} s")
    } else if seconds < 90.0 * 60.0 {
        format!("{:.0} min", seconds / 60.0)
    } else {
        format!("{:.1} h", seconds / 3600.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed() -> Calibration {
        Calibration {
            train_inputs_per_s: 100.0,
            infer_inputs_per_s: 400.0,
            probe_row_epoch: 1e-3,
            knn_pair: 1e-6,
            kmeans_row: 1e-2,
            seconds: 0.0,
            taps: 4,
        }
    }

    #[test]
    fn estimates_scale_with_the_work_asked_for() {
        let c = fixed();
        assert_eq!(c.training(1000.0), 10.0);
        let mut eval = EvalConfig {
            probe: linear::ProbeConfig {
                epochs: 10,
                ..Default::default()
            },
            ..crate::config::EvalSpec::default().resolve()
        };
        eval.probe.sweep = None;
        // Features of 1000 + 1000 images at 400/s = 5 s; probes 1e-3 × 1000 × 10 = 10 s;
        // kNN 1e-6 × 1000 × 1000 = 1 s; k-means 1e-2 × 1000 = 10 s.
        assert!((c.evaluation(&eval, 1000, 1000) - 26.0).abs() < 1e-9);
        // The default sweep: 4 × 2 settings on 90% of the rows before the final probes.
        eval.probe.sweep = Some(linear::SweepConfig::default());
        assert!((c.evaluation(&eval, 1000, 1000) - (26.0 + 10.0 * 7.2)).abs() < 1e-9);
        // A conv probe of 2 epochs on 2 layers: per layer 2000 samples through the frozen
        // network (5 s) and trained (20 s), then 1000 test images (2.5 s).
        eval.probe.sweep = None;
        eval.heads = crate::eval::heads::HeadsConfig {
            kinds: vec![crate::models::probe::ProbeKind::Conv],
            layers: Some(vec!["block1".into(), "block2".into()]),
            epochs: Some(2),
            ..Default::default()
        };
        assert!((c.evaluation(&eval, 1000, 1000) - (26.0 + 2.0 * 27.5)).abs() < 1e-9);
        // Every layer (4) when none is named.
        eval.heads.layers = None;
        assert!((c.evaluation(&eval, 1000, 1000) - (26.0 + 4.0 * 27.5)).abs() < 1e-9);
        // 50 images × 30 epochs at 100/s, then 400 test images at 400/s.
        assert!((c.finetuning(50, 30, 400) - 16.0).abs() < 1e-9);
        assert_eq!(duration(45.0), "45 s");
        assert_eq!(duration(720.0), "12 min");
        assert_eq!(duration(5400.0), "1.5 h");
    }

    #[test]
    fn a_calibration_measures_every_part() {
        let mut b = BackboneConfig::new(crate::models::Arch::Nin, 32);
        b.width = 8;
        let eval = crate::config::EvalSpec::default().resolve();
        let c = calibrate(&b, &eval, 10, &Device::flex()).unwrap();
        for v in [
            c.train_inputs_per_s,
            c.infer_inputs_per_s,
            c.probe_row_epoch,
            c.knn_pair,
            c.kmeans_row,
        ] {
            assert!(v.is_finite() && v > 0.0, "{c:?}");
        }
        assert!(c.infer_inputs_per_s > c.train_inputs_per_s, "{c:?}");
    }
}
