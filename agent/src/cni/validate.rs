//! `merbridge validate`: run as the first init container of a meshed pod (as istio-validation
//! is), it proves that the pod's own outbound `connect()` is redirected before the application
//! starts, and fails the pod with a message saying what to do otherwise (fail closed).
//!
//! It listens where the sidecar will (`127.0.0.1:<outbound port>`; the sidecar is not running
//! yet), connects to an address outside the pod, and passes only if that connection arrives on
//! its listener with the original destination answered by merbridge's `SO_ORIGINAL_DST`.

use mb_sys::sockopt::original_dst_for;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct ValidateOptions {
    /// The sidecar's outbound port of the mesh.
    pub outbound_port: u16,
    /// Where the test connection goes; never reached when interception works.
    pub target: SocketAddr,
    pub timeout: Duration,
}

/// TEST-NET-1 (RFC 5737): never routed, so an un-intercepted connect goes nowhere.
pub const DEFAULT_TARGET: &str = "192.0.2.1:80";

const HINT: &str = "merbridge did not register this pod before it started: check that the \
    merbridge DaemonSet runs on this node and that `merbridge cni install` put merbridge-cni \
    into the node's CNI conflist (kubectl -n merbridge-system logs ds/merbridge -c install-cni); \
    then delete this pod so that its sandbox is created again";

/// Passes (with a one-line report) or fails with what was seen and what to do.
pub fn validate(options: &ValidateOptions) -> Result<String, String> {
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, options.outbound_port));
    let listener = TcpListener::bind(listen).map_err(|e| {
        format!(
            "cannot listen on {listen}: {e} (validation runs before the sidecar, as the pod's \
             first init container, and needs the mesh's outbound port free)"
        )
    })?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let client = TcpStream::connect_timeout(&options.target, options.timeout).map_err(|e| {
        format!(
            "the outbound connection to {} was not redirected to {listen}: {e}. {HINT}",
            options.target
        )
    })?;
    let local = client.local_addr().map_err(|e| e.to_string())?;
    let (accepted, peer) = loop {
        match listener.accept() {
            Ok(pair) => break pair,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if started.elapsed() > options.timeout {
                    return Err(format!(
                        "the connection to {} was established but never reached {listen}: \
                         something else answered it (an unexpected route or proxy). {HINT}",
                        options.target
                    ));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(format!("accept on {listen}: {e}")),
        }
    };
    if peer != local {
        return Err(format!(
            "{listen} accepted a connection from {peer}, not from this check ({local}); is \
             another process connecting to the sidecar port?"
        ));
    }
    let accepted_local = accepted.local_addr().map_err(|e| e.to_string())?;
    let original = original_dst_for(accepted.as_fd(), &accepted_local).map_err(|e| {
        format!(
            "the connection reached {listen} but SO_ORIGINAL_DST failed ({e}): it was not \
             redirected by merbridge. {HINT}"
        )
    })?;
    if original != options.target {
        return Err(format!(
            "SO_ORIGINAL_DST says {original}, the check connected to {}. {HINT}",
            options.target
        ));
    }
    Ok(format!(
        "outbound interception works: {local} -> {} was redirected to {listen} (original \
         destination {original}) in {:?}",
        options.target,
        started.elapsed()
    ))
}
