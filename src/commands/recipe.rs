//! Paper recipes (`recipes/*.toml`, `pretext study --recipe FILE [--scale F]`): one file
//! per paper setting — network, epochs, optimizer, schedule, batch, evaluation — with the
//! numbers the paper published, so a GPU user reproduces a paper with one command and a
//! CPU user runs the same recipe scaled down (every epoch count × `--scale`, said in the
//! study's page). The study then prints each published number beside the one measured.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::StudySpec;
use crate::eval::finetune::Protocol;
use crate::models::Arch;
use crate::models::probe::ProbeKind;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub name: String,
    /// The paper, and where its settings come from.
    pub paper: String,
    /// The data the paper used (`--data` names the copy to use).
    pub data: String,
    pub pretrain: Pretraining,
    pub eval: Evaluation,
    #[serde(default)]
    pub finetune: Option<FewLabels>,
    /// What the paper reported, to set beside what the study measures.
    #[serde(default)]
    pub published: Vec<Published>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pretraining {
    pub tasks: Vec<String>,
    /// Also train the supervised baseline on the same images.
    pub supervised: bool,
    pub backbone: Arch,
    #[serde(default)]
    pub width: Option<usize>,
    #[serde(default = "four")]
    pub blocks: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// `step`, `cosine`, `constant` or `step:M1,M2,…:GAMMA`.
    pub schedule: String,
    #[serde(default)]
    pub train_images: Option<usize>,
}

fn four() -> usize {
    4
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evaluation {
    pub probes: Vec<ProbeKind>,
    pub probe_epochs: usize,
    #[serde(default)]
    pub probe_sweep: bool,
    /// Epochs of the mlp/conv probes (`None`: RotNet's 100).
    #[serde(default)]
    pub head_epochs: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FewLabels {
    #[serde(default)]
    pub fractions: Vec<f64>,
    #[serde(default)]
    pub per_class: Vec<usize>,
    pub protocols: Vec<Protocol>,
    pub epochs: usize,
    #[serde(default)]
    pub epoch_size: Option<usize>,
    pub seeds: Vec<u64>,
}

/// One published number: `method` (a task, `supervised` or `random-init`) under
/// `protocol` (`linear`, `mlp`, `conv`; or `frozen`/`whole` for few labels) at `at` (a
/// layer, or `20/class` for few labels), top-1 in %.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Published {
    pub method: String,
    pub protocol: String,
    pub at: String,
    pub top1: f64,
}

/// A recipe as a study runs it: its name, paper, scale and published numbers (saved with
/// the study, for its page).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub name: String,
    pub file: PathBuf,
    pub paper: String,
    pub scale: f64,
    /// What the scale changed, in words.
    pub scaled: Vec<String>,
    pub published: Vec<Published>,
}

