//! [`MapFd`]: a map fd together with the shape the kernel reported for it, so that element
//! operations can check every buffer length before the kernel reads or writes it.

use super::attr::{MapBatchAttr, MapElemAttr};
use super::ops::{map_create, map_info, obj_get, obj_pin, MapCreate, MapInfo};
use super::{bpf, BpfError, Cmd};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::OnceLock;

/// An open map and its shape (type, key and value sizes never change after creation).
#[derive(Debug)]
pub struct MapFd {
    fd: OwnedFd,
    info: MapInfo,
    value_len: usize,
}

/// Number of possible CPUs (`/sys/devices/system/cpu/possible`), as per-CPU maps count them.
pub fn possible_cpus() -> Result<usize, String> {
    static CPUS: OnceLock<Result<usize, String>> = OnceLock::new();
    CPUS.get_or_init(|| {
        let path = "/sys/devices/system/cpu/possible";
        let text = std::fs::read_to_string(path).map_err(|e| format!("read {path}: {e}"))?;
        parse_cpu_list(&text).ok_or_else(|| format!("{path}: cannot parse {:?}", text.trim()))
    })
    .clone()
}

/// Highest CPU number + 1 of a kernel CPU list such as `0-3,8-11`.
fn parse_cpu_list(text: &str) -> Option<usize> {
    let mut max = None;
    for part in text.trim().split(',') {
        let last = match part.split_once('-') {
            Some((a, b)) => {
                a.trim().parse::<usize>().ok()?;
                b.trim().parse::<usize>().ok()?
            }
            None => part.trim().parse::<usize>().ok()?,
        };
        max = Some(max.map_or(last, |m: usize| m.max(last)));
    }
    max.map(|m| m + 1)
}

impl MapFd {
    /// `BPF_MAP_CREATE`, then reads back the shape.
    pub fn create(args: &MapCreate<'_>) -> Result<MapFd, BpfError> {
        MapFd::from_fd(map_create(args)?)
    }

    /// Wraps a map fd, asking the kernel for its shape.
    pub fn from_fd(fd: OwnedFd) -> Result<MapFd, BpfError> {
        let info = map_info(fd.as_fd())?;
        let value_len = if info.map_type.is_per_cpu() {
            let cpus = possible_cpus()
                .map_err(|e| BpfError::new(Cmd::ObjGetInfoByFd, libc::EINVAL).with_detail(e))?;
            (info.value_size as usize).next_multiple_of(8) * cpus
        } else {
            info.value_size as usize
        };
        Ok(MapFd {
            fd,
            info,
            value_len,
        })
    }

    /// Opens the map pinned at `path`.
    pub fn open_pinned(path: &Path) -> Result<MapFd, BpfError> {
        MapFd::from_fd(obj_get(path, 0)?)
            .map_err(|e| e.with_detail(format!("pinned map {}", path.display())))
    }

    /// Pins the map at `path` (inside a bpffs).
    pub fn pin(&self, path: &Path) -> Result<(), BpfError> {
        obj_pin(self.fd.as_fd(), path)
    }

    pub fn info(&self) -> &MapInfo {
        &self.info
    }

    /// Bytes of one lookup result: `value_size`, or for per-CPU maps one 8-byte-aligned slot
    /// per possible CPU.
    pub fn value_len(&self) -> usize {
        self.value_len
    }

    fn check(&self, cmd: Cmd, what: &str, have: usize, want: usize) -> Result<(), BpfError> {
        if have == want {
            return Ok(());
        }
        Err(BpfError::new(cmd, libc::EINVAL).with_detail(format!(
            "{what} is {have} bytes, map {:?} ({}) wants {want}",
            self.info.name, self.info.map_type
        )))
    }

