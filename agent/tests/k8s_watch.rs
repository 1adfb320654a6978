//! The list+watch client against a real HTTP server on loopback (plain and TLS with a test
//! CA) speaking the Kubernetes wire protocol. Pods come from the real injected-pod fixtures in
//! `../shared/fixtures/k8s/`; their `spec.nodeName`, `status` (podIPs, phase), `uid` and
//! `resourceVersion` are SYNTHETIC (the injector testdata has none) and added by
//! `synthesize_running`.

mod k8s_support;

use k8s_support::server::{FakeApiServer, TestPki};
use k8s_support::{fixture_pod_value, kubeconfig_text, synthesize_running, TempDir};
use mb_agent::k8s::{ClientConfig, PodEvent, PodWatcher, StopHandle, WatchOptions, WatcherStats};
use mb_agent::mesh::{intercepted, Mesh};
use serde_json::Value;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

struct Running {
    events: mpsc::Receiver<PodEvent>,
    stop: StopHandle,
    stats: Arc<WatcherStats>,
    thread: Option<thread::JoinHandle<Result<(), String>>>,
}

impl Running {
    fn start(config: ClientConfig, options: WatchOptions) -> Running {
        let mut watcher = PodWatcher::new(config, options);
        let stop = watcher.stop_handle();
        let stats = watcher.stats();
        let (tx, rx) = mpsc::channel();
        let thread = thread::spawn(move || {
            watcher.run(&mut |event| {
                let _ = tx.send(event);
            })
        });
        Running {
            events: rx,
            stop,
            stats,
            thread: Some(thread),
        }
    }

    fn next(&self, what: &str) -> PodEvent {
        self.events
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("no event within {WAIT:?} while waiting for {what}"))
    }

    /// Events up to and including the first `Synced`.
    fn until_synced(&self) -> Vec<PodEvent> {
        let mut out = Vec::new();
        loop {
            let event = self.next("Synced");
            if event == PodEvent::Synced {
                return out;
            }
            out.push(event);
        }
    }

    fn quiet_for(&self, duration: Duration) {
        if let Ok(event) = self.events.recv_timeout(duration) {
            panic!("unexpected event {event:?}");
        }
    }

    fn stat(&self, pick: fn(&WatcherStats) -> &std::sync::atomic::AtomicU64) -> u64 {
        pick(&self.stats).load(Ordering::Relaxed)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn fast_options(node: &str) -> WatchOptions {
    let mut options = WatchOptions::new(node);
    options.watch_timeout_secs = (30, 30);
    options.backoff_initial = Duration::from_millis(10);
    options.backoff_max = Duration::from_millis(200);
    options.idle_timeout = Duration::from_secs(5);
    options.list_read_timeout = Duration::from_secs(10);
    options
}

fn plain_config(server: &FakeApiServer, token: Option<&str>) -> ClientConfig {
    let text = kubeconfig_text(&format!("http://{}", server.addr), token, None, None);
    ClientConfig::from_kubeconfig_text(&text, Path::new("/"), None, "test kubeconfig").unwrap()
}

fn pod(fixture: &str, uid: &str, node: &str, ip: &str) -> Value {
    synthesize_running(fixture_pod_value(fixture), uid, node, &[ip], "1")
}

fn upserted_uids(events: &[PodEvent]) -> Vec<String> {
    let mut uids: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            PodEvent::Upsert(p) => Some(p.uid.clone()),
            _ => None,
        })
        .collect();
    uids.sort();
    uids
}

const ISTIO: &str = "istio/istio-master__pod.yaml.injected";
const LINKERD: &str = "linkerd/linkerd-main__inject_emojivoto_pod.golden.yml";
const KUMA: &str = "kuma/kuma-master__inject.16.golden.yaml";

