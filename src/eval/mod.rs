//! Measuring frozen features: kNN and per-tap linear probes, written as a table.

pub mod cluster;
pub mod estimate;
pub mod features;
pub mod finetune;
pub mod heads;
pub mod knn;
pub mod linear;
pub mod metrics;
pub mod store;
pub mod table;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, bail};
use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::data::{CacheOptions, ImageSet, Split};
use crate::run::{RunConfig, load_backbone, open_split, subset_indices};
use cluster::KMeansConfig;
use features::EvalView;
use knn::KnnSetting;
use linear::ProbeConfig;
use store::{FeatureDtype, StoreKey};
pub use table::{EvalReport, LayerRow};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalConfig {
    /// Pooled feature size per tap (~9k, as the literature).
    pub probe_dim: usize,
    pub knn: Vec<KnnSetting>,
    pub probe: ProbeConfig,
    /// Labelled training images used (a seeded random subset; `None`: all).
    pub train_images: Option<usize>,
    /// Test images used (`None`: all).
    pub test_images: Option<usize>,
    pub batch_size: usize,
    pub seed: u64,
    /// k-means on the test features of every layer (k = classes).
    #[serde(default)]
    pub kmeans: KMeansConfig,
    /// How the feature store keeps the values (f16 rounds them).
    #[serde(default)]
    pub feature_dtype: FeatureDtype,
    /// Non-linear probes trained beside the linear one (RotNet's MLP and conv block).
    #[serde(default)]
    pub heads: heads::HeadsConfig,
}

impl EvalConfig {
    /// Refuse settings no evaluation can run with, before any work (a zero count reached a
    /// division or an empty probe and crashed).
    pub fn validate(&self) -> Result<()> {
        let p = &self.probe;
        anyhow::ensure!(self.probe_dim >= 1, "--probe-dim must be at least 1");
        anyhow::ensure!(p.epochs >= 1, "--probe-epochs must be at least 1");
        anyhow::ensure!(
            p.batch_size >= 1 && self.batch_size >= 1,
            "batch sizes must be at least 1"
        );
        anyhow::ensure!(
            p.optim.lr.is_finite() && p.optim.lr > 0.0,
            "the probe's learning rate must be a finite number > 0, got {}",
            p.optim.lr
        );
        if let Some(sw) = &p.sweep {
            anyhow::ensure!(
                !sw.lrs.is_empty() && !sw.weight_decays.is_empty(),
                "the probe sweep needs at least one learning rate and one weight decay"
            );
            anyhow::ensure!(
                sw.lrs.iter().all(|&lr| lr.is_finite() && lr > 0.0)
                    && sw.weight_decays.iter().all(|&w| w.is_finite() && w >= 0.0),
                "the probe sweep's learning rates must be > 0 and its weight decays ≥ 0"
            );
            anyhow::ensure!(
                sw.val_fraction > 0.0 && sw.val_fraction < 1.0,
                "the probe sweep's validation fraction must be between 0 and 1, got {}",
                sw.val_fraction
            );
        }
        anyhow::ensure!(
            self.train_images != Some(0) && self.test_images != Some(0),
            "--train-images and --test-images must be at least 1"
        );
        anyhow::ensure!(!self.knn.is_empty(), "no kNN setting");
        for s in &self.knn {
            anyhow::ensure!(
                s.k >= 1 && s.t.is_finite() && s.t > 0.0,
                "kNN needs k ≥ 1 and a temperature > 0, got k = {} T = {}",
                s.k,
                s.t
            );
        }
        anyhow::ensure!(
            self.kmeans.restarts >= 1 && self.kmeans.max_iters >= 1,
            "k-means needs at least one start and one iteration"
        );
        self.heads.validate()
    }
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            probe_dim: 9216,
            knn: vec![KnnSetting { k: 20, t: 0.07 }, KnnSetting { k: 200, t: 0.1 }],
            probe: ProbeConfig::default(),
            train_images: None,
            test_images: None,
            batch_size: 256,
            seed: 0,
            kmeans: KMeansConfig::default(),
            feature_dtype: FeatureDtype::F32,
            heads: heads::HeadsConfig::default(),
        }
    }
}

