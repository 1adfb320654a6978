//! Typed handles over [`Map`]: keys and values are [`Pod`] types, shapes are checked when a
//! handle wraps a map.

use crate::map::{Map, MapError, MapSpec};
use crate::pod::Pod;
use mb_sys::bpf::{MapType, UPDATE_ANY};
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

/// Which map types a key/value handle accepts.
pub trait MapKind {
    const TYPES: &'static [MapType];
    const DESCRIPTION: &'static str;
}

/// `BPF_MAP_TYPE_HASH`.
pub struct HashKind;
/// `BPF_MAP_TYPE_LRU_HASH`.
pub struct LruHashKind;
/// `BPF_MAP_TYPE_ARRAY`.
pub struct ArrayKind;
/// `BPF_MAP_TYPE_LPM_TRIE`.
pub struct LpmTrieKind;

impl MapKind for HashKind {
    const TYPES: &'static [MapType] = &[MapType::HASH];
    const DESCRIPTION: &'static str = "hash";
}
impl MapKind for LruHashKind {
    const TYPES: &'static [MapType] = &[MapType::LRU_HASH];
    const DESCRIPTION: &'static str = "lru_hash";
}
impl MapKind for ArrayKind {
    const TYPES: &'static [MapType] = &[MapType::ARRAY];
    const DESCRIPTION: &'static str = "array";
}
impl MapKind for LpmTrieKind {
    const TYPES: &'static [MapType] = &[MapType::LPM_TRIE];
    const DESCRIPTION: &'static str = "lpm_trie";
}

/// A key → value map of kind `T`.
pub struct KvMap<K, V, T> {
    map: Map,
    _types: PhantomData<fn(K, V, T)>,
}

pub type HashMap<K, V> = KvMap<K, V, HashKind>;
pub type LruHashMap<K, V> = KvMap<K, V, LruHashKind>;
/// Keys are indexes `0..max_entries`; every slot always exists.
pub type Array<V> = KvMap<u32, V, ArrayKind>;
/// Keys start with a u32 prefix length in bits (see [`crate::LpmKey`]).
pub type LpmTrie<K, V> = KvMap<K, V, LpmTrieKind>;

fn check_shape(
    map: &Map,
    types: &[MapType],
    kind: &str,
    key: usize,
    value: usize,
) -> Result<(), MapError> {
    let info = map.info();
    if types.contains(&info.map_type)
        && info.key_size as usize == key
        && info.value_size as usize == value
    {
        return Ok(());
    }
    Err(MapError::WrongShape {
        name: info.name.clone(),
        wanted: format!("{kind} with key {key} B and value {value} B"),
        found: map.shape(),
    })
}

impl<K: Pod, V: Pod, T: MapKind> KvMap<K, V, T> {
    /// The spec of such a map with `max_entries` entries.
    pub fn spec(name: &str, max_entries: u32) -> MapSpec {
        MapSpec::new(name, T::TYPES[0], K::SIZE, V::SIZE, max_entries)
    }

    /// Creates an unpinned map.
    pub fn create(name: &str, max_entries: u32) -> Result<Self, MapError> {
        Self::from_map(Map::create(&Self::spec(name, max_entries))?)
    }

    /// Re-opens the map pinned at `path` (shape checked), or creates and pins it.
    pub fn create_or_open_pinned(
        path: &Path,
        name: &str,
        max_entries: u32,
    ) -> Result<Self, MapError> {
        let (map, _) = Map::create_or_open_pinned(path, &Self::spec(name, max_entries))?;
        Self::from_map(map)
    }

    /// Opens the map pinned at `path`; its type, key and value sizes must fit this handle.
    pub fn open_pinned(path: &Path) -> Result<Self, MapError> {
        Self::from_map(Map::open_pinned_any(path)?)
    }

    /// Wraps an open map after checking its shape.
    pub fn from_map(map: Map) -> Result<Self, MapError> {
        check_shape(&map, T::TYPES, T::DESCRIPTION, K::SIZE, V::SIZE)?;
        Ok(KvMap {
            map,
            _types: PhantomData,
        })
    }

    pub fn map(&self) -> &Map {
        &self.map
    }

    pub fn into_map(self) -> Map {
        self.map
    }

    /// The value stored under `key`, if any.
    pub fn get(&self, key: &K) -> Result<Option<V>, MapError> {
        let mut value = vec![0u8; V::SIZE];
        let found = self.map.raw().lookup(&key.to_vec(), &mut value)?;
        Ok(found.then(|| V::read_from(&value)))
    }

    /// Sets `key` to `value`, creating or replacing it.
    pub fn insert(&self, key: &K, value: &V) -> Result<(), MapError> {
        self.insert_with_flags(key, value, UPDATE_ANY)
    }

    /// Sets `key` with explicit `BPF_NOEXIST`/`BPF_EXIST` semantics.
    pub fn insert_with_flags(&self, key: &K, value: &V, flags: u64) -> Result<(), MapError> {
        Ok(self
            .map
            .raw()
            .update(&key.to_vec(), &value.to_vec(), flags)?)
    }