#[test]
fn initial_list_add_modify_delete_and_annotation_change() {
    let server = FakeApiServer::start(None);
    server.require_tokens(&["t0ken"]);
    server.seed_pods(vec![
        pod(ISTIO, "a1", "node-a", "10.0.0.1"),
        pod(LINKERD, "a2", "node-a", "10.0.0.2"),
        pod(ISTIO, "b1", "node-b", "10.0.1.1"),
    ]);
    let running = Running::start(plain_config(&server, Some("t0ken")), fast_options("node-a"));
    let first = running.until_synced();
    assert_eq!(
        upserted_uids(&first),
        vec!["a1", "a2"],
        "only node-a's pods"
    );

    // The requests are the reflector's: a paged list by node, then a watch from its RV.
    assert!(server.wait_for_requests(WAIT, |r| r.iter().any(|q| q.is_watch())));
    let requests = server.requests();
    let list = &requests[0];
    assert_eq!(
        list.query.get("fieldSelector").unwrap(),
        "spec.nodeName=node-a"
    );
    assert_eq!(list.query.get("limit").unwrap(), "500");
    assert_eq!(list.query.get("resourceVersion").unwrap(), "0");
    assert_eq!(list.authorization.as_deref(), Some("Bearer t0ken"));
    let watch = requests.iter().find(|q| q.is_watch()).unwrap();
    assert_eq!(watch.query.get("allowWatchBookmarks").unwrap(), "true");
    assert_eq!(
        watch.query.get("resourceVersion").unwrap(),
        &server.current_version().to_string(),
        "watch from the list's resourceVersion"
    );
    let timeout: u32 = watch.query.get("timeoutSeconds").unwrap().parse().unwrap();
    assert_eq!(timeout, 30);

    // Add.
    server.add_pod(pod(KUMA, "a3", "node-a", "10.0.0.3"));
    match running.next("ADDED") {
        PodEvent::Upsert(p) => {
            assert_eq!(p.uid, "a3");
            assert!(intercepted(&p, Mesh::Kuma).is_some(), "native kuma sidecar");
        }
        other => panic!("expected Upsert, got {other:?}"),
    }
    // A pod on another node produces nothing.
    server.add_pod(pod(ISTIO, "b2", "node-b", "10.0.1.2"));
    // Annotation change: the new policy must be visible.
    server.modify_pod("a1", |p| {
        p["metadata"]["annotations"]["traffic.sidecar.istio.io/excludeOutboundPorts"] =
            "5432".into();
    });
    match running.next("MODIFIED") {
        PodEvent::Upsert(p) => {
            assert_eq!(p.uid, "a1");
            let decision = intercepted(&p, Mesh::Istio).unwrap();
            assert!(!decision
                .policy
                .redirects_outbound("10.9.9.9".parse().unwrap(), 5432));
            assert!(decision
                .policy
                .redirects_outbound("10.9.9.9".parse().unwrap(), 5433));
        }
        other => panic!("expected Upsert, got {other:?}"),
    }
    // Pod IP change (dual stack).
    server.modify_pod("a2", |p| {
        p["status"]["podIPs"] = serde_json::json!([{"ip":"10.0.0.22"},{"ip":"fd00::22"}]);
    });
    match running.next("IP change") {
        PodEvent::Upsert(p) => assert_eq!(p.pod_ips.len(), 2),
        other => panic!("expected Upsert, got {other:?}"),
    }
    // Delete.
    server.delete_pod("a2");
    match running.next("DELETED") {
        PodEvent::Delete(r) => assert_eq!((r.uid.as_str(), r.name.is_empty()), ("a2", false)),
        other => panic!("expected Delete, got {other:?}"),
    }
    running.quiet_for(Duration::from_millis(200));
    assert_eq!(running.stat(|s| &s.lists), 1);
}

#[test]
fn thousand_pods_paged_with_a_node_filter() {
    let server = FakeApiServer::start(None);
    let mut pods = Vec::new();
    for i in 0..1000 {
        pods.push(pod(
            ISTIO,
            &format!("a{i:04}"),
            "node-a",
            &format!("10.1.{}.{}", i / 250, i % 250),
        ));
    }
    for i in 0..300 {
        pods.push(pod(
            ISTIO,
            &format!("b{i:04}"),
            "node-b",
            &format!("10.2.{}.{}", i / 250, i % 250),
        ));
    }
    server.seed_pods(pods);
    let mut options = fast_options("node-a");
    options.page_size = 100;
    let started = Instant::now();
    let running = Running::start(plain_config(&server, None), options);
    let events = running.until_synced();
    let elapsed = started.elapsed();
    let uids = upserted_uids(&events);
    assert_eq!(uids.len(), 1000);
    assert!(uids.iter().all(|u| u.starts_with('a')));
    assert_eq!(running.stat(|s| &s.list_pages), 10);
    let lists: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| !r.is_watch())
        .collect();
    assert_eq!(lists.len(), 10);
    for page in &lists[1..] {
        assert!(page.query.contains_key("continue"));
        assert!(
            !page.query.contains_key("resourceVersion"),
            "continue pages drop the RV"
        );
    }
    eprintln!("listed 1000 of 1300 pods in 10 pages in {elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
}

