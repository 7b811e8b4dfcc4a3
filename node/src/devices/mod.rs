//! Devices: microcontrollers that speak the bridge protocol
//! (`woof_mcu_bridge`) to a gateway node (DESIGN.md, "Microcontrollers").
//!
//! Layout:
//! - [`registry`]: which devices exist, their keys and the topics each may
//!   touch; the fold of the records in the woof-owned topic
//!   `_woof/devices`, so every node knows every device. Pure.
//! - [`gateway`]: the node's side of the protocol over UDP, TCP and
//!   serial lines (`--bridge-listen udp://HOST:PORT,tcp://HOST:PORT`): one
//!   session per device, readings appended once each (keyed by device, boot and device sequence number,
//!   ADR 17), acks only after commit; the topics devices follow, delivered
//!   with flow control and sent again until acknowledged.
//! - [`offload`]: a device's offloaded call: a handler of one of its
//!   topics run here on its payload, the result sent back.
//! - [`transport`]: UDP, TCP and serial addresses, and byte streams as
//!   frames (SLIP), for the gateway and the simulator alike.
//! - [`simulator`]: `woof device sim`, devices running the same `no_std`
//!   core with small fixed buffers over a lossy link to real gateways.
//!
//! The registry changes (`woof device add/list/rm/rotate`) are
//! `ClusterTopics` methods (`api/devices.rs`), served over gRPC.

pub mod gateway;
pub mod offload;
pub mod registry;
pub mod simulator;
pub mod transport;

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
