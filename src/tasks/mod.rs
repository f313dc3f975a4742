//! Pretext tasks (and the supervised baseline, trained the same way). Each task is one
//! file: its settings with their paper defaults, the samples it makes (a [`SampleMaker`]
//! the loader runs on its worker threads), its network and loss, its preview and its
//! after-training picture — everything that varies between tasks, behind the [`Task`]
//! trait. [`REGISTRY`] is the only list of tasks: adding one is a new file and one line
//! there (see the README's "Adding a task").

pub mod colorization;
pub mod imported;
pub mod inpainting;
pub mod jigsaw;
pub mod relative_position;
pub mod rotation;
pub mod supervised;
#[cfg(test)]
pub mod test_task;
pub mod tiles;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::data::ImageSet;
use crate::data::augment::AugmentConfig;
use crate::data::lab::InputTransform;
use crate::data::loader::SampleMaker;
use crate::models::Backbone;
use crate::run::{Job, RunConfig, subset_indices};
use crate::train::{OptimConfig, Schedule, TrainOutcome};

pub use colorization::{Colorization, ColorizationConfig};
pub use inpainting::{Inpainting, InpaintingConfig};
pub use jigsaw::{Jigsaw, JigsawConfig};
pub use relative_position::{RelativePosition, RelativePositionConfig};
pub use rotation::{Rotation, RotationConfig};
pub use supervised::{Supervised, SupervisedConfig};

/// Every task, in the order `all` lists them. The only place tasks are named.
pub static REGISTRY: &[&dyn Task] = &[
    &rotation::TASK,
    &jigsaw::TASK,
    &relative_position::TASK,
    &inpainting::TASK,
    &colorization::TASK,
    &supervised::TASK,
    &imported::TASK,
    #[cfg(test)]
    &test_task::TASK,
];

/// Everything about a task that varies between tasks. One unit struct per task file
/// implements it; the run, the CLI, the study, the bench and the evaluation only ever go
/// through it.
pub trait Task: Sync {
    /// The name runs, flags and reports use (`relative-position`).
    fn name(&self) -> &'static str;
    /// A pretext task; false for the supervised baseline, which trains on labels.
    fn is_pretext(&self) -> bool {
        true
    }
    /// Trained by pretext; false for a backbone imported from elsewhere.
    fn trains(&self) -> bool {
        true
    }
    /// The name reports give a run of this task (the task's name unless its settings say).
    fn method(&self, _cfg: &TaskConfig) -> String {
        self.name().to_string()
    }
    /// The task's settings: its paper's values, scaled to images of `side` pixels.
    fn defaults(&self, side: usize) -> TaskConfig;
    /// `cfg` read as the task's own settings and written back: refuses a wrong type and
    /// drops nothing the task knows (see [`TaskConfig::normalized`]).
    fn normalize(&self, cfg: &TaskConfig) -> Result<TaskConfig>;
    /// What the backbone sees and how the task trains unless told otherwise.
    fn training(&self) -> TrainingDefaults {
        TrainingDefaults::default()
    }
    /// Settings the data decides (the class count of a labelled split), and checks of the
    /// data, when a run is configured.
    fn prepare(&self, _cfg: &mut TaskConfig, _set: &ImageSet, _data: &Path) -> Result<()> {
        Ok(())
    }
    /// A run whose network, input and normalization this run starts from.
    fn init_from(&self, _cfg: &TaskConfig) -> Result<Option<PathBuf>> {
        Ok(None)
    }
    /// Refuse settings that cannot work, before anything is trained or written.
    fn validate(&self, cfg: &TaskConfig, augment: &AugmentConfig) -> Result<()>;
    /// The smallest source image side the task can use with these settings.
    fn min_image_size(&self, _cfg: &TaskConfig, augment: &AugmentConfig) -> Result<usize> {
        Ok(augment.crop.saturating_sub(2 * augment.pad).max(1))
    }
    /// Network inputs per source image (4 for rotation, 9 tiles for jigsaw).
    fn inputs_per_image(&self, _cfg: &TaskConfig) -> Result<usize> {
        Ok(1)
    }
    /// The source images a run trains on (default: the seeded subset of `train_images`).
    fn training_indices(&self, rc: &RunConfig, set: &ImageSet) -> Result<Vec<usize>> {
        Ok(subset_indices(set.len(), rc.train_images, rc.train.seed))
    }
    /// Checks of a run against its folder (files it keeps there), before anything is
    /// written to it.
    fn check_run(&self, _rc: &RunConfig, _run: &Path) -> Result<()> {
        Ok(())
    }
    /// Build the samples and the network, train them with [`Job::fit`], and draw what the
    /// trained network does where the task has a picture for it.
    fn pretrain(&self, job: &Job) -> Result<TrainOutcome>;
    /// Where the backbone sits in the task's network: the module path of its checkpoint
    /// entries (`backbone`, or `generator.backbone` inside the context encoder), so an
    /// evaluation loads the backbone alone, building no head.
    fn backbone_path(&self) -> &'static str {
        "backbone"
    }
    /// The backbone as the task's network initializes it, for the random-init baseline
    /// (the caller has seeded the device). Tasks whose network draws other weights first
    /// build it, so the baseline is the very network training started from.
    fn random_backbone(&self, rc: &RunConfig, _dev: &burn::tensor::Device) -> Result<Backbone> {
        Ok(rc.backbone.init(_dev))
    }
}