/// The labelled train and test splits of `data` that every protocol measures run `rc` on,
/// checked: both labelled, the same classes in the same order (a label is an index into
/// them), images of the size and channels the run was trained on, and no image in both
/// (a test image that is also a training image makes kNN find itself and the probe report
/// training accuracy).
pub fn labelled_splits(
    rc: &RunConfig,
    data: &Path,
    cache: &CacheOptions,
) -> Result<(Arc<ImageSet>, Arc<ImageSet>)> {
    let train = open_split(data, Split::Train, cache)?;
    let test = open_split(data, Split::Test, cache)?;
    check_splits(&train, &test, data)?;
    crate::run::check_fits(rc, &train, data, "train")?;
    crate::run::check_fits(rc, &test, data, "test")?;
    check_not_pretrained_on(rc, data, &test)?;
    Ok((train, test))
}

/// Refuse test images the run itself trained on: on its own image tree, a held-out split
/// other than the one it recorded (another `--test-fraction` or `--split-seed`, a resumed
/// study or run with other flags), or a run that held nothing out, would put its
/// pretraining images in the test split — with labels only the evaluation's own train and
/// test splits are compared, which this would not catch. The run's images are listed
/// (without decoding) with the split it recorded.
pub fn check_not_pretrained_on(rc: &RunConfig, data: &Path, test: &ImageSet) -> Result<()> {
    // An imported network was pretrained elsewhere: checked against the pretext run it was
    // exported from when that run is still there, else on data pretext cannot see.
    if let Some(imported) = rc.imported() {
        let source = imported.run.and_then(|run| RunConfig::load(&run).ok());
        return match source {
            Some(src) if src.imported().is_none() => check_not_pretrained_on(&src, data, test),
            _ => Ok(()),
        };
    }
    let same = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    use crate::data::{Format, detect_format, shards};
    if detect_format(&rc.data).ok() == Some(Format::Shards)
        && detect_format(data)? == Format::Shards
    {
        // A run streamed from a shard pattern may name test shards: compare the files.
        // (If the run's shards are gone there is nothing left to compare.)
        let trained: std::collections::HashSet<PathBuf> = shards::files(&rc.data, rc.split)
            .map_or_else(
                |_| Default::default(),
                |f| f.iter().map(|p| same(p)).collect(),
            );
        if let Some(shared) = shards::files(data, Split::Test)?
            .iter()
            .find(|p| trained.contains(&same(p)))
        {
            bail!(
                "{}: the run was pretrained on {}, which holds test images ({}); evaluate on \
                 test shards it did not train on",
                data.display(),
                rc.data.display(),
                shared.display()
            );
        }
    }
    // The image-tree files the run trained on (its tree, or the tree its shards were
    // written from), against the test images' files: by name, across formats.
    let Some(trained) = tree_files(&rc.data, rc.split, rc.holdout) else {
        return Ok(());
    };
    let tested = match detect_format(data)? {
        Format::Folder => test.header.sources.clone(),
        Format::Shards => match tree_files(data, Split::Test, None) {
            Some(files) => files,
            None => return Ok(()),
        },
        // A binary release: its splits are separate files.
        _ => return Ok(()),
    };
    let shared = shared_images(&trained, &tested);
    if let Some(first) = shared.first() {
        bail!(
            "{}: {} test image(s) are among the images the run trained on (first: {first}): \
             it held out {}, and these test images were drawn with {}. Evaluate with the \
             run's own split (leave out --test-fraction and --split-seed), or on other data",
            data.display(),
            shared.len(),
            rc.holdout
                .map_or("nothing (it trained on the whole tree)".to_string(), |h| h
                    .to_string()),
            test.header
                .holdout
                .map_or("no held-out split".to_string(), |h| h.to_string())
        );
    }
    Ok(())
}

/// The files of `split` of the image tree `data` is (listed with `holdout`, no decoding),
/// or of the tree shards at `data` were written from (with the split they were written
/// with); `None` for other data, or a tree no longer there.
fn tree_files(
    data: &Path,
    split: Split,
    holdout: Option<crate::data::Holdout>,
) -> Option<Vec<String>> {
    use crate::data::{Format, detect_format, folder, shards};
    let (tree, holdout) = match detect_format(data).ok()? {
        Format::Folder => (data.to_path_buf(), holdout),
        Format::Shards => shards::source_tree(data)?,
        _ => return None,
    };
    let listing = folder::list(&tree, split, holdout).ok()?;
    Some(
        listing
            .files
            .iter()
            .map(|f| f.to_string_lossy().into_owned())
            .collect(),
    )
}

