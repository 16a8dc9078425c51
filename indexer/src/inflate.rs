//! Ingest bodies, native and `_bulk`, inflated with a hard cap, and write-ahead log
//! entries inflated again at replay.
//!
//! Decompression stops at the cap instead of inflating everything first, so a gzip
//! or zstd bomb costs at most `max_body_bytes` of memory; the trade-off is that a
//! body just over the cap is refused after it was partly inflated, never truncated.

use crate::error::{Error, Result};
use std::borrow::Cow;
use std::io::Read;

/// zstd's frame magic (RFC 8878), little-endian `0xFD2FB528`.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Decompresses an ingest body, gzip or zstd, told apart by their magic bytes rather
/// than by `Content-Encoding` (which proxies rewrite and curl users forget). zstd is
/// what our shipper sends by default: about 1.4 times as fast as gzip level 1 at a
/// third less size on log NDJSON (BENCHMARKS.md). Either way decompression stops at
/// `max` bytes instead of inflating a bomb first. A body that starts as JSON does
/// (`{`, after any whitespace) is plain NDJSON, what the shipper sends to an indexer
/// on its own host, where compressing would only cost both sides CPU.
/// A plain body is borrowed, not copied: it is already in memory, and copying each
/// request once more cost the pipeline CPU the raw Tantivy loop never pays (issue 14).
pub fn decompress_capped(body: &[u8], max: usize) -> Result<Cow<'_, [u8]>> {
    if body.starts_with(&ZSTD_MAGIC) {
        return unzstd_capped(body, max).map(Cow::Owned);
    }
    if is_plain_ndjson(body) {
        return plain_capped(body, max).map(Cow::Borrowed);
    }
    gunzip_capped(body, max).map(Cow::Owned)
}

/// Whether `body` is uncompressed NDJSON: its first non-blank byte opens an object.
fn is_plain_ndjson(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

fn plain_capped(body: &[u8], max: usize) -> Result<&[u8]> {
    if body.len() > max {
        return Err(Error::BodyTooLarge { limit: max });
    }
    Ok(body)
}

/// Largest zstd window a body may ask for (2^24 = 16 MiB; `zstd -19` uses 8 MiB). The
/// library's own default allows 128 MiB per decompression, which concurrent hostile
/// bodies could multiply.
const ZSTD_WINDOW_LOG_MAX: u32 = 24;

/// [`decompress_capped`] for a write-ahead log entry: accepted once, possibly by a
/// build without the window cap, so it is not held to [`ZSTD_WINDOW_LOG_MAX`] (an
/// acknowledged entry skipped as unreadable would be a lost batch).
pub(crate) fn decompress_for_replay(body: &[u8], max: usize) -> Result<Vec<u8>> {
    if is_plain_ndjson(body) {
        return plain_capped(body, max).map(<[u8]>::to_vec);
    }
    if !body.starts_with(&ZSTD_MAGIC) {
        return gunzip_capped(body, max);
    }
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(max));
    let mut decoder = zstd::stream::read::Decoder::new(body)
        .map_err(|e| Error::BadBody(format!("invalid zstd: {e}")))?;
    decoder
        .window_log_max(31)
        .map_err(|e| Error::BadBody(format!("invalid zstd: {e}")))?;
    decoder
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::BadBody(format!("invalid zstd: {e}")))?;
    if out.len() > max {
        return Err(Error::BodyTooLarge { limit: max });
    }
    Ok(out)
}

fn unzstd_capped(body: &[u8], max: usize) -> Result<Vec<u8>> {
    // One decompression context per blocking thread, reused: creating one per
    // request (tables and window allocated and cleared) was 4 % of the ingest path's
    // CPU in the pipeline benchmark (BENCHMARKS.md, issue 14).
    thread_local! {
        static DCTX: std::cell::RefCell<Option<zstd::zstd_safe::DCtx<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(max));
    DCTX.with_borrow_mut(|slot| {
        let cx = match slot {
            Some(cx) => cx,
            None => {
                let mut cx = zstd::zstd_safe::DCtx::create();
                cx.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(
                    ZSTD_WINDOW_LOG_MAX,
                ))
                .map_err(|code| {
                    Error::Internal(format!(
                        "zstd refused window log {ZSTD_WINDOW_LOG_MAX}: {}",
                        zstd::zstd_safe::get_error_name(code)
                    ))
                })?;
                slot.insert(cx)
            }
        };
        zstd::stream::read::Decoder::with_context(body, cx)
            .take(max as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| Error::BadBody(format!("invalid zstd: {e}")))
    })?;
    if out.len() > max {
        return Err(Error::BodyTooLarge { limit: max });
    }
    Ok(out)
}

