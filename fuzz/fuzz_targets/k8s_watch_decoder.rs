//! Watch-stream decoder and pod parser: no input panics. The first byte picks where the
//! stream is split in two `feed` calls and whether a tiny size limit applies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mb_agent::k8s::decode::WatchDecoder;
use mb_agent::k8s::PodInfo;

fuzz_target!(|data: &[u8]| {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let split = usize::from(control >> 1) % (stream.len() + 1);
    let limit = if control & 1 == 1 { 64 } else { 1 << 20 };
    let mut decoder = WatchDecoder::new(limit);
    for part in [&stream[..split], &stream[split..]] {
        decoder.feed(part);
        loop {
            match decoder.next_event() {
                Ok(Some(event)) => {
                    let _ = event.resource_version();
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    decoder.end_of_input();
    while let Ok(Some(_)) = decoder.next_event() {}
    let _ = decoder.finish();
    let _ = PodInfo::from_json(stream);
});
