//! Scale: 10,000 pods of one node listed (pages of 500), each turned into its interception
//! decision, then a relist after a 410 diffed; the watcher's and decisions' memory measured
//! as the growth of this process's RSS. Figures are printed (run with `--release
//! --nocapture` for the numbers in the notes); the asserted bounds are loose so that a debug
//! build on a busy 2-core machine passes, while a real regression (quadratic diff, a copy of
//! every pod kept) fails.

mod k8s_support;

use k8s_support::server::FakeApiServer;
use k8s_support::{fixture_pod_value, kubeconfig_text, synthesize_running};
use mb_agent::k8s::{ClientConfig, PodEvent, PodWatcher, WatchOptions};
use mb_agent::mesh::{intercepted, InterceptedPod, Mesh};
use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn ten_thousand_pods_list_relist_and_memory() {
    const PODS: usize = 10_000;
    let server = FakeApiServer::start(None);
    let template =
        fixture_pod_value("istio/istio-master__traffic-annotations-wildcards.yaml.injected");
    let mut pods = Vec::with_capacity(PODS);
    for i in 0..PODS {
        let ip = format!("10.{}.{}.{}", 1 + i / 65536, (i / 256) % 256, i % 256);
        pods.push(synthesize_running(
            template.clone(),
            &format!("uid-{i:05}"),
            "node-a",
            &[ip.as_str()],
            "1",
        ));
    }
    server.seed_pods(pods);
    let text = kubeconfig_text(&format!("http://{}", server.addr), None, None, None);
    let config = ClientConfig::from_kubeconfig_text(&text, Path::new("/"), None, "kc").unwrap();
    let mut options = WatchOptions::new("node-a");
    options.backoff_initial = Duration::from_millis(10);
    options.backoff_max = Duration::from_millis(100);
    options.watch_timeout_secs = (60, 60);

    let rss_before = rss_kib();
    let mut watcher = PodWatcher::new(config, options);
    let stop = watcher.stop_handle();
    let (tx, rx) = mpsc::channel::<(Instant, PodEvent)>();
    let started = Instant::now();
    let runner = thread::spawn(move || {
        watcher
            .run(&mut |event| {
                let _ = tx.send((Instant::now(), event));
            })
            .unwrap();
    });

    // The caller's side: the decision for every pod, keyed by UID (what `sync` will keep).
    let mut decisions: HashMap<String, Option<InterceptedPod>> = HashMap::new();
    let mut synced_at = None;
    while synced_at.is_none() {
        let (at, event) = rx.recv_timeout(Duration::from_secs(60)).expect("sync");
        match event {
            PodEvent::Upsert(pod) => {
                let decision = intercepted(&pod, Mesh::Istio);
                decisions.insert(pod.uid.clone(), decision);
            }
            PodEvent::Delete(r) => {
                decisions.remove(&r.uid);
            }
            PodEvent::Synced => synced_at = Some(at),
        }
    }
    let list_time = synced_at.unwrap() - started;
    let decided_time = started.elapsed();
    assert_eq!(decisions.len(), PODS);
    assert!(decisions.values().all(|d| d.is_some()));
    let rss_after = rss_kib();

    // Relist after 410: 3 pods vanished meanwhile; the diff must report exactly those.
    for i in [7usize, 4242, 9999] {
        server.delete_pod_and_compact(&format!("uid-{i:05}"));
    }
    let relist_started = Instant::now();
    server.close_watches();
    let mut deleted = Vec::new();
    while deleted.len() < 3 {
        let (_, event) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("relist deletes");
        match event {
            PodEvent::Delete(r) => {
                decisions.remove(&r.uid);
                deleted.push(r.uid);
            }
            PodEvent::Upsert(p) => panic!("unchanged pod {} re-reported on relist", p.uid),
            PodEvent::Synced => panic!("Synced twice"),
        }
    }
    let relist_time = relist_started.elapsed();
    deleted.sort();
    assert_eq!(deleted, vec!["uid-00007", "uid-04242", "uid-09999"]);
    assert_eq!(decisions.len(), PODS - 3);

    stop.stop();
    runner.join().unwrap();
    let growth_mib = (rss_after.saturating_sub(rss_before)) as f64 / 1024.0;
    eprintln!(
        "10,000 pods: listed in {list_time:?} (20 pages), decided in {decided_time:?}; \
         relist + diff after 410 in {relist_time:?}; RSS growth {growth_mib:.1} MiB \
         (watcher state + decisions + allocator slack; test server excluded: seeded before)"
    );
    assert!(list_time < Duration::from_secs(120), "{list_time:?}");
    assert!(relist_time < Duration::from_secs(120), "{relist_time:?}");
    assert!(growth_mib < 200.0, "{growth_mib} MiB");
}

/// From the server writing a watch event to the watcher's sink receiving it as a
/// `PodEvent` (the first half of "watch event → map updated"), over 300 events.
#[test]
fn watch_event_to_sink_latency() {
    let server = FakeApiServer::start(None);
    let text = kubeconfig_text(&format!("http://{}", server.addr), None, None, None);
    let config = ClientConfig::from_kubeconfig_text(&text, Path::new("/"), None, "kc").unwrap();
    let mut options = WatchOptions::new("node-a");
    options.watch_timeout_secs = (60, 60);
    let mut watcher = PodWatcher::new(config, options);
    let stop = watcher.stop_handle();
    let (tx, rx) = mpsc::channel::<(Instant, PodEvent)>();
    let runner = thread::spawn(move || {
        watcher
            .run(&mut |event| {
                let _ = tx.send((Instant::now(), event));
            })
            .unwrap();
    });
    assert!(matches!(
        rx.recv_timeout(Duration::from_secs(30)).unwrap().1,
        PodEvent::Synced
    ));
    assert!(server.wait_for_requests(Duration::from_secs(30), |r| r.iter().any(|q| q.is_watch())));
    let template = fixture_pod_value("istio/istio-master__pod.yaml.injected");
    let mut latencies = Vec::new();
    for i in 0..300 {
        let pod = synthesize_running(
            template.clone(),
            &format!("lat-{i}"),
            "node-a",
            &[format!("10.3.{}.{}", i / 200, i % 200).as_str()],
            "1",
        );
        let sent = Instant::now();
        server.add_pod(pod);
        let (received, event) = rx.recv_timeout(Duration::from_secs(30)).expect("event");
        assert!(matches!(event, PodEvent::Upsert(p) if p.uid == format!("lat-{i}")));
        latencies.push(received - sent);
    }
    stop.stop();
    runner.join().unwrap();
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let p99 = latencies[latencies.len() * 99 / 100];
    eprintln!(
        "watch event -> sink over 300 events: p50 {p50:?}, p99 {p99:?}, max {:?}",
        latencies.last().unwrap()
    );
    assert!(p99 < Duration::from_millis(500), "p99 {p99:?}");
}
