//! The list+watch loop for the pods of one node (the protocol of client-go's reflector):
//!
//! 1. LIST `/api/v1/pods?fieldSelector=spec.nodeName=<node>` page by page (`limit`/`continue`),
//!    report every pod, report as deleted every pod known before but not listed, then `Synced`
//!    once.
//! 2. WATCH from the list's resourceVersion with bookmarks; resume from the last seen version
//!    after a clean end of stream, a dropped connection or a 429/5xx.
//! 3. ERROR 410 in the stream or HTTP 410: list again and diff.
//! 4. 401: re-read the token and retry; other failures: capped exponential backoff with jitter.
//!
//! Only `uid → (resourceVersion, namespace, name)` is kept per pod, so 10,000 pods cost
//! about a megabyte here; the caller keeps whatever else it needs.

use super::config::ClientConfig;
use super::decode::{ApiStatus, WatchDecoder, WatchEvent};
use super::http::{self, HttpError, HttpErrorKind, Response};
use super::pod::{PodInfo, PodRef, RawMeta, RawObject};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What the watcher reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodEvent {
    /// A pod of this node exists in this state (new, changed, or re-listed and changed).
    Upsert(PodInfo),
    /// A pod is gone: deleted, moved off this node, or missing from a relist.
    Delete(PodRef),
    /// The first complete list has been reported: what is not known now does not exist.
    Synced,
}

/// Tuning of the loop; the defaults are client-go's.
#[derive(Clone, Debug)]
pub struct WatchOptions {
    /// The node whose pods are watched (`spec.nodeName`), from `--node-name`/`NODE_NAME`.
    pub node_name: String,
    pub page_size: u32,
    /// The server ends each watch after a random time in this range (seconds).
    pub watch_timeout_secs: (u32, u32),
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A read that waits longer than this (beyond the watch timeout) means a dead peer.
    pub idle_timeout: Duration,
    /// Timeout of each read while listing.
    pub list_read_timeout: Duration,
}

impl WatchOptions {
    pub fn new(node_name: impl Into<String>) -> WatchOptions {
        WatchOptions {
            node_name: node_name.into(),
            page_size: 500,
            watch_timeout_secs: (300, 600),
            backoff_initial: Duration::from_millis(800),
            backoff_max: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            list_read_timeout: Duration::from_secs(60),
        }
    }

    /// Watches the server ends after [secs, 2 secs]; one silent for its timeout plus a fifth
    /// of `secs` (at least 1 s) is taken as stalled and replaced. `300` gives the defaults.
    pub fn with_watch_timeout(mut self, secs: u32) -> WatchOptions {
        let secs = secs.max(1);
        self.watch_timeout_secs = (secs, secs.saturating_mul(2));
        self.idle_timeout = Duration::from_secs(u64::from(secs / 5).max(1));
        self
    }
}

/// Counters for metrics and tests.
#[derive(Debug, Default)]
pub struct WatcherStats {
    pub lists: AtomicU64,
    pub list_pages: AtomicU64,
    pub watches: AtomicU64,
    pub events: AtomicU64,
    pub bookmarks: AtomicU64,
    /// Watches given up because they went silent past their timeout.
    pub stalled: AtomicU64,
    /// Relists because the server said the resource version expired (410).
    pub expired: AtomicU64,
    /// Requests or streams that failed (connection, HTTP status, decoding).
    pub errors: AtomicU64,
    /// Events skipped because they were malformed or of an unknown type.
    pub skipped_events: AtomicU64,
    /// Times a 401 made the client re-read its token.
    pub unauthorized: AtomicU64,
}

impl WatcherStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

struct StopState {
    stopped: AtomicBool,
    socket: Mutex<Option<TcpStream>>,
    wake: Condvar,
    wake_lock: Mutex<()>,
}

/// Stops a running [`PodWatcher::run`] from another thread (or a signal handler thread).
#[derive(Clone)]
pub struct StopHandle(Arc<StopState>);

impl StopHandle {
    fn new() -> StopHandle {
        StopHandle(Arc::new(StopState {
            stopped: AtomicBool::new(false),
            socket: Mutex::new(None),
            wake: Condvar::new(),
            wake_lock: Mutex::new(()),
        }))
    }

