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
    let opts = pretext::data::CacheOptions {
        dir: None,
        image_size: None,
        skip_bad: false,
        progress: false,
        holdout: Default::default(),
    };
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
}
