//! The device's whole use of the bridge core, behind one C symbol, and the
//! panic handler: shared by the library (whose archive's size is the core's
//! code size) and the linked program (`main.rs`).
use woof_mcu_bridge::session::{Config, Session};
use woof_mcu_bridge::wire::Topic;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

/// Says hello, queues one reading, takes one frame from the gateway, and
/// writes the next frame to send into `out`; returns its length (0: none).
///
/// # Safety
///
/// `input` must point to `input_len` writable bytes and `out` to `out_len`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn woof_device_step(
    now_ms: u64,
    reading: u32,
    input: *mut u8,
    input_len: usize,
    out: *mut u8,
    out_len: usize,
) -> usize {
    static mut KEY: [u8; 16] = [0; 16];
    // SAFETY: the caller's promise above; KEY is only read.
    let (input, out, key) = unsafe {
        (
            core::slice::from_raw_parts_mut(input, input_len),
            core::slice::from_raw_parts_mut(out, out_len),
            *core::ptr::addr_of!(KEY),
        )
    };
    let config = Config {
        device_id: b"nostd",
        key,
        boot_id: now_ms,
        caps: 0,
        ping_interval_ms: 30_000,
    };
    let Ok(mut session) = Session::<8, 128>::new(&config, now_ms, reading) else {
        return 0;
    };
    let _ = session.append(Topic::Index(0), &reading.to_le_bytes(), reading);
    let _ = session.subscribe(Topic::Index(1), 0, reading);
    let _ = session.offload(b"f", &[1], reading);
    let _ = session.handle_input(now_ms, input);
    while session.poll_event(now_ms).is_some() {}
    match session.poll_transmit(now_ms, out) {
        Ok(Some(len)) => len,
        _ => 0,
    }
}

/// The RAM of the session a small device keeps (eight requests of up to
/// 128-byte frames), readable in the archive as a symbol's value.
#[unsafe(no_mangle)]
pub static WOOF_SESSION_8X128_BYTES: usize = core::mem::size_of::<Session<8, 128>>();
/// The same for four requests of up to 64 bytes.
#[unsafe(no_mangle)]
pub static WOOF_SESSION_4X64_BYTES: usize = core::mem::size_of::<Session<4, 64>>();
