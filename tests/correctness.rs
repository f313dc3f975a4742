//! Regression tests for results that were once wrong without a word (issue 16): each test
//! names the defect it guards against and fails on the code that had it.

mod common;

use std::fs;
use std::path::Path;

use burn::tensor::Device;
use pretext::config::PretrainSpec;
use pretext::data::{self, CacheOptions, Split};
use pretext::eval::evaluate_run;
use pretext::eval::finetune::{FinetuneConfig, finetune_run};
use pretext::run::Pretrain;
use pretext::tasks::{RotationConfig, SupervisedConfig};

const CLASSES: [&str; 3] = ["airplane", "cat", "ship"];

/// A class-per-folder tree without train/ and test/: `per` real CIFAR-10 training images of
/// each of three classes under `root/<class>/`.
fn class_tree(root: &Path, per: usize) {
    for class in CLASSES {
        let dir = root.join(class);
        fs::create_dir_all(&dir).unwrap();
        for i in 0..per {
            let name = format!("{i:04}.jpg");
            fs::copy(
                common::cifar_root().join("train").join(class).join(&name),
                dir.join(&name),
            )
            .unwrap();
        }
    }
}

fn no_cache() -> CacheOptions {
    CacheOptions {
        dir: None,
        progress: false,
        ..CacheOptions::default()
    }
}

/// Flags for a tiny, fast NIN-8 rotation run on `data`.
fn tiny_args(data: &Path) -> PretrainSpec {
    PretrainSpec {
        width: Some(8),
        epochs: 1,
        batch_size: 16,
        train_images: None,
        ..common::pretrain_spec(data, "rotation")
    }
}

fn pretrain(run: &Path, cfg: Option<pretext::run::RunConfig>, cache: &CacheOptions) {
    Pretrain {
        run,
        device: &Device::flex(),
        progress: false,
        stop_after: None,
        cache,
        timing: None,
    }
    .run(cfg.clone(), cfg.is_none())
    .unwrap();
}

fn sources(set: &data::ImageSet) -> Vec<String> {
    set.header.sources.clone()
}

/// Item 1: a class-per-folder tree was used whole as both the train and the test split.
#[test]
fn a_tree_without_split_folders_gets_a_disjoint_held_out_test_split() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    class_tree(&root, 40);
    let cache = no_cache();
    let train = data::open(&root, Split::Train, &cache).unwrap();
    let test = data::open(&root, Split::Test, &cache).unwrap();
    // 10% of each class held out: 4 of 40, stratified.
    assert_eq!(test.class_counts(), vec![4, 4, 4]);
    assert_eq!(train.class_counts(), vec![36, 36, 36]);
    let (tr, te) = (sources(&train), sources(&test));
    assert!(
        te.iter().all(|s| !tr.contains(s)),
        "the splits share images"
    );
    let mut all: Vec<String> = tr.iter().chain(&te).cloned().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 120, "together they are the whole tree");
    // Pretraining (the unlabeled view) never sees the held-out images either.
    let pre = data::open(&root, Split::Unlabeled, &cache).unwrap();
    assert_eq!(sources(&pre), tr);
    // Seeded: the same seed gives the same split, another seed another one.
    assert_eq!(
        sources(&data::open(&root, Split::Test, &cache).unwrap()),
        te
    );
    let other = CacheOptions {
        holdout: Some(data::Holdout {
            fraction: 0.1,
            seed: 1,
        }),
        ..no_cache()
    };
    assert_ne!(
        sources(&data::open(&root, Split::Test, &other).unwrap()),
        te
    );

    // Evaluated end to end, the numbers name the held-out split and come from it.
    let run = tmp.path().join("run");
    let cfg = tiny_args(&root).resolve(&cache).unwrap();
    fs::create_dir_all(&run).unwrap();
    cfg.save(&run).unwrap();
    let mut ecfg = common::eval_config(None, None, 2, 512);
    ecfg.knn = vec![pretext::eval::knn::KnnSetting { k: 1, t: 0.07 }];
    let (report, _) =
        evaluate_run(&run, &root, true, &ecfg, &cache, &Device::flex(), false).unwrap();
    assert_eq!((report.train_images, report.test_images), (108, 12));
    let split = report.test_split.as_deref().unwrap_or_default();
    assert!(split.contains("10% of each class held out"), "{split}");
    assert!(report.markdown().contains(split));
    // 1-NN of a random network: on the same images every query would find itself (100%).
    for r in &report.rows {
        assert!(r.knn[0].top1 < 0.9, "{}: 1-NN {}", r.layer, r.knn[0].top1);
    }
}

