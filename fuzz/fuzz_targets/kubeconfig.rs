//! Kubeconfig parser: any text gives a client config or an error, never a panic. File
//! references resolve under a directory that does not exist (nothing is read).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mb_agent::k8s::ClientConfig;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ =
        ClientConfig::from_kubeconfig_text(&text, Path::new("/nonexistent/mb-fuzz"), None, "fuzz");
});
