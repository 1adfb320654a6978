//! Decoder for a watch body: a stream of JSON objects `{"type":…,"object":…}`, usually one per
//! line, but split on JSON value boundaries (as client-go does) — never on chunk boundaries or
//! newlines, which the server does not promise.

use super::pod::{PodInfo, RawObject};
use serde::Deserialize;
use std::fmt;

/// A `metav1.Status` carried by an `ERROR` event or an HTTP error body.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ApiStatus {
    /// The HTTP-like code (410 = the resource version is too old).
    pub code: u16,
    pub reason: String,
    pub message: String,
}

impl ApiStatus {
    /// Parses a Status body; anything else yields a status with only `code` set.
    pub fn from_body(code: u16, body: &[u8]) -> ApiStatus {
        let parsed: Option<RawObject> = serde_json::from_slice(body).ok();
        let mut status = parsed.map(|raw| status_of(&raw)).unwrap_or_default();
        if status.code == 0 {
            status.code = code;
        }
        if status.message.is_empty() {
            status.message = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        }
        status
    }

    /// 410 Gone / Expired: the requested resourceVersion is no longer available.
    pub fn is_expired(&self) -> bool {
        self.code == 410 || self.reason == "Expired" || self.reason == "Gone"
    }
}

impl fmt::Display for ApiStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

fn status_of(raw: &RawObject) -> ApiStatus {
    ApiStatus {
        code: raw
            .code
            .as_ref()
            .and_then(|n| n.as_u64())
            .and_then(|n| u16::try_from(n).ok())
            .unwrap_or(0),
        reason: raw.reason.clone().unwrap_or_default(),
        message: raw.message.clone().unwrap_or_default(),
    }
}

/// One decoded watch event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    Added(PodInfo),
    Modified(PodInfo),
    Deleted(PodInfo),
    /// Only the resource version is meaningful; the rest of a bookmark is never a pod.
    Bookmark {
        resource_version: String,
    },
    /// The server ended the watch with a Status (410 = relist).
    Error(ApiStatus),
    /// An event type this client does not know; skipped.
    Unknown {
        event_type: String,
    },
    /// Valid JSON that is not a watch event (wrong shape or field types); skipped.
    Malformed {
        reason: String,
    },
}

impl WatchEvent {
    /// The resource version a watch may resume from after this event.
    pub fn resource_version(&self) -> Option<&str> {
        let rv = match self {
            WatchEvent::Added(p) | WatchEvent::Modified(p) | WatchEvent::Deleted(p) => {
                p.resource_version.as_str()
            }
            WatchEvent::Bookmark { resource_version } => resource_version.as_str(),
            _ => return None,
        };
        (!rv.is_empty()).then_some(rv)
    }
}

/// The stream cannot be decoded further: reconnect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Bytes that are not JSON at `offset` (counted from the start of the stream).
    Syntax { offset: u64, detail: String },
    /// One event larger than the decoder's limit.
    TooLarge { limit: usize },
    /// The stream ended inside an event.
    Truncated { pending_bytes: usize },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Syntax { offset, detail } => {
                write!(f, "watch stream is not JSON at byte {offset}: {detail}")
            }
            DecodeError::TooLarge { limit } => write!(
                f,
                "a watch event is larger than {limit} bytes; the stream is dropped and re-watched"
            ),
            DecodeError::Truncated { pending_bytes } => write!(
                f,
                "watch stream ended inside an event ({pending_bytes} bytes of it received)"
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    object: Option<RawObject>,
}

/// Incremental decoder: [`feed`](WatchDecoder::feed) bytes as they arrive, then take events
/// with [`next_event`](WatchDecoder::next_event) until it returns `Ok(None)`.
pub struct WatchDecoder {
    buffer: Vec<u8>,
    /// Start of the undecoded part of `buffer`.
    position: usize,
    /// Bytes of the stream dropped from `buffer` before `position`.
    consumed_total: u64,
    /// An incomplete event is only retried once this many bytes are buffered (or a newline
    /// arrives), so a large object arriving in small pieces is not re-parsed for every piece.
    retry_at_len: usize,
    saw_newline: bool,
    limit: usize,
}

