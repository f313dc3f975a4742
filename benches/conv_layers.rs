//! Each convolution layer of a bench network alone: forward, input gradient and weight
//! gradient on our kernels (`src/cpu/conv/kernel.rs`), batch 128, median of 5 calls. Run
//! by hand, beside `bench/pytorch/conv_layers.py` (the same layers in PyTorch) in the same
//! sitting, to see which layer and which pass is behind:
//!
//!     cargo bench --bench conv_layers -- [alexnet|resnet18-cifar|resnet18|nin<width>] [threads] [ab]
//!
//! With `ab`, each pass runs on our GEMM and on the `gemm` crate's in turns (each pinned
//! for every layer, whatever the default rules would pick: `kernel::pin_gemm`), 7 rounds
//! (the order swapped every round), and the table gives both medians and the median of the
//! rounds' ratios (ours ÷ crate): this machine drifts by more between runs than the two
//! GEMMs differ, and pairs timed seconds apart cancel most of the drift.
//!
//! `pretext bench` times whole training steps; this one says where in them the time goes.

use std::time::Instant;

use pretext::cpu::conv::kernel::{self, Gemm, Geometry};

// The same allocator as the `pretext` binary: glibc's hands large buffers back to the
// kernel and faults them in again on every call, which would be timed here too.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// (input channels, input side, output channels, kernel, stride, padding) per layer, at the
/// bench's 32-pixel inputs.
fn layers(network: &str) -> Option<Vec<[usize; 6]>> {
    if let Some(width) = network.strip_prefix("nin") {
        return width.parse().ok().filter(|&w| w > 0).map(nin);
    }
    Some(match network {
        "alexnet" => vec![
            [3, 32, 64, 5, 1, 2],
            [64, 16, 192, 5, 1, 2],
            [192, 8, 384, 3, 1, 1],
            [384, 8, 256, 3, 1, 1],
            [256, 8, 256, 3, 1, 1],
        ],
        "resnet18-cifar" => vec![
            [64, 32, 64, 3, 1, 1],
            [128, 16, 128, 3, 1, 1],
            [256, 8, 256, 3, 1, 1],
            [512, 4, 512, 3, 1, 1],
        ],
        "resnet18" => vec![
            [3, 32, 64, 7, 2, 3],
            [64, 8, 64, 3, 1, 1],
            [128, 4, 128, 3, 1, 1],
            [256, 2, 256, 3, 1, 1],
            [512, 1, 512, 3, 1, 1],
        ],
        _ => return None,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Deterministic values in [-0.5, 0.5).
fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 + seed * 104729) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

fn main() {
    // `cargo bench` passes `--bench` first; the rest are ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let network = args.first().map_or("alexnet", String::as_str);
    let threads: usize = args
        .get(1)
        .map_or(2, |t| t.parse().expect("threads: a number"));
    let ab = args.get(2).is_some_and(|a| a == "ab");
    let Some(layers) = layers(network) else {
        eprintln!("unknown network {network:?}: alexnet, resnet18-cifar, resnet18 or nin<width>");
        std::process::exit(2);
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("the first rayon pool");
    if ab {
        return compare(network, &layers, threads);
    }
    println!("{network}, batch 128, {threads} threads, median of 5 (ms, and GFLOP/s)");
    println!("| layer | forward | input gradient | weight gradient |");
    println!("|---|---|---|---|");
    let mut total = [0.0; 3];
    for layer in layers {
        let (g, [x, w, dy]) = setup(layer);
        let [c_in, side, c_out, k, stride, _] = layer;
        let flop = 2.0 * (g.batch * c_out * g.out_h() * g.out_w() * c_in * k * k) as f64;
        let mut times = [vec![], vec![], vec![]];
        for _ in 0..5 {
            let t = Instant::now();
            std::hint::black_box(kernel::forward(&x, &w, &g));
            times[0].push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            std::hint::black_box(kernel::grad_input(&w, &dy, &g));
            times[1].push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            std::hint::black_box(kernel::grad_weight(&x, &dy, &g));
            times[2].push(t.elapsed().as_secs_f64());
        }
        let cells: Vec<String> = times
            .into_iter()
            .zip(&mut total)
            .map(|(t, sum)| {
                let m = median(t);
                *sum += m;
                format!("{:.1} ({:.0})", m * 1e3, flop / m / 1e9)
            })
            .collect();
        println!(
            "| {c_in}→{c_out} {k}×{k}/{stride} on {side}×{side} | {} |",
            cells.join(" | ")
        );
    }
    let [f, dx, dw] = total.map(|t| format!("{:.1}", t * 1e3));
    println!("| all | {f} | {dx} | {dw} |");
}

/// RotNet's NIN at `width` with the bench's 4 blocks (`src/models/nin.rs`): 5×5, 1×1,
/// 1×1 on 32×32; the same on 16×16; then two blocks of 3×3, 1×1, 1×1 on 8×8.
fn nin(width: usize) -> Vec<[usize; 6]> {
    let (w1, w2, w3) = (width, (width * 160 / 192).max(1), (width / 2).max(1));
    let mut v = vec![
        [3, 32, w1, 5, 1, 2],
        [w1, 32, w2, 1, 1, 0],
        [w2, 32, w3, 1, 1, 0],
        [w3, 16, w1, 5, 1, 2],
        [w1, 16, w1, 1, 1, 0],
        [w1, 16, w1, 1, 1, 0],
    ];
    for _ in 0..2 {
        v.extend([
            [w1, 8, w1, 3, 1, 1],
            [w1, 8, w1, 1, 1, 0],
            [w1, 8, w1, 1, 1, 0],
        ]);
    }
    v
}

/// A layer's geometry at batch 128, and its input, weight and output gradient.
fn setup([c_in, side, c_out, k, stride, pad]: [usize; 6]) -> (Geometry, [Vec<f32>; 3]) {
    let g = Geometry {
        batch: 128,
        c_in,
        h: side,
        w: side,
        c_out,
        kh: k,
        kw: k,
        stride: [stride, stride],
        pad: [pad, pad],
    };
    let ohw = g.out_h() * g.out_w();
    let x = values(g.batch * c_in * side * side, 1);
    let w = values(c_out * c_in * k * k, 2);
    let dy = values(g.batch * c_out * ohw, 3);
    (g, [x, w, dy])
}

/// The `ab` table: each pass of each layer on both GEMMs in turns (see the header).
fn compare(network: &str, layers: &[[usize; 6]], threads: usize) {
    const ROUNDS: usize = 7;
    println!(
        "{network}, batch 128, {threads} threads, {ROUNDS} rounds of ours and the crate's in turns: \
         median ms ours / crate (median ratio)"
    );
    println!("| layer | forward | input gradient | weight gradient |");
    println!("|---|---|---|---|");
    let mut totals = [[0.0; 2]; 3];
    for &layer in layers {
        let (g, [x, w, dy]) = setup(layer);
        let passes: [&dyn Fn(); 3] = [
            &|| drop(std::hint::black_box(kernel::forward(&x, &w, &g))),
            &|| drop(std::hint::black_box(kernel::grad_input(&w, &dy, &g))),
            &|| drop(std::hint::black_box(kernel::grad_weight(&x, &dy, &g))),
        ];
        let mut cells = vec![];
        for (pass, total) in passes.iter().zip(&mut totals) {
            let mut t = [vec![], vec![]];
            let mut ratios = vec![];
            for round in 0..ROUNDS {
                let mut pair = [0.0; 2];
                for i in [round % 2, 1 - round % 2] {
                    kernel::pin_gemm(Some([Gemm::Ours, Gemm::Crate][i]));
                    let start = Instant::now();
                    pass();
                    pair[i] = start.elapsed().as_secs_f64();
                    t[i].push(pair[i]);
                }
                ratios.push(pair[0] / pair[1]);
            }
            let [ours, theirs] = t.map(median);
            total[0] += ours;
            total[1] += theirs;
            cells.push(format!(
                "{:.1} / {:.1} ({:.2})",
                ours * 1e3,
                theirs * 1e3,
                median(ratios)
            ));
        }
        kernel::pin_gemm(None);
        let [c_in, side, c_out, k, stride, _] = layer;
        println!(
            "| {c_in}→{c_out} {k}×{k}/{stride} on {side}×{side} | {} |",
            cells.join(" | ")
        );
    }
    let cells = totals.map(|[a, b]| format!("{:.1} / {:.1} ({:.2})", a * 1e3, b * 1e3, a / b));
    println!("| sum of medians | {} |", cells.join(" | "));
}