/// The `test` images that are also `train` images (by where they really are).
fn shared_images<'a>(train: &[String], test: &'a [String]) -> Vec<&'a String> {
    let mut resolver = Resolver::default();
    let seen: std::collections::HashSet<PathBuf> =
        train.iter().map(|s| resolver.resolve(s)).collect();
    test.iter()
        .filter(|s| seen.contains(&resolver.resolve(s)))
        .collect()
}

/// Where an image really is: its folder with symbolic links resolved (once per folder:
/// 60k `canonicalize` calls would cost a second), and the file itself when it is a link
/// (a test tree of links into the train tree is the same images).
#[derive(Default)]
struct Resolver {
    folders: std::collections::HashMap<PathBuf, PathBuf>,
}

impl Resolver {
    fn resolve(&mut self, source: &str) -> PathBuf {
        let p = Path::new(source);
        if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()) {
            return std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        }
        match (p.parent(), p.file_name()) {
            (Some(dir), Some(name)) => self
                .folders
                .entry(dir.to_path_buf())
                .or_insert_with(|| std::fs::canonicalize(dir).unwrap_or_else(|_| dir.into()))
                .join(name),
            _ => p.to_path_buf(),
        }
    }
}

/// Whether `cfg` can evaluate on the labelled splits of `data` (before hours of
/// pretraining are spent on a run whose evaluation would then be refused).
pub fn preflight(data: &Path, cfg: &EvalConfig, cache: &CacheOptions) -> Result<EvalSize> {
    cfg.validate()?;
    let train = open_split(data, Split::Train, cache)?;
    let test = open_split(data, Split::Test, cache)?;
    check_splits(&train, &test, data)?;
    let n = |set: &ImageSet, take: Option<usize>| take.map_or(set.len(), |t| t.min(set.len()));
    let size = EvalSize {
        train: n(&train, cfg.train_images),
        test: n(&test, cfg.test_images),
        train_split: train.len(),
        test_split: test.len(),
        classes: train.num_classes(),
    };
    check_counts(cfg, size.classes, size.train, size.test)?;
    Ok(size)
}

/// What an evaluation will read, known before it starts (for plans and their estimates).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalSize {
    /// Images the evaluation uses of each split.
    pub train: usize,
    pub test: usize,
    /// The splits' whole sizes (few-label fine-tuning draws from all of train, tests on
    /// all of test).
    pub train_split: usize,
    pub test_split: usize,
    pub classes: usize,
}

fn check_counts(cfg: &EvalConfig, classes: usize, train: usize, test: usize) -> Result<()> {
    let _ = cfg;
    if train == 0 {
        bail!("no labelled training images to evaluate with");
    }
    if test < classes {
        bail!(
            "k-means clusters the test images into {classes} groups (one per class), so the evaluation needs at least {classes} test images; got {test}"
        );
    }
    Ok(())
}

/// [`labelled_splits`]' checks that need no run: labels, classes, no shared image.
pub fn check_splits(train: &ImageSet, test: &ImageSet, data: &Path) -> Result<()> {
    for (set, name) in [(train, "train"), (test, "test")] {
        if !set.is_labelled() {
            bail!(
                "{}: the {name} split has no labels (expected class folders)",
                data.display()
            );
        }
    }
    if train.header.classes != test.header.classes {
        bail!(
            "{}: the train and test splits have different classes (train: {}; test: {}); \
             a label is an index into the class list, so both need the same classes",
            data.display(),
            train.header.classes.join(", "),
            test.header.classes.join(", ")
        );
    }
    check_disjoint(train, test, data)
}

/// Refuse train and test splits that share an image (by the file or record it came from,
/// symbolic links resolved).
pub fn check_disjoint(train: &ImageSet, test: &ImageSet, data: &Path) -> Result<()> {
    let shared = shared_images(&train.header.sources, &test.header.sources);
    if let Some(first) = shared.first() {
        bail!(
            "{}: {} test image(s) are also training images (first: {first}); evaluating on \
             training images would report training accuracy as test accuracy. Give the data \
             separate train/ and test/ folders, or a class-per-folder tree without them (a \
             test split is then held out of each class, see --test-fraction)",
            data.display(),
            shared.len()
        );
    }
    Ok(())
}