impl Default for WatchDecoder {
    fn default() -> Self {
        WatchDecoder::new(WatchDecoder::DEFAULT_LIMIT)
    }
}

impl WatchDecoder {
    /// 64 MiB: far above any real Pod (etcd's own limit is 1.5 MiB per object).
    pub const DEFAULT_LIMIT: usize = 64 << 20;

    pub fn new(limit: usize) -> WatchDecoder {
        WatchDecoder {
            buffer: Vec::new(),
            position: 0,
            consumed_total: 0,
            retry_at_len: 0,
            saw_newline: false,
            limit,
        }
    }

    /// Adds received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.position > 0 && self.position == self.buffer.len() {
            self.consumed_total += self.position as u64;
            self.buffer.clear();
            self.position = 0;
        } else if self.position > 0 && self.position >= self.buffer.len() / 2 {
            self.consumed_total += self.position as u64;
            self.buffer.drain(..self.position);
            self.retry_at_len = self.retry_at_len.saturating_sub(self.position);
            self.position = 0;
        }
        if bytes.contains(&b'\n') {
            self.saw_newline = true;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes received but not yet decoded (excluding whitespace between events).
    pub fn pending(&self) -> usize {
        self.buffer[self.position..]
            .iter()
            .skip_while(|b| b.is_ascii_whitespace())
            .count()
    }

    /// Tells the decoder that no more bytes will come, so the next [`next_event`] calls try
    /// the buffered bytes at once instead of waiting for a newline or more data.
    ///
    /// [`next_event`]: WatchDecoder::next_event
    pub fn end_of_input(&mut self) {
        self.retry_at_len = 0;
        self.saw_newline = true;
    }

    /// At the end of the stream (after draining): an error if an event was cut off.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.pending() {
            0 => Ok(()),
            pending_bytes => Err(DecodeError::Truncated { pending_bytes }),
        }
    }

    /// The next complete event, `Ok(None)` if more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<WatchEvent>, DecodeError> {
        while self.position < self.buffer.len() && self.buffer[self.position].is_ascii_whitespace()
        {
            self.position += 1;
        }
        let rest = &self.buffer[self.position..];
        if rest.is_empty() {
            return Ok(None);
        }
        if rest.len() < self.retry_at_len && !self.saw_newline {
            return Ok(None);
        }
        let mut stream = serde_json::Deserializer::from_slice(rest).into_iter::<RawEvent>();
        let result = stream.next();
        let end = stream.byte_offset();
        match result {
            None => Ok(None),
            Some(Ok(raw)) => {
                self.advance(end);
                Ok(Some(convert(raw)))
            }
            Some(Err(e)) if e.is_eof() => {
                if rest.len() > self.limit {
                    return Err(DecodeError::TooLarge { limit: self.limit });
                }
                self.retry_at_len = rest.len().saturating_mul(2);
                self.saw_newline = false;
                Ok(None)
            }
            Some(Err(e)) if e.is_data() => {
                // Well-formed JSON of the wrong shape: skip exactly that value.
                let mut skip =
                    serde_json::Deserializer::from_slice(rest).into_iter::<serde::de::IgnoredAny>();
                match skip.next() {
                    Some(Ok(_)) => {
                        let end = skip.byte_offset();
                        self.advance(end);
                        Ok(Some(WatchEvent::Malformed {
                            reason: e.to_string(),
                        }))
                    }
                    Some(Err(e2)) if e2.is_eof() => {
                        self.retry_at_len = rest.len().saturating_mul(2);
                        self.saw_newline = false;
                        Ok(None)
                    }
                    _ => Err(self.syntax_error(&e)),
                }
            }
            Some(Err(e)) => Err(self.syntax_error(&e)),
        }
    }

    fn advance(&mut self, by: usize) {
        self.position += by;
        self.retry_at_len = 0;
    }

    fn syntax_error(&self, e: &serde_json::Error) -> DecodeError {
        DecodeError::Syntax {
            offset: self.consumed_total + self.position as u64,
            detail: e.to_string(),
        }
    }
}

