//! Stack frames as tables. Every program declares the stack areas it uses in one [`Frame`]:
//! each [`Slot`] with its name, offset from the frame pointer and size, plus the pairs of slots
//! that share bytes on purpose (unions: never live at the same time, or one a field of the
//! other). [`Frame::check`] refuses any other overlap, and the crate's tests check that every
//! stack access of the assembled bytecode falls inside a slot of its program's table.

/// The verifier's stack: 512 bytes below the frame pointer.
pub const STACK_SIZE: i16 = 512;

/// One named area of a stack frame: bytes `fp + off .. fp + off + size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub name: &'static str,
    pub off: i16,
    pub size: i16,
}

impl Slot {
    pub const fn new(name: &'static str, off: i16, size: usize) -> Slot {
        Slot {
            name,
            off,
            size: size as i16,
        }
    }

    /// One past the last byte (an offset from the frame pointer).
    pub const fn end(&self) -> i16 {
        self.off + self.size
    }

    fn overlaps(&self, other: &Slot) -> bool {
        self.off < other.end() && other.off < self.end()
    }

    /// Whether `fp + off .. fp + off + len` lies inside this slot.
    pub fn holds(&self, off: i16, len: i16) -> bool {
        self.off <= off && off + len <= self.end()
    }
}

/// The slots of `a` followed by those of `b`, for a program whose stack holds another's and
/// more (connect runs sendmsg's DNS redirect). `N` must be `A + B`.
pub const fn join<const A: usize, const B: usize, const N: usize>(
    a: [Slot; A],
    b: [Slot; B],
) -> [Slot; N] {
    assert!(A + B == N, "join: N must be A + B");
    let mut out = [Slot::new("", 0, 0); N];
    let mut i = 0;
    while i < A {
        out[i] = a[i];
        i += 1;
    }
    while i < N {
        out[i] = b[i - A];
        i += 1;
    }
    out
}

/// A program's stack layout: its slots and its declared unions.
#[derive(Clone, Copy, Debug)]
pub struct Frame {
    pub slots: &'static [Slot],
    /// Pairs of slot names allowed to overlap.
    pub unions: &'static [(&'static str, &'static str)],
}

impl Frame {
    fn is_union(&self, a: &str, b: &str) -> bool {
        self.unions
            .iter()
            .any(|&(x, y)| (x == a && y == b) || (x == b && y == a))
    }

    /// The frame is sound: names unique, slots inside the 512-byte stack and non-empty, every
    /// union names two slots of the frame that do overlap, and no other two slots overlap.
    pub fn check(&self) -> Result<(), String> {
        for (i, s) in self.slots.iter().enumerate() {
            if s.size <= 0 || s.off < -STACK_SIZE || s.end() > 0 {
                return Err(format!(
                    "slot {} (fp{:+}, {} bytes) is not inside the {STACK_SIZE}-byte stack",
                    s.name, s.off, s.size
                ));
            }
            for t in &self.slots[..i] {
                if s.name == t.name {
                    return Err(format!("slot {} is declared twice", s.name));
                }
                if s.overlaps(t) && !self.is_union(s.name, t.name) {
                    return Err(format!(
                        "slots {} (fp{:+}..{:+}) and {} (fp{:+}..{:+}) overlap but are not \
                         declared a union",
                        t.name,
                        t.off,
                        t.end(),
                        s.name,
                        s.off,
                        s.end()
                    ));
                }
            }
        }
        for &(a, b) in self.unions {
            let find = |n: &str| self.slots.iter().find(|s| s.name == n);
            match (find(a), find(b)) {
                (Some(x), Some(y)) if x.overlaps(y) => {}
                (Some(_), Some(_)) => {
                    return Err(format!("union {a}/{b}: the slots do not overlap"))
                }
                _ => return Err(format!("union {a}/{b} names a slot not in the frame")),
            }
        }
        Ok(())
    }

    /// The slot holding `fp + off .. fp + off + len`, if any.
    pub fn slot_holding(&self, off: i16, len: i16) -> Option<&Slot> {
        self.slots.iter().find(|s| s.holds(off, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Slot = Slot::new("A", -48, 48);
    const B: Slot = Slot::new("B", -8, 8);
    const C: Slot = Slot::new("C", -56, 8);
    const BELOW_STACK: Slot = Slot::new("X", -520, 16);
    const ABOVE_FP: Slot = Slot::new("X", -4, 8);

    #[test]
    fn an_undeclared_overlap_is_refused_and_a_declared_union_is_not() {
        let silent = Frame {
            slots: &[A, B],
            unions: &[],
        };
        let err = silent.check().unwrap_err();
        assert!(err.contains("A") && err.contains("B"), "{err}");
        let declared = Frame {
            slots: &[A, B],
            unions: &[("B", "A")],
        };
        declared.check().unwrap();
    }

    #[test]
    fn adjacent_slots_do_not_overlap_and_bad_tables_are_refused() {
        Frame {
            slots: &[A, C],
            unions: &[],
        }
        .check()
        .unwrap();
        for bad in [
            Frame {
                slots: &[A, C],
                unions: &[("A", "C")],
            },
            Frame {
                slots: &[A, A],
                unions: &[],
            },
            Frame {
                slots: &[BELOW_STACK],
                unions: &[],
            },
            Frame {
                slots: &[ABOVE_FP],
                unions: &[],
            },
            Frame {
                slots: &[A],
                unions: &[("A", "Z")],
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
