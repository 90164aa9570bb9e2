//! Sparse files: a file's holes (stretches the file system stores as nothing, which read as
//! zeros) are neither read, sent nor written out. A pod's 5 GB file of holes with a few
//! megabytes of data costs a few megabytes of reads, a few bytes on the wire and a few
//! megabytes of disk at the other end.
//!
//! - [`next_hole`]: where the next hole is (Linux: `lseek` with `SEEK_HOLE`/`SEEK_DATA`;
//!   elsewhere, or on a file system that cannot tell, none: every byte is read, and runs of
//!   zeros in what is read are still found, by [`zero_runs`]).
//! - [`walk`]: a file's bytes in order, holes given as lengths, never read; [`hash`] on it.
//! - [`SparseReader`]: a file as the pack encoder reads a target, passing over holes.
//! - [`copy`]: a copy that keeps holes, and makes holes of blocks of zeros.
//!
//! Holes are only ever an optimisation: a hole reads as zeros, so whoever hashes a hole hashes
//! zeros ([`hash_zeros`], from a static buffer), and content ids stay those of the bytes.

use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::fs::FileExt;

/// A static buffer of zeros: holes are hashed and compared from it, never allocated.
pub static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// The block a hole is made of on the receiving side: zero runs are looked for in whole
/// blocks at offsets that are multiples of it (the common file system block), since a run that
/// covers no whole block cannot become a hole.
pub const BLOCK: u64 = 4096;

/// Bytes read at a time where a file is walked.
const WALK_BUF: usize = 256 * 1024;

/// The first hole of `file` at or after `from`, as offsets from the file's start; `None` when
/// there is none before the file's end, or the system cannot tell. The end of a file is not a
/// hole.
pub fn next_hole(file: &File, from: u64) -> io::Result<Option<Range<u64>>> {
    imp::next_hole(file, from)
}

#[cfg(target_os = "linux")]
mod imp {
    use std::fs::File;
    use std::io;
    use std::ops::Range;
    use std::os::fd::AsRawFd;

    /// `lseek(fd, from, whence)`; `None` for ENXIO (no such place before the end).
    fn seek(file: &File, from: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
        let Ok(from) = libc::off_t::try_from(from) else {
            return Ok(None);
        };
        // SAFETY: lseek on a descriptor the `File` owns and keeps open for the call. It moves
        // the descriptor's offset, which nothing here relies on: every read is positional.
        let at = unsafe { libc::lseek(file.as_raw_fd(), from, whence) };
        if at >= 0 {
            return Ok(Some(at as u64));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        }
    }

