//! End to end on a slice of the real CIFAR-10, one test per pretext task beyond rotation:
//! the loss falls, the task's score beats its trivial baseline by a clear margin, the run
//! writes its previews, and its checkpoint evaluates (with the input transform it was
//! trained on).

mod common;

use burn::tensor::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use pretext::config::PretrainSpec;
use pretext::data::loader::{SampleMaker, SampleOut};
use pretext::data::{ImageSet, Split};
use pretext::eval::evaluate_run;
use pretext::run::{Pretrain, RunConfig, open_split, subset_indices};
use pretext::tasks::{ColorizationConfig, InpaintingConfig};
use pretext::train::trainer::TrainOutcome;

struct Ran {
    cfg: RunConfig,
    outcome: TrainOutcome,
    run: std::path::PathBuf,
    data: std::path::PathBuf,
    cache: pretext::data::CacheOptions,
    _tmp: tempfile::TempDir,
}

fn pretrain(task: &str, tweak: impl FnOnce(&mut PretrainSpec)) -> Ran {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::cifar_root();
    let cache = common::cache_opts(&tmp.path().join("cache"));
    let run = tmp.path().join("run");
    let mut a = common::pretrain_spec(&data, task);
    tweak(&mut a);
    let cfg = a.resolve(&cache).unwrap();
    let dev = Device::flex();
    let p = Pretrain {
        run: &run,
        device: &dev,
        progress: false,
        stop_after: None,
        cache: &cache,
        timing: None,
    };
    let (cfg, outcome) = p.run(Some(cfg), false).unwrap();
    eprintln!(
        "{task:?}: losses {:?} scores {:?} at {:.1} images/s",
        outcome.epoch_losses, outcome.epoch_scores, outcome.images_per_second
    );
    assert!(run.join("preview.png").exists());
    Ran {
        cfg,
        outcome,
        run,
        data,
        cache,
        _tmp: tmp,
    }
}

/// The training images of a run, for computing baselines with the task's own samples.
fn training_images(r: &Ran) -> (std::sync::Arc<ImageSet>, Vec<usize>) {
    let set = open_split(&r.data, Split::Train, &r.cache).unwrap();
    let idx = subset_indices(set.len(), r.cfg.train_images, r.cfg.train.seed);
    (set, idx)
}

/// A small evaluation of the run's checkpoint: every tap gets a row, the backbone that is
/// measured is the trained one (not the same network at random init, which a checkpoint
/// that was never loaded would leave), and the best kNN accuracy is no worse than random
/// init's on the same images.
fn evaluates(r: &Ran) {
    let ecfg = common::eval_config(Some(1000), Some(500), 5, 9216);
    let dev = Device::flex();
    let (report, _) = evaluate_run(&r.run, &r.data, false, &ecfg, &r.cache, &dev, false).unwrap();
    let (random, _) = evaluate_run(&r.run, &r.data, true, &ecfg, &r.cache, &dev, false).unwrap();
    eprintln!("{}\n{}", report.markdown(), random.markdown());
    assert_eq!(report.rows.len(), 4);
    let weights = |random_init: bool| {
        dev.seed(0);
        let (b, _) = pretext::run::load_backbone(&r.cfg, &r.run, random_init, &dev).unwrap();
        let first = match b {
            pretext::models::Backbone::Nin(n) => n.blocks[0].convs[0].conv.weight.val(),
            _ => unreachable!("NIN runs"),
        };
        first.into_data().try_to_vec::<f32>().unwrap()
    };
    assert_ne!(
        weights(false),
        weights(true),
        "the checkpoint must be loaded"
    );
    let best_knn =
        |r: &pretext::eval::EvalReport| r.rows.iter().map(|x| x.knn[0].top1).fold(0.0, f64::max);
    assert!(
        best_knn(&report) >= best_knn(&random) - 0.01,
        "kNN: trained {} vs random init {}",
        best_knn(&report),
        best_knn(&random)
    );
}

