//! The real wire captures in `../shared/fixtures/k8s/api/` (client-go golden responses from
//! a real kube-apiserver, and an ERROR 410 line from a public issue), replayed byte for byte
//! by a loopback server and read through the agent's HTTP client and watch decoder.

mod k8s_support;

use k8s_support::{fixture_text, fixtures_dir};
use mb_agent::k8s::decode::{WatchDecoder, WatchEvent};
use mb_agent::k8s::http::{self, Endpoint};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::thread;
use std::time::Duration;

/// Serves `reply` verbatim to one connection, `piece` bytes per write; returns the request.
fn replay(reply: Vec<u8>, piece: usize) -> (Endpoint, thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(socket.try_clone().unwrap());
        let mut request = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                break;
            }
            request.push_str(&line);
        }
        for part in reply.chunks(piece.max(1)) {
            socket.write_all(part).unwrap();
            socket.flush().unwrap();
        }
        request
    });
    let endpoint = Endpoint {
        host: "127.0.0.1".into(),
        port,
        base_path: String::new(),
        tls: None,
        server_name: None,
        connect_timeout: Duration::from_secs(5),
    };
    (endpoint, handle)
}

fn read_events(reply: Vec<u8>, piece: usize) -> Vec<WatchEvent> {
    let (endpoint, server) = replay(reply, piece);
    let mut response = http::get(
        &endpoint,
        "/api/v1/pods?watch=true&resourceVersion=42",
        &[("Accept", "application/json")],
        Duration::from_secs(5),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let mut decoder = WatchDecoder::default();
    let mut events = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let n = response.read(&mut buffer).unwrap();
        if n == 0 {
            decoder.end_of_input();
        } else {
            decoder.feed(&buffer[..n]);
        }
        while let Some(event) = decoder.next_event().unwrap() {
            events.push(event);
        }
        if n == 0 {
            decoder.finish().unwrap();
            break;
        }
    }
    let request = server.join().unwrap();
    assert!(request.starts_with("GET /api/v1/pods?watch=true&resourceVersion=42 HTTP/1.1\r\n"));
    events
}

#[test]
fn client_go_watchlist_capture_decodes_to_the_golden_events() {
    let raw = std::fs::read(fixtures_dir().join("api/client-go__watchlist-response.http")).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&fixture_text(
        "api/client-go__watchlist-decoded-events.json",
    ))
    .unwrap();
    let expected = expected.as_array().unwrap();
    // Whole, in 7-byte pieces (splitting chunk headers and JSON), and byte by byte.
    for piece in [raw.len(), 7, 1] {
        let events = read_events(raw.clone(), piece);
        assert_eq!(events.len(), expected.len(), "piece size {piece}");
        for (event, golden) in events.iter().zip(expected) {
            let golden_type = golden["type"].as_str().unwrap();
            let golden_version = golden["object"]["metadata"]["resourceVersion"].as_str();
            assert_eq!(event.resource_version(), golden_version);
            match (golden_type, event) {
                ("ADDED", WatchEvent::Added(object)) => {
                    assert_eq!(
                        object.uid,
                        golden["object"]["metadata"]["uid"].as_str().unwrap()
                    );
                    assert_eq!(object.name, "foobar");
                    assert_eq!(object.namespace, "default");
                }
                ("BOOKMARK", WatchEvent::Bookmark { resource_version }) => {
                    assert_eq!(resource_version, "964");
                }
                (t, e) => panic!("golden {t} decoded as {e:?}"),
            }
        }
    }
}

#[test]
fn real_in_stream_410_line_is_an_expired_error() {
    let line = fixture_text("api/issue-wso2-apk-571__watch-error-410.jsonl");
    let body = format!("{:x}\r\n{line}\r\n0\r\n\r\n", line.len());
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
    );
    let events = read_events(reply.into_bytes(), 5);
    match events.as_slice() {
        [WatchEvent::Error(status)] => {
            assert!(status.is_expired());
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
            assert_eq!(status.message, "too old resource version: 657887 (680402)");
        }
        other => panic!("expected one ERROR event, got {other:?}"),
    }
}

#[test]
fn client_go_list_capture_reads_with_content_length() {
    let raw = std::fs::read(fixtures_dir().join("api/client-go__list-response.http")).unwrap();
    let (endpoint, server) = replay(raw, 11);
    let mut response = http::get(
        &endpoint,
        "/api/v1/pods",
        &[],
        Duration::from_secs(5),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(response.status, 200);
    let body = response.read_to_end(1 << 20).unwrap();
    server.join().unwrap();
    assert_eq!(body.len(), 260, "Content-Length");
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(list["metadata"]["resourceVersion"], "222");
    let item = mb_agent::k8s::PodInfo::from_value(&list["items"][0]).unwrap();
    assert_eq!(item.uid, "a6bb38b5-67ca-4d0d-bd87-da746a94c8a5");
    assert_eq!(
        item.resource_version, "207",
        "an item's own version, not the list's"
    );
}
