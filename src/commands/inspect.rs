//! `pretext data inspect`: what a data folder holds.

use anyhow::Result;

use crate::data::{self, CacheOptions};

/// Print what a data folder holds: format, splits, counts, classes, image size, cache.
pub fn inspect(path: &std::path::Path, cache: &CacheOptions) -> Result<()> {
    let format = data::detect_format(path)?;
    println!("{}: {:?}", path.display(), format);
    let splits = data::splits(path, cache.holdout)?;
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
