//! Annotation parser (every mesh) and the annotations-file reader: no input panics, and
//! every warning names an annotation that was given. Each input line is one annotation:
//! its first byte picks the name, the rest is the value.
#![no_main]

#[path = "../../agent/tests/annotation_names/mod.rs"]
mod annotation_names;

use annotation_names::NAMES;
use libfuzzer_sys::fuzz_target;
use mb_agent::mesh::{annotations_from_text, Mesh, PodPolicy};
use std::collections::BTreeMap;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = annotations_from_text(&text, "fuzz");
    let mut annotations = BTreeMap::new();
    for line in text.split('\n') {
        let Some(first) = line.bytes().next() else {
            continue;
        };
        let name = NAMES[usize::from(first) % NAMES.len()];
        let value = line.get(1..).unwrap_or("").replace('\u{1}', "\n");
        annotations.insert(name.to_string(), value);
    }
    for mesh in Mesh::ALL {
        let (policy, warnings) = PodPolicy::from_annotations(mesh, &annotations);
        for warning in &warnings {
            assert!(annotations.contains_key(&warning.annotation), "{warning}");
        }
        let _ = policy.redirects_outbound("10.1.2.3".parse().unwrap(), 80);
        let _ = policy.redirects_inbound(Some("fd00::1".parse().unwrap()), 8080);
    }
});
