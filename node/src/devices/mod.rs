//! Devices: microcontrollers that speak the bridge protocol
//! (`woof_mcu_bridge`) to a gateway node (DESIGN.md, "Microcontrollers").
//!
//! Layout:
//! - [`registry`]: which devices exist, their keys and the topics each may
//!   touch; the fold of the records in the woof-owned topic
//!   `_woof/devices`, so every node knows every device. Pure.
//! - [`gateway`]: the node's side of the protocol over UDP
//!   (`--bridge-listen udp://HOST:PORT`): one session per device, readings
//!   appended once each (keyed by device, boot and device sequence number,
//!   ADR 17), acks only after commit; the topics devices follow, delivered
//!   with flow control and sent again until acknowledged.
//! - [`offload`]: a device's offloaded call: a handler of one of its
//!   topics run here on its payload, the result sent back.
//! - [`simulator`]: `woof device sim`, devices running the same `no_std`
//!   core with small fixed buffers over a lossy link to real gateways.
//!
//! The registry changes (`woof device add/list/rm/rotate`) are
//! `ClusterTopics` methods (`api/devices.rs`), served over gRPC.

pub mod gateway;
pub mod offload;
pub mod registry;
pub mod simulator;

use std::net::{SocketAddr, ToSocketAddrs};

use crate::error::{Error, Result};

/// One `udp://HOST:PORT` address, resolved.
pub fn udp_addr(text: &str) -> Result<SocketAddr> {
    let rest = match text.split_once("://") {
        Some(("udp", rest)) => rest,
        Some((scheme, _)) => {
            return Err(Error::Usage(format!(
                "{text:?}: only udp:// is served (not {scheme}://)"
            )));
        }
        None => text,
    };
    rest.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            Error::Usage(format!(
                "{text:?} is not an address such as udp://127.0.0.1:7900"
            ))
        })
}

/// An error text cut to what an error frame carries.
pub(crate) fn clip(mut text: String) -> String {
    if text.len() > woof_mcu_bridge::wire::ERROR_TEXT_LEN_MAX {
        let mut end = woof_mcu_bridge::wire::ERROR_TEXT_LEN_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}
