//! `pretext data fetch cifar10` against a local HTTP server on 127.0.0.1 serving a small
//! archive in the official layout.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use md5::{Digest, Md5};

/// A CIFAR-10 binary archive with `per` records in each batch.
fn archive(per: usize) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, format!("cifar-10-batches-bin/{name}"), data)
            .unwrap();
    };
    let batch = |n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|k| std::iter::once((k % 10) as u8).chain(std::iter::repeat_n(k as u8, 3072)))
            .collect()
    };
    for i in 1..=5 {
        add(&format!("data_batch_{i}.bin"), &batch(per));
    }
    add("test_batch.bin", &batch(per + 1));
    add(
        "batches.meta.txt",
        b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n",
    );
    tar.into_inner().unwrap().finish().unwrap()
}

/// Serve `body` (announcing `announce` bytes) to each of `conns` connections.
fn serve(body: Vec<u8>, announce: usize, conns: usize) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(conns) {
            let mut s = s.unwrap();
            let mut req = [0u8; 4096];
            let _ = s.read(&mut req);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {announce}\r\nConnection: close\r\n\r\n"
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    format!("http://{addr}/cifar-10-binary.tar.gz")
}

fn fetch(out: &Path, url: &str, md5: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args(["data", "fetch", "cifar10", "--quiet", "--out"])
        .arg(out)
        .args(["--url", url, "--md5", md5])
        .output()
        .unwrap()
}

/// Reading without a cache folder.
fn in_memory() -> pretext::data::CacheOptions {
    pretext::data::CacheOptions {
        dir: None,
        image_size: None,
        skip_bad: false,
        progress: false,
        holdout: Default::default(),
    }
}

#[test]
fn fetch_downloads_verifies_and_unpacks() {
    let body = archive(2);
    let md5: String = Md5::digest(&body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let url = serve(body.clone(), body.len(), 1);
    let out = fetch(tmp.path(), &url, &md5);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tmp.path().join("cifar-10-batches-bin");
    let opts = in_memory();
    let train = pretext::data::open(&dir, pretext::data::Split::Train, &opts).unwrap();
    let test = pretext::data::open(&dir, pretext::data::Split::Test, &opts).unwrap();
    assert_eq!((train.len(), test.len()), (10, 3));
    assert_eq!(train.header.classes[9], "truck");
    assert!(
        !tmp.path().join("cifar-10-binary.tar.gz").exists(),
        "archive removed after unpacking"
    );
}

#[test]
fn a_wrong_checksum_or_a_cut_download_is_an_error() {
    let body = archive(1);
    let tmp = tempfile::tempdir().unwrap();
    let url = serve(body.clone(), body.len(), 1);
    let out = fetch(tmp.path(), &url, "00000000000000000000000000000000");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("does not match the published"), "{err}");
    assert!(
        !tmp.path()
            .join("cifar-10-batches-bin/data_batch_1.bin")
            .exists()
    );

    let url = serve(body[..body.len() / 2].to_vec(), body.len(), 1);
    let out = fetch(tmp.path(), &url, "00000000000000000000000000000000");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cifar-10-binary.tar.gz"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // Nothing of the cut download is left behind.
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".part"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A `.tar.gz` of `members` under `dir/`.
fn tar_gz(dir: &str, members: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, format!("{dir}/{name}"), &data[..])
            .unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

fn md5_hex(body: &[u8]) -> String {
    Md5::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn fetch_named(name: &str, out: &Path, url: &str, md5: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args(["data", "fetch", name, "--quiet", "--out"])
        .arg(out)
        .args(["--url", url, "--md5", md5])
        .output()
        .unwrap()
}

/// STL-10 and CIFAR-100 in their official layouts (a few images each), fetched, verified
/// and read back split by split; an archive missing a member is refused by name.
#[test]
fn stl10_and_cifar100_fetch_into_readable_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = in_memory();
    use pretext::data::Split;
    let img = vec![7u8; 3 * 96 * 96];
    let stl = tar_gz(
        "stl10_binary",
        &[
            ("train_X.bin", img.repeat(2)),
            ("train_y.bin", vec![1, 10]),
            ("test_X.bin", img.clone()),
            ("test_y.bin", vec![4]),
            ("unlabeled_X.bin", img.repeat(3)),
            (
                "class_names.txt",
                b"airplane\nbird\ncar\ncat\ndeer\ndog\nhorse\nmonkey\nship\ntruck\n".to_vec(),
            ),
            ("fold_indices.txt", b"0 1\n".to_vec()),
        ],
    );
    let url = serve(stl.clone(), stl.len(), 1);
    let out = fetch_named("stl10", tmp.path(), &url, &md5_hex(&stl));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("STL-10 is in"));
    let dir = tmp.path().join("stl10_binary");
    let n = |s| pretext::data::open(&dir, s, &opts).unwrap().len();
    assert_eq!(
        (n(Split::Train), n(Split::Test), n(Split::Unlabeled)),
        (2, 1, 3)
    );
    assert!(!tmp.path().join("stl10_binary.tar.gz").exists());

    let rec = |label: u8| [vec![label / 5, label], vec![label; 3072]].concat();
    let names: Vec<u8> = (0..100)
        .flat_map(|i| format!("class{i}\n").into_bytes())
        .collect();
    let c100 = tar_gz(
        "cifar-100-binary",
        &[
            ("train.bin", [rec(3), rec(99), rec(0)].concat()),
            ("test.bin", rec(42)),
            ("fine_label_names.txt", names.clone()),
            ("coarse_label_names.txt", names[..60].to_vec()),
        ],
    );
    let url = serve(c100.clone(), c100.len(), 1);
    let out = fetch_named("cifar100", tmp.path(), &url, &md5_hex(&c100));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tmp.path().join("cifar-100-binary");
    let train = pretext::data::open(&dir, Split::Train, &opts).unwrap();
    assert_eq!((train.len(), train.header.classes.len()), (3, 100));
    assert_eq!(train.header.labels, Some(vec![3, 99, 0]));

    // An archive without the unlabeled images is not STL-10.
    let cut = tar_gz("stl10_binary", &[("train_X.bin", img.clone())]);
    let url = serve(cut.clone(), cut.len(), 1);
    let out = fetch_named("stl10", &tmp.path().join("cut"), &url, &md5_hex(&cut));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not the STL-10 binary archive") && err.contains("unlabeled_X.bin"),
        "{err}"
    );
    // An unknown name lists the known ones, before anything is created.
    // Offline: the error says where the archive is and where to put it, and leaves no
    // folder behind.
    let out = fetch_named(
        "stl10",
        &tmp.path().join("offline"),
        "http://127.0.0.1:1/x.tar.gz",
        "0",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("stl10_binary.tar.gz elsewhere")
            && err.contains("91f7769df0f17e558f3565bffb0c7dfb")
            && err.contains("and unpack it into"),
        "{err}"
    );
    assert!(!tmp.path().join("offline").exists());
    let out = fetch_named("imagenet", &tmp.path().join("none"), &url, "0");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cifar10, cifar100, stl10"), "{err}");
    assert!(!tmp.path().join("none").exists());
}

