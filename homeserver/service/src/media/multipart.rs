//! Reads the answer of `/_matrix/federation/v1/media/download` (`multipart/mixed`: a JSON
//! metadata part, then the file part with its own headers) as it arrives, chunk by chunk: the
//! file part goes straight to a [`CacheFile`] (capped there), everything else is held in a
//! small bounded buffer.

use paracord_core::{Error, ErrorKind, Result};
use ruma::http_headers::ContentDisposition;

use super::CacheFile;

/// Most bytes of preamble, delimiter padding and metadata part read before the file part.
const MAX_PREFIX_BYTES: usize = 64 * 1024;
/// Longest header block of a part.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The boundary of a `multipart/*` content type.
pub fn multipart_boundary(content_type: &str) -> Option<String> {
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))?
        .trim_matches('"');
    (!boundary.is_empty() && boundary.len() <= 70).then(|| boundary.to_owned())
}

/// The headers of the file part.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilePart {
    pub content_type: Option<String>,
    pub filename: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first delimiter.
    Preamble,
    /// After a delimiter: `--` (the end) or padding and CRLF.
    AfterDelimiter,
    /// A part's header lines, up to the empty line.
    Headers,
    /// A part's content, up to the next delimiter.
    Body,
    /// The file part is complete; the rest is ignored.
    Done,
}

/// A federation media answer being read; feed it the body's chunks in order.
pub struct MultipartFile {
    /// `CRLF--boundary`: what ends a part's content.
    delimiter: Vec<u8>,
    buf: Vec<u8>,
    state: State,
    /// Which part is being read: 0 is the metadata, 1 the file.
    part: usize,
    /// Bytes seen before the file part, bounded by [`MAX_PREFIX_BYTES`].
    prefix_bytes: usize,
    file: FilePart,
}

fn malformed(what: &str) -> Error {
    Error::new(
        http::StatusCode::BAD_GATEWAY,
        ErrorKind::Unknown,
        format!("the media answer is not a multipart body with a file: {what}"),
    )
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl MultipartFile {
    pub fn new(boundary: &str) -> Self {
        Self {
            delimiter: format!("\r\n--{boundary}").into_bytes(),
            // The first delimiter may open the body; with a CRLF before it, every delimiter
            // looks the same.
            buf: b"\r\n".to_vec(),
            state: State::Preamble,
            part: 0,
            prefix_bytes: 0,
            file: FilePart::default(),
        }
    }

    fn count_prefix(&mut self, n: usize) -> Result<()> {
        self.prefix_bytes = self.prefix_bytes.saturating_add(n);
        if self.prefix_bytes > MAX_PREFIX_BYTES {
            return Err(malformed("too much before the file part"));
        }
        Ok(())
    }

    /// Reads the next chunk of the body, writing the file's bytes to `out`.
    pub async fn feed(&mut self, chunk: &[u8], out: &mut CacheFile) -> Result<()> {
        if let Some(n) = self.read(chunk)? {
            out.write(&self.buf[..n]).await?;
            self.written(n);
        }
        Ok(())
    }

    /// [`MultipartFile::feed`] into memory.
    pub(crate) fn feed_vec(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if let Some(n) = self.read(chunk)? {
            out.extend_from_slice(&self.buf[..n]);
            self.written(n);
        }
        Ok(())
    }

    /// Takes in the next chunk of the body: how many bytes at the start of the buffer are
    /// the file's, to be written and then passed to [`MultipartFile::written`].
    fn read(&mut self, chunk: &[u8]) -> Result<Option<usize>> {
        if self.state == State::Done {
            return Ok(None);
        }
        self.buf.extend_from_slice(chunk);
        loop {
            match self.state {
                State::Preamble | State::Body => {
                    let in_file = self.state == State::Body && self.part == 1;
                    if let Some(at) = find(&self.buf, &self.delimiter) {
                        if in_file {
                            // The file ends here: [`MultipartFile::written`] drops the rest.
                            self.state = State::Done;
                            return Ok(Some(at));
                        }
                        self.count_prefix(at)?;
                        self.buf.drain(..at + self.delimiter.len());
                        if self.state == State::Body {
                            self.part += 1;
                        }
                        self.state = State::AfterDelimiter;
                        continue;
                    }
                    // Everything but a possible start of the delimiter is content.
                    let keep = self.delimiter.len() - 1;
                    if self.buf.len() > keep {
                        let n = self.buf.len() - keep;
                        if in_file {
                            return Ok(Some(n));
                        }
                        self.count_prefix(n)?;
                        self.buf.drain(..n);
                    }
                    return Ok(None);
                }
                State::AfterDelimiter => {
                    if self.buf.starts_with(b"--") {
                        return Err(malformed("it ended before a file part"));
                    }
                    let Some(at) = find(&self.buf, b"\r\n") else {
                        if self.buf.len() > 1024 {
                            return Err(malformed("a delimiter line is too long"));
                        }
                        return Ok(None);
                    };
                    if self.buf[..at].iter().any(|b| !matches!(b, b' ' | b'\t')) {
                        return Err(malformed("text after a delimiter"));
                    }
                    self.count_prefix(at + 2)?;
                    self.buf.drain(..at + 2);
                    self.state = State::Headers;
                }
                State::Headers => {
                    let (headers_end, skip) = if self.buf.starts_with(b"\r\n") {
                        (0, 2)
                    } else if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                        (at, at + 4)
                    } else {
                        if self.buf.len() > MAX_HEADER_BYTES {
                            return Err(malformed("a part's headers are too long"));
                        }
                        return Ok(None);
                    };
                    if headers_end > MAX_HEADER_BYTES {
                        return Err(malformed("a part's headers are too long"));
                    }
                    if self.part == 1 {
                        let headers = std::str::from_utf8(&self.buf[..headers_end])
                            .map_err(|_| malformed("headers that are not UTF-8"))?;
                        self.file = parse_headers(headers)?;
                    } else {
                        self.count_prefix(skip)?;
                    }
                    self.buf.drain(..skip);
                    self.state = State::Body;
                }
                State::Done => return Ok(None),
            }
        }
    }

    /// The first `n` bytes of the buffer, the file's, are written.
    fn written(&mut self, n: usize) {
        if self.state == State::Done {
            self.buf = Vec::new();
        } else {
            self.buf.drain(..n);
        }
    }

    /// The file part's headers, once the body ended after it.
    pub fn finish(self) -> Result<FilePart> {
        if self.state != State::Done {
            return Err(malformed("it ended inside the file part or before it"));
        }
        Ok(self.file)
    }
}

