//! Streaming an image onto a disk with every byte checked before it gets there.
//!
//! The compressed stream is cut into the plan's chunks; each chunk is held in memory until
//! its sha256 matches the plan's, and only then goes into the zstd decoder, whose output
//! goes to the sink (the disk). So a damaged or tampered byte stops the install before
//! anything decoded from it is written, and the error says which chunk and which bytes.
//! At the end the whole file's size and sha256, the end of the zstd frame and the raw size
//! are checked too.
//!
//! This module knows no HTTP and no disk: it reads a `Read` and writes a `Write`.

use cosm_wire::InstallPlan;
use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

/// Why an image stream failed. Each says how far the verified data reached the sink.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(
        "image chunk {index} (bytes {start}..{end} of {image}) has sha256 {got}…, the plan \
         says {want}…: the image is damaged (on the appliance or on the way); nothing after \
         byte {start} was written"
    )]
    ChunkMismatch {
        image: String,
        index: usize,
        start: u64,
        end: u64,
        /// The first 16 hex digits of each hash.
        got: String,
        want: String,
    },
    #[error(
        "the image stream of {image} ended at byte {at} of {size} (in chunk {index}, bytes \
         {start}..{end}): nothing after byte {start} was written"
    )]
    ShortRead {
        image: String,
        at: u64,
        size: u64,
        index: usize,
        start: u64,
        end: u64,
    },
    #[error(
        "reading {image} failed at byte {at} of {size} (in chunk {index}, bytes {start}..{end}); \
         nothing after byte {start} was written"
    )]
    Read {
        image: String,
        at: u64,
        size: u64,
        index: usize,
        start: u64,
        end: u64,
        #[source]
        source: io::Error,
    },
    #[error(
        "{image} is longer than the plan's {size} bytes (every planned chunk matched and was \
         written)"
    )]
    TooLong { image: String, size: u64 },
    #[error(
        "{image} does not decompress at chunk {index} (bytes {start}..{end}), although the \
         chunk matches the plan (the image in the repository is damaged or not zstd); \
         {raw_written} bytes of raw image were written"
    )]
    Decompress {
        image: String,
        index: usize,
        start: u64,
        end: u64,
        raw_written: u64,
        #[source]
        source: io::Error,
    },
    #[error("{image} ends inside a zstd frame after all {size} bytes (a truncated image)")]
    Truncated {
        image: String,
        size: u64,
        #[source]
        source: io::Error,
    },
    #[error(
        "{image} decompresses to more than the plan's raw size of {raw_size} bytes (at chunk \
         {index}, bytes {start}..{end}); the first {raw_size} bytes were written"
    )]
    RawTooLong {
        image: String,
        raw_size: u64,
        index: usize,
        start: u64,
        end: u64,
    },
    #[error("{image} decompresses to {raw} bytes, the plan says {raw_size}")]
    RawSize {
        image: String,
        raw: u64,
        raw_size: u64,
    },
    #[error(
        "{image} has sha256 {got} as a whole, the plan says {want} (its chunks matched: the \
         plan is inconsistent)"
    )]
    WholeFile {
        image: String,
        got: String,
        want: String,
    },
    #[error("cannot write the disk (after {at} bytes of the raw image)")]
    Write {
        at: u64,
        #[source]
        source: io::Error,
    },
}

/// What a successful stream did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Streamed {
    /// Compressed bytes read and verified.
    pub compressed: u64,
    /// Raw bytes written to the sink.
    pub raw: u64,
    /// From the first byte read to the sink's last write (the caller's sync excluded).
    pub elapsed: Duration,
}

/// A sink that counts what it took, refuses more than `limit` bytes and remembers why it
/// failed, so a failure inside the decoder can be told apart from one of the disk.
struct Counted<W> {
    inner: W,
    written: u64,
    limit: u64,
    failure: Option<SinkFailure>,
}

enum SinkFailure {
    TooLong,
    Io,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written + buf.len() as u64 > self.limit {
            // Write what fits, then refuse.
            let room = (self.limit - self.written) as usize;
            if room > 0 {
                return self.write(&buf[..room]);
            }
            self.failure = Some(SinkFailure::TooLong);
            return Err(io::Error::other("more raw bytes than the plan's raw size"));
        }
        match self.inner.write(buf) {
            Ok(n) => {
                self.written += n as u64;
                Ok(n)
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.failure = Some(SinkFailure::Io);
                }
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|_| {
            self.failure = Some(SinkFailure::Io);
        })
    }
}

