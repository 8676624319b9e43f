//! netascii (RFC 764, used by RFC 1350) for files sent to a client (COSM patch).

use futures_lite::AsyncRead;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

/// Reads a file as netascii: LF becomes CR LF and CR becomes CR NUL; every other byte is
/// sent as it is.
pub(crate) struct NetasciiReader<R> {
    inner: R,
    /// The second byte of a pair that did not fit in the caller's buffer.
    pending: Option<u8>,
}

impl<R> NetasciiReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        NetasciiReader {
            inner,
            pending: None,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for NetasciiReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if let Some(b) = self.pending.take() {
            buf[0] = b;
            return Poll::Ready(Ok(1));
        }
        // Each byte read becomes at most two, so read at most half the room (at least
        // one byte; its second half then waits in `pending`).
        let mut raw = [0u8; 2048];
        let want = (buf.len() / 2).clamp(1, raw.len());
        let n = ready!(Pin::new(&mut self.inner).poll_read(cx, &mut raw[..want]))?;
        let mut out = 0;
        for &b in &raw[..n] {
            let (first, second) = match b {
                b'\n' => (b'\r', Some(b'\n')),
                b'\r' => (b'\r', Some(0)),
                b => (b, None),
            };
            buf[out] = first;
            out += 1;
            if let Some(second) = second {
                if out < buf.len() {
                    buf[out] = second;
                    out += 1;
                } else {
                    self.pending = Some(second);
                }
            }
        }
        Poll::Ready(Ok(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::io::{AsyncReadExt, Cursor};

    fn convert(input: &[u8], chunk: usize) -> Vec<u8> {
        let mut r = NetasciiReader::new(Cursor::new(input.to_vec()));
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        futures_lite::future::block_on(async {
            loop {
                let n = r.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
        });
        out
    }

    #[test]
    fn lf_and_cr_are_expanded_whatever_the_buffer_size() {
        let input = b"a\nb\rc\r\nd";
        let want = b"a\r\nb\r\0c\r\0\r\nd".to_vec();
        for chunk in [1, 2, 3, 5, 512] {
            assert_eq!(convert(input, chunk), want, "chunk {chunk}");
        }
    }
}