fn convert(raw: RawEvent) -> WatchEvent {
    let object = raw.object.unwrap_or_default();
    match raw.event_type.as_str() {
        "ADDED" => WatchEvent::Added(object.into_pod()),
        "MODIFIED" => WatchEvent::Modified(object.into_pod()),
        "DELETED" => WatchEvent::Deleted(object.into_pod()),
        "BOOKMARK" => WatchEvent::Bookmark {
            resource_version: object.resource_version().unwrap_or_default().to_string(),
        },
        "ERROR" => WatchEvent::Error(status_of(&object)),
        other => WatchEvent::Unknown {
            event_type: other.chars().take(64).collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(decoder: &mut WatchDecoder) -> Vec<WatchEvent> {
        let mut out = Vec::new();
        while let Some(event) = decoder.next_event().unwrap() {
            out.push(event);
        }
        out
    }

    const TWO: &[u8] = br#"{"type":"ADDED","object":{"metadata":{"uid":"a","resourceVersion":"1"}}}
{"type":"BOOKMARK","object":{"kind":"Pod","metadata":{"resourceVersion":"5"},"spec":{"containers":null},"status":{}}}
"#;

    #[test]
    fn every_split_point_gives_the_same_events() {
        let mut whole = WatchDecoder::default();
        whole.feed(TWO);
        let expected = drain(&mut whole);
        assert_eq!(expected.len(), 2);
        assert_eq!(expected[1].resource_version(), Some("5"));
        for split in 0..TWO.len() {
            let mut decoder = WatchDecoder::default();
            decoder.feed(&TWO[..split]);
            let mut got = drain(&mut decoder);
            decoder.feed(&TWO[split..]);
            got.extend(drain(&mut decoder));
            decoder.end_of_input();
            got.extend(drain(&mut decoder));
            assert_eq!(got, expected, "split at {split}");
            decoder.finish().unwrap();
        }
    }

    #[test]
    fn byte_by_byte_and_without_newlines() {
        let stream = br#"{"type":"DELETED","object":{"metadata":{"uid":"x"}}}{"type":"ERROR","object":{"kind":"Status","status":"Failure","reason":"Expired","code":410,"message":"too old"}}"#;
        let mut decoder = WatchDecoder::default();
        let mut got = Vec::new();
        for byte in stream.iter() {
            decoder.feed(std::slice::from_ref(byte));
            got.extend(drain(&mut decoder));
        }
        decoder.end_of_input();
        got.extend(drain(&mut decoder));
        decoder.finish().unwrap();
        assert_eq!(got.len(), 2, "{got:?}");
        match &got[1] {
            WatchEvent::Error(status) => assert!(status.is_expired()),
            other => panic!("expected ERROR, got {other:?}"),
        }
    }

    #[test]
    fn wrong_shape_is_skipped_and_garbage_is_an_error() {
        let mut decoder = WatchDecoder::default();
        decoder.feed(b"{\"type\":5}\n[1,2]\n{\"type\":\"WHAT\"}\n");
        let events = drain(&mut decoder);
        assert!(matches!(events[0], WatchEvent::Malformed { .. }));
        assert!(matches!(events[1], WatchEvent::Malformed { .. }));
        assert!(matches!(events[2], WatchEvent::Unknown { .. }));
        decoder.feed(b"}garbage");
        assert!(matches!(
            decoder.next_event(),
            Err(DecodeError::Syntax { .. })
        ));
    }

    #[test]
    fn cut_off_event_is_reported_and_size_is_bounded() {
        let mut decoder = WatchDecoder::default();
        decoder.feed(b"{\"type\":\"ADDED\",\"obj");
        assert_eq!(decoder.next_event(), Ok(None));
        assert!(matches!(
            decoder.finish(),
            Err(DecodeError::Truncated { .. })
        ));
        let mut small = WatchDecoder::new(16);
        small.feed(b"{\"type\":\"ADDED\",\"object\":{\"metadata\":\n");
        assert_eq!(small.next_event(), Err(DecodeError::TooLarge { limit: 16 }));
    }
}