/// Reads until `buf` is full or the stream ends; the bytes read.
fn fill(src: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn short(hex: &str) -> String {
    hex.chars().take(16).collect()
}

/// Streams the image `src` into `sink` as described in the module header. `progress` is
/// called after each chunk reached the sink, with the compressed bytes verified so far.
/// Returns the sink (flushed; not synced) and what was done.
///
/// The plan must have been checked (`super::check_plan`): chunk count and size agree.
pub fn stream_image<R: Read, W: Write>(
    plan: &InstallPlan,
    mut src: R,
    sink: W,
    progress: &mut dyn FnMut(u64),
) -> Result<(Streamed, W), StreamError> {
    let started = Instant::now();
    let image = plan.image.clone();
    let chunk = plan.chunk_bytes as usize;
    let mut buf = vec![0u8; chunk];
    let mut whole = Sha256::new();
    let counted = Counted {
        inner: sink,
        written: 0,
        limit: plan.raw_size,
        failure: None,
    };
    let mut decoder =
        zstd::stream::write::Decoder::new(counted).map_err(|source| StreamError::Decompress {
            image: image.clone(),
            index: 0,
            start: 0,
            end: 0,
            raw_written: 0,
            source,
        })?;
    let mut offset = 0u64;
    for (index, want) in plan.chunks.iter().enumerate() {
        let start = offset;
        let end = (start + plan.chunk_bytes).min(plan.size);
        let len = (end - start) as usize;
        let n = fill(&mut src, &mut buf[..len]).map_err(|source| StreamError::Read {
            image: image.clone(),
            at: start,
            size: plan.size,
            index,
            start,
            end,
            source,
        })?;
        if n < len {
            return Err(StreamError::ShortRead {
                image,
                at: start + n as u64,
                size: plan.size,
                index,
                start,
                end,
            });
        }
        let got = hex::encode(Sha256::digest(&buf[..len]));
        if &got != want {
            return Err(StreamError::ChunkMismatch {
                image,
                index,
                start,
                end,
                got: short(&got),
                want: short(want),
            });
        }
        whole.update(&buf[..len]);
        // Flushed after every chunk: what the sink holds is all that the verified chunks
        // decode to, nothing waits in the decoder's output buffer.
        if let Err(source) = decoder
            .write_all(&buf[..len])
            .and_then(|()| decoder.flush())
        {
            let sink = decoder.get_ref();
            return Err(match sink.failure {
                Some(SinkFailure::TooLong) => StreamError::RawTooLong {
                    image,
                    raw_size: plan.raw_size,
                    index,
                    start,
                    end,
                },
                Some(SinkFailure::Io) => StreamError::Write {
                    at: sink.written,
                    source,
                },
                None => StreamError::Decompress {
                    image,
                    index,
                    start,
                    end,
                    raw_written: sink.written,
                    source,
                },
            });
        }
        offset = end;
        progress(offset);
    }
    // The stream must end where the plan says.
    let mut extra = [0u8; 1];
    match fill(&mut src, &mut extra) {
        Ok(0) => {}
        Ok(_) => {
            return Err(StreamError::TooLong {
                image,
                size: plan.size,
            })
        }
        Err(source) => {
            return Err(StreamError::Read {
                image,
                at: offset,
                size: plan.size,
                index: plan.chunks.len(),
                start: offset,
                end: offset,
                source,
            })
        }
    }
    let counted = decoder.finish().map_err(|source| StreamError::Truncated {
        image: image.clone(),
        size: plan.size,
        source,
    })?;
    let got = hex::encode(whole.finalize());
    if got != plan.sha256 {
        return Err(StreamError::WholeFile {
            image,
            got,
            want: plan.sha256.clone(),
        });
    }
    if counted.written != plan.raw_size {
        return Err(StreamError::RawSize {
            image,
            raw: counted.written,
            raw_size: plan.raw_size,
        });
    }
    Ok((
        Streamed {
            compressed: offset,
            raw: counted.written,
            elapsed: started.elapsed(),
        },
        counted.inner,
    ))
}

/// Where [`BlockWriter`] puts the raw image: positioned writes, and zeroing a range without
/// sending zeros where the device can.
pub trait BlockTarget {
    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()>;
    /// Zeroes `len` bytes at `offset`; `Ok(false)` when it cannot (then zeros are written).
    fn zero_at(&mut self, offset: u64, len: u64) -> io::Result<bool>;
}

impl BlockTarget for std::fs::File {
    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, data, offset)
    }

    /// `fallocate(FALLOC_FL_ZERO_RANGE)`: on a block device the kernel sends WRITE ZEROES
    /// (or writes zero pages itself) and drops the range from the page cache.
    fn zero_at(&mut self, offset: u64, len: u64) -> io::Result<bool> {
        use nix::fcntl::FallocateFlags as F;
        let (Ok(at), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Ok(false);
        };
        match nix::fcntl::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(self),
            F::FALLOC_FL_ZERO_RANGE | F::FALLOC_FL_KEEP_SIZE,
            at,
            n,
        ) {
            Ok(()) => Ok(true),
            Err(nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::EINVAL) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

impl<T: BlockTarget + ?Sized> BlockTarget for &mut T {
    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_at(data, offset)
    }
    fn zero_at(&mut self, offset: u64, len: u64) -> io::Result<bool> {
        (**self).zero_at(offset, len)
    }
}