impl Recipe {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the recipe {}", path.display()))?;
        let r: Recipe = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: not a recipe: {e}", path.display()))?;
        crate::config::schedule(&r.pretrain.schedule)
            .with_context(|| format!("{}", path.display()))?;
        crate::tasks::parse_list(&r.pretrain.tasks)
            .with_context(|| format!("{}", path.display()))?;
        Ok(r)
    }

    /// The study this recipe asks for on `data`, every epoch count × `scale` (at least 1);
    /// image counts given here replace the recipe's.
    pub fn study(
        &self,
        file: &Path,
        data: PathBuf,
        scale: f64,
        images: Images,
    ) -> Result<(StudySpec, Applied)> {
        anyhow::ensure!(
            scale > 0.0 && scale <= 1.0,
            "--scale must be in (0, 1], got {scale}"
        );
        let mut scaled = vec![];
        let mut at = |what: &str, n: usize| -> usize {
            let m = ((n as f64 * scale).round() as usize).max(1);
            if m != n {
                scaled.push(format!("{what} {n} → {m}"));
            }
            m
        };
        let p = &self.pretrain;
        let e = &self.eval;
        let epochs = at("pretraining epochs", p.epochs);
        let probe_epochs = at("linear probe epochs", e.probe_epochs);
        let head_epochs = (!e.probes.iter().all(|&k| k == ProbeKind::Linear))
            .then(|| at("mlp/conv probe epochs", e.head_epochs.unwrap_or(100)));
        let few = self.finetune.as_ref();
        let finetune_epochs = few.map(|f| at("fine-tuning epochs", f.epochs));
        let epoch_size = few
            .and_then(|f| f.epoch_size)
            .map(|n| at("fine-tuning epoch size", n));
        let mut per_class = few.map_or(vec![], |f| f.per_class.clone());
        if let Some(asked) = &images.per_class {
            let Some(f) = few.filter(|f| !f.per_class.is_empty()) else {
                anyhow::bail!(
                    "--per-class: the recipe {} has no labels-per-class table to narrow",
                    self.name
                );
            };
            // Only the recipe's own counts: each has its published row; another count
            // would be a table the recipe does not describe.
            if let Some(k) = asked.iter().find(|k| !f.per_class.contains(k)) {
                anyhow::bail!(
                    "--per-class {k}: the recipe {} runs {} labels per class; choose among those",
                    self.name,
                    slashed(&f.per_class)
                );
            }
            let kept: Vec<usize> = f
                .per_class
                .iter()
                .copied()
                .filter(|k| asked.contains(k))
                .collect();
            if kept != f.per_class {
                scaled.push(format!(
                    "labels per class {} → {}",
                    slashed(&f.per_class),
                    slashed(&kept)
                ));
            }
            per_class = kept;
        }
        let spec = StudySpec {
            data: Some(data),
            tasks: p.tasks.clone(),
            // The recipe's epochs, not a time budget: no time limit short of the epochs.
            budget: "100000h".into(),
            max_epochs: epochs,
            supervised: p.supervised,
            backbone: p.backbone,
            width: p.width,
            blocks: p.blocks,
            train_images: images.train.or(p.train_images),
            batch_size: p.batch_size,
            lr: p.lr,
            seed: 0,
            eval_train_images: images.eval_train,
            eval_test_images: images.eval_test,
            probe_epochs,
            probe_sweep: e.probe_sweep,
            finetune: if few.is_some() {
                vec!["all".into()]
            } else {
                vec!["none".into()]
            },
            fractions: few.map_or(vec![], |f| f.fractions.clone()),
            seeds: few.map_or(vec![0], |f| f.seeds.clone()),
            finetune_epochs: finetune_epochs.unwrap_or(1),
            per_class,
            protocols: few.map_or(vec![Protocol::Whole], |f| f.protocols.clone()),
            epoch_size,
            frozen: Default::default(),
            probes: e.probes.clone(),
            head_epochs,
            pretrain_data: None,
            schedule: Some(p.schedule.clone()),
        };
        let applied = Applied {
            name: self.name.clone(),
            file: file.to_path_buf(),
            paper: self.paper.clone(),
            scale,
            scaled,
            published: self.published.clone(),
        };
        Ok((spec, applied))
    }
}

/// Image counts given on the command line beside a recipe (`None`: the recipe's, or all).
#[derive(Clone, Debug, Default)]
pub struct Images {
    pub train: Option<usize>,
    pub eval_train: Option<usize>,
    pub eval_test: Option<usize>,
    /// Labels per class to run, a subset of the recipe's own (its largest counts are most
    /// of a scaled-down run's time: one pass over 5000 per class is the whole train split).
    pub per_class: Option<Vec<usize>>,
}

impl Applied {
    /// The recipe's block of the study's page: what it is, how it was scaled, and each
    /// published number beside the one measured (`–` where the study has none).
    pub fn markdown(&self, comparison: &crate::report::Comparison) -> String {
        use std::fmt::Write as _;
        let mut s = format!(
            "\n## Recipe {} ({})\n\n{}\n\n",
            self.name,
            self.file.display(),
            self.paper
        );
        if self.scaled.is_empty() {
            s.push_str("Run at the paper's scale.\n");
        } else {
            let _ = writeln!(
                s,
                "Scaled down ×{} for this machine: {}. Expect lower numbers than the paper's.",
                self.scale,
                self.scaled.join(", ")
            );
        }
        if !self.published.is_empty() {
            s.push_str(
                "\n| method | protocol | at | published top-1 | measured top-1 |\n|---|---|---|---|---|\n",
            );
            for p in &self.published {
                let measured = measured(comparison, p)
                    .map_or("–".to_string(), |v| format!("{:.2}", 100.0 * v));
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {:.2} | {measured} |",
                    p.method, p.protocol, p.at, p.top1
                );
            }
        }
        s
    }
}

