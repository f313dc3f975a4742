//! Image data sets: readers for the formats people have on disk, a decoded u8 cache that
//! is memory-mapped so epochs never re-decode, and a seeded parallel batch loader.

pub mod augment;
pub mod cache;
pub mod cifar;
pub mod fetch;
pub mod folder;
pub mod lab;
pub mod loader;
pub mod shards;
pub mod stl10;

use std::path::{Path, PathBuf};

use thiserror::Error;

pub use cache::{CacheOptions, Holdout, ImageSet};

/// Why a data set could not be read. Every variant names the file or folder at fault and
/// what was expected there, so a user can fix the input without reading our code.
#[derive(Debug, Error)]
pub enum DataError {
    #[error("{path}: no such file or folder")]
    Missing { path: PathBuf },
    #[error("{path}: {what}")]
    Format { path: PathBuf, what: String },
    #[error("{path}: cannot decode image: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: image is {w}×{h}, smaller than the {need}×{need} this data set needs")]
    TooSmall {
        path: PathBuf,
        w: u32,
        h: u32,
        need: u32,
    },
    #[error(
        "{path}: contains no images (expected .jpg/.jpeg/.png files, in class sub-folders or flat)"
    )]
    Empty { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl DataError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::Missing {
                path: path.to_path_buf(),
            }
        } else {
            DataError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }
    pub fn format(path: &Path, what: impl Into<String>) -> Self {
        DataError::Format {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }
}

/// Which part of a data set to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Test,
    /// STL-10's unlabeled split, or a flat folder without classes.
    Unlabeled,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
            Split::Unlabeled => "unlabeled",
        }
    }

    /// The split a name (as [`Split::name`] writes it) stands for.
    pub fn from_name(name: &str) -> anyhow::Result<Self> {
        [Split::Train, Split::Test, Split::Unlabeled]
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| {
                anyhow::anyhow!("unknown split {name:?}; expected train, test or unlabeled")
            })
    }
}

/// The on-disk layouts pretext reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `root/<class>/*.jpg` (labelled), a flat folder of images (unlabeled), or a root with
    /// `train/` and `test/` sub-trees of either kind.
    Folder,
    /// The official CIFAR-10 binary release (`data_batch_1.bin` … `test_batch.bin`).
    Cifar10,
    /// The official CIFAR-100 binary release (`train.bin`, `test.bin`).
    Cifar100,
    /// The official STL-10 binary release (`train_X.bin`, `test_X.bin`, `unlabeled_X.bin`).
    Stl10,
    /// WebDataset-style tar shards: a folder of `train-*.tar`, `test-*.tar`,
    /// `unlabeled-*.tar`, or one split's pattern `dir/train-{000000..000099}.tar`.
    Shards,
}

/// Work out which layout `root` holds, from the files present.
pub fn detect_format(root: &Path) -> Result<Format, DataError> {
    if shards::is_pattern(root) {
        return Ok(Format::Shards);
    }
    if !root.exists() {
        return Err(DataError::Missing {
            path: root.to_path_buf(),
        });
    }
    if !root.is_dir() {
        return Err(DataError::format(
            root,
            "expected a folder (an image tree, the CIFAR-10/100 or STL-10 binary release, or tar shards), or a shard pattern ending in .tar",
        ));
    }
    let has = |name: &str| root.join(name).is_file();
    if has("data_batch_1.bin") || has("test_batch.bin") {
        Ok(Format::Cifar10)
    } else if has("train.bin") && (has("fine_label_names.txt") || has("test.bin")) {
        Ok(Format::Cifar100)
    } else if has("train_X.bin") || has("test_X.bin") || has("unlabeled_X.bin") {
        Ok(Format::Stl10)
    } else if shards::is_shard_folder(root) {
        // Shards beside image folders: which one is meant cannot be told.
        let folders = std::fs::read_dir(root)
            .map_err(|e| DataError::io(root, e))?
            .filter_map(|e| e.ok())
            .any(|e| e.path().is_dir());
        if folders {
            return Err(DataError::format(
                root,
                "holds both tar shards (train-*.tar, …) and image folders: point --data at a \
                 folder of one kind, or at the shards by pattern ('DIR/train-{000000..000009}.tar')",
            ));
        }
        Ok(Format::Shards)
    } else {
        Ok(Format::Folder)
    }
}

/// Open one split of the data set under `root`, decoding into (or reusing) the cache.
pub fn open(root: &Path, split: Split, opts: &CacheOptions) -> anyhow::Result<ImageSet> {
    opts.validate(root)?;
    let format = detect_format(root)?;
    let set = match format {
        Format::Folder => folder::open(root, split, opts)?,
        Format::Cifar10 => cifar::open(root, split, cifar::Variant::Cifar10, opts)?,
        Format::Cifar100 => cifar::open(root, split, cifar::Variant::Cifar100, opts)?,
        Format::Stl10 => stl10::open(root, split, opts)?,
        Format::Shards => shards::open(root, split, opts)?,
    };
    Ok(set)
}

/// The split to pretrain on when the user names only a data root: the training images
/// (and STL-10's unlabeled ones when present), or the whole folder when it has no splits
/// (less the held-out test images of a labelled tree, see [`Holdout`]).
pub fn pretrain_split(root: &Path) -> Result<Split, DataError> {
    match detect_format(root)? {
        Format::Folder => Ok(if root.join("train").is_dir() {
            Split::Train
        } else {
            Split::Unlabeled
        }),
        Format::Stl10 if root.join("unlabeled_X.bin").is_file() => Ok(Split::Unlabeled),
        Format::Shards if shards::splits(root).contains(&Split::Unlabeled) => Ok(Split::Unlabeled),
        _ => Ok(Split::Train),
    }
}

/// The splits of the data set at `root` (with `holdout`, a labelled tree without split
/// folders has a train and a test split; without, the whole tree is its train split).
pub fn splits(root: &Path, holdout: Option<Holdout>) -> Result<Vec<Split>, DataError> {
    let format = detect_format(root)?;
    Ok(match format {
        Format::Folder => {
            if folder::has_split_folders(root) {
                [Split::Train, Split::Test]
                    .into_iter()
                    .filter(|s| root.join(s.name()).is_dir())
                    .collect()
            } else if std::fs::read_dir(root)
                .map_err(|e| DataError::io(root, e))?
                .filter_map(|e| e.ok())
                .any(|e| e.path().is_dir())
            {
                // Class folders: a test split is held out of each class, unless
                // `--test-fraction 0` keeps every image for training (then there is no
                // test split: showing the whole tree again would call training images
                // test images).
                if holdout.is_some() {
                    vec![Split::Train, Split::Test]
                } else {
                    vec![Split::Train]
                }
            } else {
                vec![Split::Unlabeled]
            }
        }
        Format::Stl10 => [Split::Train, Split::Test, Split::Unlabeled]
            .into_iter()
            .filter(|s| root.join(format!("{}_X.bin", s.name())).is_file())
            .collect(),
        // The splits whose files are there (a missing file of a present split is named
        // when it is read).
        Format::Cifar10 => [
            (Split::Train, "data_batch_1.bin"),
            (Split::Test, "test_batch.bin"),
        ]
        .into_iter()
        .filter(|(_, f)| root.join(f).is_file())
        .map(|(s, _)| s)
        .collect(),
        Format::Cifar100 => [Split::Train, Split::Test]
            .into_iter()
            .filter(|s| root.join(format!("{}.bin", s.name())).is_file())
            .collect(),
        Format::Shards => shards::splits(root),
    })
}