/// A writer that puts what it is given onto a [`BlockTarget`] in whole `block`-byte
/// pieces at offsets that are multiples of `block` (the last piece, at
/// [`BlockWriter::finish`], may be shorter): large aligned writes, whatever sizes the
/// decoder produces. A block of zeros is zeroed rather than written (an image's free
/// space is mostly zeros, which the device may not need to be sent).
#[derive(Debug)]
pub struct BlockWriter<T> {
    target: T,
    buf: Vec<u8>,
    block: usize,
    /// Where `buf` goes.
    offset: u64,
    /// Bytes zeroed rather than written.
    zeroed: u64,
}

fn all_zero(b: &[u8]) -> bool {
    let (chunks, rest) = b.split_at(b.len() - b.len() % 16);
    chunks
        .chunks_exact(16)
        .all(|c| u128::from_ne_bytes(c.try_into().expect("16 bytes")) == 0)
        && rest.iter().all(|&x| x == 0)
}

impl<T: BlockTarget> BlockWriter<T> {
    pub fn new(target: T, block: usize) -> Self {
        BlockWriter {
            target,
            buf: Vec::with_capacity(block),
            block,
            offset: 0,
            zeroed: 0,
        }
    }

    fn put(&mut self) -> io::Result<()> {
        let len = self.buf.len() as u64;
        let zeroed = len == self.block as u64
            && all_zero(&self.buf)
            && self.target.zero_at(self.offset, len)?;
        if zeroed {
            self.zeroed += len;
        } else {
            self.target.write_at(&self.buf, self.offset).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("{len} bytes at byte {}: {e}", self.offset),
                )
            })?;
        }
        self.offset += len;
        self.buf.clear();
        Ok(())
    }

    /// Writes what is left; returns the target and the bytes zeroed rather than written.
    pub fn finish(mut self) -> io::Result<(T, u64)> {
        if !self.buf.is_empty() {
            self.put()?;
        }
        Ok((self.target, self.zeroed))
    }
}

