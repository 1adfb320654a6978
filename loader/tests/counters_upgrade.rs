//! Upgrade safety of the counters map (issue 17): a newer version with more counters reuses
//! the counters map an older version pinned with fewer entries (those past its end are not
//! counted until a fresh load), and a fresh load sizes it with headroom. Any other size
//! mismatch of a pinned map is still refused.

use mb_loader::datapath::{open_maps, prepare_pin_dir, PinLayout};
use mb_maps::datapath::{MAPS, MAP_COUNTERS, MAP_POD_IPS};
use mb_maps::layout::Counter;
use mb_maps::Map;
use mb_sys::bpffs::PrivateBpffs;
use mb_sys::testing::kernel_tests_enabled;

fn decl(name: &str) -> &'static mb_maps::datapath::MapDecl {
    MAPS.iter().find(|d| d.name == name).unwrap()
}

#[test]
fn counters_pinned_by_an_older_version_are_reused() {
    if !kernel_tests_enabled("counters_pinned_by_an_older_version_are_reused") {
        return;
    }
    let fs = PrivateBpffs::new("mb-test-counters").unwrap();
    let root = fs.path().join("merbridge");
    prepare_pin_dir(&root).unwrap();
    let layout = PinLayout::new(&root);
    // What the version before orig_dst_misses pinned: exactly 13 entries.
    let old = decl(MAP_COUNTERS).spec_with(13);
    let (_pinned, created) = Map::create_or_open_pinned(&layout.map(MAP_COUNTERS), &old).unwrap();
    assert!(created);
    let maps = open_maps(&layout).expect("the older counters map is reused");
    let counters = maps
        .iter()
        .find(|(d, _, _)| d.name == MAP_COUNTERS)
        .unwrap();
    assert!(!counters.2, "reused, not created");
    assert_eq!(counters.1.shape().max_entries, 13);
    drop(maps);

    // A fresh pin directory: headroom for counters added later.
    let fresh = fs.path().join("fresh");
    prepare_pin_dir(&fresh).unwrap();
    let maps = open_maps(&PinLayout::new(&fresh)).unwrap();
    let counters = maps
        .iter()
        .find(|(d, _, _)| d.name == MAP_COUNTERS)
        .unwrap();
    assert_eq!(counters.1.shape().max_entries, Counter::CAPACITY);
    const { assert!(Counter::CAPACITY > Counter::COUNT) };
    drop(maps);

    // Other maps keep refusing another size, saying what to do.
    let other = fs.path().join("other");
    prepare_pin_dir(&other).unwrap();
    let layout = PinLayout::new(&other);
    let small = decl(MAP_POD_IPS).spec_with(4);
    Map::create_or_open_pinned(&layout.map(MAP_POD_IPS), &small).unwrap();
    let Err(err) = open_maps(&layout) else {
        panic!("another pod_ips size accepted");
    };
    assert!(err.to_string().contains("merbridge unload"), "{err}");
}