/// Evaluate a run's latest checkpoint (or, with `random_init`, the same network freshly
/// initialized) on the labelled train/test splits of `data`.
pub fn evaluate_run(
    run: &Path,
    data: &Path,
    random_init: bool,
    cfg: &EvalConfig,
    cache: &CacheOptions,
    dev: &Device,
    progress: bool,
) -> Result<(EvalReport, PathBuf)> {
    cfg.validate()?;
    let rc = RunConfig::load(run)?;
    dev.seed(cfg.seed);
    let (backbone, epoch) = load_backbone(&rc, run, random_init, dev)?;
    let backbone = backbone.valid();
    // A layer the non-linear probes cannot find fails before any work, and so do shards
    // asked for a subset (the heads train through a run, which streams shards whole).
    if !cfg.heads.kinds.is_empty() {
        cfg.heads.layers_of(&backbone.tap_names())?;
        if cfg.train_images.is_some()
            && crate::data::detect_format(data)? == crate::data::Format::Shards
        {
            bail!(
                "{}: the mlp/conv probes train on all of a shard stream's images; leave out                  --train-images, or write the subset as shards of its own",
                data.display()
            );
        }
    }
    let method = if random_init {
        "random-init".to_string()
    } else {
        rc.method()
    };
    let t0 = Instant::now();
    let (train, test) = labelled_splits(&rc, data, cache)?;
    let classes = train.num_classes();
    let tr_idx = subset_indices(train.len(), cfg.train_images, cfg.seed);
    let te_idx = subset_indices(test.len(), cfg.test_images, cfg.seed + 1);
    check_counts(cfg, classes, tr_idx.len(), te_idx.len())?;
    let train = Arc::new(train.subset(&tr_idx));
    let test = Arc::new(test.subset(&te_idx));
    let view = Arc::new(EvalView::for_run(&rc));
    // Both splits' features go to the run's feature store (or come from it, when an
    // earlier evaluation of these very weights on these very images left them there).
    let view_key = serde_json::to_string(&(&view.augment, &view.input, &view.norm))?;
    let producer = store::Producer::new(&backbone, epoch, random_init);
    let features_of = |set: &Arc<ImageSet>, split: &str| {
        let key = StoreKey::new(&producer, view_key.clone(), cfg, split, set);
        let dir = store::dir(run, random_init, split);
        store::stored(&dir, &key, set, |to| {
            features::extract(
                &backbone,
                set.clone(),
                view.clone(),
                cfg.probe_dim,
                cfg.batch_size,
                dev,
                progress.then_some(split),
                None,
                Some((to, cfg.feature_dtype)),
            )
        })
    };
    let ftr = features_of(&train, "train")?;
    let fte = features_of(&test, "test")?;
    let probes = linear::evaluate(&ftr, &fte, classes, &cfg.probe, dev, progress)?;
    let mut rows = Vec::new();
    for (t, probe) in probes.into_iter().enumerate() {
        // kNN and k-means read the store in blocks, L2-normalised on the way.
        let knn = knn::evaluate(&ftr, &fte, t, classes, &cfg.knn, dev)?;
        let cluster = cluster::evaluate(&fte, t, classes, &cfg.kmeans, dev)?;
        rows.push(LayerRow {
            layer: ftr.taps[t].clone(),
            dim: ftr.dims[t],
            pool_grid: ftr.grids[t],
            linear: probe,
            knn,
            cluster: Some(cluster),
            heads: vec![],
        });
    }
    let trained = heads::evaluate(
        run,
        &rc,
        data,
        random_init,
        test.clone(),
        classes,
        cfg,
        cache,
        dev,
        progress,
    )?;
    for (layer, head) in trained {
        if let Some(row) = rows.iter_mut().find(|r| r.layer == layer) {
            row.heads.push(head);
        }
    }
    // What the network learnt from: the run's data, unless it is the random-init network or
    // an imported one (trained elsewhere).
    let pretrained_on = rc.pretrained_on().filter(|_| !random_init);
    let report = EvalReport {
        method,
        run: run.display().to_string(),
        backbone: rc.backbone.clone(),
        input: Some(rc.input),
        checkpoint_epoch: epoch,
        data: data.display().to_string(),
        pretrained_on,
        test_split: test.header.holdout.map(|h| h.to_string()),
        train_images: train.len(),
        test_images: test.len(),
        classes,
        protocol: cfg.clone(),
        seconds: t0.elapsed().as_secs_f64(),
        rows,
    };
    let out = run.join(if random_init {
        "eval-random-init"
    } else {
        "eval"
    });
    report.write(&out)?;
    Ok((report, out))
}