    /// Removes `key`; false when it was not there. (Array slots cannot be removed: EINVAL.)
    pub fn remove(&self, key: &K) -> Result<bool, MapError> {
        Ok(self.map.raw().delete(&key.to_vec())?)
    }

    /// Sets many pairs with one `BPF_MAP_UPDATE_BATCH` call (5.6+; for older kernels or map
    /// types without batch support, falls back to one update per pair).
    pub fn insert_batch(&self, pairs: &[(K, V)]) -> Result<(), MapError> {
        let mut keys = vec![0u8; pairs.len() * K::SIZE];
        let mut values = vec![0u8; pairs.len() * V::SIZE];
        for (i, (k, v)) in pairs.iter().enumerate() {
            k.write_to(&mut keys[i * K::SIZE..(i + 1) * K::SIZE]);
            v.write_to(&mut values[i * V::SIZE..(i + 1) * V::SIZE]);
        }
        match self.map.raw().update_batch(&keys, &values, UPDATE_ANY) {
            Ok(_) => Ok(()),
            Err(e) if batch_unsupported(&e) => {
                pairs.iter().try_for_each(|(k, v)| self.insert(k, v))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Every pair, read with `BPF_MAP_LOOKUP_BATCH` in chunks (falls back to key iteration
    /// where batches are unsupported).
    pub fn dump(&self) -> Result<Vec<(K, V)>, MapError> {
        const CHUNK: usize = 256;
        let mut out = Vec::new();
        let mut cursor = mb_sys::bpf::BatchCursor::default();
        let mut keys = vec![0u8; CHUNK * K::SIZE];
        let mut values = vec![0u8; CHUNK * V::SIZE];
        let limit = self.map.info().max_entries as usize;
        while !cursor.is_done() && out.len() < limit {
            let n = match self
                .map
                .raw()
                .lookup_batch(&mut cursor, &mut keys, &mut values)
            {
                Ok(n) => n,
                Err(e) if batch_unsupported(&e) && out.is_empty() => {
                    return self.iter().collect();
                }
                Err(e) => return Err(e.into()),
            };
            for i in 0..n {
                out.push((
                    K::read_from(&keys[i * K::SIZE..(i + 1) * K::SIZE]),
                    V::read_from(&values[i * V::SIZE..(i + 1) * V::SIZE]),
                ));
            }
        }
        Ok(out)
    }

    /// The keys, in the kernel's order.
    pub fn keys(&self) -> impl Iterator<Item = Result<K, MapError>> + '_ {
        self.map.raw_keys().map(|k| k.map(|b| K::read_from(&b)))
    }

    /// Key/value pairs (a key deleted between the two steps is skipped).
    pub fn iter(&self) -> impl Iterator<Item = Result<(K, V), MapError>> + '_ {
        self.keys().filter_map(move |k| match k {
            Ok(k) => match self.get(&k) {
                Ok(Some(v)) => Some(Ok((k, v))),
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            },
            Err(e) => Some(Err(e)),
        })
    }
}

/// Kernels before 5.6 and some map types (LPM tries) have no batch commands.
fn batch_unsupported(e: &mb_sys::bpf::BpfError) -> bool {
    use nix::errno::Errno;
    e.is(Errno::EINVAL) || e.is(Errno::EOPNOTSUPP) || e.errno == mb_sys::bpf::ENOTSUPP
}

impl<K, V, T> AsFd for KvMap<K, V, T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.map.as_fd()
    }
}

/// `BPF_MAP_TYPE_PERCPU_ARRAY`: one value per possible CPU in every slot.
pub struct PerCpuArray<V> {
    map: Map,
    _v: PhantomData<fn(V)>,
}

impl<V: Pod> PerCpuArray<V> {
    pub fn spec(name: &str, max_entries: u32) -> MapSpec {
        MapSpec::new(name, MapType::PERCPU_ARRAY, 4, V::SIZE, max_entries)
    }

    pub fn create(name: &str, max_entries: u32) -> Result<Self, MapError> {
        Self::from_map(Map::create(&Self::spec(name, max_entries))?)
    }

    pub fn open_pinned(path: &Path) -> Result<Self, MapError> {
        Self::from_map(Map::open_pinned_any(path)?)
    }

    pub fn from_map(map: Map) -> Result<Self, MapError> {
        check_shape(&map, &[MapType::PERCPU_ARRAY], "percpu_array", 4, V::SIZE)?;
        Ok(PerCpuArray {
            map,
            _v: PhantomData,
        })
    }

    pub fn map(&self) -> &Map {
        &self.map
    }

    /// Slot stride in the kernel's per-CPU buffer.
    fn stride() -> usize {
        V::SIZE.next_multiple_of(8)
    }

