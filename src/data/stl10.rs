//! The official STL-10 binary release: `{train,test,unlabeled}_X.bin` hold 3×96×96 u8
//! images, each channel stored column-major; `*_y.bin` hold labels 1..=10.

use std::fs;
use std::path::Path;

use super::cache::{self, CacheOptions, FNV_START, Header, ImageSet};
use super::{DataError, Split};

pub const SIDE: usize = 96;
pub const PIXELS: usize = 3 * SIDE * SIDE;
const CLASSES: [&str; 10] = [
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
];

/// Column-major planar STL images → HWC.
pub fn parse_images(path: &Path, bytes: &[u8], out: &mut Vec<u8>) -> Result<usize, DataError> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(PIXELS) {
        return Err(DataError::format(
            path,
            format!(
                "is {} bytes, not a whole number of {PIXELS}-byte 3×96×96 STL-10 images \
                 (truncated or not an STL-10 binary file)",
                bytes.len()
            ),
        ));
    }
    let n = bytes.len() / PIXELS;
    out.reserve(bytes.len());
    for img in bytes.chunks_exact(PIXELS) {
        for row in 0..SIDE {
            for col in 0..SIDE {
                for ch in 0..3 {
                    out.push(img[ch * SIDE * SIDE + col * SIDE + row]);
                }
            }
        }
    }
    Ok(n)
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
    cache::cached(opts, "stl10", split.name(), fp, || {
        let bytes = fs::read(&xs).map_err(|e| DataError::io(&xs, e))?;
        let mut pixels = Vec::new();
        let n = parse_images(&xs, &bytes, &mut pixels)?;
        drop(bytes);
        let labels = match &ys {
            Some(y) => Some(parse_labels(
                y,
                &fs::read(y).map_err(|e| DataError::io(y, e))?,
                n,
            )?),
            None => None,
        };
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
        Ok(ImageSet::from_parts(header, pixels))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_stl_parses_back_exactly() {
        // One image whose byte at (channel, column, row) encodes its position.
        let img: Vec<u8> = (0..PIXELS).map(|i| (i % 253) as u8).collect();
        let mut out = Vec::new();
        assert_eq!(
            parse_images(Path::new("t_X.bin"), &img, &mut out).unwrap(),
            1
        );
        let (row, col, ch) = (3, 70, 2);
        let expect = img[ch * SIDE * SIDE + col * SIDE + row];
        assert_eq!(out[(row * SIDE + col) * 3 + ch], expect);
        let labels = parse_labels(Path::new("t_y.bin"), &[1, 10], 2).unwrap();
        assert_eq!(labels, vec![0, 9]);
    }

    #[test]
    fn truncated_stl_is_an_error_naming_the_file() {
        let err = parse_images(Path::new("train_X.bin"), &[0u8; 100], &mut vec![])
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
}
