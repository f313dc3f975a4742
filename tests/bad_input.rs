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
    // A train/ folder, so the whole class is the train split (a tree without split folders
    // holds some of each class out as its test split).
    let cls = dir.path().join("train/cats");
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
    permutation_seed = 0\ngrayscale = 0.3\nchannel_jitter = 1\ntile_features = 8\nhidden = 8\n";
const RELPOS: &str = "[task]\nname = \"relative-position\"\ncolor = \"drop\"\ndown_up = 0.3\n\
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

/// `train/` and `test/` class folders of 32×32 PNGs: 3 classes, `train` and `test` images
/// each (all different).
fn labelled_tree(root: &Path, train: usize, test: usize) {
    for (split, n) in [("train", train), ("test", test)] {
        for (c, class) in ["a", "b", "c"].iter().enumerate() {
            let dir = root.join(split).join(class);
            fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let img = image::RgbImage::from_fn(32, 32, |x, y| {
                    image::Rgb([(x * 8) as u8, (y * 8) as u8, (c * 80 + i) as u8])
                });
                img.save(dir.join(format!("{i}.png"))).unwrap();
            }
        }
    }
}

/// Issue 16, items 10 and 11: counts and sizes from the user reached a division, an
/// assertion, `chunks` or an index (`--batch-size 0`, `eval --test-images 5`, a zero
/// width…) and crashed; a batch larger than the data was refused only after the run
/// directory existed. Each must be a named error (exit 1, nothing created), or work.
#[test]
fn zero_and_oversized_counts_are_named_errors_and_leave_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    labelled_tree(&data, 12, 4);
    let run_cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pretext"))
            .args(args)
            .arg("--quiet")
            .arg("--cache-dir")
            .arg(tmp.path().join("cache"))
            .current_dir(tmp.path())
            .output()
            .unwrap()
    };
    let ok = |args: &[&str]| {
        let out = run_cli(args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{args:?}: {err}");
    };
    ok(&[
        "pretrain", "--data", "data", "--out", "base", "--width", "8",
    ]);
    let x = tmp.path().join("x");
    let mut refused = 0;
    for (args, want) in [
        (
            &["pretrain", "--batch-size", "0"][..],
            "--batch-size must be at least 1",
        ),
        (
            &["pretrain", "--epochs", "0"],
            "--epochs must be at least 1",
        ),
        (&["pretrain", "--train-images", "0"], "no training images"),
        (&["pretrain", "--width", "0"], "--width must be at least 1"),
        (&["pretrain", "--blocks", "0"], "at least 1 block"),
        (&["pretrain", "--crop", "0"], "crop does not fit"),
        (
            &["pretrain", "--crop", "41"],
            "larger than the 32px images plus 2×4 padding",
        ),
        (&["pretrain", "--lr", "NaN"], "learning rate"),
        (
            &["pretrain", "--image-size", "0"],
            "--image-size must be at least 1",
        ),
        (
            &["pretrain", "--test-fraction", "1.5"],
            "--test-fraction must be between 0 and 1",
        ),
        (
            &["pretrain", "--task", "jigsaw", "--permutations", "0"],
            "permutations",
        ),
        (
            &["pretrain", "--task", "supervised", "--label-fraction", "0"],
            "label fraction",
        ),
        (
            &["run", "--eval-test-images", "2"],
            "at least 3 test images",
        ),
        (
            &["study", "--max-epochs", "0", "--tasks", "rotation"],
            "--max-epochs",
        ),
        (
            &["study", "--batch-size", "0", "--tasks", "rotation"],
            "--batch-size",
        ),
        (
            &["study", "--fractions", "0", "--tasks", "rotation"],
            "fraction",
        ),
    ] {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--data", "data", "--out", "x"]);
        if !args.contains(&"--width") {
            full.extend(["--width", "8"]);
        }
        if args[0] != "study" && !args.contains(&"--epochs") {
            full.extend(["--epochs", "1"]);
        }
        let out = run_cli(&full);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "{full:?}: {err}");
        assert!(
            err.starts_with("error:") && err.contains(want),
            "{full:?}: {err}"
        );
        assert!(!x.exists(), "{full:?} left {}", x.display());
        refused += 1;
    }
    for (args, want) in [
        (
            &["eval", "--run", "base", "--test-images", "2"][..],
            "at least 3 test images",
        ),
        (
            &["eval", "--run", "base", "--train-images", "0"],
            "at least 1",
        ),
        (
            &["eval", "--run", "base", "--probe-dim", "0"],
            "--probe-dim",
        ),
        (
            &["eval", "--run", "base", "--probe-epochs", "0"],
            "--probe-epochs",
        ),
        (
            &[
                "finetune",
                "--run",
                "base",
                "--batch-size",
                "0",
                "--fractions",
                "0.5",
            ],
            "--batch-size",
        ),
        (
            &[
                "finetune",
                "--run",
                "base",
                "--epochs",
                "0",
                "--fractions",
                "0.5",
            ],
            "epoch",
        ),
        (
            &[
                "embed",
                "--run",
                "base",
                "--dim",
                "0",
                "--out",
                "x/e.safetensors",
            ],
            "--dim",
        ),
        (
            &[
                "embed",
                "--run",
                "base",
                "--images",
                "0",
                "--out",
                "x/e.safetensors",
            ],
            "--images",
        ),
        (
            &["bench", "--batch", "0", "--backbone", "nin"],
            "at least 1",
        ),
        (
            &["bench", "--steps", "0", "--backbone", "nin"],
            "at least 1",
        ),
    ] {
        let out = run_cli(args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.starts_with("error:") && err.contains(want),
            "{args:?}: {err}"
        );
        assert!(
            !x.exists() && !tmp.path().join("base/eval").exists(),
            "{args:?}"
        );
        refused += 1;
    }
    assert_eq!(refused, 26);
    // A batch larger than the images trains as one smaller batch, and so does a fine-tuning
    // subset smaller than its batch (6 images, batch 64).
    ok(&[
        "pretrain",
        "--data",
        "data",
        "--out",
        "big",
        "--width",
        "8",
        "--epochs",
        "1",
        "--batch-size",
        "500",
    ]);
    ok(&[
        "finetune",
        "--run",
        "base",
        "--fractions",
        "0.5",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--batch-size",
        "64",
    ]);
}

