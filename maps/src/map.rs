//! [`MapSpec`] (what a map should look like) and [`Map`] (an open map checked against it):
//! create, pin, and re-open pinned maps whose shape must match.

use mb_sys::bpf::{BpfError, MapCreate, MapFd, MapInfo, MapType, F_NO_PREALLOC};
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

/// What a map must look like: the kernel checks these at creation, we check them on re-open.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MapSpec {
    pub name: String,
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl MapSpec {
    pub fn new(
        name: &str,
        map_type: MapType,
        key_size: usize,
        value_size: usize,
        max_entries: u32,
    ) -> MapSpec {
        MapSpec {
            name: name.to_string(),
            map_type,
            key_size: key_size as u32,
            value_size: value_size as u32,
            max_entries,
            // LPM tries must not be preallocated; every other type we use is.
            flags: if map_type == MapType::LPM_TRIE {
                F_NO_PREALLOC
            } else {
                0
            },
        }
    }

    fn shape(&self) -> Shape {
        Shape {
            map_type: self.map_type,
            key_size: self.key_size,
            value_size: self.value_size,
            max_entries: self.max_entries,
            flags: self.flags,
        }
    }
}

/// The checked part of a map's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl Shape {
    fn of(info: &MapInfo) -> Shape {
        Shape {
            map_type: info.map_type,
            key_size: info.key_size,
            value_size: info.value_size,
            max_entries: info.max_entries,
            flags: info.map_flags,
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} key {} B, value {} B, max_entries {}, flags {:#x}",
            self.map_type, self.key_size, self.value_size, self.max_entries, self.flags
        )
    }
}

/// Everything that can go wrong with a map.
#[derive(Debug)]
pub enum MapError {
    /// The kernel refused a command.
    Kernel(BpfError),
    /// A pinned map exists with another shape (never reused: that would corrupt data).
    Mismatch {
        path: PathBuf,
        expected: Shape,
        found: Shape,
    },
    /// A map handed to a typed handle has the wrong shape for it.
    WrongShape {
        name: String,
        wanted: String,
        found: Shape,
    },
    /// A file-system step around pinning failed.
    Io { what: String, error: std::io::Error },
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::Kernel(e) => write!(f, "{e}"),
            MapError::Mismatch {
                path,
                expected,
                found,
            } => write!(
                f,
                "pinned map {} has another shape: expected {expected}, found {found}; \
                 remove the pin (`merbridge unload`, or `rm {}`) so it is created anew",
                path.display(),
                path.display()
            ),
            MapError::WrongShape {
                name,
                wanted,
                found,
            } => write!(f, "map {name:?} is {found}, but this handle needs {wanted}"),
            MapError::Io { what, error } => write!(f, "{what}: {error}"),
        }
    }
}

impl std::error::Error for MapError {}

impl From<BpfError> for MapError {
    fn from(e: BpfError) -> Self {
        MapError::Kernel(e)
    }
}

/// An open map whose shape is known.
#[derive(Debug)]
pub struct Map {
    fd: MapFd,
}

impl Map {
    /// Creates a new map (not pinned).
    pub fn create(spec: &MapSpec) -> Result<Map, MapError> {
        let fd = MapFd::create(&MapCreate {
            map_type: spec.map_type,
            key_size: spec.key_size,
            value_size: spec.value_size,
            max_entries: spec.max_entries,
            map_flags: spec.flags,
            name: &spec.name,
        })?;
        Ok(Map { fd })
    }

    /// Opens the map pinned at `path`, whatever its shape.
    pub fn open_pinned_any(path: &Path) -> Result<Map, MapError> {
        Ok(Map {
            fd: MapFd::open_pinned(path)?,
        })
    }

    /// Opens the map pinned at `path` and checks it has `spec`'s type, key and value size,
    /// max entries and flags. A different shape is [`MapError::Mismatch`].
    pub fn open_pinned(path: &Path, spec: &MapSpec) -> Result<Map, MapError> {
        let map = Map::open_pinned_any(path)?;
        let found = Shape::of(map.info());
        if found != spec.shape() {
            return Err(MapError::Mismatch {
                path: path.to_path_buf(),
                expected: spec.shape(),
                found,
            });
        }
        Ok(map)
    }

    /// Re-opens the map pinned at `path` (checked against `spec`), or creates and pins it
    /// there when nothing is pinned. The flag says whether it was created.
    pub fn create_or_open_pinned(path: &Path, spec: &MapSpec) -> Result<(Map, bool), MapError> {
        match Map::open_pinned(path, spec) {
            Ok(m) => Ok((m, false)),
            Err(MapError::Kernel(e)) if e.is(nix::errno::Errno::ENOENT) => {
                let map = Map::create(spec)?;
                map.pin(path)?;
                Ok((map, true))
            }
            Err(e) => Err(e),
        }
    }

    /// Pins the map at `path` (inside a bpffs; the directory must exist).
    pub fn pin(&self, path: &Path) -> Result<(), MapError> {
        Ok(self.fd.pin(path)?)
    }

    /// The kernel's view of the map.
    pub fn info(&self) -> &MapInfo {
        self.fd.info()
    }

    /// The shape, for comparisons.
    pub fn shape(&self) -> Shape {
        Shape::of(self.info())
    }

    /// Low-level element access (byte slices, sizes checked).
    pub fn raw(&self) -> &MapFd {
        &self.fd
    }

    /// Keys as raw bytes, in the kernel's order (bounded by `max_entries`).
    pub fn raw_keys(&self) -> RawKeys<'_> {
        RawKeys {
            map: self,
            last: None,
            left: self.info().max_entries as usize,
            done: false,
        }
    }
}

/// Removes a pin (a file in a bpffs). A missing pin is fine.
pub fn unpin(path: &Path) -> Result<(), MapError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(MapError::Io {
            what: format!("unpin {}", path.display()),
            error,
        }),
    }
}

impl AsFd for Map {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Iterator over a map's keys (`BPF_MAP_GET_NEXT_KEY`). Deleting the current key while
/// iterating a hash map restarts from the first key; the walk stops after `max_entries` keys.
pub struct RawKeys<'a> {
    map: &'a Map,
    last: Option<Vec<u8>>,
    left: usize,
    done: bool,
}

impl Iterator for RawKeys<'_> {
    type Item = Result<Vec<u8>, MapError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.left == 0 {
            return None;
        }
        let mut next = vec![0u8; self.map.info().key_size as usize];
        match self.map.fd.next_key(self.last.as_deref(), &mut next) {
            Ok(true) => {
                self.left -= 1;
                self.last = Some(next.clone());
                Some(Ok(next))
            }
            Ok(false) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e.into()))
            }
        }
    }
}
