//! The official STL-10 binary release: `{train,test,unlabeled}_X.bin` hold 3×96×96 u8
//! images, each channel stored column-major; `*_y.bin` hold labels 1..=10.

use std::fs;
use std::io::Read;
use std::path::Path;

use super::cache::{self, CacheOptions, FNV_START, Header, ImageSet};
use super::{DataError, Split};

pub const SIDE: usize = 96;
pub const PIXELS: usize = 3 * SIDE * SIDE;
const CLASSES: [&str; 10] = [
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
];

/// The number of images in an STL-10 `*_X.bin` file of `len` bytes.
fn image_count(path: &Path, len: u64) -> Result<usize, DataError> {
    if len == 0 || !len.is_multiple_of(PIXELS as u64) {
        return Err(DataError::format(
            path,
            format!(
                "is {len} bytes, not a whole number of {PIXELS}-byte 3×96×96 STL-10 images \
                 (truncated or not an STL-10 binary file)"
            ),
        ));
    }
    Ok((len / PIXELS as u64) as usize)
}

/// One column-major planar STL image → HWC.
fn to_hwc(img: &[u8], out: &mut [u8]) {
    for row in 0..SIDE {
        for col in 0..SIDE {
            for ch in 0..3 {
                out[(row * SIDE + col) * 3 + ch] = img[ch * SIDE * SIDE + col * SIDE + row];
            }
        }
    }
}

/// Labels 1..=10 → 0..=9.
pub fn parse_labels(path: &Path, bytes: &[u8], expect: usize) -> Result<Vec<u16>, DataError> {
    if bytes.len() != expect {
        return Err(DataError::format(
            path,
            format!(
                "holds {} labels, expected {expect} (one per image)",
                bytes.len()
            ),
        ));
    }
    bytes
        .iter()
        .enumerate()
        .map(|(k, &b)| {
            if (1..=10).contains(&b) {
                Ok(b as u16 - 1)
            } else {
                Err(DataError::format(
                    path,
                    format!("label {k} is {b}, expected 1..=10"),
                ))
            }
        })
        .collect()
}

pub fn open(root: &Path, split: Split, opts: &CacheOptions) -> Result<ImageSet, DataError> {
    let xs = root.join(format!("{}_X.bin", split.name()));
    let ys = (split != Split::Unlabeled).then(|| root.join(format!("{}_y.bin", split.name())));
    let fp = cache::fingerprint_files(std::iter::once(&xs).chain(ys.as_ref()), FNV_START)?;
    cache::cached(opts, "stl10", split.name(), fp, |sink| {
        // Checked before anything is read: the size, then the labels.
        let len = fs::metadata(&xs).map_err(|e| DataError::io(&xs, e))?.len();
        let n = image_count(&xs, len)?;
        let labels = match &ys {
            Some(y) => Some(parse_labels(
                y,
                &fs::read(y).map_err(|e| DataError::io(y, e))?,
                n,
            )?),
            None => None,
        };
        // Streamed image by image: the unlabeled split alone is 2.8 GB, which read whole
        // and converted once held twice that in memory.
        sink.reserve(n * PIXELS);
        let mut reader =
            std::io::BufReader::new(fs::File::open(&xs).map_err(|e| DataError::io(&xs, e))?);
        let (mut img, mut hwc) = (vec![0u8; PIXELS], vec![0u8; PIXELS]);
        for _ in 0..n {
            reader
                .read_exact(&mut img)
                .map_err(|e| DataError::io(&xs, e))?;
            to_hwc(&img, &mut hwc);
            sink.push(&hwc)?;
        }
        let classes = fs::read_to_string(root.join("class_names.txt"))
            .map(|s| s.lines().map(|l| l.trim().to_string()).collect::<Vec<_>>())
            .ok()
            .filter(|v| v.len() == 10)
            .unwrap_or_else(|| CLASSES.iter().map(|s| s.to_string()).collect());
        let header = Header {
            n,
            h: SIDE,
            w: SIDE,
            c: 3,
            labels,
            classes,
            sources: (0..n).map(|k| format!("{}#{k}", xs.display())).collect(),
            skipped: vec![],
            fingerprint: fp,
            holdout: None,
            skipped_small: 0,
        };
        Ok(header)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_stl_parses_back_exactly() {
        // One image whose byte at (channel, column, row) encodes its position.
        let img: Vec<u8> = (0..PIXELS).map(|i| (i % 253) as u8).collect();
        let mut out = vec![0; PIXELS];
        to_hwc(&img, &mut out);
        assert_eq!(image_count(Path::new("t_X.bin"), PIXELS as u64).unwrap(), 1);
        let (row, col, ch) = (3, 70, 2);
        let expect = img[ch * SIDE * SIDE + col * SIDE + row];
        assert_eq!(out[(row * SIDE + col) * 3 + ch], expect);
        let labels = parse_labels(Path::new("t_y.bin"), &[1, 10], 2).unwrap();
        assert_eq!(labels, vec![0, 9]);
    }

    #[test]
    fn truncated_stl_is_an_error_naming_the_file() {
        let err = image_count(Path::new("train_X.bin"), 100)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("train_X.bin") && err.contains("27648"),
            "{err}"
        );
        let err = parse_labels(Path::new("train_y.bin"), &[1, 11], 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("train_y.bin"), "{err}");
    }

    /// The streamed reader, with and without a cache file: the images of a generated
    /// three-image split in order (pixel by pixel against the converter), its labels, and
    /// the second open served from the cache.
    #[test]
    fn a_generated_split_streams_into_the_cache_and_back() {
        let dir = tempfile::tempdir().unwrap();
        let raw: Vec<u8> = (0..3 * PIXELS).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(dir.path().join("train_X.bin"), &raw).unwrap();
        fs::write(dir.path().join("train_y.bin"), [3u8, 1, 10]).unwrap();
        let cache = dir.path().join("cache");
        for opts in [
            CacheOptions {
                dir: None,
                ..CacheOptions::default()
            },
            CacheOptions {
                dir: Some(cache.clone()),
                ..CacheOptions::default()
            },
        ] {
            for pass in 0..2 {
                let set = open(dir.path(), Split::Train, &opts).unwrap();
                assert_eq!(set.len(), 3);
                assert_eq!(set.header.labels, Some(vec![2, 0, 9]));
                for (k, img) in raw.chunks_exact(PIXELS).enumerate() {
                    let mut want = vec![0; PIXELS];
                    to_hwc(img, &mut want);
                    assert_eq!(set.image(k), &want[..], "image {k}");
                }
                assert_eq!(set.cache_path.is_some(), opts.dir.is_some(), "pass {pass}");
            }
        }
        assert_eq!(fs::read_dir(&cache).unwrap().count(), 1, "one cache file");
    }
}