/// Issue 16, item 12: `--skip-bad` did not cover the first file of a folder (it fixes the
/// image size and was decoded outside the skipping), and counted images of another size as
/// "unreadable".
#[test]
fn skip_bad_covers_the_first_file_and_names_what_it_skipped() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a-broken.jpg"), b"not an image at all").unwrap();
    write_png(&dir.path().join("b.png"), 32, 32);
    write_png(&dir.path().join("c.png"), 32, 32);
    write_png(&dir.path().join("d.png"), 20, 20);
    // Without --skip-bad the first file stops it, by name.
    let e = err_of(dir.path(), Split::Unlabeled);
    assert!(
        e.contains("a-broken.jpg") && e.contains("cannot decode"),
        "{e}"
    );
    let opts = pretext::data::CacheOptions {
        dir: None,
        skip_bad: true,
        progress: false,
        ..Default::default()
    };
    let set = data::open(dir.path(), Split::Unlabeled, &opts).unwrap();
    assert_eq!((set.len(), set.header.h), (2, 32));
    let summary = set.header.skipped_summary().unwrap();
    assert!(
        summary.starts_with("2 image(s) skipped")
            && summary.contains("1 unreadable")
            && summary.contains("1 smaller than 32×32"),
        "{summary}"
    );
    // The command line says the same.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args(["data", "inspect", "--skip-bad", "--no-cache", "--quiet"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("1 unreadable, 1 smaller than 32×32"),
        "{text}"
    );
    // Nothing readable at all is an error, not an empty set.
    let bad = tempfile::tempdir().unwrap();
    fs::write(bad.path().join("x.jpg"), b"no").unwrap();
    let e = format!(
        "{:#}",
        data::open(bad.path(), Split::Unlabeled, &opts).unwrap_err()
    );
    assert!(e.contains("none of its 1 image(s) can be decoded"), "{e}");
}
