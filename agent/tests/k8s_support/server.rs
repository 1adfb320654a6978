//! A real HTTP/1.1 server (plain or TLS) on loopback that speaks the Kubernetes pod
//! list+watch protocol the way kube-apiserver does: JSON PodList with `limit`/`continue`,
//! `fieldSelector=spec.nodeName=…`, chunked watch streams of `{"type","object"}` lines,
//! bookmarks, in-stream ERROR 410 and HTTP 410, 401 for a wrong token, `timeoutSeconds`.
//! Tests drive it (add/modify/delete pods, compact history, close watches, inject faults) and
//! read the request log.

use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// One request the server received.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub authorization: Option<String>,
}

impl RequestRecord {
    pub fn is_watch(&self) -> bool {
        self.query
            .get("watch")
            .is_some_and(|v| v == "true" || v == "1")
    }
}

#[derive(Clone)]
struct HistoryEntry {
    version: u64,
    event_type: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    pods: BTreeMap<String, Value>,
    /// Each pod as a list item (no kind/apiVersion), serialized once per change.
    list_items: BTreeMap<String, (Option<String>, String)>,
    version: u64,
    history: Vec<HistoryEntry>,
    /// A watch from a version below this gets ERROR 410 (history compacted).
    oldest_watchable: u64,
    tokens: Option<HashSet<String>>,
    requests: Vec<RequestRecord>,
    watch_generation: u64,
    /// Status codes for the next watch requests (e.g. 410, 429, 500).
    watch_failures: VecDeque<u16>,
    /// Status codes for the next list requests.
    list_failures: VecDeque<u16>,
    drop_next_event: bool,
    /// Other objects served by plain GET at their API path (e.g. a DaemonSet).
    objects: BTreeMap<String, Value>,
    /// Continue tokens handed out, to reject reuse with a resourceVersion.
    active_watches: usize,
}

impl State {
    fn set_pod(&mut self, uid: String, pod: Value) {
        let mut item = pod.clone();
        if let Some(o) = item.as_object_mut() {
            // Real list items carry no kind/apiVersion.
            o.remove("kind");
            o.remove("apiVersion");
        }
        let node = node_of(&pod).map(str::to_string);
        self.list_items
            .insert(uid.clone(), (node, item.to_string()));
        self.pods.insert(uid, pod);
    }
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
}

/// TLS material for the server; `client_ca_der` turns on client-certificate checking.
pub struct ServerTls {
    pub cert_chain_der: Vec<Vec<u8>>,
    pub key_pkcs8_der: Vec<u8>,
    pub client_ca_der: Option<Vec<u8>>,
}

pub struct FakeApiServer {
    shared: Arc<Shared>,
    pub addr: SocketAddr,
    accept_thread: Option<thread::JoinHandle<()>>,
}

trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn node_of(object: &Value) -> Option<&str> {
    object.pointer("/spec/nodeName").and_then(|n| n.as_str())
}

fn status_body(code: u16, reason: &str, message: &str) -> String {
    json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
           "message":message,"reason":reason,"code":code})
    .to_string()
}