    /// The value of slot `index` on every possible CPU. `None`: index out of range.
    pub fn get_per_cpu(&self, index: u32) -> Result<Option<Vec<V>>, MapError> {
        let mut buf = vec![0u8; self.map.raw().value_len()];
        if !self.map.raw().lookup(&index.to_ne_bytes(), &mut buf)? {
            return Ok(None);
        }
        Ok(Some(
            buf.chunks_exact(Self::stride())
                .map(|c| V::read_from(&c[..V::SIZE]))
                .collect(),
        ))
    }

    /// Sets slot `index` to `value` on every CPU.
    pub fn set_all(&self, index: u32, value: &V) -> Result<(), MapError> {
        let mut buf = vec![0u8; self.map.raw().value_len()];
        for chunk in buf.chunks_exact_mut(Self::stride()) {
            value.write_to(&mut chunk[..V::SIZE]);
        }
        Ok(self
            .map
            .raw()
            .update(&index.to_ne_bytes(), &buf, UPDATE_ANY)?)
    }
}

impl<V: Pod + Default> PerCpuArray<V> {
    /// Sets slot `index` to `value` on the first CPU and to zero on the others: a total that
    /// user space keeps (counters sum over the CPUs).
    pub fn set_total(&self, index: u32, value: &V) -> Result<(), MapError> {
        let mut buf = vec![0u8; self.map.raw().value_len()];
        let zero = V::default();
        for (cpu, chunk) in buf.chunks_exact_mut(Self::stride()).enumerate() {
            if cpu == 0 { value } else { &zero }.write_to(&mut chunk[..V::SIZE]);
        }
        Ok(self
            .map
            .raw()
            .update(&index.to_ne_bytes(), &buf, UPDATE_ANY)?)
    }
}

impl<V: Pod + Copy + Default + std::ops::Add<Output = V>> PerCpuArray<V> {
    /// Slot `index` summed over all CPUs (counters). `None`: index out of range.
    pub fn get_sum(&self, index: u32) -> Result<Option<V>, MapError> {
        Ok(self
            .get_per_cpu(index)?
            .map(|vals| vals.into_iter().fold(V::default(), |a, b| a + b)))
    }
}

/// `BPF_MAP_TYPE_SOCKHASH`: key → socket. Values are socket fds on update (4 or 8 bytes);
/// 8-byte maps return the socket cookie on lookup.
pub struct SockHash<K> {
    map: Map,
    _k: PhantomData<fn(K)>,
}

impl<K: Pod> SockHash<K> {
    /// A spec with 8-byte values (socket cookies readable from user space).
    pub fn spec(name: &str, max_entries: u32) -> MapSpec {
        MapSpec::new(name, MapType::SOCKHASH, K::SIZE, 8, max_entries)
    }

    pub fn create(name: &str, max_entries: u32) -> Result<Self, MapError> {
        Self::from_map(Map::create(&Self::spec(name, max_entries))?)
    }

    pub fn open_pinned(path: &Path) -> Result<Self, MapError> {
        Self::from_map(Map::open_pinned_any(path)?)
    }

    pub fn from_map(map: Map) -> Result<Self, MapError> {
        let info = map.info();
        if info.map_type != MapType::SOCKHASH
            || info.key_size as usize != K::SIZE
            || !(info.value_size == 4 || info.value_size == 8)
        {
            return Err(MapError::WrongShape {
                name: info.name.clone(),
                wanted: format!("sockhash with key {} B and value 4 or 8 B", K::SIZE),
                found: map.shape(),
            });
        }
        Ok(SockHash {
            map,
            _k: PhantomData,
        })
    }

    pub fn map(&self) -> &Map {
        &self.map
    }

    /// Puts `socket` (a TCP socket) under `key`.
    pub fn insert(&self, key: &K, socket: BorrowedFd<'_>) -> Result<(), MapError> {
        let fd = socket.as_raw_fd() as u32;
        let value = if self.map.info().value_size == 8 {
            u64::from(fd).to_ne_bytes().to_vec()
        } else {
            fd.to_ne_bytes().to_vec()
        };
        Ok(self.map.raw().update(&key.to_vec(), &value, UPDATE_ANY)?)
    }

    /// The cookie of the socket under `key` (8-byte-value maps only).
    pub fn cookie(&self, key: &K) -> Result<Option<u64>, MapError> {
        let mut value = vec![0u8; self.map.raw().value_len()];
        let found = self.map.raw().lookup(&key.to_vec(), &mut value)?;
        Ok(found.then(|| u64::read_from(&value[..8.min(value.len())])))
    }

    pub fn remove(&self, key: &K) -> Result<bool, MapError> {
        Ok(self.map.raw().delete(&key.to_vec())?)
    }

    pub fn keys(&self) -> impl Iterator<Item = Result<K, MapError>> + '_ {
        self.map.raw_keys().map(|k| k.map(|b| K::read_from(&b)))
    }
}

impl<K> AsFd for SockHash<K> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.map.as_fd()
    }
}
