//! A small HTTP/1.1 client over `std::net::TcpStream`, optionally wrapped in rustls.
//!
//! Only what the Kubernetes list+watch needs: `GET` with headers, one request per connection
//! (`Connection: close`), response bodies with `Content-Length`, `Transfer-Encoding: chunked`
//! or read-to-close. Owning the framing means a watch body is handed to the JSON decoder as
//! bytes arrive, a connection cut inside a chunk is an error (not a clean end), and the socket
//! can be shut down from another thread to stop a blocked read.

use rustls_pki_types::ServerName;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

/// Where to connect and how.
#[derive(Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// Prepended to every request path (a kubeconfig server URL may have one).
    pub base_path: String,
    /// `None` = plain HTTP.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Name the server certificate must match (defaults to `host`; an IP matches IP SANs).
    pub server_name: Option<String>,
    pub connect_timeout: Duration,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            if self.tls.is_some() { "https" } else { "http" },
            self.authority(),
            self.base_path
        )
    }
}

impl Endpoint {
    /// `host:port`, with brackets around an IPv6 host.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// What went wrong with a request; `kind` tells the caller whether a retry can help.
#[derive(Debug)]
pub struct HttpError {
    pub kind: HttpErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpErrorKind {
    /// Name resolution or TCP connect failed.
    Connect,
    /// TLS handshake or certificate verification failed.
    Tls,
    /// The connection broke or timed out after it was established.
    Io,
    /// The server sent something that is not HTTP/1.x.
    Protocol,
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HttpError {}

fn error(kind: HttpErrorKind, message: String) -> HttpError {
    HttpError { kind, message }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => match s.read(buf) {
                // A peer that closes without close_notify: treat as end of stream; the body
                // framing (chunked / Content-Length) decides whether that was complete.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                other => other,
            },
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// A response whose body is read as it arrives.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    body: Body,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Reads the whole body, refusing more than `limit` bytes.
    pub fn read_to_end(&mut self, limit: usize) -> Result<Vec<u8>, HttpError> {
        let mut out = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let n = self.read(&mut chunk).map_err(io_error)?;
            if n == 0 {
                return Ok(out);
            }
            if out.len() + n > limit {
                return Err(error(
                    HttpErrorKind::Protocol,
                    format!("response body larger than {limit} bytes"),
                ));
            }
            out.extend_from_slice(&chunk[..n]);
        }
    }
}

impl Read for Response {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.body.read(buf)
    }
}

enum Framing {
    Length { remaining: u64 },
    Chunked { remaining_in_chunk: u64, done: bool },
    UntilClose,
}

struct Body {
    reader: BufReader<Stream>,
    framing: Framing,
}

const MAX_LINE: usize = 16 * 1024;

fn read_line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    let n = reader.take(MAX_LINE as u64).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed by the server",
        ));
    }
    if line.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "line too long or cut off",
        ));
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    String::from_utf8(line)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "line is not UTF-8"))
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        match &mut self.framing {
            Framing::Length { remaining } => {
                if *remaining == 0 {
                    return Ok(0);
                }
                let want = buf
                    .len()
                    .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                let n = self.reader.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("connection closed with {remaining} body bytes still due"),
                    ));
                }
                *remaining -= n as u64;
                Ok(n)
            }
            Framing::UntilClose => self.reader.read(buf),
            Framing::Chunked {
                remaining_in_chunk,
                done,
            } => {
                if *done {
                    return Ok(0);
                }
                if *remaining_in_chunk == 0 {
                    let line = read_line(&mut self.reader)?;
                    let size_text = line.split(';').next().unwrap_or("").trim();
                    let size = u64::from_str_radix(size_text, 16).map_err(|_| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("bad chunk size line {line:?}"),
                        )
                    })?;
                    if size == 0 {
                        // Trailers, up to the empty line.
                        while !read_line(&mut self.reader)?.is_empty() {}
                        *done = true;
                        return Ok(0);
                    }
                    *remaining_in_chunk = size;
                }
                let want = buf
                    .len()
                    .min(usize::try_from(*remaining_in_chunk).unwrap_or(usize::MAX));
                let n = self.reader.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed inside a chunk",
                    ));
                }
                *remaining_in_chunk -= n as u64;
                if *remaining_in_chunk == 0 {
                    let end = read_line(&mut self.reader)?;
                    if !end.is_empty() {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "chunk not followed by CRLF",
                        ));
                    }
                }
                Ok(n)
            }
        }
    }
}

fn io_error(e: io::Error) -> HttpError {
    error(HttpErrorKind::Io, e.to_string())
}

fn connect(endpoint: &Endpoint) -> Result<TcpStream, HttpError> {
    let addrs: Vec<SocketAddr> = (endpoint.host.as_str(), endpoint.port)
        .to_socket_addrs()
        .map_err(|e| {
            error(
                HttpErrorKind::Connect,
                format!("cannot resolve {}: {e}", endpoint.authority()),
            )
        })?
        .collect();
    let mut last = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, endpoint.connect_timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(error(
        HttpErrorKind::Connect,
        match last {
            Some(e) => format!("cannot connect to {}: {e}", endpoint.authority()),
            None => format!("{} resolves to no address", endpoint.authority()),
        },
    ))
}

