//! `pretext data fetch cifar10`: download the official CIFAR-10 binary archive, check its
//! MD5 against the published one, and unpack only the expected files.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use md5::{Digest, Md5};

pub const CIFAR10_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
/// The MD5 the dataset's authors publish for `cifar-10-binary.tar.gz`.
pub const CIFAR10_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";
pub const CIFAR10_DIR: &str = "cifar-10-batches-bin";
const CIFAR10_FILES: [&str; 7] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
    "test_batch.bin",
    "batches.meta.txt",
];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Download `url` to `dest`, returning the MD5 of what arrived. Written to a `.part` file
/// first, so an interrupted download never looks complete.
pub fn download(url: &str, dest: &Path, progress: bool) -> Result<String> {
    let mut resp = ureq::get(url)
        .call()
        .with_context(|| format!("downloading {url}"))?;
    let len = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let bar =
        crate::util::progress::bar(len.unwrap_or(0), "downloading", progress && len.is_some());
    let part = dest.with_extension("part");
    let mut out =
        fs::File::create(&part).with_context(|| format!("creating {}", part.display()))?;
    let mut reader = resp.body_mut().as_reader();
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .with_context(|| format!("reading {url}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        got += n as u64;
        bar.set_position(got);
    }
    bar.finish_and_clear();
    out.sync_all()?;
    if let Some(l) = len
        && l != got
    {
        bail!("{url}: the download stopped after {got} of {l} bytes");
    }
    fs::rename(&part, dest)?;
    Ok(hex(&hasher.finalize()))
}

/// Unpack the CIFAR-10 binary members of `archive` into `out/cifar-10-batches-bin/`.
/// Anything else in the archive (or any path that would escape `out`) is ignored.
pub fn unpack_cifar10(archive: &Path, out: &Path) -> Result<PathBuf> {
    let f = fs::File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let dir = out.join(CIFAR10_DIR);
    fs::create_dir_all(&dir)?;
    let mut found = Vec::new();
    for entry in tar
        .entries()
        .with_context(|| format!("{}: not a tar.gz archive", archive.display()))?
    {
        let mut entry = entry.with_context(|| format!("{}: corrupt archive", archive.display()))?;
        let path = entry.path()?.into_owned();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let parent_ok = path
            .parent()
            .and_then(|p| p.file_name())
            .is_some_and(|p| p == CIFAR10_DIR);
        if entry.header().entry_type().is_file()
            && parent_ok
            && CIFAR10_FILES.contains(&name.as_str())
        {
            let target = dir.join(&name);
            crate::util::fsutil::atomic_write(&target, |tmp| {
                let mut w = fs::File::create(tmp)?;
                std::io::copy(&mut entry, &mut w)?;
                Ok(())
            })?;
            found.push(name);
        }
    }
    let missing: Vec<&str> = CIFAR10_FILES
        .iter()
        .copied()
        .filter(|f| !found.iter().any(|g| g == f))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{}: not the CIFAR-10 binary archive (missing {})",
            archive.display(),
            missing.join(", ")
        );
    }
    Ok(dir)
}

/// Download, verify and unpack CIFAR-10 into `out`; returns the folder to pass to `--data`.
pub fn fetch_cifar10(out: &Path, url: &str, md5: &str, progress: bool) -> Result<PathBuf> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let archive = out.join("cifar-10-binary.tar.gz");
    let sum = download(url, &archive, progress)?;
    if !sum.eq_ignore_ascii_case(md5) {
        let _ = fs::remove_file(&archive);
        bail!("{url}: MD5 {sum} does not match the published {md5}; the download was deleted");
    }
    let dir = unpack_cifar10(&archive, out)?;
    fs::remove_file(&archive)?;
    Ok(dir)
}