    fn elem(&self, cmd: Cmd, key: u64, value: u64, flags: u64) -> Result<bool, BpfError> {
        let mut attr = MapElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key,
            value,
            flags,
            ..Default::default()
        };
        match bpf(cmd, &mut attr) {
            Ok(_) => Ok(true),
            Err(e) if e.is(nix::errno::Errno::ENOENT) => Ok(false),
            Err(e) => Err(e.with_detail(format!("map {:?}", self.info.name))),
        }
    }

    /// Copies the value of `key` into `value` (`value_len()` bytes). `Ok(false)`: no such key.
    pub fn lookup(&self, key: &[u8], value: &mut [u8]) -> Result<bool, BpfError> {
        let cmd = Cmd::MapLookupElem;
        self.check(cmd, "key", key.len(), self.info.key_size as usize)?;
        self.check(cmd, "value buffer", value.len(), self.value_len)?;
        self.elem(cmd, key.as_ptr() as u64, value.as_mut_ptr() as u64, 0)
    }

    /// Sets `key` to `value` (`value_len()` bytes) with [`super::UPDATE_ANY`] and friends.
    /// (For sockhash/sockmap the value is a socket fd, `value_size` bytes.)
    pub fn update(&self, key: &[u8], value: &[u8], flags: u64) -> Result<(), BpfError> {
        let cmd = Cmd::MapUpdateElem;
        self.check(cmd, "key", key.len(), self.info.key_size as usize)?;
        self.check(cmd, "value", value.len(), self.value_len)?;
        if self.elem(cmd, key.as_ptr() as u64, value.as_ptr() as u64, flags)? {
            Ok(())
        } else {
            Err(BpfError::new(cmd, libc::ENOENT)
                .with_detail(format!("map {:?}: key not present", self.info.name)))
        }
    }

    /// Deletes `key`. `Ok(false)`: it was not there.
    pub fn delete(&self, key: &[u8]) -> Result<bool, BpfError> {
        let cmd = Cmd::MapDeleteElem;
        self.check(cmd, "key", key.len(), self.info.key_size as usize)?;
        self.elem(cmd, key.as_ptr() as u64, 0, 0)
    }

    /// Writes the key after `key` (or the first key, for `None`) into `next`. `Ok(false)`: no
    /// more keys.
    pub fn next_key(&self, key: Option<&[u8]>, next: &mut [u8]) -> Result<bool, BpfError> {
        let cmd = Cmd::MapGetNextKey;
        let key_size = self.info.key_size as usize;
        if let Some(k) = key {
            self.check(cmd, "key", k.len(), key_size)?;
        }
        self.check(cmd, "next-key buffer", next.len(), key_size)?;
        let key_ptr = key.map_or(0, |k| k.as_ptr() as u64);
        self.elem(cmd, key_ptr, next.as_mut_ptr() as u64, 0)
    }
}

/// Where a [`MapFd::lookup_batch`] walk continues (opaque; the kernel writes it).
#[derive(Clone, Debug, Default)]
pub struct BatchCursor {
    token: Option<Vec<u8>>,
    done: bool,
}

impl BatchCursor {
    /// True once the walk reached the end of the map.
    pub fn is_done(&self) -> bool {
        self.done
    }
}

impl MapFd {
    /// `BPF_MAP_UPDATE_BATCH` (5.6+): sets `keys.len() / key_size` elements in one call.
    /// `keys` and `values` are packed back to back (`values` with `value_len()` per element).
    /// Returns how many elements the kernel processed (all, on success).
    pub fn update_batch(
        &self,
        keys: &[u8],
        values: &[u8],
        elem_flags: u64,
    ) -> Result<u32, BpfError> {
        let cmd = Cmd::MapUpdateBatch;
        let key_size = (self.info.key_size as usize).max(1);
        let count = keys.len() / key_size;
        self.check(cmd, "keys", keys.len(), count * key_size)?;
        self.check(cmd, "values", values.len(), count * self.value_len)?;
        let mut attr = MapBatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: u32::try_from(count).map_err(|_| {
                BpfError::new(cmd, libc::E2BIG).with_detail("more than 2^32 elements")
            })?,
            map_fd: self.fd.as_raw_fd() as u32,
            elem_flags,
            ..Default::default()
        };
        match bpf(cmd, &mut attr) {
            Ok(_) => Ok(attr.count),
            Err(e) => Err(e.with_detail(format!(
                "map {:?}: {} of {count} elements written",
                self.info.name, attr.count
            ))),
        }
    }

    /// `BPF_MAP_LOOKUP_BATCH` (5.6+): copies up to `keys.len() / key_size` elements, continuing
    /// from `cursor`, into `keys` and `values` (packed). Returns how many were copied; the
    /// cursor says when the map is exhausted.
    pub fn lookup_batch(
        &self,
        cursor: &mut BatchCursor,
        keys: &mut [u8],
        values: &mut [u8],
    ) -> Result<usize, BpfError> {
        let cmd = Cmd::MapLookupBatch;
        if cursor.done {
            return Ok(0);
        }
        let key_size = (self.info.key_size as usize).max(1);
        let count = keys.len() / key_size;
        self.check(cmd, "keys", keys.len(), count * key_size)?;
        self.check(cmd, "values", values.len(), count * self.value_len)?;
        // Hash maps use a u32 bucket index as the token, arrays a key: room for both.
        let token_len = key_size.max(4);
        let mut out_token = vec![0u8; token_len];
        let mut attr = MapBatchAttr {
            in_batch: cursor.token.as_ref().map_or(0, |t| t.as_ptr() as u64),
            out_batch: out_token.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: count as u32,
            map_fd: self.fd.as_raw_fd() as u32,
            ..Default::default()
        };
        match bpf(cmd, &mut attr) {
            Ok(_) => {
                cursor.token = Some(out_token);
                Ok(attr.count as usize)
            }
            // ENOENT: the walk reached the end; `count` holds the last elements.
            Err(e) if e.is(nix::errno::Errno::ENOENT) => {
                cursor.done = true;
                Ok(attr.count as usize)
            }
            Err(e) => Err(e.with_detail(format!("map {:?}", self.info.name))),
        }
    }
}