/// Sends `GET base_path + path_and_query` and reads the response head.
///
/// `on_connect` receives a clone of the socket (to shut it down from another thread);
/// `read_timeout` bounds every single read, so a silent peer is noticed.
pub fn get(
    endpoint: &Endpoint,
    path_and_query: &str,
    headers: &[(&str, &str)],
    read_timeout: Duration,
    on_connect: &mut dyn FnMut(&TcpStream),
) -> Result<Response, HttpError> {
    let tcp = connect(endpoint)?;
    tcp.set_read_timeout(Some(read_timeout)).map_err(io_error)?;
    tcp.set_write_timeout(Some(read_timeout))
        .map_err(io_error)?;
    let _ = tcp.set_nodelay(true);
    on_connect(&tcp);
    let mut stream = match &endpoint.tls {
        None => Stream::Plain(tcp),
        Some(tls) => {
            let name_text = endpoint.server_name.as_deref().unwrap_or(&endpoint.host);
            let name = ServerName::try_from(name_text.to_string()).map_err(|_| {
                error(
                    HttpErrorKind::Tls,
                    format!("{name_text:?} is not a valid TLS server name or IP address"),
                )
            })?;
            let connection = rustls::ClientConnection::new(Arc::clone(tls), name)
                .map_err(|e| error(HttpErrorKind::Tls, format!("TLS setup: {e}")))?;
            let mut owned = rustls::StreamOwned::new(connection, tcp);
            while owned.conn.is_handshaking() {
                owned.conn.complete_io(&mut owned.sock).map_err(|e| {
                    error(
                        HttpErrorKind::Tls,
                        format!("TLS handshake with {} failed: {e}", endpoint.authority()),
                    )
                })?;
            }
            Stream::Tls(Box::new(owned))
        }
    };
    let mut request = format!(
        "GET {}{} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        endpoint.base_path,
        path_and_query,
        endpoint.authority()
    );
    for (name, value) in headers {
        if value.contains(['\r', '\n']) || name.contains(['\r', '\n', ':']) {
            return Err(error(
                HttpErrorKind::Protocol,
                format!("header {name:?} contains a line break; refusing to send it"),
            ));
        }
        request.push_str(name);
        request.push_str(": ");
        request.push_str(value);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).map_err(io_error)?;
    stream.flush().map_err(io_error)?;

    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let status_line = read_line(&mut reader).map_err(io_error)?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let status = parts
        .next()
        .and_then(|code| code.parse::<u16>().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| {
            error(
                HttpErrorKind::Protocol,
                format!("not an HTTP/1.x status line: {status_line:?}"),
            )
        })?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(&mut reader).map_err(io_error)?;
        if line.is_empty() {
            break;
        }
        if headers.len() >= 200 {
            return Err(error(
                HttpErrorKind::Protocol,
                "more than 200 response headers".to_string(),
            ));
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _): &&(String, String)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let framing =
        if find("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
            Framing::Chunked {
                remaining_in_chunk: 0,
                done: false,
            }
        } else if let Some(length) = find("content-length") {
            let remaining = length.parse::<u64>().map_err(|_| {
                error(
                    HttpErrorKind::Protocol,
                    format!("bad Content-Length {length:?}"),
                )
            })?;
            Framing::Length { remaining }
        } else if status == 204 || status == 304 {
            Framing::Length { remaining: 0 }
        } else {
            Framing::UntilClose
        };
    Ok(Response {
        status,
        headers,
        body: Body { reader, framing },
    })
}

/// Shuts a socket down (both directions) so a read blocked on it in another thread returns.
pub fn shutdown(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Both);
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
pub fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    fn serve_once(reply: &'static [u8]) -> (Endpoint, thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(sock.try_clone().unwrap());
            let mut request = String::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                request.push_str(&line);
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            sock.write_all(reply).unwrap();
            request
        });
        let endpoint = Endpoint {
            host: "127.0.0.1".into(),
            port,
            base_path: "/prefix".into(),
            tls: None,
            server_name: None,
            connect_timeout: Duration::from_secs(5),
        };
        (endpoint, handle)
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers() {
        let (endpoint, server) = serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: y\r\n\r\n",
        );
        let mut response = get(
            &endpoint,
            "/api?x=1",
            &[("Accept", "application/json")],
            Duration::from_secs(5),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.read_to_end(1 << 20).unwrap(), b"hello world");
        let request = server.join().unwrap();
        assert!(
            request.starts_with("GET /prefix/api?x=1 HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("Accept: application/json\r\n"));
    }

    #[test]
    fn connection_cut_inside_a_chunk_is_an_error() {
        let (endpoint, server) =
            serve_once(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nonly-part");
        let mut response = get(&endpoint, "/", &[], Duration::from_secs(5), &mut |_| {}).unwrap();
        server.join().unwrap();
        let err = response.read_to_end(1 << 20).unwrap_err();
        assert_eq!(err.kind, HttpErrorKind::Io, "{err}");
    }

    #[test]
    fn content_length_and_status() {
        let (endpoint, server) =
            serve_once(b"HTTP/1.1 410 Gone\r\nContent-Length: 4\r\n\r\ngoneEXTRA");
        let mut response = get(&endpoint, "/", &[], Duration::from_secs(5), &mut |_| {}).unwrap();
        server.join().unwrap();
        assert_eq!(response.status, 410);
        assert_eq!(response.read_to_end(100).unwrap(), b"gone");
    }

    #[test]
    fn header_injection_is_refused() {
        let (endpoint, _server) = serve_once(b"HTTP/1.1 200 OK\r\n\r\n");
        let err = get(
            &endpoint,
            "/",
            &[("Authorization", "Bearer a\r\nX: y")],
            Duration::from_secs(5),
            &mut |_| {},
        )
        .err()
        .unwrap();
        assert_eq!(err.kind, HttpErrorKind::Protocol);
    }

    #[test]
    fn query_encoding() {
        assert_eq!(
            encode_query_value("spec.nodeName=node 1/ä"),
            "spec.nodeName%3Dnode%201%2F%C3%A4"
        );
    }
}
