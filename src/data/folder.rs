//! Image trees on disk: `root/<class>/*.{jpg,png}` (labelled, classes from folder names),
//! a flat folder of images (unlabeled), or a root holding `train/` and `test/` of either kind.

use std::fs;
use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use rayon::prelude::*;

use super::cache::{self, CacheOptions, FNV_START, Header, Holdout, ImageSet, PixelSink, fnv1a};
use super::{DataError, Split};

fn is_image(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("jpg" | "jpeg" | "png")
    )
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let e = e.map_err(|e| DataError::io(dir, e))?;
        v.push(e.path());
    }
    v.sort();
    Ok(v)
}

/// The files of one split and their labels.
pub struct Listing {
    pub root: PathBuf,
    pub files: Vec<PathBuf>,
    pub labels: Option<Vec<u16>>,
    pub classes: Vec<String>,
    /// Set when the split was carved out of a tree without split folders.
    pub holdout: Option<Holdout>,
}

/// Whether `root` holds `train/` or `test/` split folders.
pub fn has_split_folders(root: &Path) -> bool {
    root.join("train").is_dir() || root.join("test").is_dir()
}

/// The folder that holds `split` under `root`.
pub fn split_dir(root: &Path, split: Split) -> Result<PathBuf, DataError> {
    match (has_split_folders(root), split) {
        (false, _) => Ok(root.to_path_buf()),
        (true, Split::Unlabeled) => Ok(root.join("train")),
        (true, s) => {
            let d = root.join(s.name());
            if d.is_dir() {
                Ok(d)
            } else {
                Err(DataError::format(
                    root,
                    format!("has no `{}/` folder (expected train/ and test/)", s.name()),
                ))
            }
        }
    }
}

/// List the images of `split` (sorted, so the order never depends on the file system).
/// A labelled tree without split folders is split by `holdout`: `Test` lists the held-out
/// images, `Train` and `Unlabeled` the rest, so pretraining never sees the test images.
pub fn list(root: &Path, split: Split, holdout: Option<Holdout>) -> Result<Listing, DataError> {
    if !root.exists() {
        return Err(DataError::Missing {
            path: root.to_path_buf(),
        });
    }
    let dir = split_dir(root, split)?;
    let entries = sorted_entries(&dir)?;
    let subdirs: Vec<&PathBuf> = entries.iter().filter(|p| p.is_dir()).collect();
    let flat: Vec<PathBuf> = entries
        .iter()
        .filter(|p| p.is_file() && is_image(p))
        .cloned()
        .collect();
    if !subdirs.is_empty() && !flat.is_empty() {
        return Err(DataError::format(
            &dir,
            format!(
                "mixes {} images at the top level with {} class folders; \
                 expected either class folders or a flat folder of images",
                flat.len(),
                subdirs.len()
            ),
        ));
    }
    let listing = if subdirs.is_empty() {
        Listing {
            root: dir.clone(),
            files: flat,
            labels: None,
            classes: vec![],
            holdout: None,
        }
    } else {
        let mut files = Vec::new();
        let mut labels = Vec::new();
        let mut classes = Vec::new();
        for sub in subdirs {
            let name = sub
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let imgs: Vec<PathBuf> = sorted_entries(sub)?
                .into_iter()
                .filter(|p| p.is_file() && is_image(p))
                .collect();
            if imgs.is_empty() {
                continue;
            }
            let label = classes.len() as u16;
            classes.push(name);
            labels.extend(std::iter::repeat_n(label, imgs.len()));
            files.extend(imgs);
        }
        let listing = Listing {
            root: dir.clone(),
            files,
            labels: Some(labels),
            classes,
            holdout: None,
        };
        match holdout {
            Some(h) if !has_split_folders(root) => hold_out(listing, split == Split::Test, h)?,
            _ => listing,
        }
    };
    if listing.files.is_empty() {
        return Err(DataError::Empty { path: dir });
    }
    Ok(listing)
}

/// The held-out images of every class (`test`), or the rest. Per class, the files are
/// ranked by a hash of (seed, file name) and the first `round(fraction × count)` (at least
/// 1, at most count − 1) are held out; a class of one image keeps it for training. Ranking
/// by name rather than shuffling by position keeps the split stable when files are added
/// or removed: each change moves at most one image of its class across.
fn hold_out(all: Listing, test: bool, h: Holdout) -> Result<Listing, DataError> {
    if !(h.fraction > 0.0 && h.fraction < 1.0) {
        return Err(DataError::format(
            &all.root,
            format!(
                "has no train/ and test/ folders, so a test split is held out of each class; \
                 --test-fraction must be between 0 and 1 (0 turns it off), got {}",
                h.fraction
            ),
        ));
    }
    let labels = all.labels.as_deref().unwrap_or(&[]);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); all.classes.len()];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l as usize].push(i);
    }
    let rank = |i: usize| {
        let name = all.files[i].file_name().unwrap_or_default();
        fnv1a(
            name.as_encoded_bytes(),
            fnv1a(&h.seed.to_le_bytes(), FNV_START),
        )
    };
    let mut held = vec![false; labels.len()];
    for mut members in by_class {
        if members.len() < 2 {
            continue;
        }
        let take =
            ((h.fraction * members.len() as f64).round() as usize).clamp(1, members.len() - 1);
        members.sort_by_key(|&i| (rank(i), i));
        for &i in &members[..take] {
            held[i] = true;
        }
    }
    let keep: Vec<usize> = (0..labels.len()).filter(|&i| held[i] == test).collect();
    Ok(Listing {
        files: keep.iter().map(|&i| all.files[i].clone()).collect(),
        labels: Some(keep.iter().map(|&i| labels[i]).collect()),
        root: all.root,
        classes: all.classes,
        holdout: Some(h),
    })
}