/// The study's number for a published one, when it measured it.
fn measured(c: &crate::report::Comparison, p: &Published) -> Option<f64> {
    use crate::eval::finetune::Labels;
    match p.protocol.as_str() {
        "frozen" | "whole" => {
            let protocol = if p.protocol == "frozen" {
                Protocol::Frozen
            } else {
                Protocol::Whole
            };
            // The supervised baseline of a few-label table is its whole random-init row.
            let (method, init) = if p.method == "supervised" {
                (None, "random-init")
            } else {
                (Some(p.method.as_str()), "pretrained")
            };
            let k: usize = p.at.strip_suffix("/class")?.parse().ok()?;
            c.finetunes
                .iter()
                .filter(|f| method.is_none_or(|m| f.method == m))
                .flat_map(|f| f.summary())
                .find(|r| {
                    r.labels == Labels::PerClass(k) && r.protocol == protocol && r.init == init
                })
                .map(|r| r.top1.0)
        }
        kind => {
            let r = c.evals.iter().find(|r| r.method == p.method)?;
            let row = r.rows.iter().find(|x| x.layer == p.at)?;
            match kind {
                "linear" => Some(row.linear.top1),
                "mlp" => row.head(ProbeKind::Mlp).map(|h| h.top1),
                "conv" => row.head(ProbeKind::Conv).map(|h| h.top1),
                _ => None,
            }
        }
    }
}

fn slashed(v: &[usize]) -> String {
    v.iter()
        .map(|k| k.to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// The recipes shipped in `recipes/` (for tests and `--help`).
pub fn shipped() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shipped recipe reads, names known tasks and a valid schedule, and maps onto a
    /// study whose epochs scale.
    #[test]
    fn every_shipped_recipe_parses_and_scales() {
        let files = shipped();
        assert!(files.len() >= 6, "{files:?}");
        for f in files {
            let r = Recipe::load(&f).unwrap();
            assert!(
                !r.published.is_empty(),
                "{}: no published numbers",
                f.display()
            );
            let (spec, applied) = r.study(&f, "data".into(), 0.1, Images::default()).unwrap();
            assert_eq!(
                spec.max_epochs,
                ((r.pretrain.epochs as f64 * 0.1).round() as usize).max(1)
            );
            assert!(!applied.scaled.is_empty());
            let (full, applied) = r.study(&f, "data".into(), 1.0, Images::default()).unwrap();
            assert_eq!(full.max_epochs, r.pretrain.epochs);
            assert!(applied.scaled.is_empty());
        }
    }

    /// `--per-class` keeps a subset of the recipe's counts, in the recipe's order, and says
    /// so; a count the recipe has no row for, or a recipe without the table, is refused.
    #[test]
    fn per_class_narrows_the_recipes_counts_and_says_so() {
        let f = shipped()
            .into_iter()
            .find(|f| f.ends_with("rotnet-cifar10-nin4.toml"))
            .unwrap();
        let r = Recipe::load(&f).unwrap();
        let narrow = |k: Vec<usize>| {
            r.study(
                &f,
                "d".into(),
                1.0,
                Images {
                    per_class: Some(k),
                    ..Images::default()
                },
            )
        };
        let (spec, applied) = narrow(vec![400, 20, 100]).unwrap();
        assert_eq!(spec.per_class, vec![20, 100, 400]);
        assert_eq!(
            applied.scaled,
            vec!["labels per class 20/100/400/1000/5000 → 20/100/400".to_string()]
        );
        let e = narrow(vec![20, 50]).unwrap_err().to_string();
        assert!(
            e.contains("--per-class 50") && e.contains("20/100/400/1000/5000"),
            "{e}"
        );
        let (spec, applied) = r.study(&f, "d".into(), 1.0, Images::default()).unwrap();
        assert_eq!(spec.per_class, vec![20, 100, 400, 1000, 5000]);
        assert!(applied.scaled.is_empty());
        let alexnet = shipped()
            .into_iter()
            .find(|f| f.ends_with("rotnet-imagenet-alexnet.toml"))
            .unwrap();
        let e = Recipe::load(&alexnet)
            .unwrap()
            .study(
                &alexnet,
                "d".into(),
                1.0,
                Images {
                    per_class: Some(vec![20]),
                    ..Images::default()
                },
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("no labels-per-class table"), "{e}");
    }

    #[test]
    fn a_scale_outside_zero_to_one_is_refused() {
        let r = Recipe::load(&shipped()[0]).unwrap();
        for s in [0.0, 1.5, -1.0] {
            assert!(
                r.study(Path::new("x"), "d".into(), s, Images::default())
                    .is_err()
            );
        }
    }
}