/// Item 1, the safety net: data whose test split is its train split (here a link to the
/// same folder) is refused by every protocol instead of measured.
#[test]
fn evaluation_refuses_a_test_split_that_holds_training_images() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    class_tree(&root.join("train"), 4);
    std::os::unix::fs::symlink(root.join("train"), root.join("test")).unwrap();
    let cache = no_cache();
    let run = tmp.path().join("run");
    let cfg = tiny_args(&root).resolve(&cache).unwrap();
    fs::create_dir_all(&run).unwrap();
    cfg.save(&run).unwrap();
    let ecfg = common::eval_config(None, None, 1, 512);
    let e = evaluate_run(&run, &root, true, &ecfg, &cache, &Device::flex(), false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("12 test image(s) are also training images"),
        "{e}"
    );
    assert!(!run.join("eval-random-init").exists());
    // The same with a test tree of links to the training files, one link per file.
    fs::remove_file(root.join("test")).unwrap();
    for class in CLASSES {
        fs::create_dir_all(root.join("test").join(class)).unwrap();
        for i in 0..2 {
            let name = format!("{i:04}.jpg");
            std::os::unix::fs::symlink(
                root.join("train").join(class).join(&name),
                root.join("test").join(class).join(format!("link-{name}")),
            )
            .unwrap();
        }
    }
    let e = evaluate_run(&run, &root, true, &ecfg, &cache, &Device::flex(), false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("6 test image(s) are also training images"),
        "{e}"
    );
}

/// Item 4: fine-tuning did not check that the test split's classes are the train split's,
/// so labels (indices into the class list) silently meant other classes.
#[test]
fn finetuning_refuses_test_classes_that_differ_from_the_train_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    class_tree(&root.join("train"), 16);
    class_tree(&root.join("test"), 4);
    fs::remove_dir_all(root.join("test/airplane")).unwrap();
    let cache = no_cache();
    let run = tmp.path().join("run");
    pretrain(
        &run,
        Some(tiny_args(&root).resolve(&cache).unwrap()),
        &cache,
    );
    let cfg = FinetuneConfig {
        fractions: vec![0.5],
        seeds: vec![0],
        epochs: 1,
        batch_size: 8,
        ..FinetuneConfig::default()
    };
    let e = finetune_run(&run, &root, &cfg, None, &cache, &Device::flex(), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("different classes"), "{e}");
    assert!(!run.join("finetune").exists());
}

/// The first convolution's weights of a run's backbone (its latest checkpoint).
fn first_conv(run: &Path) -> Vec<f32> {
    let rc = pretext::run::RunConfig::load(run).unwrap();
    let dev = Device::flex();
    common::first_conv(
        &pretext::run::load_backbone(&rc, run, false, &dev)
            .unwrap()
            .0,
    )
}

