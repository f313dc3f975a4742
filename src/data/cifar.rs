//! The official CIFAR-10 and CIFAR-100 binary releases.
//!
//! CIFAR-10 records are 1 label byte + 3072 pixel bytes (R plane, G plane, B plane, each
//! 32×32 row-major); CIFAR-100 records carry a coarse and a fine label byte first. We use
//! the fine labels.

use std::fs;
use std::path::{Path, PathBuf};

use super::cache::{self, CacheOptions, FNV_START, Header, ImageSet};
use super::{DataError, Split};

pub const SIDE: usize = 32;
pub const PIXELS: usize = 3 * SIDE * SIDE;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Cifar10,
    Cifar100,
}

impl Variant {
    fn label_bytes(self) -> usize {
        match self {
            Variant::Cifar10 => 1,
            Variant::Cifar100 => 2,
        }
    }
    pub fn record_len(self) -> usize {
        self.label_bytes() + PIXELS
    }
    fn files(self, split: Split) -> Vec<&'static str> {
        match (self, split) {
            (Variant::Cifar10, Split::Test) => vec!["test_batch.bin"],
            (Variant::Cifar10, _) => vec![
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
            ],
            (Variant::Cifar100, Split::Test) => vec!["test.bin"],
            (Variant::Cifar100, _) => vec!["train.bin"],
        }
    }
    fn num_classes(self) -> usize {
        match self {
            Variant::Cifar10 => 10,
            Variant::Cifar100 => 100,
        }
    }
    fn names_file(self) -> &'static str {
        match self {
            Variant::Cifar10 => "batches.meta.txt",
            Variant::Cifar100 => "fine_label_names.txt",
        }
    }
}

/// Decode CIFAR records from `bytes` (read from `path`) into HWC pixels and labels.
pub fn parse(
    path: &Path,
    bytes: &[u8],
    variant: Variant,
    pixels: &mut Vec<u8>,
    labels: &mut Vec<u16>,
) -> Result<usize, DataError> {
    let rec = variant.record_len();
    if bytes.is_empty() || !bytes.len().is_multiple_of(rec) {
        return Err(DataError::format(
            path,
            format!(
                "is {} bytes, not a whole number of {rec}-byte {variant:?} records \
                 (truncated or not a CIFAR binary file)",
                bytes.len()
            ),
        ));
    }
    let n = bytes.len() / rec;
    for (k, r) in bytes.chunks_exact(rec).enumerate() {
        let label = r[variant.label_bytes() - 1] as usize;
        if label >= variant.num_classes() {
            return Err(DataError::format(
                path,
                format!(
                    "record {k} has label {label}, expected < {}",
                    variant.num_classes()
                ),
            ));
        }
        labels.push(label as u16);
        let planes = &r[variant.label_bytes()..];
        for p in 0..SIDE * SIDE {
            for ch in 0..3 {
                pixels.push(planes[ch * SIDE * SIDE + p]);
            }
        }
    }
    Ok(n)
}

fn class_names(root: &Path, variant: Variant) -> Vec<String> {
    let names: Vec<String> = fs::read_to_string(root.join(variant.names_file()))
        .map(|s| {
            s.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    if names.len() == variant.num_classes() {
        names
    } else {
        (0..variant.num_classes())
            .map(|i| format!("class{i}"))
            .collect()
    }
}

pub fn open(
    root: &Path,
    split: Split,
    variant: Variant,
    opts: &CacheOptions,
) -> Result<ImageSet, DataError> {
    if split == Split::Unlabeled {
        return Err(DataError::format(
            root,
            "CIFAR has no unlabeled split; use train or test",
        ));
    }
    let files: Vec<PathBuf> = variant.files(split).iter().map(|f| root.join(f)).collect();
    let fp = cache::fingerprint_files(&files, FNV_START)?;
    let kind = match variant {
        Variant::Cifar10 => "cifar10",
        Variant::Cifar100 => "cifar100",
    };
    cache::cached(opts, kind, split.name(), fp, |sink| {
        // One batch file (10,000 images) in memory at a time, streamed into the cache.
        let mut labels = Vec::new();
        let mut sources = Vec::new();
        let mut pixels = Vec::new();
        for f in &files {
            let bytes = fs::read(f).map_err(|e| DataError::io(f, e))?;
            pixels.clear();
            let n = parse(f, &bytes, variant, &mut pixels, &mut labels)?;
            sink.push(&pixels)?;
            sources.extend((0..n).map(|k| format!("{}#{k}", f.display())));
        }
        Ok(Header {
            n: labels.len(),
            h: SIDE,
            w: SIDE,
            c: 3,
            labels: Some(labels),
            classes: class_names(root, variant),
            sources,
            skipped: vec![],
            fingerprint: fp,
            holdout: None,
            skipped_small: 0,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two generated CIFAR-10 records, each pixel value a function of (record, channel, pixel).
    fn records(variant: Variant) -> Vec<u8> {
        let mut out = Vec::new();
        for k in 0..2u8 {
            if variant == Variant::Cifar100 {
                out.push(7); // coarse label, ignored
            }
            out.push(3 + k);
            for ch in 0..3usize {
                for p in 0..SIDE * SIDE {
                    out.push(((p + ch * 50 + k as usize * 7) % 251) as u8);
                }
            }
        }
        out
    }

    #[test]
    fn generated_cifar10_parses_back_exactly() {
        let mut px = Vec::new();
        let mut labels = Vec::new();
        let n = parse(
            Path::new("x.bin"),
            &records(Variant::Cifar10),
            Variant::Cifar10,
            &mut px,
            &mut labels,
        )
        .unwrap();
        assert_eq!(n, 2);
        assert_eq!(labels, vec![3, 4]);
        // record 1, row 2, column 5, green channel: plane index p = 2*32+5 = 69.
        let hwc = PIXELS + (2 * SIDE + 5) * 3 + 1;
        assert_eq!(px[hwc], (69 + 50 + 7) as u8);
    }

    #[test]
    fn cifar100_uses_fine_label() {
        let mut px = Vec::new();
        let mut labels = Vec::new();
        parse(
            Path::new("x.bin"),
            &records(Variant::Cifar100),
            Variant::Cifar100,
            &mut px,
            &mut labels,
        )
        .unwrap();
        assert_eq!(labels, vec![3, 4]);
    }

    #[test]
    fn truncated_file_names_the_file() {
        let mut bytes = records(Variant::Cifar10);
        bytes.truncate(bytes.len() - 10);
        let err = parse(
            Path::new("data_batch_9.bin"),
            &bytes,
            Variant::Cifar10,
            &mut vec![],
            &mut vec![],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("data_batch_9.bin") && err.contains("3073"),
            "{err}"
        );
    }
}
