//! Mesh rules.