/// Item 2: a fine-tuning resumed before its first checkpoint started from random init and
/// was still reported as pretrained.
#[test]
fn a_finetuning_resumed_before_its_first_checkpoint_starts_from_the_pretrained_backbone() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    class_tree(&root.join("train"), 16);
    let cache = no_cache();
    let base = tmp.path().join("base");
    pretrain(
        &base,
        Some(tiny_args(&root).resolve(&cache).unwrap()),
        &cache,
    );
    // Fine-tuning with a learning rate of 0: the weights it ends with are the ones it
    // started from.
    let ft = tmp.path().join("ft");
    let a = PretrainSpec {
        task: "supervised".into(),
        task_settings: vec![("init_from".into(), base.display().to_string().into())],
        lr: Some(0.0),
        ..tiny_args(&root)
    };
    let cfg = a.resolve(&cache).unwrap();
    // Killed before its first checkpoint: the run directory and its config exist.
    Pretrain {
        run: &ft,
        device: &Device::flex(),
        progress: false,
        stop_after: Some(0),
        cache: &cache,
        timing: None,
    }
    .run(Some(cfg), false)
    .unwrap();
    assert!(pretext::train::checkpoint::latest(&ft).unwrap().is_none());
    pretrain(&ft, None, &cache);
    assert_eq!(first_conv(&ft), first_conv(&base));
}

/// Item 3: a second `finetune` with other settings trained nothing and printed the new
/// settings beside the old sub-runs' numbers.
#[test]
fn finetuning_with_other_settings_trains_its_own_sub_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    class_tree(&root.join("train"), 16);
    class_tree(&root.join("test"), 4);
    let cache = no_cache();
    let run = tmp.path().join("run");
    pretrain(
        &run,
        Some(tiny_args(&root).resolve(&cache).unwrap()),
        &cache,
    );
    let dev = Device::flex();
    let cfg = |epochs| FinetuneConfig {
        fractions: vec![0.5],
        seeds: vec![0],
        epochs,
        batch_size: 8,
        ..FinetuneConfig::default()
    };
    finetune_run(&run, &root, &cfg(2), None, &cache, &dev, false).unwrap();
    let (report, _) = finetune_run(&run, &root, &cfg(1), None, &cache, &dev, false).unwrap();
    assert_eq!(report.protocol.epochs, 1);
    // Every sub-run of the folder, by the epochs it was configured for and trained.
    let mut trained: Vec<(usize, usize)> = fs::read_dir(run.join("finetune"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.toml").exists())
        .map(|p| {
            let rc = pretext::run::RunConfig::load(&p).unwrap();
            let (_, st) = pretext::train::checkpoint::latest(&p).unwrap().unwrap();
            (rc.train.epochs, st.epoch)
        })
        .collect();
    trained.sort();
    assert_eq!(trained, vec![(1, 1), (1, 1), (2, 2), (2, 2)]);
    for row in &report.rows {
        let rc = pretext::run::RunConfig::load(Path::new(&row.run)).unwrap();
        assert_eq!(rc.train.epochs, 1, "{}", row.run);
    }
}

/// Item 5: values of `--task-config` were overwritten by the flags' defaults (`angles = 8`
/// in the file trained with 4; the fine-tuning fields likewise).
#[test]
fn task_config_values_hold_unless_a_flag_is_given() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    class_tree(&root.join("train"), 8);
    let cache = no_cache();
    let file = tmp.path().join("task.toml");
    fs::write(&file, "[task]\nname = \"rotation\"\nangles = 8\n").unwrap();
    let a = PretrainSpec {
        task_config: Some(file.clone()),
        ..tiny_args(&root)
    };
    let angles = |a: &PretrainSpec| {
        let rc = a.resolve(&cache).unwrap();
        rc.task.typed::<RotationConfig>().unwrap().angles
    };
    assert_eq!(angles(&a), 8, "the file's value");
    assert_eq!(
        angles(&PretrainSpec {
            task_settings: vec![("angles".into(), 4.into())],
            ..a.clone()
        }),
        4,
        "a flag that was given wins"
    );

    let base = tmp.path().join("base");
    pretrain(
        &base,
        Some(tiny_args(&root).resolve(&cache).unwrap()),
        &cache,
    );
    fs::write(
        &file,
        format!(
            "[task]\nname = \"supervised\"\nclasses = 3\nlabel_fraction = 0.5\nsubset_seed = 7\ninit_from = {:?}\n",
            base.display().to_string()
        ),
    )
    .unwrap();
    let a = PretrainSpec {
        task: "supervised".into(),
        task_config: Some(file),
        ..tiny_args(&root)
    };
    let s: SupervisedConfig = a.resolve(&cache).unwrap().task.typed().unwrap();
    assert_eq!(s.label_fraction, Some(0.5));
    assert_eq!(s.subset_seed, 7);
    assert_eq!(s.init_from, Some(fs::canonicalize(&base).unwrap()));
}