impl FakeApiServer {
    pub fn start(tls: Option<ServerTls>) -> FakeApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                version: 100,
                oldest_watchable: 0,
                ..State::default()
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let tls_config = tls.map(|tls| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()
                .unwrap();
            let builder = match tls.client_ca_der {
                None => builder.with_no_client_auth(),
                Some(ca) => {
                    let mut roots = rustls::RootCertStore::empty();
                    roots.add(ca.into()).unwrap();
                    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                        Arc::new(roots),
                        provider,
                    )
                    .build()
                    .unwrap();
                    builder.with_client_cert_verifier(verifier)
                }
            };
            Arc::new(
                builder
                    .with_single_cert(
                        tls.cert_chain_der.into_iter().map(Into::into).collect(),
                        rustls_pki_types::PrivateKeyDer::Pkcs8(tls.key_pkcs8_der.into()),
                    )
                    .unwrap(),
            )
        });
        let accept_shared = Arc::clone(&shared);
        let accept_thread = thread::spawn(move || {
            while !accept_shared.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((socket, _)) => {
                        socket.set_nonblocking(false).unwrap();
                        let shared = Arc::clone(&accept_shared);
                        let tls = tls_config.clone();
                        thread::spawn(move || {
                            let _ = socket.set_read_timeout(Some(Duration::from_secs(10)));
                            let conn: Box<dyn Conn> = match tls {
                                None => Box::new(socket),
                                Some(config) => {
                                    let Ok(server) = rustls::ServerConnection::new(config) else {
                                        return;
                                    };
                                    Box::new(rustls::StreamOwned::new(server, socket))
                                }
                            };
                            handle(shared, conn);
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FakeApiServer {
            shared,
            addr,
            accept_thread: Some(accept_thread),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, state: &mut State, event_type: &'static str, object: Value) {
        state.history.push(HistoryEntry {
            version: state.version,
            event_type,
            object,
        });
        self.shared.changed.notify_all();
    }

    /// Only requests with `Authorization: Bearer <one of tokens>` are served.
    pub fn require_tokens(&self, tokens: &[&str]) {
        self.lock().tokens = Some(tokens.iter().map(|t| t.to_string()).collect());
    }

    /// Adds a pod (must carry metadata.uid); returns its resourceVersion.
    pub fn add_pod(&self, mut pod: Value) -> u64 {
        let mut state = self.lock();
        state.version += 1;
        let version = state.version;
        pod["metadata"]["resourceVersion"] = version.to_string().into();
        let uid = pod["metadata"]["uid"]
            .as_str()
            .expect("pod uid")
            .to_string();
        state.set_pod(uid, pod.clone());
        self.record(&mut state, "ADDED", pod);
        version
    }

    /// Adds many pods without recording watch events (the initial state before any client).
    pub fn seed_pods(&self, pods: Vec<Value>) {
        let mut state = self.lock();
        for mut pod in pods {
            state.version += 1;
            pod["metadata"]["resourceVersion"] = state.version.to_string().into();
            let uid = pod["metadata"]["uid"]
                .as_str()
                .expect("pod uid")
                .to_string();
            state.set_pod(uid, pod);
        }
        state.oldest_watchable = state.version;
    }

    pub fn modify_pod(&self, uid: &str, change: impl FnOnce(&mut Value)) -> u64 {
        let mut state = self.lock();
        state.version += 1;
        let version = state.version;
        let pod = state.pods.get_mut(uid).expect("modify: no such pod");
        change(pod);
        pod["metadata"]["resourceVersion"] = version.to_string().into();
        let pod = pod.clone();
        state.set_pod(uid.to_string(), pod.clone());
        self.record(&mut state, "MODIFIED", pod);
        version
    }

    pub fn delete_pod(&self, uid: &str) -> u64 {
        let mut state = self.lock();
        state.version += 1;
        let version = state.version;
        let mut pod = state.pods.remove(uid).expect("delete: no such pod");
        state.list_items.remove(uid);
        pod["metadata"]["resourceVersion"] = version.to_string().into();
        pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
        self.record(&mut state, "DELETED", pod);
        version
    }

    /// Deletes a pod and forgets all history, as if etcd compacted while the client was
    /// away: a watch from any earlier version now gets 410.
    pub fn delete_pod_and_compact(&self, uid: &str) {
        let mut state = self.lock();
        state.version += 1;
        state.pods.remove(uid).expect("delete: no such pod");
        state.list_items.remove(uid);
        state.oldest_watchable = state.version;
        state.history.clear();
    }

    /// Sends a BOOKMARK at a new resourceVersion (as if other objects changed); returns it.
    pub fn bookmark(&self) -> u64 {
        let mut state = self.lock();
        state.version += 1;
        let version = state.version;
        let object = json!({"kind":"Pod","apiVersion":"v1",
            "metadata":{"resourceVersion":version.to_string()},
            "spec":{"containers":null},"status":{}});
        self.record(&mut state, "BOOKMARK", object);
        version
    }

    /// Ends every open watch cleanly (terminating chunk), like the server's timeout.
    pub fn close_watches(&self) {
        let mut state = self.lock();
        state.watch_generation += 1;
        self.shared.changed.notify_all();
    }

    pub fn fail_next_watches(&self, codes: &[u16]) {
        self.lock().watch_failures.extend(codes);
    }

    pub fn fail_next_lists(&self, codes: &[u16]) {
        self.lock().list_failures.extend(codes);
    }

    /// The next watch event is cut in the middle and the connection closed.
    pub fn drop_next_event_midway(&self) {
        self.lock().drop_next_event = true;
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock().requests.clone()
    }

    pub fn active_watches(&self) -> usize {
        self.lock().active_watches
    }

    /// Serves `object` on GET `path` (e.g. `/apis/apps/v1/namespaces/ns/daemonsets/name`);
    /// `None` removes it (the path then answers 404).
    pub fn set_object(&self, path: &str, object: Option<Value>) {
        let mut state = self.lock();
        match object {
            Some(o) => state.objects.insert(path.to_string(), o),
            None => state.objects.remove(path),
        };
    }

    pub fn current_version(&self) -> u64 {
        self.lock().version
    }

    /// Waits until `check` holds for the request log (bounded).
    pub fn wait_for_requests(
        &self,
        timeout: Duration,
        check: impl Fn(&[RequestRecord]) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if check(&self.lock().requests) {
                return true;
            }
            thread::sleep(Duration::from_millis(5));
        }
        false
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.close_watches();
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
    }
}

fn write_response(conn: &mut dyn Conn, code: u16, reason: &str, body: &str) {
    let _ = write!(
        conn,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.flush();
}

fn write_chunk(conn: &mut dyn Conn, data: &[u8]) -> std::io::Result<()> {
    write!(conn, "{:x}\r\n", data.len())?;
    conn.write_all(data)?;
    conn.write_all(b"\r\n")?;
    conn.flush()
}

fn handle(shared: Arc<Shared>, mut conn: Box<dyn Conn>) {
    let mut reader = BufReader::new(&mut conn);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_string());
            }
        }
    }
    drop(reader);
    let target = request_line.split(' ').nth(1).unwrap_or("/").to_string();
    let (path, query_text) = target.split_once('?').unwrap_or((&target, ""));
    let query: BTreeMap<String, String> = query_text
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let record = RequestRecord {
        path: path.to_string(),
        query: query.clone(),
        authorization: authorization.clone(),
    };
    let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    state.requests.push(record.clone());
    if let Some(tokens) = &state.tokens {
        let ok = authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
            .is_some_and(|t| tokens.contains(t));
        if !ok {
            drop(state);
            write_response(
                &mut *conn,
                401,
                "Unauthorized",
                &status_body(401, "Unauthorized", "Unauthorized"),
            );
            return;
        }
    }
    if let Some(object) = state.objects.get(path) {
        let body = object.to_string();
        drop(state);
        write_response(&mut *conn, 200, "OK", &body);
        return;
    }
    if path != "/api/v1/pods" {
        drop(state);
        write_response(
            &mut *conn,
            404,
            "Not Found",
            &status_body(404, "NotFound", "not found"),
        );
        return;
    }
    let node = query
        .get("fieldSelector")
        .and_then(|s| s.strip_prefix("spec.nodeName="))
        .map(str::to_string);
    let on_node = |object: &Value| match &node {
        Some(n) => node_of(object) == Some(n.as_str()),
        None => true,
    };
    if !record.is_watch() {
        if let Some(code) = state.list_failures.pop_front() {
            drop(state);
            write_response(
                &mut *conn,
                code,
                "Injected",
                &status_body(code, "Expired", "injected list failure"),
            );
            return;
        }
        if query.contains_key("continue") && query.contains_key("resourceVersion") {
            drop(state);
            write_response(
                &mut *conn,
                400,
                "Bad Request",
                &status_body(
                    400,
                    "BadRequest",
                    "specifying resource version is not allowed when using continue",
                ),
            );
            return;
        }
        let items: Vec<&String> = state
            .list_items
            .values()
            .filter(|(pod_node, _)| node.is_none() || pod_node == &node)
            .map(|(_, json)| json)
            .collect();
        let (start, list_version) = match query.get("continue") {
            Some(token) => {
                let (offset, version) = token.split_once(':').unwrap_or(("0", "0"));
                (offset.parse::<usize>().unwrap_or(0), version.to_string())
            }
            None => (0, state.version.to_string()),
        };
        let limit = query
            .get("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|&l| l > 0)
            .unwrap_or(usize::MAX);
        let end = start.saturating_add(limit).min(items.len());
        let mut metadata = json!({"resourceVersion": list_version});
        if end < items.len() {
            metadata["continue"] = format!("{end}:{list_version}").into();
        }
        let mut body =
            format!(r#"{{"kind":"PodList","apiVersion":"v1","metadata":{metadata},"items":["#);
        for (i, item) in items[start.min(end)..end].iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(item);
        }
        body.push_str("]}");
        drop(state);
        write_response(&mut *conn, 200, "OK", &body);
        return;
    }

    // WATCH
    if let Some(code) = state.watch_failures.pop_front() {
        drop(state);
        let reason = if code == 410 { "Expired" } else { "Injected" };
        write_response(
            &mut *conn,
            code,
            reason,
            &status_body(code, reason, "injected watch failure"),
        );
        return;
    }
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let generation = state.watch_generation;
    let expired = from < state.oldest_watchable;
    let oldest = state.oldest_watchable;
    state.active_watches += 1;
    drop(state);
    let done = |shared: &Arc<Shared>| {
        let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        state.active_watches -= 1;
    };
    if write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .and_then(|_| conn.flush())
    .is_err()
    {
        done(&shared);
        return;
    }
    if expired {
        // As the watch cache does: HTTP 200, one ERROR event, end of stream.
        let event = json!({"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},
            "status":"Failure","message":format!("too old resource version: {from} ({oldest})"),
            "reason":"Expired","code":410}});
        let _ = write_chunk(&mut *conn, format!("{event}\n").as_bytes());
        let _ = write_chunk(&mut *conn, b"");
        done(&shared);
        return;
    }
    let mut sent_up_to = from;
    loop {
        let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if shared.stop.load(Ordering::SeqCst)
            || state.watch_generation != generation
            || Instant::now() >= deadline
        {
            drop(state);
            let _ = write_chunk(&mut *conn, b"");
            done(&shared);
            return;
        }
        let pending: Vec<HistoryEntry> = state
            .history
            .iter()
            .filter(|e| e.version > sent_up_to)
            .cloned()
            .collect();
        if pending.is_empty() {
            let _unused = shared
                .changed
                .wait_timeout(state, Duration::from_millis(50))
                .map(|(g, _)| g);
            continue;
        }
        let drop_midway = std::mem::take(&mut state.drop_next_event);
        drop(state);
        // Several events may share a chunk, as when the server flushes a backlog.
        let mut chunk = Vec::new();
        for entry in &pending {
            sent_up_to = entry.version;
            if entry.event_type != "BOOKMARK" && !on_node(&entry.object) {
                continue;
            }
            let line = json!({"type": entry.event_type, "object": entry.object}).to_string();
            chunk.extend_from_slice(line.as_bytes());
            chunk.push(b'\n');
        }
        if chunk.is_empty() {
            continue;
        }
        if drop_midway {
            let half = chunk.len() / 2;
            let _ = write!(conn, "{:x}\r\n", chunk.len());
            let _ = conn.write_all(&chunk[..half]);
            let _ = conn.flush();
            done(&shared);
            return; // dropping the connection closes the socket mid-chunk
        }
        if write_chunk(&mut *conn, &chunk).is_err() {
            done(&shared);
            return;
        }
    }
}

/// A test CA and certificates signed by it (rcgen).
pub struct TestPki {
    pub ca_pem: String,
    pub ca_der: Vec<u8>,
    ca_cert: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl TestPki {
    pub fn new(name: &str) -> TestPki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = params.self_signed(&ca_key).unwrap();
        TestPki {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().to_vec(),
            ca_cert,
            ca_key,
        }
    }

    /// A server certificate for 127.0.0.1 (IP SAN) and `localhost`.
    pub fn server(&self) -> ServerTls {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        ServerTls {
            cert_chain_der: vec![cert.der().to_vec()],
            key_pkcs8_der: key.serialize_der(),
            client_ca_der: None,
        }
    }

    /// A client certificate (PEM cert, PEM key).
    pub fn client(&self, user: &str) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, user.to_string());
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}
