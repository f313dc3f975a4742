//! Preview sheets: a grid of CHW float images (in [0, 1]) with short numeric captions,
//! written as PNG so a person can check by eye what the network is asked to solve.

use std::path::Path;

use image::{Rgb, RgbImage};

/// 3×5 bitmaps for captions and plot labels: digits, letters (upper case; lower case is
/// drawn as upper), and a little punctuation.
pub fn glyph(ch: char) -> [u8; 5] {
    match ch.to_ascii_uppercase() {
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b010, 0b010, 0b010],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        'A' => [0b010, 0b101, 0b111, 0b101, 0b101],
        'B' => [0b110, 0b101, 0b110, 0b101, 0b110],
        'C' => [0b011, 0b100, 0b100, 0b100, 0b011],
        'D' => [0b110, 0b101, 0b101, 0b101, 0b110],
        'E' => [0b111, 0b100, 0b110, 0b100, 0b111],
        'F' => [0b111, 0b100, 0b110, 0b100, 0b100],
        'G' => [0b011, 0b100, 0b101, 0b101, 0b011],
        'H' => [0b101, 0b101, 0b111, 0b101, 0b101],
        'I' => [0b111, 0b010, 0b010, 0b010, 0b111],
        'J' => [0b001, 0b001, 0b001, 0b101, 0b010],
        'K' => [0b101, 0b101, 0b110, 0b101, 0b101],
        'L' => [0b100, 0b100, 0b100, 0b100, 0b111],
        'M' => [0b101, 0b111, 0b111, 0b101, 0b101],
        'N' => [0b110, 0b101, 0b101, 0b101, 0b101],
        'O' => [0b010, 0b101, 0b101, 0b101, 0b010],
        'P' => [0b110, 0b101, 0b110, 0b100, 0b100],
        'Q' => [0b010, 0b101, 0b101, 0b110, 0b011],
        'R' => [0b110, 0b101, 0b110, 0b101, 0b101],
        'S' => [0b011, 0b100, 0b010, 0b001, 0b110],
        'T' => [0b111, 0b010, 0b010, 0b010, 0b010],
        'U' => [0b101, 0b101, 0b101, 0b101, 0b111],
        'V' => [0b101, 0b101, 0b101, 0b101, 0b010],
        'W' => [0b101, 0b101, 0b111, 0b111, 0b101],
        'X' => [0b101, 0b101, 0b010, 0b101, 0b101],
        'Y' => [0b101, 0b101, 0b010, 0b010, 0b010],
        'Z' => [0b111, 0b001, 0b010, 0b100, 0b111],
        '-' => [0, 0, 0b111, 0, 0],
        '.' => [0, 0, 0, 0, 0b010],
        ':' => [0, 0b010, 0, 0b010, 0],
        '%' => [0b101, 0b001, 0b010, 0b100, 0b101],
        '/' => [0b001, 0b001, 0b010, 0b100, 0b100],
        '(' => [0b001, 0b010, 0b010, 0b010, 0b001],
        ')' => [0b100, 0b010, 0b010, 0b010, 0b100],
        '=' => [0, 0b111, 0, 0b111, 0],
        '°' => [0b010, 0b101, 0b010, 0, 0],
        _ => [0; 5],
    }
}

/// Draw `text` with its top-left at (`x`, `y`), each glyph pixel `scale`×`scale`, 4·scale
/// apart; pixels outside the image are skipped.
pub fn draw_text(img: &mut RgbImage, x: usize, y: usize, text: &str, scale: usize, color: Rgb<u8>) {
    for (i, ch) in text.chars().enumerate() {
        for (gy, bits) in glyph(ch).iter().enumerate() {
            for gx in 0..3 {
                if bits >> (2 - gx) & 1 == 1 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            let (px, py) = (x + (i * 4 + gx) * scale + dx, y + gy * scale + dy);
                            if px < img.width() as usize && py < img.height() as usize {
                                img.put_pixel(px as u32, py as u32, color);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One cell of a sheet: a CHW image in [0, 1] (1 or 3 channels) and its caption.
pub struct Cell {
    pub chw: Vec<f32>,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub caption: String,
}

impl Cell {
    /// A square `side × side` image without a caption.
    pub fn plain(chw: Vec<f32>, c: usize, side: usize) -> Self {
        Self {
            chw,
            c,
            h: side,
            w: side,
            caption: String::new(),
        }
    }
}

/// Lay `rows` of cells out on a dark background, each image scaled by `scale`, captions
/// (one or more lines) under.
pub fn sheet(rows: &[Vec<Cell>], scale: usize) -> RgbImage {
    let pad = 4;
    let lines = rows
        .iter()
        .flatten()
        .map(|c| c.caption.lines().count())
        .max()
        .unwrap_or(1)
        .max(1);
    let text_h = (5 * 2 + 4) * lines;
    let cell_w = rows
        .iter()
        .flatten()
        .map(|c| c.w * scale)
        .max()
        .unwrap_or(1)
        + pad;
    let cell_h = rows
        .iter()
        .flatten()
        .map(|c| c.h * scale)
        .max()
        .unwrap_or(1)
        + text_h
        + pad;
    let cols = rows.iter().map(Vec::len).max().unwrap_or(1);
    let mut img = RgbImage::from_pixel(
        (cols * cell_w + pad) as u32,
        (rows.len() * cell_h + pad) as u32,
        Rgb([24, 24, 24]),
    );
    for (r, row) in rows.iter().enumerate() {
        for (k, cell) in row.iter().enumerate() {
            let (x0, y0) = (pad + k * cell_w, pad + r * cell_h);
            let plane = cell.h * cell.w;
            for y in 0..cell.h * scale {
                for x in 0..cell.w * scale {
                    let p = (y / scale) * cell.w + x / scale;
                    let px = |ch: usize| {
                        let ch = if cell.c == 1 { 0 } else { ch };
                        (cell.chw[ch * plane + p].clamp(0.0, 1.0) * 255.0).round() as u8
                    };
                    img.put_pixel((x0 + x) as u32, (y0 + y) as u32, Rgb([px(0), px(1), px(2)]));
                }
            }
            for (i, line) in cell.caption.lines().enumerate() {
                let ty = y0 + cell.h * scale + 3 + i * (5 * 2 + 4);
                draw_text(&mut img, x0, ty, line, 2, Rgb([240, 240, 240]));
            }
        }
    }
    img
}

pub fn save(img: &RgbImage, path: &Path) -> anyhow::Result<()> {
    crate::util::fsutil::atomic_write(path, |tmp| {
        img.save_with_format(tmp, image::ImageFormat::Png)
            .map_err(anyhow::Error::from)
    })
}