fn fingerprint(listing: &Listing, opts: &CacheOptions) -> Result<u64, DataError> {
    let root = fs::canonicalize(&listing.root).unwrap_or_else(|_| listing.root.clone());
    let mut h = fnv1a(root.to_string_lossy().as_bytes(), FNV_START);
    h = fnv1a(&opts.image_size.unwrap_or(0).to_le_bytes(), h);
    h = fnv1a(&[opts.skip_bad as u8], h);
    if let Some(held) = listing.holdout {
        h = fnv1a(&held.fraction.to_le_bytes(), h);
        h = fnv1a(&held.seed.to_le_bytes(), h);
    }
    cache::fingerprint_files(&listing.files, h)
}

/// Decode one file to `size × size` RGB: shorter side resized to `size`, center crop.
pub fn decode_file(path: &Path, size: Option<u32>) -> Result<image::RgbImage, DataError> {
    let bytes = fs::read(path).map_err(|e| DataError::io(path, e))?;
    decode_bytes(&bytes, path, size)
}

/// Decode an encoded image (`path` names it in errors: a file, or `shard.tar#member`) to
/// `size × size` RGB as [`decode_file`] does.
pub fn decode_bytes(
    bytes: &[u8],
    path: &Path,
    size: Option<u32>,
) -> Result<image::RgbImage, DataError> {
    let corrupt = |reason: String| DataError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let img = image::load_from_memory(bytes)
        .map_err(|e| corrupt(e.to_string()))?
        .to_rgb8();
    let Some(size) = size else { return Ok(img) };
    let (w, h) = img.dimensions();
    if w == size && h == size {
        return Ok(img);
    }
    if w.min(h) < size {
        return Err(DataError::TooSmall {
            path: path.to_path_buf(),
            w,
            h,
            need: size,
        });
    }
    let (nw, nh) = if w <= h {
        (
            size,
            ((h as u64 * size as u64) / w as u64).max(size as u64) as u32,
        )
    } else {
        (
            ((w as u64 * size as u64) / h as u64).max(size as u64) as u32,
            size,
        )
    };
    let resized = image::imageops::resize(&img, nw, nh, FilterType::Triangle);
    let (x, y) = ((nw - size) / 2, (nh - size) / 2);
    Ok(image::imageops::crop_imm(&resized, x, y, size, size).to_image())
}

/// Open `split` of the image tree at `root`, through the cache.
pub fn open(root: &Path, split: Split, opts: &CacheOptions) -> Result<ImageSet, DataError> {
    let listing = list(root, split, opts.holdout)?;
    let fp = fingerprint(&listing, opts)?;
    cache::cached(opts, "folder", split.name(), fp, |sink| {
        decode_all(listing, opts, fp, sink)
    })
}

