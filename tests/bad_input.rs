//! Bad input gets an error that names the file and says what was expected — never a panic,
//! never a silent skip.

mod common;

use std::fs;
use std::path::Path;

use pretext::data::{self, Split};

fn write_png(path: &Path, w: u32, h: u32) {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
    img.save(path).unwrap();
}

fn err_of(root: &Path, split: Split) -> String {
    let opts = pretext::data::CacheOptions {
        dir: None,
        image_size: None,
        skip_bad: false,
        progress: false,
        holdout: Default::default(),
    };
    format!(
        "{:#}",
        data::open(root, split, &opts).expect_err("must fail")
    )
}

#[test]
fn missing_path_is_named() {
    let e = err_of(Path::new("/no/such/folder"), Split::Train);
    assert!(
        e.contains("/no/such/folder") && e.contains("no such file"),
        "{e}"
    );
}

#[test]
fn empty_folder_says_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    let e = err_of(dir.path(), Split::Unlabeled);
    assert!(
        e.contains("contains no images") && e.contains(".jpg"),
        "{e}"
    );
}

#[test]
fn corrupt_and_truncated_images_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cls = dir.path().join("cats");
    fs::create_dir_all(&cls).unwrap();
    write_png(&cls.join("a.png"), 8, 8);
    fs::write(cls.join("b.jpg"), b"this is not a jpeg").unwrap();
    let e = err_of(dir.path(), Split::Train);
    assert!(e.contains("b.jpg") && e.contains("cannot decode"), "{e}");

    // A real CIFAR JPEG cut in half.
    fs::remove_file(cls.join("b.jpg")).unwrap();
    let src = common::cifar_root().join("train/cat/0000.jpg");
    let bytes = fs::read(&src).unwrap();
    fs::write(cls.join("c.jpg"), &bytes[..bytes.len() / 2]).unwrap();
    write_png(&cls.join("a.png"), 32, 32);
    let e = err_of(dir.path(), Split::Train);
    assert!(e.contains("c.jpg"), "{e}");

    // --skip-bad skips and counts instead.
    let opts = pretext::data::CacheOptions {
        dir: None,
        image_size: None,
        skip_bad: true,
        progress: false,
        holdout: Default::default(),
    };
    let set = data::open(dir.path(), Split::Train, &opts).unwrap();
    assert_eq!(set.len(), 1);
    assert_eq!(set.header.skipped.len(), 1);
    assert!(set.header.skipped[0].contains("c.jpg"));
}

#[test]
fn an_image_smaller_than_the_set_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write_png(&dir.path().join("a.png"), 32, 32);
    write_png(&dir.path().join("b.png"), 20, 12);
    let e = err_of(dir.path(), Split::Unlabeled);
    assert!(
        e.contains("b.png") && e.contains("20×12") && e.contains("32×32"),
        "{e}"
    );
}

#[test]
fn an_image_too_small_for_the_task_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write_png(&dir.path().join("a.png"), 16, 16);
    let opts = pretext::data::CacheOptions {
        dir: None,
        image_size: None,
        skip_bad: false,
        progress: false,
        holdout: Default::default(),
    };
    let set = data::open(dir.path(), Split::Unlabeled, &opts).unwrap();
    let e = pretext::run::check_size(&set, 32, dir.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("16×16") && e.contains("at least 32×32"), "{e}");
}

#[test]
fn truncated_cifar_and_stl_files_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("test_batch.bin"), vec![0u8; 3073 * 2 + 5]).unwrap();
    let e = err_of(dir.path(), Split::Test);
    assert!(e.contains("test_batch.bin") && e.contains("3073"), "{e}");
    // A missing training batch is named too.
    let e = err_of(dir.path(), Split::Train);
    assert!(e.contains("data_batch_1.bin"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("train_X.bin"), vec![0u8; 27648 + 1]).unwrap();
    fs::write(dir.path().join("train_y.bin"), vec![1u8; 1]).unwrap();
    let e = err_of(dir.path(), Split::Train);
    assert!(e.contains("train_X.bin") && e.contains("27648"), "{e}");
}

#[test]
fn cli_reports_a_missing_folder_without_panicking() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args(["data", "inspect", "/no/such/folder", "--no-cache"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: /no/such/folder"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Run the CLI to start a pretraining run on `data` with a `[task]` table; returns stderr,
/// after checking it failed cleanly and left no run behind.
fn rejected_task(data: &Path, task_toml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("task.toml");
    fs::write(&cfg, task_toml).unwrap();
    let out_dir = dir.path().join("run");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args(["pretrain", "-q", "--no-cache", "--epochs", "1", "--data"])
        .arg(data)
        .arg("--task-config")
        .arg(&cfg)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out_dir.exists(), "a rejected run must leave no directory");
    err
}

const JIGSAW: &str = "[task]\nname = \"jigsaw\"\npermutations = 10\nselection = \"max\"\n\
    permutation_seed = 0\ngreyscale = 0.3\nchannel_jitter = 1\ntile_features = 8\nhidden = 8\n";
const RELPOS: &str = "[task]\nname = \"relative-position\"\ncolour = \"drop\"\ndown_up = 0.3\n\
    down_side = 2\npatch_features = 8\nhidden = 8\njitter = 1\n";

#[test]
fn task_geometry_that_cannot_work_is_rejected_before_training() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..4 {
        write_png(&dir.path().join(format!("{i}.png")), 24, 24);
    }
    // Tiles larger than their cells.
    let e = rejected_task(dir.path(), &format!("{JIGSAW}cell = 6\ntile = 7\n"));
    assert!(
        e.contains("tile (7 px) is larger than its grid cell (6 px)"),
        "{e}"
    );
    // A grid of 10-px cells needs 30-px images.
    let e = rejected_task(dir.path(), &format!("{JIGSAW}cell = 10\ntile = 8\n"));
    assert!(e.contains("24×24") && e.contains("at least 30×30"), "{e}");
    // A gap no wider than the jitter would let patches touch.
    let e = rejected_task(dir.path(), &format!("{RELPOS}patch = 4\ngap = 2\n"));
    assert!(
        e.contains("gap (2 px) must exceed twice the jitter (1 px)"),
        "{e}"
    );
    // Patches and gaps larger than the image: 3·8 + 2·10 + 2·1 = 46.
    let e = rejected_task(dir.path(), &format!("{RELPOS}patch = 8\ngap = 10\n"));
    assert!(e.contains("at least 46×46"), "{e}");
}
