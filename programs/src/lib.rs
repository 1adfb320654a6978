//! See the crate description in Cargo.toml and DESIGN.md §2.
#![forbid(unsafe_code)]
pub mod ctx;
