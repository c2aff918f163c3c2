#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| paracord_api::fuzzing::send_transaction(data));