/// An input of noise per image; panics on image `bad` (a broken task or a bad file).
struct Fragile {
    bad: usize,
}

impl pretext::data::loader::SampleMaker for Fragile {
    fn samples_per_image(&self) -> usize {
        1
    }
    fn input_shape(&self) -> [usize; 3] {
        [3, 8, 8]
    }
    fn make(
        &self,
        _: &data::ImageSet,
        index: usize,
        rng: &mut rand_chacha::ChaCha8Rng,
        out: pretext::data::loader::SampleOut<'_>,
    ) {
        assert!(index != self.bad, "image {index} cannot be made");
        for v in out.inputs.iter_mut() {
            *v = rand::Rng::random::<f32>(rng);
        }
        out.targets[0] = (index % 2) as i64;
    }
}

/// Item 9: a panicking loader thread looked like the end of the epoch: the epoch logged
/// loss 0, was checkpointed, and the process exited 0.
#[test]
fn a_failing_loader_stops_the_run_with_its_error_and_keeps_nothing_of_the_epoch() {
    use pretext::train::trainer::Trainer;
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    fs::create_dir_all(&run).unwrap();
    let dev = pretext::util::device::training(&Device::flex());
    let mut backbone = pretext::models::BackboneConfig::new(pretext::models::Arch::Nin, 8);
    backbone.width = 8;
    let model = pretext::models::head::ClassifierNet::new(&backbone, 2, &dev);
    let set = std::sync::Arc::new(data::ImageSet::unlabelled(1, 1, 1, vec![0; 64]));
    let indices: Vec<usize> = (0..64).collect();
    let train = pretext::train::TrainConfig {
        epochs: 2,
        batch_size: 16,
        optim: pretext::train::OptimConfig::rotnet(),
        schedule: pretext::train::Schedule::Constant,
        seed: 0,
        log_every: 1,
        keep_checkpoints: 2,
    };
    let trainer = Trainer {
        run: &run,
        cfg: &train,
        device: &dev,
        progress: false,
        stop_after: None,
        prefetch: 2,
        timing: None,
    };
    let e = match trainer.fit(
        model,
        std::sync::Arc::new(Fragile { bad: 40 }),
        &pretext::data::loader::Source::Images {
            set,
            indices: std::sync::Arc::new(indices),
        },
        false,
    ) {
        Ok(_) => panic!("a run whose loader failed must not succeed"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("image 40 cannot be made"), "{e}");
    assert!(pretext::train::checkpoint::latest(&run).unwrap().is_none());
    let log = fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    assert!(!log.contains("\"kind\":\"epoch\""), "{log}");
}

/// Item 9: a `permutations.json` holding a tile index out of range crashed the loader (and,
/// with the silent epoch end, trained on nothing); now it is refused by name.
#[test]
fn a_bad_permutation_file_is_refused_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    class_tree(&root.join("train"), 8);
    let cache = no_cache();
    let run = tmp.path().join("run");
    let a = PretrainSpec {
        task: "jigsaw".into(),
        task_settings: vec![("permutations".into(), 2.into())],
        ..tiny_args(&root)
    };
    let cfg = a.resolve(&cache).unwrap();
    fs::create_dir_all(&run).unwrap();
    for (perms, why) in [
        (
            "[[0,1,2,3,4,5,6,7,9],[1,0,2,3,4,5,6,7,8]]",
            "not a permutation",
        ),
        ("[[1,0,2,3,4,5,6,7,8],[1,0,2,3,4,5,6,7,8]]", "repeats"),
    ] {
        fs::write(run.join("permutations.json"), perms).unwrap();
        let e = Pretrain {
            run: &run,
            device: &Device::flex(),
            progress: false,
            stop_after: None,
            cache: &cache,
            timing: None,
        }
        .run(Some(cfg.clone()), false)
        .unwrap_err()
        .to_string();
        assert!(e.contains("permutations.json") && e.contains(why), "{e}");
        assert!(!run.join("config.toml").exists(), "nothing written");
    }
}