fn parse_headers(headers: &str) -> Result<FilePart> {
    let mut part = FilePart::default();
    for line in headers.split("\r\n") {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-type" => part.content_type = Some(value.to_owned()),
            "content-disposition" => {
                part.filename = ContentDisposition::try_from(value.as_bytes())
                    .ok()
                    .and_then(|d| d.filename)
            }
            // A redirect to a CDN instead of the file: not followed.
            "location" => return Err(malformed("a redirect instead of the file")),
            _ => {}
        }
    }
    Ok(part)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use paracord_core::Config;
    use paracord_storage::Db;

    use super::*;
    use crate::media::Media;

    const BODY: &[u8] = b"preamble\r\n--XyZ\r\nContent-Type: application/json\r\n\r\n{}\r\n--XyZ\r\nContent-Type: image/png\r\nContent-Disposition: inline; filename=\"a b.png\"\r\n\r\nfile\r\n--Xy no --XyZ\r\n-\r\n--XyZ--\r\n";

    async fn parse(body: &[u8], chunk: usize) -> Result<(FilePart, Vec<u8>)> {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&dir.path().join("db")).unwrap());
        let config = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        let media = Media::new(db, Arc::new(config)).unwrap();
        let mut file = media.cache_file().await.unwrap();
        let mut parser = MultipartFile::new("XyZ");
        for c in body.chunks(chunk) {
            parser.feed(c, &mut file).await?;
        }
        let part = parser.finish()?;
        media
            .commit_remote("a.example", "m", file, None, None)
            .await?;
        let (_, path) = media.locate(&Media::remote_key("a.example", "m"))?;
        Ok((part, std::fs::read(path).unwrap()))
    }

    #[tokio::test]
    async fn the_file_part_is_read_whatever_the_chunking() {
        for chunk in [1, 2, 3, 5, 7, 16, 1000] {
            let (part, bytes) = parse(BODY, chunk).await.unwrap();
            assert_eq!(bytes, b"file\r\n--Xy no --XyZ\r\n-", "chunks of {chunk}");
            assert_eq!(part.content_type.as_deref(), Some("image/png"));
            assert_eq!(part.filename.as_deref(), Some("a b.png"));
        }
        // No preamble, the delimiter first, as ruma and Synapse send it.
        let body = b"--XyZ\r\n\r\n{}\r\n--XyZ\r\n\r\nraw\r\n--XyZ--";
        let (part, bytes) = parse(body, 4).await.unwrap();
        assert_eq!(bytes, b"raw");
        assert_eq!(part, FilePart::default());
    }

    #[tokio::test]
    async fn malformed_answers_are_bad_gateway() {
        for body in [
            &b"no delimiter at all"[..],
            b"--XyZ\r\n\r\n{}\r\n--XyZ--\r\n",
            b"--XyZ\r\n\r\n{}\r\n--XyZ\r\n\r\nthe file never ends",
            b"--XyZ\r\n\r\n{}\r\n--XyZ\r\nLocation: https://cdn.example/x\r\n\r\n\r\n--XyZ--",
        ] {
            let err = parse(body, 3).await.unwrap_err();
            assert_eq!(
                err.classify().0,
                http::StatusCode::BAD_GATEWAY,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let huge_prefix = [b"--XyZ\r\n\r\n".as_slice(), &vec![b'x'; 100_000]].concat();
        let err = parse(&huge_prefix, 4096).await.unwrap_err();
        assert_eq!(err.classify().0, http::StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn boundaries_are_read_from_the_content_type() {
        assert_eq!(
            multipart_boundary("multipart/mixed; boundary=\"abc\"").as_deref(),
            Some("abc")
        );
        assert_eq!(
            multipart_boundary("multipart/mixed;boundary=abc").as_deref(),
            Some("abc")
        );
        assert_eq!(multipart_boundary("multipart/mixed"), None);
        assert_eq!(multipart_boundary("multipart/mixed; boundary="), None);
    }
}
