//! No annotation value panics the policy parser, for any mesh; every warning names its
//! annotation (the fuzz target `fuzz/fuzz_targets/annotations_policy.rs` does the same with
//! coverage guidance).

mod annotation_names;

use annotation_names::NAMES;
use mb_agent::mesh::{annotations_from_text, Mesh, PodPolicy};
use proptest::prelude::*;
use std::collections::BTreeMap;

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9,\\- *]{0,30}",
        "[0-9a-f:./,* ]{0,40}",
        "(redirect:\n  inbound:\n    excludePorts: \\[[0-9a-z, -]{0,12}\\]\n    port: [0-9a-z]{0,6}\n)?kumaDPUser: [0-9a-z\"]{0,8}",
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn any_annotations_parse_without_panic(pairs in proptest::collection::vec((0usize..NAMES.len(), value()), 0..8), port in any::<u16>(), ip in any::<u32>()) {
        let annotations: BTreeMap<String, String> =
            pairs.into_iter().map(|(i, v)| (NAMES[i].to_string(), v)).collect();
        for mesh in Mesh::ALL {
            let (policy, warnings) = PodPolicy::from_annotations(mesh, &annotations);
            for w in &warnings {
                prop_assert!(annotations.contains_key(&w.annotation), "{w}");
            }
            let _ = policy.redirects_outbound(std::net::Ipv4Addr::from(ip).into(), port);
            let _ = policy.redirects_inbound(None, port);
        }
    }

    #[test]
    fn any_annotations_file_text_is_handled(text in any::<String>()) {
        let _ = annotations_from_text(&text, "prop");
    }
}
