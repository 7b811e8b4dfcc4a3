//! A device's whole use of the bridge core, behind one C symbol so that the
//! linker keeps every part of it: build this for a bare-metal target and the
//! archive's size is the core's code size. See Cargo.toml.
#![no_std]

mod step;

pub use step::{WOOF_SESSION_4X64_BYTES, WOOF_SESSION_8X128_BYTES, woof_device_step};