    pub(super) fn next_hole(file: &File, from: u64) -> io::Result<Option<Range<u64>>> {
        let start = match seek(file, from, libc::SEEK_HOLE) {
            Ok(Some(start)) => start,
            Ok(None) => return Ok(None),
            // A file system without SEEK_HOLE: no hole known, every byte is read.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        if start >= len {
            // The end of the file, which SEEK_HOLE reports when there is no hole before it.
            return Ok(None);
        }
        // No data after it: the hole runs to the end of the file.
        let end = seek(file, start, libc::SEEK_DATA)?.unwrap_or(len).min(len);
        Ok((end > start).then_some(start..end))
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::fs::File;
    use std::io;
    use std::ops::Range;

    /// No hole is known: every byte is read, and zero runs are found in what is read.
    pub(super) fn next_hole(_file: &File, _from: u64) -> io::Result<Option<Range<u64>>> {
        Ok(None)
    }
}

/// Feeds `n` zero bytes to `hasher`, from a static buffer: a hole's share of a content id.
pub fn hash_zeros(hasher: &mut blake3::Hasher, n: u64) {
    let mut left = n;
    while left > 0 {
        let step = left.min(ZEROS.len() as u64) as usize;
        hasher.update(&ZEROS[..step]);
        left -= step as u64;
    }
}

/// Whether every byte of `bytes` is zero.
pub fn is_zero(bytes: &[u8]) -> bool {
    bytes
        .chunks(ZEROS.len())
        .all(|chunk| chunk == &ZEROS[..chunk.len()])
}

/// The runs of zeros in `piece` (which starts at offset `at` of its file) that cover whole
/// [`BLOCK`]s, at least `min` bytes each, as ranges of `piece`.
pub fn zero_runs(piece: &[u8], at: u64, min: usize) -> Vec<Range<usize>> {
    let block = BLOCK as usize;
    let mut runs = Vec::new();
    let mut i = ((BLOCK - at % BLOCK) % BLOCK) as usize;
    let mut start: Option<usize> = None;
    let mut close = |start: &mut Option<usize>, end: usize| {
        if let Some(s) = start.take()
            && end - s >= min
        {
            runs.push(s..end);
        }
    };
    while i + block <= piece.len() {
        if is_zero(&piece[i..i + block]) {
            start.get_or_insert(i);
        } else {
            close(&mut start, i);
        }
        i += block;
    }
    close(&mut start, i);
    runs
}

/// What a file holds at some offset, as [`walk`] gives it.
pub enum Stretch<'a> {
    /// Bytes read (they may be zeros too, where the system could not tell).
    Data(&'a [u8]),
    /// A hole of this many bytes: zeros, not read.
    Hole(u64),
}

/// Gives `f` the first `limit` bytes of `file` (or all, to its end) in order, holes as
/// lengths, data read through one fixed buffer. Returns how many bytes it gave.
pub fn walk(
    file: &File,
    limit: u64,
    mut f: impl FnMut(Stretch<'_>) -> io::Result<()>,
) -> io::Result<u64> {
    let mut buf = vec![0u8; WALK_BUF];
    let mut at = 0u64;
    let mut hole = next_hole(file, 0)?;
    while at < limit {
        if let Some(h) = hole.as_ref().filter(|h| h.start <= at) {
            if at < h.end {
                let n = (h.end - at).min(limit - at);
                f(Stretch::Hole(n))?;
                at += n;
            }
            hole = next_hole(file, at)?;
            continue;
        }
        let room = hole.as_ref().map_or(u64::MAX, |h| h.start - at);
        let want = room.min(limit - at).min(buf.len() as u64) as usize;
        let n = match file.read_at(&mut buf[..want], at) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        f(Stretch::Data(&buf[..n]))?;
        at += n as u64;
    }
    Ok(at)
}

/// The BLAKE3 hasher fed the first `limit` bytes of `file` (all of it: `u64::MAX`), and how
/// many there were; holes are hashed as zeros without being read.
pub fn hash(file: &File, limit: u64) -> io::Result<(blake3::Hasher, u64)> {
    let mut hasher = blake3::Hasher::new();
    let n = walk(file, limit, |s| {
        match s {
            Stretch::Data(bytes) => {
                hasher.update(bytes);
            }
            Stretch::Hole(n) => hash_zeros(&mut hasher, n),
        }
        Ok(())
    })?;
    Ok((hasher, n))
}

/// Copies all of `src` into `dst` (a new, empty file), returning how many bytes: holes stay
/// holes, and blocks of zeros in the data become holes too (as `cp --sparse=always` does).
/// With `hasher`, the bytes are hashed as they are copied.
pub fn copy(src: &File, dst: &File, mut hasher: Option<&mut blake3::Hasher>) -> io::Result<u64> {
    let mut at = 0u64;
    let len = walk(src, u64::MAX, |s| {
        match s {
            Stretch::Hole(n) => {
                if let Some(h) = hasher.as_deref_mut() {
                    hash_zeros(h, n);
                }
                at += n;
            }
            Stretch::Data(bytes) => {
                if let Some(h) = hasher.as_deref_mut() {
                    h.update(bytes);
                }
                write_skipping_zeros(dst, bytes, at)?;
                at += bytes.len() as u64;
            }
        }
        Ok(())
    })?;
    // What ends in a hole has its length only once it is set.
    dst.set_len(len)?;
    Ok(len)
}

/// Writes `bytes` at `at` of `dst`, leaving out the whole blocks of zeros (holes, in a new file).
fn write_skipping_zeros(dst: &File, bytes: &[u8], at: u64) -> io::Result<()> {
    let mut from = 0usize;
    for run in zero_runs(bytes, at, BLOCK as usize) {
        dst.write_all_at(&bytes[from..run.start], at + from as u64)?;
        from = run.end;
    }
    dst.write_all_at(&bytes[from..], at + from as u64)
}

/// The first `len` bytes of a file, read in order as the pack encoder reads a target, with the
/// file's holes known ([`next_hole`]) and passed over unread ([`crate::pack::TargetReader`]).
pub struct SparseReader {
    file: File,
    /// The next byte to read.
    at: u64,
    /// Bytes of the file that are the target: never more are read (the file may have grown).
    len: u64,
}

impl SparseReader {
    pub fn new(file: File, len: u64) -> Self {
        Self { file, at: 0, len }
    }
}

impl Read for SparseReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (self.len - self.at).min(buf.len() as u64) as usize;
        let n = self.file.read_at(&mut buf[..want], self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

impl crate::pack::TargetReader for SparseReader {
    fn next_hole(&mut self, from: u64) -> io::Result<Option<Range<u64>>> {
        Ok(next_hole(&self.file, from)?
            .map(|h| h.start..h.end.min(self.len))
            .filter(|h| h.start < h.end))
    }

    fn skip_hole(&mut self, n: u64) -> io::Result<()> {
        self.at = (self.at + n).min(self.len);
        Ok(())
    }
}

/// Bytes the file system holds for `file` (its blocks), which for a sparse file is far less
/// than its length.
pub fn allocated(file: &File) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(file.metadata()?.blocks() * 512)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A file of `len` bytes, holes but for `data` written at each offset.
    fn sparse_file(path: &std::path::Path, len: u64, data: &[(u64, &[u8])]) -> File {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        for (at, bytes) in data {
            f.write_all_at(bytes, *at).unwrap();
        }
        f.set_len(len).unwrap();
        f
    }

    fn bytes_of(f: &File) -> Vec<u8> {
        let mut out = Vec::new();
        let mut r = f.try_clone().unwrap();
        std::io::Seek::rewind(&mut r).unwrap();
        r.read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn zero_runs_cover_whole_blocks_at_the_files_offsets() {
        let mut piece = vec![1u8; 40_000];
        piece[5_000..30_000].fill(0);
        // The piece starts at offset 100 of its file: blocks start at piece offsets 3996, ….
        let runs = zero_runs(&piece, 100, 1);
        assert_eq!(runs, vec![8_092..28_572]);
        assert!(zero_runs(&piece, 100, 32 << 10).is_empty());
        assert_eq!(zero_runs(&vec![0u8; 8192], 0, 8192), vec![0..8192]);
        assert!(is_zero(&[0; 100_000]) && !is_zero(&[0, 0, 1]));
    }

    /// Holes are given as lengths and never read; data is read; the hash is the bytes'.
    #[test]
    fn a_walk_gives_holes_unread_and_hashes_the_bytes() {
        let t = tempfile::tempdir().unwrap();
        let f = sparse_file(
            &t.path().join("s"),
            10 << 20,
            &[(1 << 20, b"middle"), (9 << 20, b"end")],
        );
        let bytes = bytes_of(&f);
        let (mut holes, mut data) = (0u64, 0u64);
        let n = walk(&f, u64::MAX, |s| {
            match s {
                Stretch::Hole(n) => holes += n,
                Stretch::Data(d) => data += d.len() as u64,
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 10 << 20);
        if next_hole(&f, 0).unwrap().is_some() {
            // The file system knows its holes: only the blocks holding data were read.
            assert!(data <= 1 << 20, "{data} bytes read");
        }
        assert_eq!(holes + data, 10 << 20);
        let (h, len) = hash(&f, u64::MAX).unwrap();
        assert_eq!(
            (*h.finalize().as_bytes(), len),
            (*blake3::hash(&bytes).as_bytes(), 10 << 20)
        );
        let (h, len) = hash(&f, (1 << 20) + 3).unwrap();
        assert_eq!(len, (1 << 20) + 3);
        assert_eq!(h.finalize(), blake3::hash(&bytes[..(1 << 20) + 3]));
    }

    /// A copy keeps the source's holes, and makes holes of the zero blocks the source wrote out.
    #[test]
    fn a_copy_keeps_holes_and_makes_holes_of_written_zeros() {
        let t = tempfile::tempdir().unwrap();
        let src = sparse_file(&t.path().join("s"), 64 << 20, &[(5 << 20, &[7u8; 100_000])]);
        // 8 MiB of zeros written out, then a tail: allocated in the source, not in the copy.
        let mut zeros = std::fs::File::create(t.path().join("z")).unwrap();
        zeros.write_all(&vec![0u8; 8 << 20]).unwrap();
        zeros.write_all(b"tail").unwrap();
        let zeros = std::fs::File::open(t.path().join("z")).unwrap();
        for (name, src) in [("holes", &src), ("zeros", &zeros)] {
            let dst = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(t.path().join(format!("{name}.copy")))
                .unwrap();
            let mut h = blake3::Hasher::new();
            let n = copy(src, &dst, Some(&mut h)).unwrap();
            let want = bytes_of(src);
            assert_eq!(n, want.len() as u64);
            assert_eq!(bytes_of(&dst), want, "{name}");
            assert_eq!(h.finalize(), blake3::hash(&want));
            let blocks = allocated(&dst).unwrap();
            assert!(blocks <= 1 << 20, "{name}: {blocks} bytes allocated");
        }
    }

    /// The reader gives the bytes, knows the holes up to its length, and passes over a hole
    /// without reading it.
    #[test]
    fn the_reader_passes_over_holes() {
        use crate::pack::TargetReader;
        let t = tempfile::tempdir().unwrap();
        let f = sparse_file(
            &t.path().join("s"),
            4 << 20,
            &[(0, b"head"), (3 << 20, b"x")],
        );
        let bytes = bytes_of(&f);
        let mut r = SparseReader::new(f, 3 << 20);
        let mut head = [0u8; 4];
        r.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"head");
        match r.next_hole(4).unwrap() {
            Some(h) => {
                assert!(h.start <= BLOCK && h.end == 3 << 20, "{h:?}");
                let skip = h.start - 4;
                let mut data = vec![0u8; skip as usize];
                r.read_exact(&mut data).unwrap();
                r.skip_hole(h.end - h.start).unwrap();
            }
            None => {
                let mut rest = Vec::new();
                r.read_to_end(&mut rest).unwrap();
                assert_eq!(rest, bytes[4..3 << 20]);
            }
        }
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "nothing past the reader's length");
    }
}
