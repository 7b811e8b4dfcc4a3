#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| woof_mcu_bridge_fuzz::device::run(data));
