//! [`coded_enum!`](crate::coded_enum): an enum whose variants are fixed `u32` codes (kernel
//! numbers, counter slots, reason codes stored in maps), each with a name, declared once in
//! one table instead of three lists (the enum, `ALL`, the name `match`) kept in step by hand.

/// Declares a `#[repr(u32)]` enum from rows `Variant = code => "name",` and gives it
/// `ALL` (every variant, in row order), `code()`, `from_code()` and `name()`. The enum
/// derives `Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord`; attributes and doc
/// comments before the enum and its rows are kept. Rows may instead read
/// `Variant = code => "name": "what it means",`: the text becomes the variant's first doc line
/// and what `about()` returns (for tables a user reads, like `merbridge status`).
///
/// ```
/// mb_sys::coded_enum! {
///     /// A colour.
///     pub enum Colour {
///         Red = 1 => "red",
///         Green = 2 => "green",
///     }
/// }
/// assert_eq!(Colour::from_code(2), Some(Colour::Green));
/// assert_eq!(Colour::Red.name(), "red");
/// assert_eq!(Colour::ALL.len(), 2);
///
/// mb_sys::coded_enum! {
///     pub enum Shape {
///         Circle = 0 => "circle": "round",
///     }
/// }
/// assert_eq!(Shape::Circle.about(), "round");
/// ```
#[macro_export]
macro_rules! coded_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $(
                $(#[$row_meta:meta])*
                $variant:ident = $code:literal => $text:literal: $about:literal,
            )*
        }
    ) => {
        $crate::coded_enum! {
            $(#[$meta])*
            $vis enum $name {
                $(#[doc = $about] $(#[$row_meta])* $variant = $code => $text,)*
            }
        }

        impl $name {
            /// What the value means, in a few words.
            pub const fn about(self) -> &'static str {
                match self {
                    $($name::$variant => $about,)*
                }
            }
        }
    };
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$row_meta:meta])* $variant:ident = $code:literal => $text:literal,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u32)]
        $vis enum $name {
            $($(#[$row_meta])* $variant = $code,)*
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: [$name; [$($code),*].len()] = [$($name::$variant),*];

            /// The number that stands for this value (in the kernel ABI or in a map).
            pub const fn code(self) -> u32 {
                self as u32
            }

            /// The value numbered `code`, if there is one.
            pub const fn from_code(code: u32) -> Option<$name> {
                match code {
                    $($code => Some($name::$variant),)*
                    _ => None,
                }
            }

            /// The value's name.
            pub const fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }
    };
}
