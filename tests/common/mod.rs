//! Shared test helpers: the real CIFAR-10 slice from ../shared/data.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Root of the unpacked CIFAR-10 JPEG tree: `$PRETEXT_TEST_DATA`, or the shared tarball
/// unpacked once into the target directory.
pub fn cifar_root() -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        if let Some(p) = std::env::var_os("PRETEXT_TEST_DATA") {
            return PathBuf::from(p);
        }
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let tarball = manifest.join("../shared/data/cifar10-jpg.tar.gz");
        assert!(
            tarball.exists(),
            "{} is missing: the tests need the shared CIFAR-10 tarball (or PRETEXT_TEST_DATA)",
            tarball.display()
        );
        let dest = manifest.join("target/test-data");
        let root = dest.join("cifar10");
        if !root.join("test").is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            let ok = std::process::Command::new("tar")
                .arg("xzf")
                .arg(&tarball)
                .arg("-C")
                .arg(&dest)
                .status()
                .expect("running tar")
                .success();
            assert!(ok, "unpacking {}", tarball.display());
        }
        root
    })
    .clone()
}

/// A cache folder private to the test process (not every test binary uses it).
#[allow(dead_code)]
pub fn cache_opts(dir: &Path) -> pretext::data::CacheOptions {
    pretext::data::CacheOptions {
        dir: Some(dir.to_path_buf()),
        image_size: None,
        skip_bad: false,
        progress: false,
        holdout: Default::default(),
    }
}

/// The specification of a small NIN-32 run of `task` on 2,000 images (tests override).
#[allow(dead_code)]
pub fn pretrain_spec(data: &Path, task: &str) -> pretext::config::PretrainSpec {
    pretext::config::PretrainSpec {
        data: Some(data.to_path_buf()),
        width: Some(32),
        task: task.into(),
        epochs: 4,
        batch_size: 64,
        train_images: Some(2000),
        seed: 1,
        ..Default::default()
    }
}

/// A one-epoch rotation run of `backbone` at `width` on 256 CIFAR-10 images, in `dir`.
#[allow(dead_code)]
pub fn small_run(
    dir: &Path,
    cache: &pretext::data::CacheOptions,
    backbone: pretext::models::Arch,
    width: usize,
) {
    let mut a = pretrain_spec(&cifar_root(), "rotation");
    a.backbone = backbone;
    a.width = Some(width);
    a.train_images = Some(256);
    a.epochs = 1;
    let cfg = a.resolve(cache).unwrap();
    pretext::run::Pretrain {
        run: dir,
        device: &burn::tensor::Device::flex(),
        progress: false,
        stop_after: None,
        cache,
        timing: None,
    }
    .run(Some(cfg), false)
    .unwrap();
}

/// An evaluation protocol: these image counts, probe epochs and pooled size, the rest at
/// its defaults.
#[allow(dead_code)]
pub fn eval_config(
    train_images: Option<usize>,
    test_images: Option<usize>,
    probe_epochs: usize,
    probe_dim: usize,
) -> pretext::eval::EvalConfig {
    pretext::config::EvalSpec {
        train_images,
        test_images,
        probe_epochs,
        probe_dim,
        ..Default::default()
    }
    .resolve()
}

/// Held for the whole of a test that trains: burn's CPU device draws parameter inits from
/// one process-wide generator (seeded by `Device::seed`, consumed lazily at a parameter's
/// first use), so two such tests running at once in one test binary take each other's
/// draws and their seeded numbers change from run to run (a few-label fine-tuning once
/// failed in CI this way, passing alone). Tests of one binary that train run one at a time.
#[allow(dead_code)]
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A test that failed while holding it poisons it; the next one still runs.
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The first convolution's weights of a NIN backbone (what a load must bring back).
#[allow(dead_code)]
pub fn first_conv(backbone: &pretext::models::Backbone) -> Vec<f32> {
    match backbone {
        pretext::models::Backbone::Nin(n) => n.blocks[0].convs[0]
            .conv
            .weight
            .val()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap(),
        _ => unreachable!("a NIN backbone"),
    }
}

/// Learning happened: the pretrained network beats the same network at random init, on
/// the same images, by a margin (a random network already beats chance, so chance is no
/// bar; a checkpoint that was never loaded fails this): its best kNN top-1 (first
/// setting) by 3 points, its mean k-means NMI over the layers by 0.02.
#[allow(dead_code)]
pub fn assert_beats_random_init(
    report: &pretext::eval::EvalReport,
    random: &pretext::eval::EvalReport,
) {
    let best_knn =
        |r: &pretext::eval::EvalReport| r.rows.iter().map(|x| x.knn[0].top1).fold(0.0, f64::max);
    let mean_nmi = |r: &pretext::eval::EvalReport| {
        r.rows
            .iter()
            .map(|x| x.cluster.as_ref().unwrap().nmi)
            .sum::<f64>()
            / r.rows.len() as f64
    };
    assert!(
        best_knn(report) > best_knn(random) + 0.03,
        "kNN: pretrained {} vs random init {}",
        best_knn(report),
        best_knn(random)
    );
    assert!(
        mean_nmi(report) > mean_nmi(random) + 0.02,
        "k-means NMI: pretrained {} vs random init {}",
        mean_nmi(report),
        mean_nmi(random)
    );
}

/// `pretext ARGS --quiet --no-cache` in `dir`; its standard output (it must succeed).
#[allow(dead_code)]
pub fn pretext_cli(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args(args)
        .args(["--quiet", "--no-cache"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
