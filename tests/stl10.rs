//! STL-10 end to end: a small data set in the official binary layout (real CIFAR-10
//! photos brought to 96×96), pretrained on its unlabeled split and evaluated on its
//! train/test splits through the feature store, which a second evaluation reuses.

mod common;

use std::fs;
use std::path::Path;

const SIDE: usize = 96;
const CLASSES: [&str; 4] = ["airplane", "automobile", "bird", "cat"];

/// `*_X.bin` (and `*_y.bin` when labelled) of `per` images of each class, the `k`-th
/// image of each class folder from `first` on.
fn write_split(dir: &Path, name: &str, first: usize, per: usize, labelled: bool) {
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for k in first..first + per {
        for (c, class) in CLASSES.iter().enumerate() {
            let path = common::cifar_root()
                .join("train")
                .join(class)
                .join(format!("{k:04}.jpg"));
            let img = image::open(&path).unwrap().to_rgb8();
            let img = image::imageops::resize(
                &img,
                SIDE as u32,
                SIDE as u32,
                image::imageops::FilterType::Triangle,
            );
            // STL-10 stores each channel as a plane in column-major order.
            for ch in 0..3 {
                for col in 0..SIDE {
                    for row in 0..SIDE {
                        xs.push(img.get_pixel(col as u32, row as u32)[ch]);
                    }
                }
            }
            ys.push(c as u8 + 1);
        }
    }
    fs::write(dir.join(format!("{name}_X.bin")), xs).unwrap();
    if labelled {
        fs::write(dir.join(format!("{name}_y.bin")), ys).unwrap();
    }
}

#[test]
fn pretraining_on_unlabeled_stl10_and_evaluating_on_its_labelled_splits() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("stl10_binary");
    fs::create_dir_all(&data).unwrap();
    write_split(&data, "unlabeled", 0, 8, false);
    write_split(&data, "train", 8, 6, true);
    write_split(&data, "test", 14, 3, true);

    let text = common::pretext_cli(tmp.path(), &["data", "inspect", "stl10_binary"]);
    assert!(text.contains("unlabeled: 32 images, 96×96×3"), "{text}");
    assert!(
        text.contains("train: 24 images, 96×96×3, 10 classes"),
        "{text}"
    );

    common::pretext_cli(
        tmp.path(),
        &[
            "pretrain",
            "--data",
            "stl10_binary",
            "--out",
            "run",
            "--task",
            "rotation",
            "--width",
            "8",
            "--blocks",
            "2",
            "--epochs",
            "1",
            "--batch-size",
            "8",
        ],
    );
    let config = fs::read_to_string(tmp.path().join("run/config.toml")).unwrap();
    assert!(config.contains("split = \"unlabeled\""), "{config}");
    assert!(config.contains("image_size = 96"), "{config}");

    let eval = |dim: &str| {
        common::pretext_cli(
            tmp.path(),
            &[
                "eval",
                "--run",
                "run",
                "--probe-epochs",
                "2",
                "--probe-dim",
                dim,
            ],
        )
    };
    let first = eval("512");
    let report = pretext::eval::EvalReport::read(&tmp.path().join("run/eval")).unwrap();
    assert_eq!((report.train_images, report.test_images), (24, 12));
    assert_eq!(report.rows.len(), 2);
    for split in ["train", "test"] {
        let store = tmp
            .path()
            .join("run/features")
            .join(format!("eval-{split}"));
        assert!(store.join("manifest.json").is_file(), "{split} store");
        let n = if split == "train" { 24 } else { 12 };
        for r in &report.rows {
            let len = fs::metadata(store.join(format!("{}.f32", r.layer)))
                .unwrap()
                .len();
            assert_eq!(len, (n * r.dim * 4) as u64, "{split} {}", r.layer);
        }
    }
    // A second evaluation reads the store (its files stay as they were) and reports the
    // same numbers.
    let stamp = |p: &str| {
        fs::metadata(tmp.path().join("run/features").join(p))
            .unwrap()
            .modified()
            .unwrap()
    };
    let before = stamp("eval-train/manifest.json");
    let second = eval("512");
    assert_eq!(stamp("eval-train/manifest.json"), before);
    let rows = |t: &str| {
        t.lines()
            .filter(|l| l.starts_with("| block"))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(rows(&first), rows(&second));
    assert_eq!(rows(&first).len(), 2);
    // Another pooling is another store: computed anew, replacing the old one.
    eval("128");
    assert_ne!(stamp("eval-train/manifest.json"), before);
    assert_eq!(
        fs::read_dir(tmp.path().join("run/features"))
            .unwrap()
            .count(),
        2,
        "one store per split"
    );
}