/// Decode every file into `sink`, in chunks decoded in parallel: memory holds one chunk
/// of images, not the whole folder (millions of files stream into the cache file).
fn decode_all(
    listing: Listing,
    opts: &CacheOptions,
    fp: u64,
    sink: &mut PixelSink,
) -> Result<Header, DataError> {
    // The first readable image fixes the size when the user did not choose one (with
    // --skip-bad, unreadable files before it are skipped and counted like any other).
    let size = match opts.image_size {
        Some(s) => s,
        None => {
            let mut first = None;
            let mut why = None;
            for f in &listing.files {
                match decode_file(f, None) {
                    Ok(img) => {
                        first = Some(img.width().min(img.height()));
                        break;
                    }
                    Err(e) if opts.skip_bad => {
                        why.get_or_insert(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            match first {
                Some(s) => s,
                None => {
                    return Err(DataError::format(
                        &listing.root,
                        format!(
                            "none of its {} image(s) can be decoded (--skip-bad); first: {}",
                            listing.files.len(),
                            why.map(|e| e.to_string()).unwrap_or_default()
                        ),
                    ));
                }
            }
        }
    };
    let n = listing.files.len();
    let bar = crate::util::progress::bar(
        n as u64,
        &format!("decoding {}", listing.root.display()),
        opts.progress,
    );
    let s = size as usize;
    // About 64 MiB of decoded images a chunk (and enough of them to keep every core busy).
    let chunk = ((64 << 20) / (s * s * 3).max(1)).clamp(64, 8192);
    let mut labels = listing.labels.as_ref().map(|_| Vec::with_capacity(n));
    let mut sources = Vec::with_capacity(n);
    let mut skipped = Vec::new();
    let mut skipped_small = 0;
    for (c, files) in listing.files.chunks(chunk).enumerate() {
        let decoded: Vec<Result<image::RgbImage, DataError>> = files
            .par_iter()
            .map(|f| decode_file(f, Some(size)))
            .collect();
        for (k, r) in decoded.into_iter().enumerate() {
            let i = c * chunk + k;
            match r {
                Ok(img) => {
                    sink.push(img.as_raw())?;
                    if let (Some(out), Some(src)) = (labels.as_mut(), listing.labels.as_ref()) {
                        out.push(src[i]);
                    }
                    sources.push(listing.files[i].to_string_lossy().into_owned());
                }
                Err(e) if opts.skip_bad => {
                    skipped_small += matches!(e, DataError::TooSmall { .. }) as usize;
                    skipped.push(e.to_string());
                }
                Err(e) => return Err(e),
            }
        }
        bar.set_position(((c + 1) * chunk).min(n) as u64);
    }
    bar.finish_and_clear();
    if sources.is_empty() {
        return Err(DataError::Empty { path: listing.root });
    }
    let header = Header {
        n: sources.len(),
        h: s,
        w: s,
        c: 3,
        labels,
        classes: listing.classes,
        sources,
        skipped,
        skipped_small,
        fingerprint: fp,
        holdout: listing.holdout,
    };
    if let Some(s) = header.skipped_summary() {
        eprintln!("warning: {}: {s}", listing.root.display());
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, b"").unwrap();
    }

    fn names(l: &Listing) -> Vec<String> {
        l.files
            .iter()
            .map(|f| f.strip_prefix(&l.root).unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn a_tree_lists_sorted_with_classes_in_folder_order() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for f in [
            "train/dog/b.png",
            "train/dog/a.JPG",
            "train/cat/z.jpeg",
            "train/cat/notes.txt",
        ] {
            touch(&r.join(f));
        }
        touch(&r.join("test/cat/1.png"));
        fs::create_dir_all(r.join("train/empty")).unwrap();
        let l = list(r, Split::Train, Some(Holdout::default())).unwrap();
        // Sorted, extensions of any case, other files ignored, empty class folders skipped.
        assert_eq!(names(&l), ["cat/z.jpeg", "dog/a.JPG", "dog/b.png"]);
        assert_eq!(l.classes, ["cat", "dog"]);
        assert_eq!(l.labels, Some(vec![0, 1, 1]));
        assert!(l.holdout.is_none(), "split folders: nothing held out");
        // Images beside class folders are refused, naming both counts.
        touch(&r.join("train/stray.png"));
        let e = list(r, Split::Train, Some(Holdout::default()))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("mixes 1 images at the top level with 3 class folders"),
            "{e}"
        );
    }

    #[test]
    fn the_held_out_split_by_hand() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        // 6 of class a, 3 of class b. A quarter held out: round(1.5) = 2 of a, round(0.75)
        // = 1 of b; at least one and never the whole class.
        for i in 0..6 {
            touch(&r.join(format!("a/{i}.png")));
        }
        for i in 0..3 {
            touch(&r.join(format!("b/{i}.png")));
        }
        let h = Some(Holdout {
            fraction: 0.25,
            seed: 3,
        });
        let test = list(r, Split::Test, h).unwrap();
        let train = list(r, Split::Train, h).unwrap();
        assert_eq!(test.labels, Some(vec![0, 0, 1]));
        assert_eq!(train.labels, Some(vec![0, 0, 0, 0, 1, 1]));
        assert_eq!(test.holdout, h);
        let (te, tr) = (names(&test), names(&train));
        assert!(te.iter().all(|f| !tr.contains(f)));
        assert_eq!(te.len() + tr.len(), 9);
        // A tiny fraction still holds one image out of each class; a huge one leaves one in.
        let with = |fraction: f64| Some(Holdout { fraction, seed: 0 });
        assert_eq!(list(r, Split::Test, with(0.01)).unwrap().files.len(), 2);
        assert_eq!(list(r, Split::Train, with(0.99)).unwrap().files.len(), 2);
        // Stable: a new file moves at most one image of its class across, so a run's
        // test images stay test images when its tree grows.
        touch(&r.join("a/6.png"));
        let grown = names(&list(r, Split::Test, h).unwrap());
        let moved = te.iter().filter(|f| !grown.contains(f)).count();
        assert!(moved <= 1, "{te:?} → {grown:?}");
        // Fractions outside (0, 1) are refused; no split leaves every split the whole tree.
        let e = list(r, Split::Test, with(1.0)).err().unwrap();
        assert!(e.to_string().contains("--test-fraction"), "{e}");
        assert_eq!(list(r, Split::Test, None).unwrap().files.len(), 10);
        // A class of one image keeps it for training.
        touch(&r.join("c/only.png"));
        let test = list(r, Split::Test, h).unwrap();
        let train = list(r, Split::Train, h).unwrap();
        assert!(!test.labels.unwrap().contains(&2));
        assert_eq!(train.labels.unwrap().iter().filter(|&&l| l == 2).count(), 1);
    }
}