/// Inflates a gzip body (one or more members), refusing to produce more than `max`
/// bytes: decompression stops at the cap instead of inflating everything first.
pub fn gunzip_capped(body: &[u8], max: usize) -> Result<Vec<u8>> {
    if body.len() < 2 || body[..2] != [0x1f, 0x8b] {
        return Err(Error::BadBody(format!(
            "body of {} bytes is neither NDJSON, gzip nor zstd (expected `{{` first, or magic 1f 8b or 28 b5 2f fd)",
            body.len()
        )));
    }
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(max));
    flate2::read::MultiGzDecoder::new(body)
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::BadBody(format!("invalid gzip: {e}")))?;
    if out.len() > max {
        return Err(Error::BodyTooLarge { limit: max });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        // Not `fast()`: with the zlib-rs backend that level barely shrinks runs of
        // zeros, and the bomb test needs a small body that inflates hugely.
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn zstd_bodies_decompress_and_bombs_stop_at_the_cap() {
        let body = zstd::bulk::compress(b"{\"a\":1}\n", 1).unwrap();
        assert_eq!(&*decompress_capped(&body, 100).unwrap(), b"{\"a\":1}\n");
        let bomb = zstd::bulk::compress(&vec![0u8; 10 << 20], 3).unwrap();
        assert!(bomb.len() < 100_000);
        assert!(matches!(
            decompress_capped(&bomb, 1 << 20),
            Err(Error::BodyTooLarge { limit }) if limit == 1 << 20
        ));
        let mut torn = zstd::bulk::compress(&[b'x'; 4096], 1).unwrap();
        torn.truncate(torn.len() / 2);
        let err = decompress_capped(&torn, 1 << 20).unwrap_err().to_string();
        assert!(err.contains("zstd"), "{err}");
        let err = decompress_capped(b"plain text", 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(err.contains("neither NDJSON, gzip nor zstd"), "{err}");
    }

    #[test]
    fn plain_ndjson_bodies_pass_as_they_are_up_to_the_cap() {
        // What the shipper sends to an indexer on its own host (Codec::None).
        let body = b"\n {\"a\":1}\n{\"b\":2}\n";
        assert_eq!(&*decompress_capped(body, 100).unwrap(), body);
        assert_eq!(decompress_for_replay(body, 100).unwrap(), body);
        assert!(matches!(
            decompress_capped(body, 10),
            Err(Error::BodyTooLarge { limit: 10 })
        ));
        assert!(matches!(
            decompress_capped(b"[1,2]", 100),
            Err(Error::BadBody(_))
        ));
    }

    #[test]
    fn the_reused_zstd_context_starts_clean_after_a_bad_body_and_refuses_huge_windows() {
        // The thread's context is reused: a torn frame must not leave state that
        // bleeds into the next body, and a body whose window is larger than
        // ZSTD_WINDOW_LOG_MAX is refused instead of allocating it.
        let mut torn = zstd::bulk::compress(&[b'y'; 100_000], 1).unwrap();
        torn.truncate(torn.len() / 2);
        for _ in 0..3 {
            assert!(decompress_capped(&torn, 1 << 20).is_err());
            let body = zstd::bulk::compress(b"{\"b\":2}\n", 1).unwrap();
            assert_eq!(&*decompress_capped(&body, 100).unwrap(), b"{\"b\":2}\n");
        }
        // Streamed without a size, so the frame declares the whole 128 MiB window.
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
        enc.window_log(27).unwrap();
        enc.long_distance_matching(true).unwrap();
        enc.write_all(&vec![0u8; 20 << 20]).unwrap();
        let wide = enc.finish().unwrap();
        match decompress_capped(&wide, 64 << 20) {
            Err(Error::BadBody(e)) => assert!(e.contains("invalid zstd"), "{e}"),
            Err(e) => panic!("expected a bad body, got {e}"),
            Ok(out) => panic!("a 128 MiB window was accepted ({} bytes out)", out.len()),
        }
        // A write-ahead log entry was accepted once, maybe by a build without the
        // cap: its replay is not held to it (review finding).
        assert_eq!(
            decompress_for_replay(&wide, 64 << 20).unwrap().len(),
            20 << 20
        );
    }

    #[test]
    fn gunzip_round_trips_and_accepts_concatenated_members() {
        let mut body = gzip(b"hello ");
        body.extend(gzip(b"world"));
        assert_eq!(gunzip_capped(&body, 100).unwrap(), b"hello world");
    }

    #[test]
    fn gunzip_stops_at_the_cap() {
        let bomb = gzip(&vec![0u8; 10 << 20]);
        assert!(bomb.len() < 100_000);
        assert!(matches!(
            gunzip_capped(&bomb, 1 << 20),
            Err(Error::BodyTooLarge { limit }) if limit == 1 << 20
        ));
        assert_eq!(
            gunzip_capped(&gzip(&[7; 64]), 64).unwrap().len(),
            64,
            "exactly the cap is fine"
        );
    }

    #[test]
    fn gunzip_rejects_plain_and_truncated_bodies() {
        let err = gunzip_capped(b"{\"plain\":true}", 100).unwrap_err();
        assert!(err.to_string().contains("gzip nor zstd"), "{err}");
        let full = gzip(b"some text that is long enough to matter");
        let err = gunzip_capped(&full[..full.len() - 6], 100).unwrap_err();
        assert!(matches!(err, Error::BadBody(_)), "{err}");
    }
}
