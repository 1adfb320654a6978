//! Map handles against the real kernel (root only; see `kernel_tests_enabled`).

use mb_maps::*;
use mb_sys::bpffs::PrivateBpffs;
use mb_sys::testing::kernel_tests_enabled;
use std::os::fd::AsFd;

#[test]
fn hash_map_insert_get_remove_iterate() {
    if !kernel_tests_enabled("hash_map_insert_get_remove_iterate") {
        return;
    }
    let m: HashMap<u32, u64> = HashMap::create("mb_t_hash", 16).unwrap();
    for k in 0..5u32 {
        m.insert(&k, &(u64::from(k) * 100)).unwrap();
    }
    assert_eq!(m.get(&3).unwrap(), Some(300));
    assert_eq!(m.get(&9).unwrap(), None);
    assert!(m.remove(&3).unwrap());
    assert!(!m.remove(&3).unwrap());
    let mut keys: Vec<u32> = m.keys().map(Result::unwrap).collect();
    keys.sort();
    assert_eq!(keys, vec![0, 1, 2, 4]);
    let sum: u64 = m.iter().map(|kv| kv.unwrap().1).sum();
    assert_eq!(sum, 700);
    // BPF_NOEXIST on an existing key is refused with EEXIST, named.
    let e = m
        .insert_with_flags(&1, &1, mb_sys::bpf::UPDATE_NOEXIST)
        .unwrap_err();
    assert!(e.to_string().contains("EEXIST"), "{e}");
}

#[test]
fn lru_hash_evicts_instead_of_failing() {
    if !kernel_tests_enabled("lru_hash_evicts_instead_of_failing") {
        return;
    }
    let m: LruHashMap<u64, u32> = LruHashMap::create("mb_t_lru", 64).unwrap();
    for k in 0..1000u64 {
        m.insert(&k, &1).unwrap();
    }
    let n = m.keys().count();
    assert!(n > 0 && n <= 64 + 64, "LRU kept {n} entries");
    // A plain hash map of the same size refuses the 65th key.
    let h: HashMap<u64, u32> = HashMap::create("mb_t_full", 64).unwrap();
    for k in 0..64u64 {
        h.insert(&k, &1).unwrap();
    }
    let e = h.insert(&64, &1).unwrap_err();
    assert!(e.to_string().contains("E2BIG"), "{e}");
}

#[test]
fn array_slots_always_exist() {
    if !kernel_tests_enabled("array_slots_always_exist") {
        return;
    }
    let a: Array<[u8; 6]> = Array::create("mb_t_array", 4).unwrap();
    assert_eq!(a.get(&2).unwrap(), Some([0; 6]));
    a.insert(&2, b"abcdef").unwrap();
    assert_eq!(a.get(&2).unwrap(), Some(*b"abcdef"));
    assert_eq!(a.get(&4).unwrap(), None, "out of range reads as absent");
    assert!(a.remove(&2).is_err(), "array slots cannot be deleted");
    assert_eq!(a.keys().count(), 4);
}

#[test]
fn per_cpu_array_reads_per_cpu_and_summed() {
    if !kernel_tests_enabled("per_cpu_array_reads_per_cpu_and_summed") {
        return;
    }
    let a: PerCpuArray<u64> = PerCpuArray::create("mb_t_pcpu", 8).unwrap();
    let cpus = mb_sys::bpf::possible_cpus().unwrap();
    a.set_all(5, &7).unwrap();
    let per_cpu = a.get_per_cpu(5).unwrap().unwrap();
    assert_eq!(per_cpu, vec![7; cpus]);
    assert_eq!(a.get_sum(5).unwrap(), Some(7 * cpus as u64));
    assert_eq!(a.get_sum(0).unwrap(), Some(0));
    assert_eq!(a.get_sum(8).unwrap(), None);
    // A 4-byte value is padded to 8 per CPU by the kernel; reads still come out right.
    let b: PerCpuArray<u32> = PerCpuArray::create("mb_t_pcpu32", 1).unwrap();
    b.set_all(0, &3).unwrap();
    assert_eq!(b.get_sum(0).unwrap(), Some(3 * cpus as u32));
}