    /// Makes `run` return soon: wakes a backoff sleep and shuts the open connection down.
    pub fn stop(&self) {
        self.0.stopped.store(true, Ordering::SeqCst);
        if let Some(socket) = self
            .0
            .socket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            http::shutdown(socket);
        }
        let _guard = self.0.wake_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.0.wake.notify_all();
    }

    pub fn is_stopped(&self) -> bool {
        self.0.stopped.load(Ordering::SeqCst)
    }

    /// Sleeps up to `duration`; returns early (false) when stopped.
    fn sleep(&self, duration: Duration) -> bool {
        let deadline = Instant::now() + duration;
        let mut guard = self.0.wake_lock.lock().unwrap_or_else(|p| p.into_inner());
        while !self.is_stopped() {
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            guard = match self.0.wake.wait_timeout(guard, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        false
    }

    fn set_socket(&self, socket: Option<TcpStream>) {
        let mut slot = self.0.socket.lock().unwrap_or_else(|p| p.into_inner());
        *slot = socket;
        if self.is_stopped() {
            if let Some(s) = slot.as_ref() {
                http::shutdown(s);
            }
        }
    }
}

/// Why a list or watch attempt ended.
#[derive(Debug)]
enum Failure {
    /// 410: the resource version is gone; list again.
    Expired(String),
    /// The server asks us to slow down or is unavailable (429, 5xx): back off, retry.
    Retryable(String),
    /// Anything else (400, 403, 404, decode errors, broken connections).
    Other(String),
    Stopped,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Expired(m) | Failure::Retryable(m) | Failure::Other(m) => f.write_str(m),
            Failure::Stopped => f.write_str("stopped"),
        }
    }
}

struct KnownPod {
    resource_version: String,
    namespace: String,
    name: String,
}

/// Exponential backoff with full jitter over the upper half: delay in [d/2, d].
struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
    rng: u64,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Backoff {
        let seed = Instant::now().elapsed().as_nanos() as u64
            ^ u64::from(std::process::id()).rotate_left(32)
            ^ (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x9E37_79B9_7F4A_7C15));
        Backoff {
            initial,
            max,
            current: initial,
            rng: seed | 1,
        }
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: jitter only, not security.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn next_delay(&mut self) -> Duration {
        let full = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = full / 2;
        let span = (full - half).as_nanos() as u64;
        let jitter = if span == 0 {
            0
        } else {
            self.random() % (span + 1)
        };
        half + Duration::from_nanos(jitter)
    }

    fn reset(&mut self) {
        self.current = self.initial;
    }

    fn random_in(&mut self, low: u32, high: u32) -> u32 {
        if high <= low {
            return low;
        }
        low + (self.random() % u64::from(high - low + 1)) as u32
    }
}

/// Parses a `PodList` from `reader`, handing each item to `on_item` as soon as it is decoded;
/// returns the list's metadata (resourceVersion, continue).
fn parse_pod_list(
    reader: impl Read,
    on_item: &mut dyn FnMut(RawObject),
) -> serde_json::Result<RawMeta> {
    let mut deserializer = serde_json::Deserializer::from_reader(reader);
    let meta = ListSeed { on_item }.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(meta)
}

struct ListSeed<'a> {
    on_item: &'a mut dyn FnMut(RawObject),
}

impl<'de> DeserializeSeed<'de> for ListSeed<'_> {
    type Value = RawMeta;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<RawMeta, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ListSeed<'_> {
    type Value = RawMeta;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a PodList object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawMeta, A::Error> {
        let mut meta = RawMeta::default();
        let on_item = self.on_item;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "metadata" => meta = map.next_value::<Option<RawMeta>>()?.unwrap_or_default(),
                "items" => map.next_value_seed(ItemsSeed {
                    on_item: &mut *on_item,
                })?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(meta)
    }
}

struct ItemsSeed<'a> {
    on_item: &'a mut dyn FnMut(RawObject),
}

impl<'de> DeserializeSeed<'de> for ItemsSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of pods or null")
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(item) = seq.next_element::<RawObject>()? {
            (self.on_item)(item);
        }
        Ok(())
    }
}

