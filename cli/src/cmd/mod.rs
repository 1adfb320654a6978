//! The data-path commands in standalone mode, no Kubernetes needed: one module per command,
//! their shared arguments in `args`.

pub mod args;
pub mod dump;
pub mod load;
pub mod pod;
pub mod status;
pub mod unload;
