//! Hostile input (issue 16): a corpus built here — nothing committed — of broken, odd and
//! malicious files, fed to every command that reads them. Each command must exit 0 (the
//! file is fine, or skipped and counted under --skip-bad) or 1 with a named error: never a
//! panic (101), never a signal death, never a hang (each call has a time limit), and in
//! bounded memory (each call runs under `ulimit -v` of 4 GB, so a 10 GB allocation for
//! a forged 60000×60000 PNG header would kill it).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// CRC-32 (IEEE), as PNG chunks carry it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB88320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend((data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend(data);
    out.extend(&body);
    out.extend(crc32(&body).to_be_bytes());
}

/// A PNG by hand: `width × height`, bit depth 8, color type `color`, optional palette,
/// the given (unfiltered) scanlines zlib-compressed.
fn png(width: u32, height: u32, color: u8, plte: Option<&[u8]>, rows: &[u8]) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, color, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    if let Some(p) = plte {
        chunk(&mut out, b"PLTE", p);
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(rows).unwrap();
    chunk(&mut out, b"IDAT", &z.finish().unwrap());
    chunk(&mut out, b"IEND", &[]);
    out
}

fn rgb_png(side: u32, seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(side, side, |x, y| {
        image::Rgb([(x * 7) as u8 ^ seed, (y * 5) as u8, seed.wrapping_mul(3)])
    });
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png).unwrap();
    buf.into_inner()
}

fn rgb_jpeg(side: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(side, side, |x, y| {
        image::Rgb([x as u8 * 8, y as u8 * 8, 90])
    });
    let mut buf = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 90)
        .encode_image(&img)
        .unwrap();
    buf
}

fn flip_bits(mut b: Vec<u8>) -> Vec<u8> {
    let n = b.len();
    for k in [n / 3, n / 2, 2 * n / 3, n - 20] {
        b[k] ^= 0x5A;
    }
    b
}