/// List+watch client for the pods of one node.
pub struct PodWatcher {
    config: ClientConfig,
    options: WatchOptions,
    known: HashMap<String, KnownPod>,
    last_resource_version: Option<String>,
    synced: bool,
    stop: StopHandle,
    stats: Arc<WatcherStats>,
    backoff: Backoff,
}

impl PodWatcher {
    pub fn new(config: ClientConfig, options: WatchOptions) -> PodWatcher {
        let backoff = Backoff::new(options.backoff_initial, options.backoff_max);
        PodWatcher {
            config,
            options,
            known: HashMap::new(),
            last_resource_version: None,
            synced: false,
            stop: StopHandle::new(),
            stats: Arc::new(WatcherStats::default()),
            backoff,
        }
    }

    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    pub fn stats(&self) -> Arc<WatcherStats> {
        Arc::clone(&self.stats)
    }

    /// Number of pods currently known (reported and not deleted).
    pub fn known_pods(&self) -> usize {
        self.known.len()
    }

    /// Runs until [`StopHandle::stop`]; every change goes to `sink`. Errors are retried
    /// forever (logged), so this only returns when stopped or when the node name is empty.
    pub fn run(&mut self, sink: &mut dyn FnMut(PodEvent)) -> Result<(), String> {
        if self.options.node_name.trim().is_empty() {
            return Err(
                "no node name: pass --node-name or set NODE_NAME (downward API spec.nodeName)"
                    .into(),
            );
        }
        let mut need_list = true;
        let mut consistent_list = false;
        let mut expired_in_a_row = 0u32;
        while !self.stop.is_stopped() {
            if need_list {
                match self.list(consistent_list, sink) {
                    Ok(()) => {
                        need_list = false;
                        consistent_list = false;
                        expired_in_a_row = 0;
                        self.backoff.reset();
                    }
                    Err(Failure::Stopped) => break,
                    Err(Failure::Expired(message)) => {
                        log::info!("pod list: {message}; listing again at the newest version");
                        bump(&self.stats.expired);
                        consistent_list = true;
                        expired_in_a_row += 1;
                        if expired_in_a_row > 1 {
                            self.pause();
                        }
                    }
                    Err(failure) => {
                        log::warn!("pod list failed: {failure}; retrying");
                        bump(&self.stats.errors);
                        self.pause();
                    }
                }
                continue;
            }
            let started = Instant::now();
            match self.watch(sink) {
                Ok(events) => {
                    if events == 0 && started.elapsed() < Duration::from_secs(1) {
                        // A watch that ends at once without events: don't spin.
                        self.pause();
                    } else {
                        self.backoff.reset();
                    }
                }
                Err(Failure::Stopped) => break,
                Err(Failure::Expired(message)) => {
                    log::info!("pod watch: {message}; listing again");
                    bump(&self.stats.expired);
                    need_list = true;
                    if started.elapsed() < Duration::from_secs(1) {
                        // Expired at once, right after a list (a 410 storm): relisting
                        // without a pause would hammer the server with full lists.
                        self.pause();
                    }
                }
                Err(Failure::Retryable(message)) => {
                    log::warn!("pod watch: {message}; retrying");
                    bump(&self.stats.errors);
                    self.pause();
                }
                Err(Failure::Other(message)) => {
                    log::warn!("pod watch: {message}; listing again");
                    bump(&self.stats.errors);
                    self.pause();
                    need_list = true;
                }
            }
        }
        self.stop.set_socket(None);
        Ok(())
    }

    fn pause(&mut self) {
        let delay = self.backoff.next_delay();
        self.stop.sleep(delay);
    }

    fn selector(&self) -> String {
        http::encode_query_value(&format!("spec.nodeName={}", self.options.node_name))
    }