impl<T: BlockTarget> Write for BlockWriter<T> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let take = (self.block - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..take]);
        if self.buf.len() == self.block {
            self.put()?;
        }
        Ok(take)
    }

    /// Leaves a partial block buffered: only [`BlockWriter::finish`] writes it.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic bytes that zstd compresses only a little (xorshift), mixed with runs
    /// of zeros, so an image is several chunks long and has content everywhere.
    pub(crate) fn sample_raw(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if (i / 65536) % 4 == 3 {
                    0
                } else {
                    (x >> 24) as u8 & 0x3f
                }
            })
            .collect()
    }

    pub(crate) fn plan_for(compressed: &[u8], raw_size: u64, chunk: u64) -> InstallPlan {
        InstallPlan {
            mac: "52:54:00:12:34:56".parse().unwrap(),
            image: "test.img.zst".into(),
            image_url: "http://192.0.2.1/test.img.zst".into(),
            size: compressed.len() as u64,
            sha256: hex::encode(Sha256::digest(compressed)),
            chunk_bytes: chunk,
            chunks: compressed
                .chunks(chunk as usize)
                .map(|c| hex::encode(Sha256::digest(c)))
                .collect(),
            raw_size,
            disk: None,
            root_partition: "root".into(),
            files: Vec::new(),
            agent_state_dir: "/var/lib/cosm-agent".into(),
            progress_every_secs: 2,
        }
    }

    /// What a stream of `prefix` decodes to, by zstd's own reading decoder: everything it
    /// yields before it runs out of input.
    fn decodable(prefix: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut d = zstd::stream::read::Decoder::new(prefix).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match d.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        out
    }

    const CHUNK: u64 = 64 * 1024;

    fn compressed(raw: &[u8]) -> Vec<u8> {
        zstd::encode_all(raw, 3).unwrap()
    }

    #[test]
    fn a_good_image_is_written_whole() {
        let raw = sample_raw(1 << 20);
        let z = compressed(&raw);
        let plan = plan_for(&z, raw.len() as u64, CHUNK);
        assert!(plan.chunks.len() > 4, "{} chunks", plan.chunks.len());
        let mut seen = Vec::new();
        let (done, sink) = stream_image(&plan, &z[..], Vec::new(), &mut |b| seen.push(b)).unwrap();
        assert_eq!(sink, raw);
        assert_eq!(
            (done.compressed, done.raw),
            (z.len() as u64, raw.len() as u64)
        );
        assert_eq!(seen.len(), plan.chunks.len());
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        assert_eq!(*seen.last().unwrap(), z.len() as u64);
    }

    #[test]
    fn a_flipped_byte_stops_before_its_chunk_reaches_the_sink() {
        let raw = sample_raw(1 << 20);
        let z = compressed(&raw);
        let plan = plan_for(&z, raw.len() as u64, CHUNK);
        for k in [0usize, 3, plan.chunks.len() - 1] {
            let mut bad = z.clone();
            let at = k * CHUNK as usize + 100;
            bad[at] ^= 0x40;
            let mut sink = Vec::new();
            let e = stream_image(&plan, &bad[..], &mut sink, &mut |_| {}).unwrap_err();
            let start = k as u64 * CHUNK;
            let end = (start + CHUNK).min(z.len() as u64);
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!(
                    "image chunk {k} (bytes {start}..{end} of test.img.zst) has sha256 "
                )),
                "{msg}"
            );
            assert!(
                msg.contains(&format!("the plan says {}…", &plan.chunks[k][..16])),
                "{msg}"
            );
            assert!(
                msg.ends_with(&format!("nothing after byte {start} was written")),
                "{msg}"
            );
            // The sink holds exactly what the chunks before k decode to: correct bytes,
            // and none decoded from chunk k or later.
            let before = decodable(&z[..start as usize]);
            assert_eq!(sink, before, "chunk {k}");
            assert_eq!(sink[..], raw[..sink.len()]);
            if k > 1 {
                assert!(!sink.is_empty());
            }
        }
    }

    #[test]
    fn short_long_and_broken_streams_name_the_offset() {
        let raw = sample_raw(1 << 19);
        let z = compressed(&raw);
        let plan = plan_for(&z, raw.len() as u64, CHUNK);
        // Cut in chunk 2.
        let cut = 2 * CHUNK as usize + 10;
        let e = stream_image(&plan, &z[..cut], Vec::new(), &mut |_| {})
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "the image stream of test.img.zst ended at byte {cut} of {} (in chunk 2, bytes \
                 {}..{}): nothing after byte {} was written",
                z.len(),
                2 * CHUNK,
                3 * CHUNK,
                2 * CHUNK
            )
        );
        // One byte too many.
        let mut long = z.clone();
        long.push(0);
        let e = stream_image(&plan, &long[..], Vec::new(), &mut |_| {}).unwrap_err();
        assert!(matches!(e, StreamError::TooLong { .. }), "{e}");
        // A read error in chunk 1.
        struct Failing<'a>(&'a [u8]);
        impl Read for Failing<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() {
                    return Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset"));
                }
                let n = buf.len().min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let e = stream_image(
            &plan,
            Failing(&z[..CHUNK as usize + 5]),
            Vec::new(),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "reading test.img.zst failed at byte {CHUNK} of {} (in chunk 1, bytes {CHUNK}..{})",
                z.len(),
                2 * CHUNK
            )),
            "{e}"
        );
    }

    #[test]
    fn sizes_that_disagree_with_the_plan_are_refused() {
        let raw = sample_raw(1 << 18);
        let z = compressed(&raw);
        // Raw size too small: the sink never gets more than it.
        let plan = plan_for(&z, 1000, CHUNK);
        let mut sink = Vec::new();
        let e = stream_image(&plan, &z[..], &mut sink, &mut |_| {}).unwrap_err();
        assert!(
            matches!(e, StreamError::RawTooLong { raw_size: 1000, .. }),
            "{e}"
        );
        assert_eq!(sink, raw[..1000]);
        // Raw size too large.
        let plan = plan_for(&z, raw.len() as u64 + 1, CHUNK);
        let e = stream_image(&plan, &z[..], Vec::new(), &mut |_| {}).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "test.img.zst decompresses to {} bytes, the plan says {}",
                raw.len(),
                raw.len() + 1
            )
        );
        // Chunks that match but a whole-file hash that does not.
        let mut plan = plan_for(&z, raw.len() as u64, CHUNK);
        plan.sha256 = "0".repeat(64);
        let e = stream_image(&plan, &z[..], Vec::new(), &mut |_| {}).unwrap_err();
        assert!(matches!(e, StreamError::WholeFile { .. }), "{e}");
        // Data that matches its chunks but is not zstd.
        let junk = sample_raw(3 * CHUNK as usize);
        let plan = plan_for(&junk, 100, CHUNK);
        let e = stream_image(&plan, &junk[..], Vec::new(), &mut |_| {}).unwrap_err();
        assert!(matches!(e, StreamError::Decompress { index: 0, .. }), "{e}");
        // A truncated frame whose chunks match (the plan was made from the truncated file).
        let cut = &z[..z.len() - 7];
        let plan = plan_for(cut, raw.len() as u64, CHUNK);
        let e = stream_image(&plan, cut, Vec::new(), &mut |_| {}).unwrap_err();
        assert!(matches!(e, StreamError::Truncated { .. }), "{e}");
    }

    #[test]
    fn a_disk_error_names_the_raw_offset() {
        #[derive(Debug)]
        struct Full(u64);
        impl Write for Full {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("no space left"));
                }
                let n = (buf.len() as u64).min(self.0);
                self.0 -= n;
                Ok(n as usize)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let raw = sample_raw(1 << 19);
        let z = compressed(&raw);
        let plan = plan_for(&z, raw.len() as u64, CHUNK);
        let e = stream_image(&plan, &z[..], Full(200_000), &mut |_| {}).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot write the disk (after 200000 bytes of the raw image)"
        );
    }

    /// A disk in memory that logs its calls; it may refuse to zero.
    #[derive(Debug, Default)]
    struct Mem {
        bytes: Vec<u8>,
        calls: Vec<(&'static str, u64, u64)>,
        can_zero: bool,
    }
    impl BlockTarget for Mem {
        fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
            self.calls.push(("write", offset, data.len() as u64));
            let end = offset as usize + data.len();
            if self.bytes.len() < end {
                self.bytes.resize(end, 0xee);
            }
            self.bytes[offset as usize..end].copy_from_slice(data);
            Ok(())
        }
        fn zero_at(&mut self, offset: u64, len: u64) -> io::Result<bool> {
            if !self.can_zero {
                return Ok(false);
            }
            self.calls.push(("zero", offset, len));
            let end = (offset + len) as usize;
            if self.bytes.len() < end {
                self.bytes.resize(end, 0xee);
            }
            self.bytes[offset as usize..end].fill(0);
            Ok(true)
        }
    }

    #[test]
    fn block_writer_writes_whole_aligned_blocks_and_zeroes_zero_blocks() {
        // Data, a zero block, data that starts with zeros, a short zero tail.
        let mut data = sample_raw(4096);
        data.extend(vec![0u8; 4096]);
        data.extend(vec![0u8; 100]);
        data.extend(sample_raw(3996));
        data.extend(vec![0u8; 1000]);
        for can_zero in [true, false] {
            let mut w = BlockWriter::new(
                Mem {
                    can_zero,
                    ..Mem::default()
                },
                4096,
            );
            for piece in data.chunks(777) {
                w.write_all(piece).unwrap();
            }
            w.flush().unwrap();
            let (mem, zeroed) = w.finish().unwrap();
            assert_eq!(mem.bytes, data);
            let kind = if can_zero { "zero" } else { "write" };
            assert_eq!(
                mem.calls,
                [
                    ("write", 0, 4096),
                    (kind, 4096, 4096),
                    ("write", 8192, 4096),
                    ("write", 12288, 1000)
                ]
            );
            assert_eq!(zeroed, if can_zero { 4096 } else { 0 });
        }
    }

    #[test]
    fn a_zeroed_range_of_a_file_reads_back_as_zeros() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&sample_raw(3 * 4096)).unwrap();
        let mut w = BlockWriter::new(&mut f, 4096);
        w.write_all(&sample_raw(4096)).unwrap();
        w.write_all(&[0u8; 4096]).unwrap();
        let (_, zeroed) = w.finish().unwrap();
        // ext4 and xfs zero the range in place; tmpfs cannot (EOPNOTSUPP), and then the
        // zeros are written: either way the file must read back right.
        assert!(zeroed == 4096 || zeroed == 0, "{zeroed}");
        let mut back = Vec::new();
        use std::io::Seek;
        f.rewind().unwrap();
        f.read_to_end(&mut back).unwrap();
        assert_eq!(back[..4096], sample_raw(4096)[..]);
        assert!(back[4096..8192].iter().all(|&b| b == 0));
        assert_eq!(back[8192..], sample_raw(3 * 4096)[8192..]);
    }
}
