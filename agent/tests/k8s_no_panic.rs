//! No input panics the watch-stream decoder or the pod parser (the fuzz target
//! `fuzz/fuzz_targets/k8s_watch_decoder.rs` does the same with coverage guidance).

use mb_agent::k8s::decode::WatchDecoder;
use mb_agent::k8s::PodInfo;
use proptest::prelude::*;

fn run_decoder(data: &[u8], split: usize, limit: usize) -> usize {
    let mut decoder = WatchDecoder::new(limit);
    let mut events = 0;
    let split = split.min(data.len());
    for part in [&data[..split], &data[split..]] {
        decoder.feed(part);
        loop {
            match decoder.next_event() {
                Ok(Some(_)) => events += 1,
                Ok(None) => break,
                Err(_) => return events,
            }
        }
    }
    decoder.end_of_input();
    while let Ok(Some(_)) = decoder.next_event() {
        events += 1;
    }
    let _ = decoder.finish();
    events
}

/// Pieces that make almost-valid watch streams, so mutations reach deep paths.
fn stream_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(r#"{"type":"ADDED","object":{"metadata":{"uid":"u","resourceVersion":"1"}}}"#.to_string()),
        Just(r#"{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"2"},"spec":{"containers":null},"status":{}}}"#.to_string()),
        Just(r#"{"type":"ERROR","object":{"kind":"Status","status":"Failure","code":410}}"#.to_string()),
        Just(r#"{"type":"MODIFIED","object":{"spec":{"containers":[{"name":"x","ports":[{"containerPort":99999}],"securityContext":{"runAsUser":-1}}]},"status":{"podIPs":[{"ip":"::1"},{"ip":"bad"}]}}}"#.to_string()),
        Just("\n".to_string()),
        "[{}\\[\\]\":,a-z0-9 \\n\\\\]{0,40}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600), split in 0usize..600, limit in 1usize..400) {
        run_decoder(&data, split, limit);
        let _ = PodInfo::from_json(&data);
    }

    #[test]
    fn mutated_streams_never_panic(pieces in proptest::collection::vec(stream_piece(), 0..12), split in 0usize..2000, cut in 0usize..2000) {
        let mut text = pieces.concat().into_bytes();
        if !text.is_empty() {
            let cut = cut % text.len();
            text.truncate(text.len() - cut / 2);
        }
        let events = run_decoder(&text, split, 1 << 20);
        // Every event consumes at least one byte of input.
        prop_assert!(events <= text.len());
    }
}