#[test]
fn in_stream_410_relists_and_reports_pods_deleted_meanwhile() {
    let server = FakeApiServer::start(None);
    server.seed_pods(vec![
        pod(ISTIO, "keep", "node-a", "10.0.0.1"),
        pod(ISTIO, "gone", "node-a", "10.0.0.2"),
    ]);
    let running = Running::start(plain_config(&server, None), fast_options("node-a"));
    assert_eq!(running.until_synced().len(), 2);
    assert!(server.wait_for_requests(WAIT, |r| r.iter().any(|q| q.is_watch())));
    // While the watch is down, "gone" is deleted and history compacted: the next watch from
    // the old version gets HTTP 200 + ERROR 410, the client relists, and the diff reports it.
    server.delete_pod_and_compact("gone");
    server.close_watches();
    match running.next("Delete after relist") {
        PodEvent::Delete(r) => assert_eq!(r.uid, "gone"),
        other => panic!("expected Delete, got {other:?}"),
    }
    running.quiet_for(Duration::from_millis(200));
    assert!(running.stat(|s| &s.expired) >= 1);
    assert_eq!(running.stat(|s| &s.lists), 2);
    // The relist asked for data not older than what it had seen, without paging.
    let relist = server
        .requests()
        .into_iter()
        .filter(|r| !r.is_watch())
        .nth(1)
        .unwrap();
    assert!(relist
        .query
        .get("resourceVersion")
        .is_some_and(|v| v != "0"));
    assert!(!relist.query.contains_key("limit"));
    // Watching continues after the relist.
    server.add_pod(pod(ISTIO, "new", "node-a", "10.0.0.3"));
    assert!(matches!(running.next("ADDED"), PodEvent::Upsert(p) if p.uid == "new"));
}

#[test]
fn http_410_on_watch_and_on_list_relists_consistently() {
    let server = FakeApiServer::start(None);
    server.seed_pods(vec![pod(ISTIO, "p1", "node-a", "10.0.0.1")]);
    let running = Running::start(plain_config(&server, None), fast_options("node-a"));
    assert_eq!(running.until_synced().len(), 1);
    server.fail_next_watches(&[410]);
    server.fail_next_lists(&[410]);
    server.delete_pod_and_compact("p1");
    server.close_watches();
    match running.next("Delete after HTTP 410") {
        PodEvent::Delete(r) => assert_eq!(r.uid, "p1"),
        other => panic!("expected Delete, got {other:?}"),
    }
    // The list answered 410 too: the client retried with a consistent read (no RV).
    let lists: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| !r.is_watch())
        .collect();
    assert!(lists.len() >= 3, "{lists:?}");
    assert!(
        !lists[2].query.contains_key("resourceVersion"),
        "{:?}",
        lists[2]
    );
    assert!(running.stat(|s| &s.expired) >= 2);
}

#[test]
fn bookmarks_move_the_resume_version_and_are_never_pods() {
    let server = FakeApiServer::start(None);
    server.seed_pods(vec![pod(ISTIO, "p1", "node-a", "10.0.0.1")]);
    let running = Running::start(plain_config(&server, None), fast_options("node-a"));
    running.until_synced();
    assert!(server.wait_for_requests(WAIT, |r| r.iter().any(|q| q.is_watch())));
    let bookmark_version = server.bookmark();
    running.quiet_for(Duration::from_millis(300));
    assert_eq!(running.stat(|s| &s.bookmarks), 1);
    server.close_watches();
    let wanted = bookmark_version.to_string();
    assert!(
        server.wait_for_requests(WAIT, |r| r
            .iter()
            .filter(|q| q.is_watch())
            .any(|q| q.query.get("resourceVersion") == Some(&wanted))),
        "re-watch from the bookmark's version {wanted}: {:?}",
        server.requests()
    );
    assert_eq!(
        running.stat(|s| &s.lists),
        1,
        "a clean end re-watches without relisting"
    );
}