    /// GET with auth; a 401 re-reads the token and retries once.
    fn request(&mut self, path: &str, read_timeout: Duration) -> Result<Response, Failure> {
        let mut retried = false;
        loop {
            if self.stop.is_stopped() {
                return Err(Failure::Stopped);
            }
            let token = self
                .config
                .auth
                .bearer()
                .map_err(|e| Failure::Other(e.to_string()))?;
            let authorization = token.map(|t| format!("Bearer {t}"));
            let mut headers = vec![
                ("Accept", "application/json"),
                (
                    "User-Agent",
                    concat!("merbridge/", env!("CARGO_PKG_VERSION")),
                ),
            ];
            if let Some(value) = authorization.as_deref() {
                headers.push(("Authorization", value));
            }
            let stop = self.stop.clone();
            let response = http::get(
                &self.config.endpoint,
                path,
                &headers,
                read_timeout,
                &mut |socket| stop.set_socket(socket.try_clone().ok()),
            )
            .map_err(|e| self.http_failure(e))?;
            if response.status == 401 && !retried {
                bump(&self.stats.unauthorized);
                log::info!("API server answered 401; re-reading the token");
                self.config.auth.invalidate();
                retried = true;
                continue;
            }
            if response.status == 401 {
                bump(&self.stats.unauthorized);
                self.config.auth.invalidate();
            }
            return Ok(response);
        }
    }

    fn http_failure(&self, e: HttpError) -> Failure {
        if self.stop.is_stopped() {
            return Failure::Stopped;
        }
        match e.kind {
            HttpErrorKind::Connect | HttpErrorKind::Io => Failure::Retryable(e.message),
            HttpErrorKind::Tls | HttpErrorKind::Protocol => Failure::Other(e.message),
        }
    }

    fn status_failure(&self, mut response: Response, what: &str) -> Failure {
        let code = response.status;
        let body = response.read_to_end(64 * 1024).unwrap_or_default();
        let status = ApiStatus::from_body(code, &body);
        let message = format!("{what}: HTTP {code}: {}", status.message.trim());
        match code {
            410 => Failure::Expired(message),
            401 => Failure::Other(format!(
                "{message} (the token was re-read and is still refused)"
            )),
            403 => Failure::Other(format!(
                "{message} (the service account needs get/list/watch on pods)"
            )),
            429 | 500..=599 => Failure::Retryable(message),
            _ => Failure::Other(message),
        }
    }

    fn list(&mut self, consistent: bool, sink: &mut dyn FnMut(PodEvent)) -> Result<(), Failure> {
        bump(&self.stats.lists);
        let version = if consistent {
            String::new()
        } else {
            self.last_resource_version
                .clone()
                .unwrap_or_else(|| "0".to_string())
        };
        let mut seen: HashSet<String> = HashSet::with_capacity(self.known.len());
        let mut continue_token: Option<String> = None;
        let mut list_version = String::new();
        let first_list = !self.synced;
        loop {
            let mut path = format!("/api/v1/pods?fieldSelector={}", self.selector());
            // As client-go: page only a fresh ("") or any-age ("0") list; a list at a given
            // version is served whole from the watch cache (with a limit it would be "Exact"
            // and fail with 410 once that version is compacted).
            if version.is_empty() || version == "0" {
                path.push_str(&format!("&limit={}", self.options.page_size));
            }
            match &continue_token {
                // Continue pages must not repeat resourceVersion (the server answers 400).
                Some(token) => {
                    path.push_str("&continue=");
                    path.push_str(&http::encode_query_value(token));
                }
                None if !version.is_empty() => {
                    path.push_str("&resourceVersion=");
                    path.push_str(&http::encode_query_value(&version));
                }
                None => {}
            }
            let mut response = self.request(&path, self.options.list_read_timeout)?;
            if response.status != 200 {
                return Err(self.status_failure(response, "pod list"));
            }
            // Decoded as it arrives, item by item: a list of 10,000 pods is never held whole.
            let mut on_item = |raw: RawObject| {
                let pod = raw.into_pod();
                if pod.uid.is_empty() || pod.node_name != self.options.node_name {
                    return;
                }
                seen.insert(pod.uid.clone());
                self.upsert(pod, !first_list, sink);
            };
            let meta = parse_pod_list(
                std::io::BufReader::with_capacity(64 * 1024, &mut response),
                &mut on_item,
            )
            .map_err(|e| {
                if e.is_io() {
                    Failure::Retryable(format!("pod list connection broke: {e}"))
                } else {
                    Failure::Other(format!("pod list is not a PodList: {e}"))
                }
            })?;
            bump(&self.stats.list_pages);
            if continue_token.is_none() {
                list_version = meta.resource_version.clone().unwrap_or_default();
            }
            match meta.continue_token.filter(|t| !t.is_empty()) {
                Some(token) => continue_token = Some(token),
                None => break,
            }
            if self.stop.is_stopped() {
                return Err(Failure::Stopped);
            }
        }
        let gone: Vec<String> = self
            .known
            .keys()
            .filter(|uid| !seen.contains(*uid))
            .cloned()
            .collect();
        for uid in gone {
            self.delete(&uid, sink);
        }
        if list_version.is_empty() {
            return Err(Failure::Other(
                "pod list has no metadata.resourceVersion; cannot watch from it".into(),
            ));
        }
        self.last_resource_version = Some(list_version);
        if !self.synced {
            self.synced = true;
            sink(PodEvent::Synced);
        }
        Ok(())
    }