#[test]
fn jigsaw_learns_to_name_permutations() {
    let _serial = common::serial();
    let r = pretrain("jigsaw", |a| {
        a.epochs = 8;
        a.lr = Some(0.03);
        a.schedule = Some("constant".into());
    });
    let (l, s) = (&r.outcome.epoch_losses, &r.outcome.epoch_scores);
    // 100 permutations: chance is 1% and ln(100) = 4.61.
    assert!(l[7] < l[0] - 0.3, "loss must fall: {l:?}");
    assert!(s[7] > 0.04, "accuracy must reach 4× chance: {s:?}");
    let perms: Vec<[u8; 9]> =
        serde_json::from_str(&std::fs::read_to_string(r.run.join("permutations.json")).unwrap())
            .unwrap();
    assert_eq!(perms.len(), 100);
    evaluates(&r);
}

#[test]
fn relative_position_learns_the_eight_neighbors() {
    let _serial = common::serial();
    let r = pretrain("relative-position", |a| {
        a.train_images = Some(10_000);
        a.epochs = 6;
        a.batch_size = 128;
        a.lr = Some(0.03);
        a.schedule = Some("constant".into());
    });
    let (l, s) = (&r.outcome.epoch_losses, &r.outcome.epoch_scores);
    // 8 classes: chance is 12.5%, ln 8 = 2.08.
    assert!(l[5] < l[0] - 0.05, "loss must fall: {l:?}");
    assert!(s[5] > 0.18, "accuracy must clearly beat 12.5%: {s:?}");
    evaluates(&r);
}

#[test]
fn context_encoder_fills_holes_better_than_the_mean() {
    let _serial = common::serial();
    let r = pretrain("inpainting", |a| {
        a.train_images = Some(1500);
        a.epochs = 3;
        a.batch_size = 32;
    });
    let icfg = &r.cfg.task.typed::<InpaintingConfig>().unwrap();
    // Baseline: the hole left at its fill (the data set mean, 0 after normalization), so
    // its error is the mean square of the normalized target over the hole.
    let task = pretext::tasks::Inpainting::new(
        icfg.clone(),
        r.cfg.augment.clone(),
        r.cfg.normalize.clone(),
        3,
    )
    .unwrap();
    let (set, idx) = training_images(&r);
    let (mut sq, mut n) = (0f64, 0f64);
    let img = 3 * 32 * 32;
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for &i in &idx {
        let mut x = vec![0.0; img];
        let mut aux = vec![0.0; task.aux_per_image()];
        task.make(
            &set,
            i,
            &mut rng,
            SampleOut {
                inputs: &mut x,
                targets: &mut [],
                aux: &mut aux,
            },
        );
        let hole = &aux[img + 1024..];
        for ch in 0..3 {
            for p in 0..1024 {
                if hole[p] > 0.5 {
                    sq += (aux[ch * 1024 + p] as f64).powi(2);
                    n += 1.0;
                }
            }
        }
    }
    let baseline = sq / n;
    let (l, s) = (&r.outcome.epoch_losses, &r.outcome.epoch_scores);
    eprintln!("mean-fill hole MSE {baseline:.4}");
    assert!(l[2] < l[0], "loss must fall: {l:?}");
    assert!(
        s[2] < 0.9 * baseline,
        "hole MSE {s:?} must beat the mean fill {baseline:.4} by 10%"
    );
    assert!(r.run.join("inpainting.png").exists());
    evaluates(&r);
}