#[test]
fn dropped_connection_mid_event_resumes_without_loss_or_relist() {
    let server = FakeApiServer::start(None);
    let running = Running::start(plain_config(&server, None), fast_options("node-a"));
    assert!(running.until_synced().is_empty());
    assert!(server.wait_for_requests(WAIT, |r| r.iter().any(|q| q.is_watch())));
    server.add_pod(pod(ISTIO, "first", "node-a", "10.0.0.1"));
    assert!(matches!(running.next("first"), PodEvent::Upsert(p) if p.uid == "first"));
    server.drop_next_event_midway();
    server.add_pod(pod(LINKERD, "second", "node-a", "10.0.0.2"));
    match running.next("second after reconnect") {
        PodEvent::Upsert(p) => assert_eq!(p.uid, "second"),
        other => panic!("expected Upsert, got {other:?}"),
    }
    running.quiet_for(Duration::from_millis(300));
    assert!(running.stat(|s| &s.errors) >= 1, "the cut was noticed");
    assert_eq!(running.stat(|s| &s.lists), 1);
    let watches: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.is_watch())
        .collect();
    assert!(watches.len() >= 2);
}

#[test]
fn server_timeout_ends_watch_cleanly_and_client_rewatches() {
    let server = FakeApiServer::start(None);
    let mut options = fast_options("node-a");
    options.watch_timeout_secs = (1, 1);
    let running = Running::start(plain_config(&server, None), options);
    running.until_synced();
    assert!(server.wait_for_requests(Duration::from_secs(10), |r| r
        .iter()
        .filter(|q| q.is_watch())
        .count()
        >= 3));
    assert_eq!(running.stat(|s| &s.lists), 1);
    assert_eq!(running.stat(|s| &s.errors), 0);
}

#[test]
fn retryable_errors_back_off_and_rewatch() {
    let server = FakeApiServer::start(None);
    let running = Running::start(plain_config(&server, None), fast_options("node-a"));
    running.until_synced();
    assert!(server.wait_for_requests(WAIT, |r| r.iter().any(|q| q.is_watch())));
    server.fail_next_watches(&[429, 500, 503]);
    server.close_watches();
    server.add_pod(pod(ISTIO, "after", "node-a", "10.0.0.9"));
    assert!(matches!(running.next("after errors"), PodEvent::Upsert(p) if p.uid == "after"));
    assert!(running.stat(|s| &s.errors) >= 3);
    assert_eq!(
        running.stat(|s| &s.lists),
        1,
        "429/5xx re-watch without relisting"
    );
}

fn write_account_dir(dir: &Path, ca_pem: &str, token: &str) {
    std::fs::write(dir.join("ca.crt"), ca_pem).unwrap();
    std::fs::write(dir.join("token"), format!("{token}\n")).unwrap();
}

#[test]
fn tls_in_cluster_config_and_token_rotation() {
    let pki = TestPki::new("rotation");
    let server = FakeApiServer::start(Some(pki.server()));
    server.require_tokens(&["token-1"]);
    server.seed_pods(vec![pod(ISTIO, "p1", "node-a", "10.0.0.1")]);
    let account = TempDir::new("sa");
    write_account_dir(&account.0, &pki.ca_pem, "token-1");
    let port = server.addr.port().to_string();
    let config = ClientConfig::in_cluster_from(Some("127.0.0.1"), Some(&port), &account.0).unwrap();
    let running = Running::start(config, fast_options("node-a"));
    assert_eq!(running.until_synced().len(), 1);
    // The kubelet rotates the token; the server stops accepting the old one.
    std::fs::write(account.0.join("token"), "token-2\n").unwrap();
    server.require_tokens(&["token-2"]);
    server.close_watches();
    server.add_pod(pod(ISTIO, "p2", "node-a", "10.0.0.2"));
    assert!(matches!(running.next("after rotation"), PodEvent::Upsert(p) if p.uid == "p2"));
    assert!(
        running.stat(|s| &s.unauthorized) >= 1,
        "a 401 made it re-read the token"
    );
    let last = server.requests().pop().unwrap();
    assert_eq!(last.authorization.as_deref(), Some("Bearer token-2"));
}

