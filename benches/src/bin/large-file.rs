//! Writes the large-file bench's inputs, streaming (a few MiB of memory at any size):
//!
//! ```text
//! large-file SIZE VARIANT OUT              one file of SIZE bytes (suffixes K M G: powers of 1024)
//! large-file SIZE VARIANT OUT --files N    a folder OUT of N files that total SIZE
//! ```
//!
//! - `new`: the base version. Each 1 MiB block is, by a seeded draw, either random bytes (4 in
//!   10: already-compressed data) or sensor log lines with random readings (6 in 10), so zstd
//!   compresses the whole to about half.
//! - `scattered`: `new` with 1% of its bytes changed in scattered places: one 4 KiB run of new
//!   random bytes at a seeded offset in every 400 KiB.
//! - `insert`: `scattered` with 1 MiB of new random bytes inserted at 1 MiB (everything after it
//!   shifted). The variants build on each other, as a file that keeps changing does.
//!
//! A folder of N files (`--files`): file k holds its own blocks (those after file k-1's) and its
//! own scattered changes; the 1 MiB goes into the first file only, as an edit of one file of
//! a tree does.
//!
//! The same arguments give the same bytes on every run and machine.

use std::io::{BufWriter, Write};

const BLOCK: u64 = 1 << 20;
const RUN: u64 = 4096;
const STRETCH: u64 = 100 * RUN;

/// splitmix64: a fixed, portable generator, so the inputs never depend on a crate's version.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Block `i` of the base version.
fn block(i: u64, out: &mut Vec<u8>) {
    out.clear();
    let mut rng = Rng(i.wrapping_mul(0xA076_1D64_78BD_642F) ^ 0x1234);
    if rng.next() % 10 < 4 {
        out.resize(BLOCK as usize, 0);
        rng.fill(out);
        return;
    }
    let mut seq = i * 20_000;
    while (out.len() as u64) < BLOCK {
        let r = rng.next();
        let line = format!(
            "2026-11-30T{:02}:{:02}:{:02}.{:03}Z node-{:04} temp={}.{:03} volt={}.{:03} seq={}\n",
            (r >> 8) % 24,
            (r >> 16) % 60,
            (r >> 24) % 60,
            (r >> 32) % 1000,
            (r >> 42) % 64,
            (r >> 48) % 90,
            (r >> 12) % 1000,
            (r >> 52) % 16,
            (r >> 2) % 1000,
            seq
        );
        seq += 1;
        out.extend_from_slice(line.as_bytes());
    }
    out.truncate(BLOCK as usize);
}

fn parse_size(s: &str) -> Option<u64> {
    let (num, mult) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1 << 10),
        'M' | 'm' => (&s[..s.len() - 1], 1 << 20),
        'G' | 'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok().map(|n| n * mult)
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: large-file SIZE new|scattered|insert OUT [--files N]";
    let (Some(size), Some(variant), Some(out)) = (
        args.get(1).and_then(|s| parse_size(s)),
        args.get(2),
        args.get(3),
    ) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let files = match (args.get(4).map(String::as_str), args.get(5)) {
        (None, _) => None,
        (Some("--files"), Some(n)) => n.parse::<u64>().ok().filter(|&n| n > 0),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    if !matches!(variant.as_str(), "new" | "scattered" | "insert") {
        eprintln!("{usage}");
        std::process::exit(2);
    }
    let Some(files) = files else {
        return write_file(std::path::Path::new(out), size, variant, 0, 0xC0FFEE, true);
    };
    let dir = std::path::Path::new(out);
    std::fs::create_dir_all(dir)?;
    let each = size / files;
    let blocks = each.div_ceil(BLOCK);
    for k in 0..files {
        let name = dir.join(format!("f{k:05}.bin"));
        write_file(&name, each, variant, k * blocks, 0xC0FFEE ^ k, k == 0)?;
    }
    Ok(())
}

/// Writes one file of `size` bytes from block `first` on, with its changes drawn from `seed`
/// and, for `insert`, the 1 MiB inserted when `insert_here`.
fn write_file(
    out: &std::path::Path,
    size: u64,
    variant: &str,
    first: u64,
    seed: u64,
    insert_here: bool,
) -> std::io::Result<()> {
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(out)?);
    let mut changes = Rng(seed);
    let mut buf = Vec::with_capacity(BLOCK as usize + 200);
    let mut written = 0u64;
    let mut i = 0u64;
    // The run to change in the current 400 KiB stretch: (stretch index, offset in it).
    let mut run_at = (u64::MAX, 0u64);
    while written < size {
        block(first + i, &mut buf);
        let take = (size - written).min(BLOCK) as usize;
        let data = &mut buf[..take];
        if variant != "new" {
            let start = i * BLOCK;
            for (k, byte) in data.iter_mut().enumerate() {
                let at = start + k as u64;
                let stretch = at / STRETCH;
                if run_at.0 != stretch {
                    run_at = (stretch, changes.next() % (STRETCH - RUN));
                }
                let off = at % STRETCH;
                if off >= run_at.1 && off < run_at.1 + RUN {
                    *byte = (changes.next() >> 7) as u8;
                }
            }
        }
        if variant == "insert" && insert_here && i == 1 {
            let mut new = vec![0u8; BLOCK as usize];
            Rng(0xFEED).fill(&mut new);
            w.write_all(&new)?;
        }
        w.write_all(data)?;
        written += take as u64;
        i += 1;
    }
    w.flush()
}