#[test]
fn colorization_beats_the_color_prior_and_evaluates_on_lightness() {
    let _serial = common::serial();
    let r = pretrain("colorization", |_| {});
    let ccfg = &r.cfg.task.typed::<ColorizationConfig>().unwrap();
    assert_eq!(r.cfg.input, pretext::run::InputTransform::Lightness);
    assert_eq!(r.cfg.backbone.in_channels, 1);
    let task = pretext::tasks::Colorization::new(
        ccfg.clone(),
        r.cfg.augment.clone(),
        r.cfg.normalize.clone(),
    )
    .unwrap();
    // Baselines from the task's own targets: always the most frequent bins (accuracy), and
    // the best constant histograms (loss: weighted entropy of the first head + entropy of
    // the second).
    let (set, idx) = training_images(&r);
    let k = ccfg.bins;
    let p = ccfg.pixels;
    let (mut ca, mut cb, mut wa) = (vec![0f64; k], vec![0f64; k], vec![0f64; k]);
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for &i in &idx {
        let mut x = vec![0.0; 32 * 32];
        let mut t = vec![0i64; 3 * p];
        let mut w = vec![0f32; p];
        task.make(
            &set,
            i,
            &mut rng,
            SampleOut {
                inputs: &mut x,
                targets: &mut t,
                aux: &mut w,
            },
        );
        for j in 0..p {
            ca[t[p + j] as usize] += 1.0;
            cb[t[2 * p + j] as usize] += 1.0;
            wa[t[p + j] as usize] += w[j] as f64;
        }
    }
    let total: f64 = cb.iter().sum();
    let max = |c: &[f64]| c.iter().copied().fold(0.0, f64::max);
    let prior_acc = (max(&ca) + max(&cb)) / (2.0 * total);
    let entropy = |c: &[f64]| {
        let s: f64 = c.iter().sum();
        -c.iter()
            .filter(|&&v| v > 0.0)
            .map(|&v| v / s * (v / s).ln())
            .sum::<f64>()
    };
    let wsum: f64 = wa.iter().sum();
    let prior_loss = wsum / total * entropy(&wa) + entropy(&cb);
    let (l, s) = (&r.outcome.epoch_losses, &r.outcome.epoch_scores);
    eprintln!("prior: accuracy {prior_acc:.4}, loss {prior_loss:.4}");
    assert!(l[3] < l[0], "loss must fall: {l:?}");
    assert!(
        l[3] < prior_loss - 0.1,
        "loss {l:?} must beat the best constant histograms ({prior_loss:.4})"
    );
    assert!(
        s[3] > prior_acc + 0.01,
        "bin accuracy {s:?} must beat always-the-commonest-bin ({prior_acc:.4})"
    );
    assert!(r.run.join("colorized.png").exists());
    evaluates(&r);
}