/// The image corpus: name → (file name, bytes, whether a decoder must accept it).
fn images() -> Vec<(&'static str, OsString, Vec<u8>, bool)> {
    let good_png = rgb_png(32, 1);
    let good_jpg = rgb_jpeg(32);
    let gray16 = {
        let img = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(32, 32, |x, y| {
            image::Luma([(x * 2000 + y) as u16])
        });
        let mut buf = std::io::Cursor::new(Vec::new());
        img.write_to(&mut buf, image::ImageFormat::Png).unwrap();
        buf.into_inner()
    };
    let gray8 = png(32, 32, 0, None, &[0u8; 33 * 32]);
    let rgba = png(
        32,
        32,
        6,
        None,
        &[[0u8].as_slice(), &[200; 128]].concat().repeat(32),
    );
    let palette_rows: Vec<u8> = (0..32)
        .flat_map(|y| std::iter::once(0u8).chain((0..32).map(move |x| ((x + y) % 4) as u8)))
        .collect();
    let palette = png(
        32,
        32,
        3,
        Some(&[255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9]),
        &palette_rows,
    );
    // A header that claims 60000 × 60000 RGB (10.8 GB decoded) over a few bytes of data.
    let huge = png(60000, 60000, 2, None, &[0u8; 64]);
    let os = |s: &str| OsString::from(s);
    vec![
        ("zero-byte JPEG", os("zero.jpg"), vec![], false),
        ("zero-byte PNG", os("zero.png"), vec![], false),
        (
            "truncated JPEG",
            os("cut.jpg"),
            good_jpg[..good_jpg.len() / 2].to_vec(),
            false,
        ),
        (
            "truncated PNG",
            os("cut.png"),
            good_png[..good_png.len() / 2].to_vec(),
            false,
        ),
        (
            "bit-flipped JPEG",
            os("flip.jpg"),
            flip_bits(good_jpg.clone()),
            false,
        ),
        (
            "bit-flipped PNG",
            os("flip.png"),
            flip_bits(good_png.clone()),
            false,
        ),
        (
            "not an image",
            os("text.png"),
            b"hello, I am text".to_vec(),
            false,
        ),
        ("60000x60000 PNG header", os("huge.png"), huge, false),
        ("16-bit grayscale PNG", os("gray16.png"), gray16, true),
        ("8-bit grayscale PNG", os("gray8.png"), gray8, true),
        ("RGBA PNG", os("rgba.png"), rgba, true),
        ("palette PNG", os("palette.png"), palette, true),
        (
            "unicode file name",
            os("猫-été.png"),
            good_png.clone(),
            true,
        ),
        (
            "non-UTF-8 file name",
            OsStr::from_bytes(b"bad-\xff\xfe.png").to_os_string(),
            good_png.clone(),
            true,
        ),
    ]
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Run the binary in `dir` under a 4 GB address-space limit and a time limit.
fn run(dir: &Path, args: &[&OsStr]) -> Outcome {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 4000000; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_pretext"))
        .args(args)
        .args(["--quiet", "--threads", "2"])
        .current_dir(dir)
        .env("PRETEXT_CACHE_DIR", dir.join("cache"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(180) {
            child.kill().unwrap();
            panic!("{args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[derive(Default)]
struct Tally {
    cases: usize,
    ok: usize,
    named_errors: usize,
    skipped_and_counted: usize,
    lines: Vec<String>,
}

impl Tally {
    /// Every outcome is exit 0 or a named error (exit 1, `error:` first, naming `name`
    /// when given); `must_succeed` cases must exit 0.
    fn judge(&mut self, case: &str, o: &Outcome, must_succeed: bool, name: Option<&str>) {
        self.cases += 1;
        let what = format!("{case}: exit {:?}\nstderr: {}", o.code, o.stderr);
        assert!(!o.stderr.contains("panicked"), "panic — {what}");
        match o.code {
            Some(0) => self.ok += 1,
            Some(1) if !must_succeed => {
                assert!(o.stderr.starts_with("error:"), "unnamed error — {what}");
                if let Some(n) = name {
                    assert!(o.stderr.contains(n), "error does not name {n} — {what}");
                }
                self.named_errors += 1;
            }
            _ => panic!("{what}"),
        }
        self.lines.push(format!(
            "{case}: {}",
            if o.code == Some(0) {
                "ok"
            } else {
                "named error"
            }
        ));
    }
}

fn os<S: AsRef<OsStr> + ?Sized>(s: &S) -> &OsStr {
    s.as_ref()
}

/// A labelled train/test tree of good 32×32 PNGs, and a small trained run on it.
fn good_run(dir: &Path) -> PathBuf {
    for split in ["train", "test"] {
        for class in ["a", "b"] {
            let d = dir.join("good").join(split).join(class);
            fs::create_dir_all(&d).unwrap();
            for i in 0..6u8 {
                fs::write(
                    d.join(format!("{i}.png")),
                    rgb_png(32, i * 40 + class.len() as u8),
                )
                .unwrap();
            }
        }
    }
    let o = run(
        dir,
        &[
            os("pretrain"),
            os("--data"),
            os("good"),
            os("--out"),
            os("run8"),
            os("--width"),
            os("8"),
            os("--epochs"),
            os("1"),
            os("--batch-size"),
            os("8"),
        ],
    );
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    dir.join("run8")
}

#[test]
fn hostile_files_get_a_named_error_or_a_count_never_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut t = Tally::default();
    let run8 = good_run(dir);

    // An embedding index of the good run, for `search`.
    let o = run(
        dir,
        &[
            os("embed"),
            os("--run"),
            os("run8"),
            os("--split"),
            os("test"),
            os("--out"),
            os("index.safetensors"),
        ],
    );
    assert_eq!(o.code, Some(0), "{}", o.stderr);

    for (case, file, bytes, decodable) in images() {
        // A flat folder: two good images and the hostile one.
        let folder = dir.join("img").join(case.replace(' ', "-"));
        fs::create_dir_all(&folder).unwrap();
        fs::write(folder.join("a-good.png"), rgb_png(32, 3)).unwrap();
        fs::write(folder.join("b-good.png"), rgb_png(32, 4)).unwrap();
        let path = folder.join(&file);
        fs::write(&path, &bytes).unwrap();
        let shown = path.file_name().unwrap().to_string_lossy().into_owned();
        let name = (!decodable).then_some(shown.as_str());

        let o = run(
            dir,
            &[
                os("data"),
                os("inspect"),
                folder.as_os_str(),
                os("--no-cache"),
            ],
        );
        t.judge(&format!("data inspect / {case}"), &o, decodable, name);
        let o = run(
            dir,
            &[
                os("data"),
                os("inspect"),
                folder.as_os_str(),
                os("--no-cache"),
                os("--skip-bad"),
            ],
        );
        t.judge(&format!("data inspect --skip-bad / {case}"), &o, true, None);
        if o.stdout.contains("skipped") {
            t.skipped_and_counted += 1;
            assert!(o.stdout.contains("1 image(s) skipped"), "{}", o.stdout);
        }
        let o = run(
            dir,
            &[
                os("search"),
                os("--index"),
                os("index.safetensors"),
                os("--query"),
                path.as_os_str(),
                os("--k"),
                os("2"),
                os("--out"),
                os("sheet.png"),
            ],
        );
        t.judge(&format!("search --query / {case}"), &o, decodable, name);
    }

    // Pretraining on a folder with a broken first file: named without --skip-bad,
    // skipped and counted with it.
    let broken = dir.join("img/zero-byte-JPEG");
    let pre = |extra: &[&str]| {
        let mut args = vec![
            os("pretrain"),
            os("--data"),
            broken.as_os_str(),
            os("--out"),
            os("pre"),
            os("--width"),
            os("8"),
            os("--epochs"),
            os("1"),
            os("--no-cache"),
        ];
        args.extend(extra.iter().map(os));
        let _ = fs::remove_dir_all(dir.join("pre"));
        run(dir, &args)
    };
    t.judge(
        "pretrain / zero-byte JPEG",
        &pre(&[]),
        false,
        Some("zero.jpg"),
    );
    assert!(!dir.join("pre").exists());
    let o = pre(&["--skip-bad"]);
    t.judge("pretrain --skip-bad / zero-byte JPEG", &o, true, None);

    // A symbolic-link loop in a folder, and a file that cannot be read.
    let odd = dir.join("odd");
    fs::create_dir_all(&odd).unwrap();
    fs::write(odd.join("a.png"), rgb_png(32, 5)).unwrap();
    std::os::unix::fs::symlink(odd.join("loop-b.png"), odd.join("loop-a.png")).unwrap();
    std::os::unix::fs::symlink(odd.join("loop-a.png"), odd.join("loop-b.png")).unwrap();
    let o = run(
        dir,
        &[os("data"), os("inspect"), odd.as_os_str(), os("--no-cache")],
    );
    t.judge("data inspect / symbolic-link loop", &o, false, None);
    let locked = dir.join("locked");
    fs::create_dir_all(&locked).unwrap();
    fs::write(locked.join("a.png"), rgb_png(32, 6)).unwrap();
    fs::write(locked.join("b.png"), rgb_png(32, 7)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(locked.join("b.png"), fs::Permissions::from_mode(0o000)).unwrap();
    let readable = fs::read(locked.join("b.png")).is_ok(); // root reads anything
    let o = run(
        dir,
        &[
            os("data"),
            os("inspect"),
            locked.as_os_str(),
            os("--no-cache"),
        ],
    );
    t.judge(
        &format!(
            "data inspect / unreadable file{}",
            if readable { " (readable as root)" } else { "" }
        ),
        &o,
        readable,
        (!readable).then_some("b.png"),
    );

    // Binary releases: truncated, over-long, a label out of range.
    let bin = |name: &str, files: &[(&str, Vec<u8>)]| {
        let d = dir.join("bin").join(name);
        fs::create_dir_all(&d).unwrap();
        for (f, b) in files {
            fs::write(d.join(f), b).unwrap();
        }
        d
    };
    let mut rec = vec![3u8];
    rec.extend(vec![128u8; 3072]);
    for (case, d, file) in [
        (
            "CIFAR-10 truncated",
            bin("c-cut", &[("test_batch.bin", rec[..3000].to_vec())]),
            "test_batch.bin",
        ),
        (
            "CIFAR-10 over-long",
            bin(
                "c-long",
                &[("test_batch.bin", [rec.clone(), vec![0; 100]].concat())],
            ),
            "test_batch.bin",
        ),
        (
            "CIFAR-10 label 200",
            bin(
                "c-label",
                &[("test_batch.bin", [vec![200u8], rec[1..].to_vec()].concat())],
            ),
            "test_batch.bin",
        ),
        (
            "STL-10 label 11",
            bin(
                "s-label",
                &[("test_X.bin", vec![9u8; 27648]), ("test_y.bin", vec![11u8])],
            ),
            "test_y.bin",
        ),
        (
            "STL-10 over-long",
            bin(
                "s-long",
                &[
                    ("test_X.bin", vec![9u8; 27648 + 5]),
                    ("test_y.bin", vec![1u8]),
                ],
            ),
            "test_X.bin",
        ),
    ] {
        let o = run(
            dir,
            &[os("data"), os("inspect"), d.as_os_str(), os("--no-cache")],
        );
        t.judge(&format!("data inspect / {case}"), &o, false, Some(file));
    }

    // Configuration and checkpoints.
    fs::write(
        dir.join("bad-task.toml"),
        "[task]\nname = \"rotation\"\nangles = \"eight\"\n",
    )
    .unwrap();
    let o = run(
        dir,
        &[
            os("pretrain"),
            os("--data"),
            os("good"),
            os("--out"),
            os("x"),
            os("--task-config"),
            os("bad-task.toml"),
        ],
    );
    t.judge(
        "pretrain / task config with a wrong type",
        &o,
        false,
        Some("bad-task.toml"),
    );
    let copy = |name: &str| {
        let d = dir.join(name);
        let status = Command::new("cp")
            .arg("-r")
            .arg(&run8)
            .arg(&d)
            .status()
            .unwrap();
        assert!(status.success());
        d
    };
    let garbage = copy("garbage-config");
    fs::write(garbage.join("config.toml"), "this is = [not a run").unwrap();
    let cut = copy("cut-checkpoint");
    let model = cut.join("checkpoints/epoch-0001/model.bpk");
    let bytes = fs::read(&model).unwrap();
    fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    // Another backbone's weights under this run's name (width 16 instead of 8).
    let o = run(
        dir,
        &[
            os("pretrain"),
            os("--data"),
            os("good"),
            os("--out"),
            os("run16"),
            os("--width"),
            os("16"),
            os("--epochs"),
            os("1"),
            os("--batch-size"),
            os("8"),
        ],
    );
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let foreign = copy("foreign-checkpoint");
    fs::copy(
        dir.join("run16/checkpoints/epoch-0001/model.bpk"),
        foreign.join("checkpoints/epoch-0001/model.bpk"),
    )
    .unwrap();
    for (case, run_dir, file) in [
        ("garbage config.toml", "garbage-config", "config.toml"),
        ("truncated checkpoint", "cut-checkpoint", "model.bpk"),
        (
            "checkpoint of another backbone",
            "foreign-checkpoint",
            "model.bpk",
        ),
    ] {
        for cmd in [
            vec![
                os("eval"),
                os("--run"),
                os(run_dir),
                os("--probe-epochs"),
                os("1"),
            ],
            vec![
                os("embed"),
                os("--run"),
                os(run_dir),
                os("--out"),
                os("e.safetensors"),
            ],
            vec![
                os("finetune"),
                os("--run"),
                os(run_dir),
                os("--fractions"),
                os("0.5"),
                os("--epochs"),
                os("1"),
            ],
            vec![
                os("pretrain"),
                os("--resume"),
                os("--out"),
                os(run_dir),
                os("--epochs"),
                os("2"),
            ],
        ] {
            let o = run(dir, &cmd);
            t.judge(
                &format!("{} / {case}", cmd[0].to_string_lossy()),
                &o,
                false,
                Some(file),
            );
        }
    }
    // An embedding index that is not one, and an evaluation file that is not one.
    fs::write(dir.join("noise.safetensors"), [7u8; 100]).unwrap();
    let o = run(
        dir,
        &[
            os("search"),
            os("--index"),
            os("noise.safetensors"),
            os("--query"),
            os("good/test/a/0.png"),
        ],
    );
    t.judge(
        "search / an index that is noise",
        &o,
        false,
        Some("noise.safetensors"),
    );
    let broken_eval = copy("broken-eval");
    fs::create_dir_all(broken_eval.join("eval")).unwrap();
    fs::write(broken_eval.join("eval/eval.json"), "{\"method\": 3").unwrap();
    let o = run(
        dir,
        &[os("report"), os("broken-eval"), os("--out"), os("rep")],
    );
    t.judge("report / a broken eval.json", &o, false, Some("eval.json"));

    eprintln!(
        "hostile input: {} cases, {} ok, {} named errors ({} skipped and counted under --skip-bad)",
        t.cases, t.ok, t.named_errors, t.skipped_and_counted
    );
    for l in &t.lines {
        eprintln!("  {l}");
    }
    assert!(t.cases >= 60, "{} cases", t.cases);
    assert!(t.skipped_and_counted >= 7, "{}", t.skipped_and_counted);
}
