//! The bridge core linked into a bare-metal program: `_start` is the only
//! root, so what it reaches (every part of `woof_device_step`) must link
//! with no std, no allocator and no C library. Built only with the `link`
//! feature, for a bare-metal target; see Cargo.toml.
#![no_std]
#![no_main]

use core::hint::black_box;

mod step;

/// The entry point: steps the device forever on inputs the optimiser cannot
/// see through, so none of the core is left out.
#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    let mut input = [0u8; 64];
    let mut out = [0u8; 128];
    loop {
        let n = black_box(&mut input).len();
        // SAFETY: both pointers come from the arrays above, with their
        // lengths.
        let len = unsafe {
            step::woof_device_step(
                black_box(0),
                black_box(1),
                input.as_mut_ptr(),
                n,
                out.as_mut_ptr(),
                out.len(),
            )
        };
        black_box((len, &out));
    }
}
