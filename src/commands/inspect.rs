//! `pretext data inspect`: what a data folder holds.

use anyhow::Result;

use crate::data::{self, CacheOptions};

/// Print what a data folder holds: format, splits, counts, classes, image size, cache.
pub fn inspect(path: &std::path::Path, cache: &CacheOptions) -> Result<()> {
    let format = data::detect_format(path)?;
    println!("{}: {:?}", path.display(), format);
    let splits: Vec<data::Split> = match format {
        data::Format::Folder => {
            if data::folder::has_split_folders(path) {
                [data::Split::Train, data::Split::Test]
                    .into_iter()
                    .filter(|s| path.join(s.name()).is_dir())
                    .collect()
            } else if std::fs::read_dir(path)?
                .filter_map(|e| e.ok())
                .any(|e| e.path().is_dir())
            {
                // Class folders: a test split is held out of each class, unless
                // `--test-fraction 0` keeps every image for training (then there is no
                // test split to show: showing the whole tree again would call training
                // images test images).
                if cache.holdout.is_some() {
                    vec![data::Split::Train, data::Split::Test]
                } else {
                    vec![data::Split::Train]
                }
            } else {
                vec![data::Split::Unlabeled]
            }
        }
        data::Format::Stl10 => [
            data::Split::Train,
            data::Split::Test,
            data::Split::Unlabeled,
        ]
        .into_iter()
        .filter(|s| path.join(format!("{}_X.bin", s.name())).is_file())
        .collect(),
        // The splits whose files are there (a missing file of a present split is named
        // when it is read).
        data::Format::Cifar10 => [
            (data::Split::Train, "data_batch_1.bin"),
            (data::Split::Test, "test_batch.bin"),
        ]
        .into_iter()
        .filter(|(_, f)| path.join(f).is_file())
        .map(|(s, _)| s)
        .collect(),
        data::Format::Cifar100 => [data::Split::Train, data::Split::Test]
            .into_iter()
            .filter(|s| path.join(format!("{}.bin", s.name())).is_file())
            .collect(),
    };
    for split in splits {
        let set = data::open(path, split, cache)?;
        let h = &set.header;
        println!(
            "  {}: {} images, {}×{}×{}, {}",
            split.name(),
            h.n,
            h.w,
            h.h,
            h.c,
            if set.is_labelled() {
                format!("{} classes", h.classes.len())
            } else {
                "unlabeled".into()
            }
        );
        if let Some(held) = h.holdout {
            println!("    (no train/ and test/ folders: {held}; --test-fraction, --split-seed)");
        } else if split == data::Split::Train
            && h.labels.is_some()
            && matches!(format, data::Format::Folder)
            && !data::folder::has_split_folders(path)
        {
            println!(
                "    (no train/ and test/ folders, --test-fraction 0: every image is for training, no test split)"
            );
        }
        for (name, count) in h.classes.iter().zip(set.class_counts()) {
            println!("    {name:<16} {count}");
        }
        if let Some(s) = h.skipped_summary() {
            println!("    {s}");
        }
        if let Some(p) = &set.cache_path {
            println!("    cache: {}", p.display());
        }
    }
    Ok(())
}
