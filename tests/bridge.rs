//! The PyTorch bridge on a real run: `export` writes the backbone in torchvision's names
//! with a reference input and pretext's feature maps for it; `import` of that file makes a
//! run whose network gives those very maps, and which `eval` measures exactly like the run
//! it came from. A checkpoint of another architecture is refused before anything is made.

mod common;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::SafeTensors;

use pretext::commands::bridge::{self, ImportNormalize, ImportRequest};
use pretext::eval::evaluate_run;
use pretext::models::Arch;
use pretext::run::{RunConfig, load_backbone};

fn floats(st: &SafeTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = st.tensor(name).unwrap();
    let v = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (t.shape().to_vec(), v)
}

#[test]
fn an_exported_backbone_imports_back_and_measures_the_same() {
    let _serial = common::serial();
    let tmp = tempfile::tempdir().unwrap();
    let cache = common::cache_opts(&tmp.path().join("cache"));
    let dev = Device::flex();
    let run = tmp.path().join("run");
    common::small_run(&run, &cache, Arch::Resnet18Cifar, 8);

    let out = tmp.path().join("torch");
    let info = bridge::export(&run, &out, &dev).unwrap();
    // torchvision's names and shapes: a CIFAR-stem ResNet-18 of width 8 has 20
    // convolutions and 20 batch norms (5 entries each), and no classifier.
    assert_eq!(info.tensors, 120);
    let weights = std::fs::read(out.join(bridge::WEIGHTS)).unwrap();
    let st = SafeTensors::deserialize(&weights).unwrap();
    assert_eq!(floats(&st, "conv1.weight").0, [8, 3, 3, 3]);
    assert_eq!(floats(&st, "layer2.0.downsample.0.weight").0, [16, 8, 1, 1]);
    assert_eq!(floats(&st, "layer4.1.bn2.running_var").0, [64]);
    assert!(st.names().iter().all(|n| !n.starts_with("fc.")));
    let (_, header) = SafeTensors::read_metadata(&weights).unwrap();
    let meta = header.metadata().clone().unwrap();
    assert_eq!(meta["format"], "pt");
    // The Python module carries the same configuration, as JSON it parses.
    let py = std::fs::read_to_string(out.join(bridge::PYTHON)).unwrap();
    let line = py.lines().find(|l| l.starts_with("CONFIG = ")).unwrap();
    let json = line
        .trim_start_matches("CONFIG = json.loads(r\"\"\"")
        .trim_end_matches("\"\"\")");
    let cfg: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(cfg["backbone"]["arch"], "resnet18-cifar");
    assert_eq!(cfg["taps"][4], "layer4");
    assert_eq!(serde_json::to_string(&cfg).unwrap(), {
        let m: serde_json::Value = serde_json::from_str(&meta["pretext"]).unwrap();
        serde_json::to_string(&m).unwrap()
    });

    // A CIFAR-stem checkpoint named as an ImageNet-stem ResNet: refused, nothing made.
    let wrong = tmp.path().join("wrong");
    let exported = out.join(bridge::WEIGHTS);
    let mut req = ImportRequest {
        file: &exported,
        arch: Arch::Resnet18,
        out: &wrong,
        data: &common::cifar_root(),
        normalize: ImportNormalize::Auto,
        label: None,
    };
    let e = format!("{:#}", bridge::import(&req, &cache, &dev).err().unwrap());
    assert!(e.contains("resnet18-cifar"), "{e}");
    assert!(!wrong.exists());

    // The file as a torchvision checkpoint would hold it, classifier included.
    let mut tensors: Vec<(String, safetensors::tensor::TensorView)> = vec![];
    let fc = vec![0u8; 10 * 64 * 4];
    for n in st.names() {
        tensors.push((n.to_string(), st.tensor(n).unwrap()));
    }
    tensors.push((
        "fc.weight".into(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![10, 64], &fc).unwrap(),
    ));
    let tv = tmp.path().join("torchvision.safetensors");
    std::fs::write(&tv, safetensors::serialize(tensors, None).unwrap()).unwrap();
    let imported = tmp.path().join("imported");
    req.file = &tv;
    req.arch = Arch::Resnet18Cifar;
    req.out = &imported;
    req.normalize = ImportNormalize::Data;
    req.label = Some("from-torch");
    let got = bridge::import(&req, &cache, &dev).unwrap();
    assert_eq!(got.ignored, ["fc.weight"]);
    assert_eq!(
        got.loaded, 100,
        "the float entries: 20 convs + 20 × 4 batch-norm values"
    );
    let rc = RunConfig::load(&imported).unwrap();
    assert_eq!(rc.method(), "from-torch");
    assert_eq!(rc.backbone, RunConfig::load(&run).unwrap().backbone);
    // A second import into the same folder is refused.
    assert!(bridge::import(&req, &cache, &dev).is_err());

    // The imported network computes pretext's reference maps.
    let reference = std::fs::read(out.join(bridge::REFERENCE)).unwrap();
    let refs = SafeTensors::deserialize(&reference).unwrap();
    let (shape, x) = floats(&refs, "input");
    assert_eq!(shape, [2, 3, 32, 32]);
    let (net, epoch) = load_backbone(&rc, &imported, false, &dev).unwrap();
    assert_eq!(epoch, 0);
    let x = Tensor::<4>::from_data(TensorData::new(x, shape), &dev);
    let taps = net.valid().forward_all(x);
    for (name, t) in net.tap_names().iter().zip(taps) {
        let (shape, want) = floats(&refs, &format!("tap.{name}"));
        assert_eq!(t.dims().to_vec(), shape, "{name}");
        let got = t.into_data().try_into_vec::<f32>().unwrap();
        assert_eq!(got, want, "{name}");
    }

    // Evaluated like the run it came from: the same numbers, row for row (the exported
    // file records the run's normalization and method, which the import keeps).
    let same = tmp.path().join("same");
    req.file = &exported;
    req.out = &same;
    req.normalize = ImportNormalize::Auto;
    req.label = None;
    bridge::import(&req, &cache, &dev).unwrap();
    let data = common::cifar_root();
    let cfg = common::eval_config(Some(500), Some(300), 2, 512);
    let (a, _) = evaluate_run(&run, &data, false, &cfg, &cache, &dev, false).unwrap();
    let (b, _) = evaluate_run(&same, &data, false, &cfg, &cache, &dev, false).unwrap();
    assert_eq!(a.method, "rotation");
    assert_eq!(b.method, "rotation (imported)");
    assert_eq!(RunConfig::load(&same).unwrap().task.name(), "imported");
    assert_eq!(a.rows, b.rows);

    // A run trained on centre crops smaller than the images is evaluated on those crops
    // after the round trip too (an import once took the whole image).
    let cropped = tmp.path().join("cropped");
    let mut spec = common::pretrain_spec(&data, "rotation");
    spec.width = Some(8);
    spec.train_images = Some(128);
    spec.epochs = 1;
    spec.crop = Some(24);
    pretext::run::Pretrain {
        run: &cropped,
        device: &dev,
        progress: false,
        stop_after: None,
        cache: &cache,
        timing: None,
    }
    .run(Some(spec.resolve(&cache).unwrap()), false)
    .unwrap();
    let torch24 = tmp.path().join("torch24");
    bridge::export(&cropped, &torch24, &dev).unwrap();
    let file24 = torch24.join(bridge::WEIGHTS);
    let back = tmp.path().join("cropped-back");
    req.file = &file24;
    req.arch = Arch::Nin;
    req.out = &back;
    bridge::import(&req, &cache, &dev).unwrap();
    assert_eq!(RunConfig::load(&back).unwrap().augment.crop, 24);
    let small = common::eval_config(Some(300), Some(100), 1, 256);
    let (a, _) = evaluate_run(&cropped, &data, false, &small, &cache, &dev, false).unwrap();
    let (b, _) = evaluate_run(&back, &data, false, &small, &cache, &dev, false).unwrap();
    assert_eq!(a.rows, b.rows);

    // From the command line, with the same reference for the same network and input.
    let again = tmp.path().join("again");
    let said = common::pretext_cli(
        tmp.path(),
        &[
            "export",
            "--run",
            same.to_str().unwrap(),
            "--out",
            again.to_str().unwrap(),
        ],
    );
    assert!(said.contains("120 tensors in PyTorch's names"), "{said}");
    let twice = std::fs::read(again.join(bridge::REFERENCE)).unwrap();
    let twice = SafeTensors::deserialize(&twice).unwrap();
    assert_eq!(twice.len(), refs.len());
    for n in refs.names() {
        assert_eq!(
            twice.tensor(n).unwrap().data(),
            refs.tensor(n).unwrap().data(),
            "{n}"
        );
    }
    // A NIN file without pretext's metadata has no known input statistics: refused unless
    // told.
    let bare = tmp.path().join("bare.safetensors");
    let st24 = std::fs::read(&file24).unwrap();
    let st24 = SafeTensors::deserialize(&st24).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView)> = st24
        .names()
        .into_iter()
        .map(|n| (n.to_string(), st24.tensor(n).unwrap()))
        .collect();
    std::fs::write(&bare, safetensors::serialize(views, None).unwrap()).unwrap();
    let nowhere = tmp.path().join("nowhere");
    req.file = &bare;
    req.out = &nowhere;
    let e = format!("{:#}", bridge::import(&req, &cache, &dev).err().unwrap());
    assert!(
        e.contains("pass --normalize imagenet or --normalize data"),
        "{e}"
    );
    assert!(!nowhere.exists());
}
