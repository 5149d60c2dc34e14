//! Answers to requests that never reach the router: hyper refuses a request it cannot parse
//! (400), whose URI is too long (414) or whose header section is too large (431) by writing
//! a bare response of its own, with no way to shape it. [`EarlyErrors`] wraps a connection
//! and replaces exactly those bare responses with the API's: the same status, the security
//! headers, and a JSON error body.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::middleware::SECURITY_HEADERS;

/// hyper's automatic answers are a status line and three headers; anything longer is not one.
const MAX_AUTOMATIC_RESPONSE: usize = 256;

/// How every automatic response starts.
const AUTOMATIC_PREFIX: &[u8] = b"HTTP/1.1 4";

/// A connection whose bare parse-error responses are replaced by API error responses.
pub struct EarlyErrors<I> {
    inner: I,
    /// A replacement being written, and how much of it is written; the bytes hyper asked
    /// to write count as written once all of it is.
    replacing: Option<(Vec<u8>, usize)>,
}

impl<I> EarlyErrors<I> {
    /// Wraps `inner`.
    pub fn new(inner: I) -> Self {
        Self {
            inner,
            replacing: None,
        }
    }
}

/// The API's answer for the status of an automatic response, if `written` is one: exactly
/// the head hyper writes for a parse error (`connection: close`, `content-length: 0` and
/// `date`, nothing else, nothing after). The app's own responses always carry the security
/// headers, so they never match.
fn replacement(written: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(written).ok()?;
    let head = text.strip_suffix("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let (code, message, error) = match status_line {
        "HTTP/1.1 400 Bad Request" => (
            400,
            "Bad Request",
            ("bad_request", "the request could not be parsed as HTTP/1.1"),
        ),
        "HTTP/1.1 414 URI Too Long" => (
            414,
            "URI Too Long",
            ("uri_too_long", "the request target is too long"),
        ),
        "HTTP/1.1 431 Request Header Fields Too Large" => (
            431,
            "Request Header Fields Too Large",
            (
                "headers_too_large",
                "the request has too many header fields, or they are too large",
            ),
        ),
        _ => return None,
    };
    let mut date = None;
    for line in lines {
        let (name, value) = line.split_once(": ")?;
        match name.to_ascii_lowercase().as_str() {
            "connection" if value == "close" => {}
            "content-length" if value == "0" => {}
            "date" => date = Some(value),
            _ => return None,
        }
    }
    let request_id = uuid::Uuid::new_v4().simple().to_string();
    let body = serde_json::json!({
        "error": {"code": error.0, "message": error.1, "request_id": request_id}
    })
    .to_string();
    let mut response = format!(
        "HTTP/1.1 {code} {message}\r\nconnection: close\r\ncontent-type: application/json\r\n\
         content-length: {}\r\ncache-control: no-store\r\nx-request-id: {request_id}\r\n",
        body.len()
    );
    for (name, value) in SECURITY_HEADERS {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(date) = date {
        response.push_str(&format!("date: {date}\r\n"));
    }
    response.push_str("\r\n");
    response.push_str(&body);
    Some(response.into_bytes())
}

impl<I: AsyncWrite + Unpin> EarlyErrors<I> {
    /// Writes `written` through, or its replacement when it is an automatic response;
    /// reports `written.len()` bytes written only once the whole replacement is.
    fn write_or_replace(
        &mut self,
        cx: &mut Context<'_>,
        written: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.replacing.is_none() {
            match (written.len() <= MAX_AUTOMATIC_RESPONSE && written.starts_with(AUTOMATIC_PREFIX))
                .then(|| replacement(written))
                .flatten()
            {
                Some(bytes) => self.replacing = Some((bytes, 0)),
                None => return Pin::new(&mut self.inner).poll_write(cx, written),
            }
        }
        while let Some((bytes, done)) = &mut self.replacing {
            if *done == bytes.len() {
                self.replacing = None;
                return Poll::Ready(Ok(written.len()));
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *done += n;
        }
        Poll::Ready(Ok(written.len()))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for EarlyErrors<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for EarlyErrors<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write_or_replace(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let first = bufs.iter().find(|b| !b.is_empty());
        let candidate = total <= MAX_AUTOMATIC_RESPONSE
            && first.is_some_and(|b| b.starts_with(AUTOMATIC_PREFIX));
        if self.replacing.is_some() || candidate {
            let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            return self.write_or_replace(cx, &joined);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_automatic_answers_are_replaced_with_api_errors() {
        for (status, code) in [
            ("400 Bad Request", "bad_request"),
            ("414 URI Too Long", "uri_too_long"),
            ("431 Request Header Fields Too Large", "headers_too_large"),
        ] {
            let bare = format!(
                "HTTP/1.1 {status}\r\nconnection: close\r\ncontent-length: 0\r\n\
                 date: Fri, 04 Dec 2026 18:42:03 GMT\r\n\r\n"
            );
            let answer = String::from_utf8(replacement(bare.as_bytes()).unwrap()).unwrap();
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status}\r\n")),
                "{answer}"
            );
            assert!(
                answer.contains("x-content-type-options: nosniff\r\n"),
                "{answer}"
            );
            assert!(answer.contains("date: Fri, 04 Dec 2026 18:42:03 GMT\r\n"));
            let (head, body) = answer.split_once("\r\n\r\n").unwrap();
            assert!(head.contains(&format!("content-length: {}", body.len())));
            let body: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(body["error"]["code"], code);
        }
    }

    #[test]
    fn anything_else_is_left_alone() {
        for written in [
            // The app's own error: it has more headers.
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n",
            // A body, or part of one.
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}",
            "{\"error\":{}}",
            // Another status.
            "HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 5\r\n\r\n",
        ] {
            assert_eq!(replacement(written.as_bytes()), None, "{written}");
        }
    }
}