/// A task's defaults for the rest of the run.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainingDefaults {
    pub input: InputTransform,
    /// Zero padding of the random crop (none for tasks whose targets are the pixels: the
    /// black border would be part of them).
    pub pad: usize,
    pub optim: OptimConfig,
    pub schedule: Schedule,
}

impl Default for TrainingDefaults {
    /// RotNet's: RGB, 4 px of padding, SGD 0.1 with Nesterov momentum, the step schedule.
    fn default() -> Self {
        Self {
            input: InputTransform::Rgb,
            pad: 4,
            optim: OptimConfig::rotnet(),
            schedule: Schedule::rotnet(),
        }
    }
}

/// The task a run is configured with: its name and its own settings, as the `[task]`
/// table of the run's `config.toml` holds them (`name = "jigsaw"`, `permutations = 100`,
/// …). The task reads its typed settings out of it ([`TaskConfig::typed`]).
#[derive(Clone, Debug, PartialEq)]
pub struct TaskConfig {
    name: String,
    fields: toml::Table,
}

impl Serialize for TaskConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut table = toml::Table::new();
        table.insert("name".into(), toml::Value::String(self.name.clone()));
        table.extend(self.fields.clone());
        table.serialize(s)
    }
}

impl<'de> Deserialize<'de> for TaskConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut fields = toml::Table::deserialize(d)?;
        match fields.remove("name") {
            Some(toml::Value::String(name)) => Ok(Self { name, fields }),
            _ => Err(serde::de::Error::custom(
                "a [task] table needs a `name` (the task's name, e.g. \"rotation\")",
            )),
        }
    }
}

impl TaskConfig {
    /// The settings `typed` of task `name`.
    pub fn of<C: Serialize>(name: &str, typed: &C) -> Self {
        let fields = toml::Table::try_from(typed).expect("task settings serialise to a table");
        Self {
            name: name.to_string(),
            fields,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The task these settings belong to.
    pub fn task(&self) -> Result<&'static dyn Task> {
        get(&self.name)
    }

    /// The settings as task type `C`, with an error naming the task and what is wrong.
    pub fn typed<C: serde::de::DeserializeOwned>(&self) -> Result<C> {
        self.fields
            .clone()
            .try_into()
            .with_context(|| format!("the settings of task {:?}", self.name))
    }

    /// Read as `C` and written back; a setting `C` does not know is refused (serde would
    /// drop it without a word, and a misspelt setting would silently take its default). A
    /// key written back under another name is an old spelling `C` still reads (a serde
    /// alias) when leaving it out changes what is read.
    pub fn normalized<C: serde::de::DeserializeOwned + Serialize>(&self) -> Result<Self> {
        let back = Self::of(&self.name, &self.typed::<C>()?);
        let unused = |k: &String| {
            let mut without = self.fields.clone();
            without.remove(k);
            without
                .try_into::<C>()
                .is_ok_and(|c| Self::of(&self.name, &c) == back)
        };
        if let Some(unknown) = self
            .fields
            .keys()
            .find(|k| !back.fields.contains_key(*k) && unused(k))
        {
            bail!(
                "task {:?} has no setting {unknown:?}; its settings are {}",
                self.name,
                back.fields.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        Ok(back)
    }

    /// Set one setting (from a flag), keeping the others.
    pub fn set(&mut self, key: &str, value: toml::Value) {
        self.fields.insert(key.to_string(), value);
    }
}

/// The task called `name`.
pub fn get(name: &str) -> Result<&'static dyn Task> {
    REGISTRY
        .iter()
        .copied()
        .find(|t| t.name() == name)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "unknown task {name:?}; the tasks are {}",
                names(REGISTRY.iter().copied()).join(", ")
            )
        })
}

