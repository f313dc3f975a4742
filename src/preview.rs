//! Preview sheets: a grid of CHW float images (in [0, 1]) with short numeric captions,
//! written as PNG so a person can check by eye what the network is asked to solve.

use std::path::Path;

use image::{Rgb, RgbImage};

/// 3×5 bitmaps for the characters captions use (digits, minus, degree sign, space).
fn glyph(ch: char) -> [u8; 5] {
    match ch {
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
        '-' => [0, 0, 0b111, 0, 0],
        '.' => [0, 0, 0, 0, 0b010],
        '°' => [0b010, 0b101, 0b010, 0, 0],
        _ => [0; 5],
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

/// Lay `rows` of cells out on a dark background, each image scaled by `scale`, captions under.
pub fn sheet(rows: &[Vec<Cell>], scale: usize) -> RgbImage {
    let pad = 4;
    let text_h = 5 * 2 + 4;
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
            let ty = y0 + cell.h * scale + 3;
            for (i, ch) in cell.caption.chars().enumerate() {
                let g = glyph(ch);
                for (gy, bits) in g.iter().enumerate() {
                    for gx in 0..3 {
                        if bits >> (2 - gx) & 1 == 1 {
                            for dy in 0..2 {
                                for dx in 0..2 {
                                    let (px, py) = (x0 + i * 8 + gx * 2 + dx, ty + gy * 2 + dy);
                                    if px < img.width() as usize && py < img.height() as usize {
                                        img.put_pixel(px as u32, py as u32, Rgb([240, 240, 240]));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    img
}

pub fn save(img: &RgbImage, path: &Path) -> anyhow::Result<()> {
    crate::fsutil::atomic_write(path, |tmp| {
        img.save_with_format(tmp, image::ImageFormat::Png)
            .map_err(anyhow::Error::from)
    })
}