/// Review of item 1: the evaluation's own train and test splits were compared, but not the
/// images the run pretrained on. Evaluating with another held-out split than the run's (or
/// a run that held nothing out) would test on pretraining images; the run's own split is
/// the default, and any other that overlaps is refused.
#[test]
fn evaluation_never_tests_on_images_the_run_pretrained_on() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    class_tree(&root, 20);
    let pretext = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pretext"))
            .args(args)
            .args(["--quiet", "--no-cache"])
            .current_dir(tmp.path())
            .output()
            .unwrap()
    };
    let out = pretext(&[
        "pretrain",
        "--data",
        "tree",
        "--out",
        "r",
        "--width",
        "8",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--split-seed",
        "3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let eval = |extra: &[&str]| {
        let mut a = vec!["eval", "--run", "r", "--probe-epochs", "1"];
        a.extend(extra);
        pretext(&a)
    };
    // No flags: the run's own split (seed 3), named in the report.
    let out = eval(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = pretext::eval::EvalReport::read(&tmp.path().join("r/eval")).unwrap();
    assert!(report.test_split.as_deref().unwrap().contains("(seed 3)"));
    // Another seed, or a larger fraction, would test on pretraining images: refused.
    for flags in [&["--split-seed", "4"][..], &["--test-fraction", "0.3"]] {
        let out = eval(flags);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flags:?}: {err}");
        assert!(err.contains("among the images the run trained on"), "{err}");
    }
    // A smaller fraction of the same seed is a subset of the run's test images: allowed.
    let out = eval(&["--test-fraction", "0.05"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A run that held nothing out (made before held-out splits, or --test-fraction 0)
    // trained on the whole tree: evaluating it on that tree is refused.
    let out = pretext(&[
        "pretrain",
        "--data",
        "tree",
        "--out",
        "all",
        "--width",
        "8",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--test-fraction",
        "0",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Evaluated on a held-out split of the tree it trained on whole: refused.
    let refused = |run: &str| {
        let out = pretext(&["eval", "--run", run, "--test-fraction", "0.1"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{run}: {err}");
        assert!(
            err.contains("held out nothing (it trained on the whole tree)"),
            "{run}: {err}"
        );
    };
    refused("all");
    // Exported to PyTorch and imported back, the same network is refused the same way:
    // the imported run remembers the run it came from.
    for args in [
        &["export", "--run", "all", "--out", "torch"][..],
        &[
            "import",
            "--torch",
            "torch/backbone.safetensors",
            "--backbone",
            "nin",
            "--data",
            "tree",
            "--out",
            "imported",
            "--test-fraction",
            "0.1",
        ],
    ] {
        let out = pretext(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    refused("imported");
    // `data inspect` shows such a tree as train only: it once listed the whole tree a
    // second time as its "test" split.
    let out = pretext(&["data", "inspect", "tree", "--test-fraction", "0"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("train: 60 images"), "{text}");
    assert!(!text.contains("test:"), "{text}");
    assert!(text.contains("no test split"), "{text}");
    let text = String::from_utf8_lossy(&pretext(&["data", "inspect", "tree"]).stdout).into_owned();
    assert!(
        text.contains("train: 54 images") && text.contains("test: 6 images"),
        "{text}"
    );
}

#[test]
fn a_run_evaluated_on_other_data_is_named_a_transfer() {
    let tmp = tempfile::tempdir().unwrap();
    class_tree(&tmp.path().join("tree"), 20);
    let cifar = common::cifar_root();
    let cifar = cifar.to_str().unwrap();
    let pretext = |args: &[&str]| common::pretext_cli(tmp.path(), args);
    pretext(&[
        "pretrain",
        "--data",
        "tree",
        "--out",
        "r",
        "--width",
        "8",
        "--epochs",
        "1",
        "--batch-size",
        "8",
    ]);
    // On its own tree: no transfer.
    pretext(&["eval", "--run", "r", "--probe-epochs", "1"]);
    let own = pretext::eval::EvalReport::read(&tmp.path().join("r/eval")).unwrap();
    assert!(own.pretrained_on.as_deref().unwrap().ends_with("tree"));
    assert_eq!(own.transfer_from(), None);
    // On CIFAR-10's own splits: a transfer, named in the evaluation and in the report.
    let said = pretext(&[
        "eval",
        "--run",
        "r",
        "--eval-data",
        cifar,
        "--train-images",
        "300",
        "--test-images",
        "100",
        "--probe-epochs",
        "1",
    ]);
    assert!(
        said.contains("(checkpoint epoch 1, pretrained on tree)"),
        "{said}"
    );
    let moved = pretext::eval::EvalReport::read(&tmp.path().join("r/eval")).unwrap();
    assert_eq!(moved.transfer_from().as_deref(), Some("tree"));
    pretext(&[
        "eval",
        "--run",
        "r",
        "--random-init",
        "--eval-data",
        cifar,
        "--train-images",
        "300",
        "--test-images",
        "100",
        "--probe-epochs",
        "1",
    ]);
    let random = pretext::eval::EvalReport::read(&tmp.path().join("r/eval-random-init")).unwrap();
    assert_eq!(random.pretrained_on, None);
    // Few-label fine-tuning on CIFAR-10 of the network pretrained on the tree: the same.
    pretext(&[
        "finetune",
        "--run",
        "r",
        "--eval-data",
        cifar,
        "--fractions",
        "0.002",
        "--seeds",
        "0",
        "--epochs",
        "1",
    ]);
    let ft = pretext::eval::finetune::FinetuneReport::read(&tmp.path().join("r/finetune")).unwrap();
    assert_eq!(ft.name(), "rotation (pretrained on tree)");
    pretext(&["report", "r", "--out", "rep"]);
    let md = fs::read_to_string(tmp.path().join("rep/report.md")).unwrap();
    assert!(md.contains("| rotation (pretrained on tree) |"), "{md}");
    assert!(md.contains("| random-init |"), "{md}");
    assert!(
        md.contains("| rotation (pretrained on tree) | 0.2% |"),
        "{md}"
    );
    // Every CSV line of the transfer names the data it learnt on; the random-init ones none.
    let csv = fs::read_to_string(tmp.path().join("rep/report.csv")).unwrap();
    assert!(
        csv.lines().next().unwrap().ends_with(",pretrained_on"),
        "{csv}"
    );
    for line in csv.lines().skip(1) {
        let pretrained = line.starts_with("rotation,") && !line.contains("random-init");
        let from = if pretrained { "tree" } else { "" };
        assert!(line.ends_with(&format!(",{from}")), "{line}");
    }
    assert!(csv.contains(",finetune,"), "{csv}");
    for (file, n) in [("r/eval/eval.csv", 1), ("r/finetune/finetune.csv", 2)] {
        let text = fs::read_to_string(tmp.path().join(file)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].ends_with(",pretrained_on"), "{file}: {text}");
        assert!(lines.len() > n, "{file}: {text}");
        for l in &lines[1..] {
            let from = if l.contains("random-init") {
                ""
            } else {
                "tree"
            };
            assert!(l.ends_with(&format!(",{from}")), "{file}: {l}");
        }
    }
}