fn names<'a>(tasks: impl Iterator<Item = &'a dyn Task>) -> Vec<&'static str> {
    tasks.map(|t| t.name()).collect()
}

/// The pretext tasks, in registry order (the supervised baseline is not one).
pub fn pretext() -> impl Iterator<Item = &'static dyn Task> {
    REGISTRY.iter().copied().filter(|t| t.is_pretext())
}

/// Every task that trains, for the command line's `--task`.
pub fn all_names() -> Vec<&'static str> {
    names(REGISTRY.iter().copied().filter(|t| t.trains()))
}

/// `all` (the pretext tasks), `none` or comma-separated task names, each once, in the
/// order given.
pub fn parse_list(list: &[String]) -> Result<Vec<&'static dyn Task>> {
    let mut out: Vec<&'static dyn Task> = Vec::new();
    for n in list {
        match n.trim() {
            "all" => out.extend(pretext()),
            "none" | "" => {}
            other => out.push(get(other).with_context(|| {
                format!(
                    "expected all, none or some of {}",
                    names(pretext()).join(", ")
                )
            })?),
        }
    }
    let mut seen: Vec<&str> = Vec::new();
    out.retain(|t| {
        let new = !seen.contains(&t.name());
        seen.push(t.name());
        new
    });
    Ok(out)
}

/// A pretext task's samples: what it feeds the network, and a picture of it.
pub trait PretextTask: SampleMaker {
    fn name(&self) -> &'static str;
    /// Outputs of the task head (0 for reconstruction).
    fn num_classes(&self) -> usize;
    /// Write a PNG showing a few images as the network receives them, with their targets.
    fn preview(&self, set: &ImageSet, path: &Path, seed: u64) -> anyhow::Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_names_each_task_once_and_lists_parse() {
        let mut seen = all_names();
        let n = seen.len();
        seen.dedup();
        assert_eq!(seen.len(), n);
        assert!(get("rotation").is_ok());
        let e = get("rotaton").err().unwrap().to_string();
        assert!(
            e.contains("unknown task \"rotaton\"") && e.contains("jigsaw"),
            "{e}"
        );
        let l = parse_list(&["jigsaw".into(), "rotation".into(), "jigsaw".into()]).unwrap();
        assert_eq!(names(l.into_iter()), ["jigsaw", "rotation"]);
        let all = parse_list(&["all".into()]).unwrap();
        assert!(all.iter().all(|t| t.is_pretext()));
        assert!(parse_list(&["none".into()]).unwrap().is_empty());
    }

    #[test]
    fn task_settings_round_trip_through_a_table_and_refuse_unknown_keys() {
        let cfg = TaskConfig::of("rotation", &RotationConfig { angles: 8 });
        let text = toml::to_string(&cfg).unwrap();
        assert!(
            text.contains("name = \"rotation\"") && text.contains("angles = 8"),
            "{text}"
        );
        let back: TaskConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, cfg);
        assert_eq!(back.typed::<RotationConfig>().unwrap().angles, 8);
        let mut typo = cfg.clone();
        typo.set("angels", toml::Value::Integer(4));
        let e = typo.normalized::<RotationConfig>().unwrap_err().to_string();
        assert!(
            e.contains("no setting \"angels\"") && e.contains("angles"),
            "{e}"
        );
        let mut wrong = cfg;
        wrong.set("angles", toml::Value::String("eight".into()));
        assert!(wrong.typed::<RotationConfig>().is_err());
        let nameless: Result<TaskConfig, _> = toml::from_str("angles = 4");
        assert!(nameless.is_err());
    }
}