#[test]
fn lpm_trie_matches_longest_prefix() {
    if !kernel_tests_enabled("lpm_trie_matches_longest_prefix") {
        return;
    }
    let t: LpmTrie<LpmKey<[u8; 4]>, u32> = LpmTrie::create("mb_t_lpm", 16).unwrap();
    let key = |len, ip: [u8; 4]| LpmKey {
        prefix_len: len,
        data: ip,
    };
    t.insert(&key(8, [10, 0, 0, 0]), &8).unwrap();
    t.insert(&key(24, [10, 1, 2, 0]), &24).unwrap();
    assert_eq!(t.get(&key(32, [10, 1, 2, 3])).unwrap(), Some(24));
    assert_eq!(t.get(&key(32, [10, 9, 9, 9])).unwrap(), Some(8));
    assert_eq!(t.get(&key(32, [11, 0, 0, 1])).unwrap(), None);
    assert_eq!(t.keys().count(), 2);
}

#[test]
fn sockhash_holds_sockets() {
    if !kernel_tests_enabled("sockhash_holds_sockets") {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (_server, _) = listener.accept().unwrap();
    let h: SockHash<u32> = SockHash::create("mb_t_sockhash", 4).unwrap();
    h.insert(&1, client.as_fd()).unwrap();
    let cookie = h.cookie(&1).unwrap().expect("socket is in the map");
    assert_ne!(cookie, 0);
    assert_eq!(h.keys().map(Result::unwrap).collect::<Vec<_>>(), vec![1]);
    assert!(h.remove(&1).unwrap());
    assert_eq!(h.cookie(&1).unwrap(), None);
    // Something that is not a socket is refused, with the command named.
    let not_a_socket = std::fs::File::open("/dev/null").unwrap();
    let e = h.insert(&2, not_a_socket.as_fd()).unwrap_err();
    assert!(e.to_string().contains("BPF_MAP_UPDATE_ELEM"), "{e}");
}

#[test]
fn pinned_map_reopens_with_data_and_rejects_other_shapes() {
    if !kernel_tests_enabled("pinned_map_reopens_with_data_and_rejects_other_shapes") {
        return;
    }
    let fs = PrivateBpffs::new("mb-test-maps-pin").unwrap();
    let path = fs.path().join("pods");
    {
        let m: HashMap<u64, u32> = HashMap::create_or_open_pinned(&path, "pods", 32).unwrap();
        m.insert(&42, &7).unwrap();
    }
    // Re-open: same map, data still there.
    let again: HashMap<u64, u32> = HashMap::create_or_open_pinned(&path, "pods", 32).unwrap();
    assert_eq!(again.get(&42).unwrap(), Some(7));
    // Another shape at the same pin: a clear error, never reuse.
    let wrong = HashMap::<u64, u64>::spec("pods", 32);
    let e = Map::open_pinned(&path, &wrong).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, MapError::Mismatch { .. }), "{msg}");
    assert!(msg.contains(path.to_str().unwrap()), "{msg}");
    assert!(
        msg.contains("value 8 B") && msg.contains("value 4 B"),
        "{msg}"
    );
    let e = Map::create_or_open_pinned(&path, &HashMap::<u64, u32>::spec("pods", 64)).unwrap_err();
    assert!(e.to_string().contains("max_entries 64"), "{e}");
    // A typed handle of another kind refuses it too.
    assert!(LruHashMap::<u64, u32>::open_pinned(&path).is_err());
    unpin(&path).unwrap();
    assert!(!path.exists());
    unpin(&path).unwrap();
}

#[test]
fn batch_insert_and_dump_round_trip() {
    if !kernel_tests_enabled("batch_insert_and_dump_round_trip") {
        return;
    }
    let m: HashMap<u32, u64> = HashMap::create("mb_t_batch", 2048).unwrap();
    let pairs: Vec<(u32, u64)> = (0..1000u32).map(|k| (k, u64::from(k) * 3)).collect();
    m.insert_batch(&pairs).unwrap();
    assert_eq!(m.get(&999).unwrap(), Some(2997));
    let mut dumped = m.dump().unwrap();
    dumped.sort();
    assert_eq!(dumped, pairs, "every pair comes back once");
    // LPM tries have no batch commands: the fallbacks still work.
    let t: LpmTrie<LpmKey<[u8; 4]>, u32> = LpmTrie::create("mb_t_lpm_batch", 8).unwrap();
    let k = LpmKey {
        prefix_len: 16,
        data: [10, 2, 0, 0],
    };
    t.insert_batch(&[(k, 5)]).unwrap();
    assert_eq!(t.dump().unwrap(), vec![(k, 5)]);
}
