//! [`Pod`]: plain keys and values as the kernel stores them, converted with explicit byte
//! copies (no `unsafe` outside `mb-sys`).

/// A fixed-size plain value that maps store as `SIZE` bytes.
pub trait Pod: Sized {
    /// Bytes in the map.
    const SIZE: usize;
    /// Writes the value into `out`, which is exactly `SIZE` bytes.
    fn write_to(&self, out: &mut [u8]);
    /// Reads a value from `bytes`, which is exactly `SIZE` bytes.
    fn read_from(bytes: &[u8]) -> Self;

    /// The value as a fresh byte vector.
    fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0; Self::SIZE];
        self.write_to(&mut v);
        v
    }
}

macro_rules! pod_int {
    ($($t:ty),*) => {$(
        impl Pod for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn write_to(&self, out: &mut [u8]) {
                out.copy_from_slice(&self.to_ne_bytes());
            }
            fn read_from(bytes: &[u8]) -> Self {
                let mut raw = [0u8; std::mem::size_of::<$t>()];
                raw.copy_from_slice(bytes);
                <$t>::from_ne_bytes(raw)
            }
        }
    )*};
}
pod_int!(u8, u16, u32, u64, i8, i16, i32, i64);

impl<const N: usize> Pod for [u8; N] {
    const SIZE: usize = N;
    fn write_to(&self, out: &mut [u8]) {
        out.copy_from_slice(self);
    }
    fn read_from(bytes: &[u8]) -> Self {
        let mut raw = [0u8; N];
        raw.copy_from_slice(bytes);
        raw
    }
}

/// Implements [`Pod`] for a type with `const SIZE`, `to_bytes() -> [u8; SIZE]` and
/// `from_bytes(&[u8; SIZE])` (the shape of every type in `layout`).
#[macro_export]
macro_rules! impl_pod_via_bytes {
    ($($t:ty),* $(,)?) => {$(
        impl $crate::Pod for $t {
            const SIZE: usize = <$t>::SIZE;
            fn write_to(&self, out: &mut [u8]) {
                out.copy_from_slice(&self.to_bytes());
            }
            fn read_from(bytes: &[u8]) -> Self {
                let mut raw = [0u8; <$t>::SIZE];
                raw.copy_from_slice(bytes);
                <$t>::from_bytes(&raw)
            }
        }
    )*};
}

impl_pod_via_bytes!(
    crate::layout::SockPairKey,
    crate::layout::OrigDst,
    crate::layout::PodEntry,
    crate::layout::PortRuleKey,
    crate::layout::CidrRuleKey,
    crate::layout::ListenerKey,
    crate::layout::SpliceProcKey,
    crate::layout::SplicePortKey,
    crate::layout::SpliceVerdict,
);

/// An LPM-trie key: a prefix length in bits (host order, as the kernel wants) and the data
/// (network order, so that prefixes match bit by bit from the left).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LpmKey<D> {
    pub prefix_len: u32,
    pub data: D,
}

impl<D: Pod> Pod for LpmKey<D> {
    const SIZE: usize = 4 + D::SIZE;
    fn write_to(&self, out: &mut [u8]) {
        out[..4].copy_from_slice(&self.prefix_len.to_ne_bytes());
        self.data.write_to(&mut out[4..]);
    }
    fn read_from(bytes: &[u8]) -> Self {
        LpmKey {
            prefix_len: u32::read_from(&bytes[..4]),
            data: D::read_from(&bytes[4..]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ints_and_arrays_round_trip() {
        assert_eq!(u32::read_from(&0xdead_beef_u32.to_vec()), 0xdead_beef);
        assert_eq!(<[u8; 3]>::read_from(&[1, 2, 3]), [1, 2, 3]);
        assert_eq!(u64::SIZE, 8);
    }

    #[test]
    fn lpm_key_puts_prefix_first() {
        let k = LpmKey {
            prefix_len: 24,
            data: [10u8, 1, 2, 0],
        };
        let v = k.to_vec();
        assert_eq!(v.len(), 8);
        assert_eq!(&v[..4], &24u32.to_ne_bytes());
        assert_eq!(&v[4..], &[10, 1, 2, 0]);
        assert_eq!(LpmKey::<[u8; 4]>::read_from(&v), k);
    }

    #[test]
    fn layout_types_are_pod() {
        let k = crate::layout::SockPairKey {
            netns: 7,
            local_port: 80u16.to_be(),
            ..Default::default()
        };
        assert_eq!(crate::layout::SockPairKey::read_from(&k.to_vec()), k);
    }
}