    fn on_this_node(&self, pod: &PodInfo) -> bool {
        // The field selector already filters; this guards against a server that ignores it.
        pod.node_name == self.options.node_name
    }

    /// Reports a pod unless `skip_unchanged` and its resourceVersion is the one reported.
    fn upsert(&mut self, pod: PodInfo, skip_unchanged: bool, sink: &mut dyn FnMut(PodEvent)) {
        if let Some(known) = self.known.get_mut(&pod.uid) {
            if skip_unchanged
                && !pod.resource_version.is_empty()
                && known.resource_version == pod.resource_version
            {
                return;
            }
            known.resource_version.clone_from(&pod.resource_version);
        } else {
            self.known.insert(
                pod.uid.clone(),
                KnownPod {
                    resource_version: pod.resource_version.clone(),
                    namespace: pod.namespace.clone(),
                    name: pod.name.clone(),
                },
            );
        }
        sink(PodEvent::Upsert(pod));
    }

    fn delete(&mut self, uid: &str, sink: &mut dyn FnMut(PodEvent)) {
        if let Some(known) = self.known.remove(uid) {
            sink(PodEvent::Delete(PodRef {
                uid: uid.to_string(),
                namespace: known.namespace,
                name: known.name,
            }));
        }
    }

    /// One watch request; Ok(number of events) when the stream ended cleanly.
    fn watch(&mut self, sink: &mut dyn FnMut(PodEvent)) -> Result<u64, Failure> {
        bump(&self.stats.watches);
        let version = self.last_resource_version.clone().unwrap_or_default();
        let (low, high) = self.options.watch_timeout_secs;
        let timeout = self.backoff.random_in(low, high);
        let path = format!(
            "/api/v1/pods?fieldSelector={}&watch=true&resourceVersion={}&allowWatchBookmarks=true&timeoutSeconds={}",
            self.selector(),
            http::encode_query_value(&version),
            timeout
        );
        let read_timeout = Duration::from_secs(u64::from(timeout)) + self.options.idle_timeout;
        let mut response = self.request(&path, read_timeout)?;
        if response.status != 200 {
            return Err(self.status_failure(response, "pod watch"));
        }
        let mut decoder = WatchDecoder::default();
        let mut buffer = vec![0u8; 64 * 1024];
        let mut events = 0u64;
        loop {
            let read = response.read(&mut buffer);
            let n = match read {
                Ok(n) => n,
                Err(e) => {
                    if self.stop.is_stopped() {
                        return Err(Failure::Stopped);
                    }
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) {
                        // The server neither sent anything (not even a bookmark) nor ended
                        // the watch when it should have: a stalled watch, replaced.
                        bump(&self.stats.stalled);
                        return Err(Failure::Retryable(format!(
                            "watch stalled: nothing received for {} s although the server \
                             should have ended it after {timeout} s; reconnecting",
                            read_timeout.as_secs()
                        )));
                    }
                    return Err(Failure::Retryable(format!(
                        "watch connection broke after {events} events: {e}"
                    )));
                }
            };
            if n == 0 {
                decoder.end_of_input();
            } else {
                decoder.feed(&buffer[..n]);
            }
            loop {
                let event = match decoder.next_event() {
                    Ok(Some(event)) => event,
                    Ok(None) => break,
                    Err(e) => return Err(Failure::Retryable(e.to_string())),
                };
                events += 1;
                self.apply(event, sink)?;
            }
            if n == 0 {
                if self.stop.is_stopped() {
                    return Err(Failure::Stopped);
                }
                decoder
                    .finish()
                    .map_err(|e| Failure::Retryable(e.to_string()))?;
                return Ok(events);
            }
        }
    }

    fn apply(&mut self, event: WatchEvent, sink: &mut dyn FnMut(PodEvent)) -> Result<(), Failure> {
        bump(&self.stats.events);
        if let Some(version) = event.resource_version() {
            match &mut self.last_resource_version {
                Some(last) => last.replace_range(.., version),
                None => self.last_resource_version = Some(version.to_string()),
            }
        }
        match event {
            WatchEvent::Added(pod) | WatchEvent::Modified(pod) => {
                if pod.uid.is_empty() {
                    bump(&self.stats.skipped_events);
                    log::warn!("watch event for a pod without metadata.uid skipped");
                } else if self.on_this_node(&pod) {
                    self.upsert(pod, false, sink);
                } else {
                    self.delete(&pod.uid, sink);
                }
            }
            WatchEvent::Deleted(pod) => self.delete(&pod.uid, sink),
            WatchEvent::Bookmark { .. } => bump(&self.stats.bookmarks),
            WatchEvent::Error(status) => {
                let message = format!("server ended the watch with {status}");
                return Err(if status.is_expired() {
                    Failure::Expired(message)
                } else if status.code == 429 || status.code >= 500 {
                    Failure::Retryable(message)
                } else {
                    Failure::Other(message)
                });
            }
            WatchEvent::Unknown { event_type } => {
                bump(&self.stats.skipped_events);
                log::warn!("watch event of unknown type {event_type:?} skipped");
            }
            WatchEvent::Malformed { reason } => {
                bump(&self.stats.skipped_events);
                log::warn!("malformed watch event skipped: {reason}");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(800), Duration::from_secs(30));
        let mut last_cap = Duration::ZERO;
        for _ in 0..12 {
            let cap = backoff.current;
            let delay = backoff.next_delay();
            assert!(
                delay >= cap / 2 && delay <= cap,
                "{delay:?} not in [{:?},{cap:?}]",
                cap / 2
            );
            assert!(cap >= last_cap);
            last_cap = cap;
        }
        assert_eq!(backoff.current, Duration::from_secs(30));
        backoff.reset();
        assert_eq!(backoff.current, Duration::from_millis(800));
        for _ in 0..100 {
            let t = backoff.random_in(300, 600);
            assert!((300..=600).contains(&t));
        }
    }

    #[test]
    fn pod_list_is_parsed_item_by_item_in_any_field_order() {
        let mut uids = Vec::new();
        let meta = parse_pod_list(
            &br#"{"kind":"PodList","items":[{"metadata":{"uid":"a"}},{"metadata":{"uid":"b"},"spec":{"containers":null}}],
                 "extra":{"x":[1,2]},"metadata":{"resourceVersion":"9","continue":"c1"}}"#[..],
            &mut |raw| uids.push(raw.into_pod().uid),
        )
        .unwrap();
        assert_eq!(uids, vec!["a", "b"]);
        assert_eq!(meta.resource_version.as_deref(), Some("9"));
        assert_eq!(meta.continue_token.as_deref(), Some("c1"));
        let meta = parse_pod_list(
            &br#"{"items":null,"metadata":{"resourceVersion":"1"}}"#[..],
            &mut |_| panic!("no items"),
        )
        .unwrap();
        assert_eq!(meta.resource_version.as_deref(), Some("1"));
        assert!(parse_pod_list(&b"[1,2]"[..], &mut |_| {}).is_err());
        assert!(
            parse_pod_list(&br#"{"items":[{"metadata":{"uid":"a"}}"#[..], &mut |_| {})
                .unwrap_err()
                .is_eof()
        );
    }

    #[test]
    fn stop_wakes_a_sleep() {
        let stop = StopHandle::new();
        let other = stop.clone();
        let started = Instant::now();
        let t = std::thread::spawn(move || other.sleep(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(50));
        stop.stop();
        assert!(!t.join().unwrap());
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