/// `pretext ARGS` in `cwd` with the named data sets in `data_dir`, fetched from `mirror`.
fn with_data_dir(cwd: &Path, data_dir: &Path, mirror: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args(args)
        .args(["--quiet", "--no-cache"])
        .current_dir(cwd)
        .env("PRETEXT_DATA_DIR", data_dir)
        .env("PRETEXT_DATA_MIRROR", mirror)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// An address nothing listens on.
fn closed_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

/// `--data cifar10` is CIFAR-10's folder in `$PRETEXT_DATA_DIR`: fetched (from the mirror,
/// checked against the published MD5) when it is not there, reused without a network
/// when it is; offline, the error says what to download and where to put it; a folder
/// named `cifar10` in the working directory wins over the name.
#[test]
fn a_named_data_set_is_fetched_into_the_data_folder_once_and_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("datasets");
    let body = archive(2);
    // A mirror serving another file than the published one: refused by its MD5.
    let url = serve(body.clone(), body.len(), 1);
    let mirror = url.trim_end_matches("/cifar-10-binary.tar.gz");
    let (ok, text) = with_data_dir(
        tmp.path(),
        &data_dir,
        mirror,
        &["data", "inspect", "cifar10"],
    );
    assert!(!ok, "{text}");
    assert!(
        text.contains("does not match the published c32a1d4ab5d03f1284b67883e8d87530"),
        "{text}"
    );
    assert!(!data_dir.exists(), "nothing left of a failed fetch");
    // Offline: the official address, the checksum, and where the files go.
    let (ok, text) = with_data_dir(
        tmp.path(),
        &data_dir,
        &closed_port(),
        &["data", "inspect", "cifar10"],
    );
    assert!(!ok, "{text}");
    for want in [
        "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        "c32a1d4ab5d03f1284b67883e8d87530",
        "datasets/cifar-10-batches-bin",
        "data_batch_1.bin",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    assert!(!text.contains("panicked"), "{text}");
    // Once the files are there (fetched as `data fetch` does), the name is the folder and
    // no network is needed.
    let out = fetch(&data_dir, &url_of(&body), &md5_hex(&body));
    assert!(out.status.success());
    let (ok, text) = with_data_dir(
        tmp.path(),
        &data_dir,
        &closed_port(),
        &["data", "inspect", "cifar10"],
    );
    assert!(ok, "{text}");
    assert!(
        text.contains("datasets/cifar-10-batches-bin: Cifar10"),
        "{text}"
    );
    assert!(text.contains("train: 10 images"), "{text}");
    // A folder of that name where the command runs is what the user means.
    let own = tmp.path().join("cifar10");
    std::fs::create_dir_all(&own).unwrap();
    image::RgbImage::new(4, 4).save(own.join("x.png")).unwrap();
    let (ok, text) = with_data_dir(
        tmp.path(),
        &data_dir,
        &closed_port(),
        &["data", "inspect", "cifar10"],
    );
    assert!(ok, "{text}");
    assert!(text.starts_with("cifar10: Folder"), "{text}");
}

/// A server for `body` under CIFAR-10's archive name.
fn url_of(body: &[u8]) -> String {
    serve(body.to_vec(), body.len(), 1)
}