impl AsFd for MapFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::{dummy_fd, override_syscall, u32_at, u64_at, FakeGuard};
    use super::super::MapType;
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    type Calls = Rc<RefCell<Vec<(Cmd, Vec<u8>)>>>;

    /// A map created through the fake syscall, which records every call and answers
    /// `absent` with ENOENT (and everything else with success). The fake's info is all
    /// zeros, so the map claims key and value size 0.
    fn fake_map(absent: Cmd, max_entries: u32) -> (MapFd, Calls, FakeGuard) {
        let calls = Calls::default();
        let seen = calls.clone();
        let guard = override_syscall(move |cmd, a| {
            seen.borrow_mut().push((cmd, a.to_vec()));
            match cmd {
                Cmd::MapCreate => Ok(dummy_fd() as i64),
                c if c == absent => Err(libc::ENOENT),
                _ => Ok(0),
            }
        });
        let map = MapFd::create(&MapCreate {
            map_type: MapType::HASH,
            key_size: 4,
            value_size: 8,
            max_entries,
            map_flags: 0,
            name: "m",
        })
        .unwrap();
        (map, calls, guard)
    }

    #[test]
    fn batch_ops_pass_packed_buffers_and_count() {
        let (map, calls, _g) = fake_map(Cmd::MapLookupBatch, 8);
        // The fake reports key and value size 0, so empty buffers are the right size.
        assert_eq!(map.update_batch(&[], &[], 0).unwrap(), 0);
        let mut cursor = BatchCursor::default();
        assert_eq!(map.lookup_batch(&mut cursor, &mut [], &mut []).unwrap(), 0);
        assert!(cursor.is_done(), "ENOENT ends the walk");
        let calls = calls.borrow();
        let (cmd, a) = &calls[calls.len() - 2];
        assert_eq!(*cmd, Cmd::MapUpdateBatch);
        assert_eq!(a.len(), 56);
        assert_eq!(u32_at(a, 36), map.as_fd().as_raw_fd() as u32);
        let (cmd, a) = calls.last().unwrap();
        assert_eq!(*cmd, Cmd::MapLookupBatch);
        assert_eq!(u64_at(a, 0), 0, "first call has no in_batch token");
        assert_ne!(u64_at(a, 8), 0, "out_batch token buffer");
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0-3\n"), Some(4));
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-3,8-11"), Some(12));
        assert_eq!(parse_cpu_list("x"), None);
        assert!(possible_cpus().unwrap() >= 1);
    }

    /// A fake map: creation succeeds, info reports nothing (all zero) — so key/value sizes 0.
    #[test]
    fn element_ops_check_sizes_and_pass_pointers() {
        let (map, calls, _g) = fake_map(Cmd::MapLookupElem, 1);
        // The fake's info is all zeros: the map claims key_size 0, value_size 0.
        assert_eq!(map.info().key_size, 0);
        let e = map.lookup(&[1, 2, 3, 4], &mut []).unwrap_err();
        assert!(e.to_string().contains("key is 4 bytes"), "{e}");
        let key: [u8; 0] = [];
        assert!(!map.lookup(&key, &mut []).unwrap(), "ENOENT is 'absent'");
        map.update(&key, &[], super::super::UPDATE_NOEXIST).unwrap();
        let calls = calls.borrow();
        let (cmd, a) = calls.last().unwrap();
        assert_eq!(*cmd, Cmd::MapUpdateElem);
        assert_eq!(u32_at(a, 0), map.as_fd().as_raw_fd() as u32);
        assert_eq!(u64_at(a, 8), key.as_ptr() as u64);
        assert_eq!(u64_at(a, 24), 1);
    }
}