#[test]
fn tls_with_a_client_certificate_from_kubeconfig() {
    let pki = TestPki::new("mtls");
    let mut tls = pki.server();
    tls.client_ca_der = Some(pki.ca_der.clone());
    let server = FakeApiServer::start(Some(tls));
    server.seed_pods(vec![pod(KUMA, "k1", "node-a", "10.0.0.1")]);
    let (cert, key) = pki.client("system:node:node-a");
    let text = kubeconfig_text(
        &format!("https://127.0.0.1:{}", server.addr.port()),
        None,
        Some(&pki.ca_pem),
        Some((&cert, &key)),
    );
    let config = ClientConfig::from_kubeconfig_text(&text, Path::new("/"), None, "kc").unwrap();
    let running = Running::start(config, fast_options("node-a"));
    assert_eq!(upserted_uids(&running.until_synced()), vec!["k1"]);
}

#[test]
fn tls_with_the_wrong_ca_never_syncs() {
    let server_pki = TestPki::new("server");
    let other_pki = TestPki::new("other");
    let server = FakeApiServer::start(Some(server_pki.server()));
    let text = kubeconfig_text(
        &format!("https://127.0.0.1:{}", server.addr.port()),
        Some("x"),
        Some(&other_pki.ca_pem),
        None,
    );
    let config = ClientConfig::from_kubeconfig_text(&text, Path::new("/"), None, "kc").unwrap();
    let running = Running::start(config, fast_options("node-a"));
    running.quiet_for(Duration::from_millis(500));
    assert!(running.stat(|s| &s.errors) >= 1);
    assert!(
        server.requests().is_empty(),
        "no request passed the handshake"
    );
}

#[test]
fn stop_returns_promptly_from_a_blocked_watch() {
    let server = FakeApiServer::start(None);
    let running = Running::start(plain_config(&server, None), fast_options("node-a"));
    running.until_synced();
    assert!(server.wait_for_requests(WAIT, |r| r.iter().any(|q| q.is_watch())));
    thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    drop(running);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn empty_node_name_is_an_error_that_says_what_to_do() {
    let server = FakeApiServer::start(None);
    let mut watcher = PodWatcher::new(plain_config(&server, None), WatchOptions::new(""));
    let err = watcher.run(&mut |_| {}).unwrap_err();
    assert!(
        err.contains("--node-name") && err.contains("NODE_NAME"),
        "{err}"
    );
}

#[test]
fn kubeconfig_file_with_relative_ca_and_token_file_and_named_context() {
    let pki = TestPki::new("files");
    let server = FakeApiServer::start(Some(pki.server()));
    server.require_tokens(&["from-file"]);
    server.seed_pods(vec![pod(LINKERD, "l1", "node-a", "10.0.0.1")]);
    let dir = TempDir::new("kubeconfig");
    std::fs::create_dir_all(dir.0.join("certs")).unwrap();
    std::fs::write(dir.0.join("certs/ca.pem"), &pki.ca_pem).unwrap();
    std::fs::write(dir.0.join("token"), "from-file\n").unwrap();
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: wrong\nclusters:\n- name: real\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority: certs/ca.pem\ncontexts:\n- name: wrong\n  context: {{cluster: missing, user: u}}\n- name: right\n  context: {{cluster: real, user: u}}\nusers:\n- name: u\n  user:\n    tokenFile: token\n",
        server.addr.port()
    );
    let path = dir.0.join("config");
    std::fs::write(&path, kubeconfig).unwrap();
    let err = ClientConfig::from_kubeconfig(&path, None).unwrap_err();
    assert!(err.0.contains("\"missing\""), "{err}");
    let config = ClientConfig::from_kubeconfig(&path, Some("right")).unwrap();
    let running = Running::start(config, fast_options("node-a"));
    assert_eq!(upserted_uids(&running.until_synced()), vec!["l1"]);
    let err = ClientConfig::from_kubeconfig(&dir.0.join("absent"), None).unwrap_err();
    assert!(err.0.contains("cannot read kubeconfig"), "{err}");
}
