//! A toy pretext task that exists to prove the registry: "was this image darkened?". It
//! is this one file plus one (test-only) line in `REGISTRY`, and its test below configures,
//! trains, evaluates and reports it through the same paths as the real tasks, with no
//! other edit anywhere.

use std::path::Path;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{PretextTask, Task, TaskConfig};
use crate::data::ImageSet;
use crate::data::augment::{AugmentConfig, Normalize, crop_image};
use crate::data::loader::{SampleMaker, SampleOut};
use crate::models::head::ClassifierNet;
use crate::run::Job;
use crate::train::TrainOutcome;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BrightnessConfig {
    /// The factor a darkened image's pixels are multiplied by.
    pub factor: f32,
}

/// The samples: a crop, darkened with probability ½ (target 1) or not (target 0).
pub struct Brightness {
    cfg: BrightnessConfig,
    augment: AugmentConfig,
    norm: Normalize,
    channels: usize,
}

impl SampleMaker for Brightness {
    fn samples_per_image(&self) -> usize {
        1
    }
    fn input_shape(&self) -> [usize; 3] {
        [self.channels, self.augment.crop, self.augment.crop]
    }
    fn make(&self, set: &ImageSet, index: usize, rng: &mut ChaCha8Rng, out: SampleOut<'_>) {
        let h = &set.header;
        let at = self.augment.sample(h.h, h.w, rng);
        crop_image(set, index, &self.augment, at, out.inputs);
        let dark = rng.random_bool(0.5);
        if dark {
            out.inputs.iter_mut().for_each(|v| *v *= self.cfg.factor);
        }
        self.norm.apply(out.inputs);
        out.targets[0] = dark as i64;
    }
}

impl PretextTask for Brightness {
    fn name(&self) -> &'static str {
        "brightness"
    }
    fn num_classes(&self) -> usize {
        2
    }
    fn preview(&self, _set: &ImageSet, _path: &Path, _seed: u64) -> anyhow::Result<()> {
        Ok(())
    }
}

pub struct BrightnessTask;
pub static TASK: BrightnessTask = BrightnessTask;

impl Task for BrightnessTask {
    fn name(&self) -> &'static str {
        "brightness"
    }
    fn defaults(&self, _side: usize) -> TaskConfig {
        TaskConfig::of(self.name(), &BrightnessConfig { factor: 0.5 })
    }
    fn normalize(&self, cfg: &TaskConfig) -> anyhow::Result<TaskConfig> {
        cfg.normalized::<BrightnessConfig>()
    }
    fn validate(&self, cfg: &TaskConfig, _augment: &AugmentConfig) -> anyhow::Result<()> {
        let f = cfg.typed::<BrightnessConfig>()?.factor;
        anyhow::ensure!(f > 0.0 && f < 1.0, "factor must be in (0, 1), got {f}");
        Ok(())
    }
    fn pretrain(&self, job: &Job) -> anyhow::Result<TrainOutcome> {
        let c = job.cfg;
        let task = Brightness {
            cfg: c.task.typed()?,
            augment: c.augment.clone(),
            norm: c.normalize.clone(),
            channels: job.channels(),
        };
        let model = ClassifierNet::new(&c.backbone, 2, job.train_device);
        Ok(job.fit(task, model)?.2)
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use crate::config::{EvalSpec, PretrainSpec};
    use crate::data::CacheOptions;
    use crate::run::Pretrain;

    /// Class folders of 32×32 images, two classes, under train/ and test/.
    fn tree(root: &Path) {
        for (split, n) in [("train", 24u8), ("test", 6)] {
            for class in 0..2u8 {
                let dir = root.join(split).join(format!("c{class}"));
                std::fs::create_dir_all(&dir).unwrap();
                for i in 0..n {
                    image::RgbImage::from_fn(32, 32, |x, y| {
                        image::Rgb([(x * 8) as u8, (y * 8) as u8 ^ i, class * 200])
                    })
                    .save(dir.join(format!("{i}.png")))
                    .unwrap();
                }
            }
        }
    }

    use super::*;

    #[test]
    fn a_registered_task_configures_trains_evaluates_and_reports_like_any_other() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        tree(&data);
        let cache = CacheOptions {
            dir: None,
            progress: false,
            ..CacheOptions::default()
        };
        let mut spec = PretrainSpec {
            data: Some(data.clone()),
            task: "brightness".into(),
            width: Some(8),
            epochs: 2,
            batch_size: 16,
            ..PretrainSpec::default()
        };
        spec.task_settings
            .push(("factor".into(), toml::Value::Float(0.25)));
        let rc = spec.resolve(&cache).unwrap();
        assert_eq!(rc.task.name(), "brightness");
        assert_eq!(rc.task.typed::<BrightnessConfig>().unwrap().factor, 0.25);
        let run = tmp.path().join("run");
        let dev = Device::flex();
        let (_, outcome) = Pretrain {
            run: &run,
            device: &dev,
            progress: false,
            stop_after: None,
            cache: &cache,
            timing: None,
        }
        .run(Some(rc), false)
        .unwrap();
        assert_eq!(outcome.state.epoch, 2);
        // The saved configuration names the task and reloads.
        let back = crate::run::RunConfig::load(&run).unwrap();
        assert_eq!(back.task.task().unwrap().name(), "brightness");
        let ecfg = EvalSpec {
            probe_epochs: 2,
            probe_dim: 256,
            ..EvalSpec::default()
        }
        .resolve();
        for random in [false, true] {
            let (report, _) =
                crate::eval::evaluate_run(&run, &data, random, &ecfg, &cache, &dev, false).unwrap();
            assert_eq!(report.rows.len(), 4);
        }
        let c = crate::report::gather(&[run]).unwrap();
        assert_eq!(c.row_names(), ["brightness", "random-init"]);
        // A setting the task does not have is refused by name.
        let mut typo = spec.clone();
        typo.task_settings
            .push(("factr".into(), toml::Value::Float(0.5)));
        let e = typo.resolve(&cache).unwrap_err().to_string();
        assert!(e.contains("no setting \"factr\""), "{e}");
    }
}