#[test]
fn supervised_baseline_learns_and_few_label_finetuning_starts_from_it() {
    let _serial = common::serial();
    let r = pretrain("supervised", |a| {
        a.width = Some(16);
        a.train_images = Some(2000);
        a.epochs = 3;
    });
    let (l, s) = (&r.outcome.epoch_losses, &r.outcome.epoch_scores);
    assert!(l[2] < l[0], "loss must fall: {l:?}");
    assert!(
        s[2] > 0.2,
        "10 classes: accuracy must beat 10% clearly: {s:?}"
    );
    // The same network evaluates like any run (the supervised row of the tables).
    evaluates(&r);

    let cfg = pretext::eval::finetune::FinetuneConfig {
        fractions: vec![0.01],
        seeds: vec![0, 1],
        epochs: 3,
        test_images: Some(2000),
        ..Default::default()
    };
    let dev = Device::flex();
    let (report, out) =
        pretext::eval::finetune::finetune_run(&r.run, &r.data, &cfg, None, &r.cache, &dev, false)
            .unwrap();
    eprintln!("{}", report.markdown());
    assert_eq!(report.rows.len(), 4);
    // 1% of CIFAR-10's 5,000 images per class: exactly 50 per class.
    assert!(report.rows.iter().all(|row| row.train_images == 500));
    let mean = |init: &str| {
        let v: Vec<f64> = report
            .rows
            .iter()
            .filter(|r| r.init == init)
            .map(|r| r.top1)
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    assert!(
        mean("pretrained") > mean("random-init") + 0.02,
        "starting from the trained network must help on 500 labels: {} vs {}",
        mean("pretrained"),
        mean("random-init")
    );
    assert!(out.join("finetune.md").exists());
    let back = pretext::eval::finetune::FinetuneReport::read(&out).unwrap();
    assert_eq!(back.markdown(), report.markdown());
    assert_eq!(back.csv(), report.csv());
    // A fraction that leaves a class empty is refused with the class named.
    let bad = pretext::eval::finetune::FinetuneConfig {
        fractions: vec![0.00005],
        ..cfg
    };
    let e =
        pretext::eval::finetune::finetune_run(&r.run, &r.data, &bad, None, &r.cache, &dev, false)
            .unwrap_err()
            .to_string();
    assert!(e.contains("leaves class 0"), "{e}");
}

/// RotNet's protocols on a frozen trunk (`--probe conv,mlp`, `finetune --protocol frozen
/// --per-class K`): on a trained network's frozen layers the heads beat the same heads on
/// the same layers at random init, by a margin; the trunk really stays frozen (its
/// checkpoint is untouched) and the per-class subset has exactly K images of each class.
#[test]
fn frozen_heads_on_a_trained_network_beat_the_same_heads_at_random_init() {
    let _serial = common::serial();
    let r = pretrain("supervised", |a| {
        a.width = Some(16);
        a.train_images = Some(2000);
        a.epochs = 3;
    });
    let dev = Device::flex();
    let before = std::fs::read(r.run.join("checkpoints/epoch-0003/model.bpk")).unwrap();

    let mut ecfg = common::eval_config(Some(1000), Some(500), 5, 9216);
    ecfg.heads = pretext::eval::heads::HeadsConfig {
        kinds: vec![
            pretext::models::probe::ProbeKind::Mlp,
            pretext::models::probe::ProbeKind::Conv,
        ],
        layers: Some(vec!["block2".into()]),
        epochs: Some(3),
        batch_size: 64,
    };
    let (report, out) = evaluate_run(&r.run, &r.data, false, &ecfg, &r.cache, &dev, false).unwrap();
    let (random, _) = evaluate_run(&r.run, &r.data, true, &ecfg, &r.cache, &dev, false).unwrap();
    eprintln!("{}\n{}", report.markdown(), random.markdown());
    for kind in [
        pretext::models::probe::ProbeKind::Mlp,
        pretext::models::probe::ProbeKind::Conv,
    ] {
        let top1 = |rep: &pretext::eval::EvalReport| rep.rows[1].head(kind).unwrap().top1;
        assert!(
            top1(&report) > top1(&random) + 0.05,
            "{kind:?} on block2: trained {} vs random init {}",
            top1(&report),
            top1(&random)
        );
        // Only the asked-for layer.
        assert!(report.rows[0].head(kind).is_none());
    }
    let csv = std::fs::read_to_string(out.join("eval.csv")).unwrap();
    assert!(csv.contains(",block2,") && csv.contains(",conv,") && csv.contains(",mlp,"));

    let cfg = pretext::eval::finetune::FinetuneConfig {
        fractions: vec![],
        per_class: vec![20],
        protocols: vec![pretext::eval::finetune::Protocol::Frozen],
        epoch_size: Some(1000),
        seeds: vec![0],
        epochs: 3,
        test_images: Some(1000),
        ..Default::default()
    };
    let (ft, _) =
        pretext::eval::finetune::finetune_run(&r.run, &r.data, &cfg, None, &r.cache, &dev, false)
            .unwrap();
    eprintln!("{}", ft.markdown());
    assert_eq!(ft.rows.len(), 2);
    assert!(ft.rows.iter().all(|row| row.train_images == 200));
    assert!(
        ft.rows
            .iter()
            .all(|row| row.layer.as_deref() == Some("block2"))
    );
    let top1 = |init: &str| ft.rows.iter().find(|r| r.init == init).unwrap().top1;
    assert!(
        top1("pretrained") > top1("random-init") + 0.03,
        "a conv block on frozen trained layers must beat it on frozen random ones with 20 \
         labels per class: {} vs {}",
        top1("pretrained"),
        top1("random-init")
    );
    assert!(ft.markdown().contains("20/class"));
    // Nothing trained the run's own network.
    let after = std::fs::read(r.run.join("checkpoints/epoch-0003/model.bpk")).unwrap();
    assert!(before == after, "the frozen trunk's run changed");
    // A count a class cannot give is refused before any training.
    let bad = pretext::eval::finetune::FinetuneConfig {
        per_class: vec![6000],
        ..cfg
    };
    let e =
        pretext::eval::finetune::finetune_run(&r.run, &r.data, &bad, None, &r.cache, &dev, false)
            .unwrap_err()
            .to_string();
    assert!(e.contains("6000 labels per class"), "{e}");
}
